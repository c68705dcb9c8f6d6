"""Routers: per image, finish on the edge or offload to the cloud (registered in MODELS)."""
from .base import BaseRouter, threshold_for_ratio
from .heuristic import (EmptyExitRouter, EntropyRouter, RandomRouter, ScoreBandRouter,
                        ShiftRouter)
from .learned import LearnedRouter, exit_fingerprint

__all__ = ['BaseRouter', 'EmptyExitRouter', 'EntropyRouter', 'LearnedRouter', 'RandomRouter',
           'ScoreBandRouter', 'ShiftRouter', 'exit_fingerprint', 'threshold_for_ratio']
