from .edge_exit import EdgeExit, EdgeExitPyramid, ExitOutput

__all__ = ['EdgeExit', 'EdgeExitPyramid', 'ExitOutput']
