from .backbone_split import SUPPORTED_BACKBONES, BackboneSplitter

__all__ = ['BackboneSplitter', 'SUPPORTED_BACKBONES']
