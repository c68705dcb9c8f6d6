"""Entropy models (detection-agnostic, CompressAI-style)."""
from .factorized import FactorizedEntropyModel

__all__ = ['FactorizedEntropyModel']
