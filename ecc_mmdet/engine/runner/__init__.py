"""Loops: online adaptation under distribution shift."""
from .online_adaptation_loop import METHODS, OnlineAdaptationLoop

__all__ = ['METHODS', 'OnlineAdaptationLoop']
