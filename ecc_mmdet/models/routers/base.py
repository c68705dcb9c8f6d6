"""Routers: per image, finish on the edge or offload to the cloud.

A router scores every image from what the edge exits computed (:class:`ExitOutput`): the higher
the score, the more the image needs the cloud. An image is offloaded when its score is above the
router's ``threshold``. The threshold is either given, or derived from a target offload ratio on a
calibration split (:meth:`BaseRouter.calibrate`: a percentile of the calibration scores) that must
not be the evaluation split (:class:`~ecc_mmdet.engine.RouterCalibrationHook` in the Runner).
"""
import math
from abc import ABCMeta, abstractmethod
from typing import Optional, Tuple

import torch
from torch import Tensor, nn

from ...errors import ConfigError

__all__ = ['BaseRouter', 'threshold_for_ratio']


def threshold_for_ratio(scores: Tensor, ratio: float) -> float:
    """The threshold t for which ``mean(scores > t)`` is as close to ``ratio`` as ties allow:
    the midpoint between the k-th and (k+1)-th largest score, k = round(ratio * N)."""
    s = torch.as_tensor(scores, dtype=torch.float64).flatten()
    if s.numel() == 0:
        raise ValueError('cannot calibrate a router on an empty calibration split')
    if not torch.isfinite(s).all():
        raise ValueError('router scores on the calibration split are not all finite')
    s = torch.sort(s, descending=True).values
    k = int(round(float(ratio) * s.numel()))
    if k <= 0:
        return math.inf
    if k >= s.numel():
        return -math.inf
    return float((s[k - 1] + s[k]) / 2)


class BaseRouter(nn.Module, metaclass=ABCMeta):
    """Offload an image when ``score > threshold``; subclasses implement :meth:`scores`.

    Args:
        threshold: fixed threshold in the router's score range (``score_range``); ``inf`` keeps
            every image on the edge, ``-inf`` offloads every image.
        target_offload_ratio: in [0, 1]; the threshold is then set by :meth:`calibrate` on a
            calibration split (0 and 1 need no calibration).
    Give one of the two (default: ``target_offload_ratio=0.5``).
    """

    #: (low, high) of the scores; a finite threshold must lie in it
    score_range: Tuple[float, float] = (0.0, 1.0)

    def __init__(self, threshold: Optional[float] = None,
                 target_offload_ratio: Optional[float] = None):
        super().__init__()
        name = type(self).__name__
        if threshold is not None and target_offload_ratio is not None:
            raise ConfigError(f'router ({name}): give threshold or target_offload_ratio, not both')
        if threshold is None and target_offload_ratio is None:
            target_offload_ratio = 0.5
        value = math.nan
        if threshold is not None:
            value = float(threshold)
            lo, hi = self.score_range
            if math.isnan(value) or (math.isfinite(value) and not lo <= value <= hi):
                raise ConfigError(
                    f'router.threshold={threshold} is outside the {name} score range '
                    f'[{lo}, {hi}]; use a value in it, inf (keep all on the edge) or -inf '
                    '(offload all), or give target_offload_ratio instead')
        else:
            r = float(target_offload_ratio)
            if not 0.0 <= r <= 1.0:
                raise ConfigError(f'router.target_offload_ratio must be in [0, 1], got '
                                  f'{target_offload_ratio}')
            if r in (0.0, 1.0):
                value = math.inf if r == 0.0 else -math.inf
        self.target_offload_ratio = target_offload_ratio
        # NaN = not calibrated yet. Not checkpointed: the config (threshold, or a target ratio
        # calibrated by RouterCalibrationHook / the benchmark) is the single source of truth
        self.register_buffer('threshold', torch.tensor(value, dtype=torch.float64),
                             persistent=False)

    @abstractmethod
    def scores(self, exits) -> Tensor:
        """(N,) float scores of a batch's :class:`ExitOutput`; higher = needs the cloud more."""

    def decide(self, exits) -> Tensor:
        """(N,) bool: True = offload to the cloud."""
        t = float(self.threshold)
        if math.isnan(t):
            raise RuntimeError(
                f'{type(self).__name__} has target_offload_ratio={self.target_offload_ratio} but '
                'no calibrated threshold: calibrate it on a calibration split '
                '(RouterCalibrationHook in custom_hooks, or '
                'ecc_mmdet.deployment.calibration.calibrate_router) or give router.threshold')
        return self.scores(exits).to(torch.float64) > t

    def calibrate(self, scores: Tensor, ratio: Optional[float] = None) -> float:
        """Set (and return) the threshold that offloads ``ratio`` (default: the target) of the
        calibration ``scores``."""
        ratio = self.target_offload_ratio if ratio is None else ratio
        if ratio is None or not 0.0 <= float(ratio) <= 1.0:
            raise ConfigError(f'calibration needs a target offload ratio in [0, 1], got {ratio}')
        t = threshold_for_ratio(scores, ratio)
        self.threshold.fill_(t)
        return t
