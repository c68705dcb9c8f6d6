"""Entropy models (detection-agnostic, CompressAI-style)."""
from .factorized import FactorizedEntropyModel
from .gaussian_conditional import GaussianConditionalEntropyModel
from .hyper_synthesis import ExactHyperSynthesis

__all__ = ['FactorizedEntropyModel', 'GaussianConditionalEntropyModel', 'ExactHyperSynthesis']
