"""Routers: per image, finish on the edge or offload to the cloud.

A router scores every image from what the edge exits computed (:class:`ExitOutput`): the higher
the score, the more the image needs the cloud. An image is offloaded when its score is above the
router's ``threshold``. The threshold is either given, or derived from a target offload ratio on a
calibration split (:meth:`BaseRouter.calibrate`: a percentile of the calibration scores) that must
not be the evaluation split (:class:`~ecc_mmdet.engine.RouterCalibrationHook` in the Runner).
N calibration images reach ratios in steps of 1/N, and tied scores move together: a calibration
that misses its target by more than ``ratio_precision``, or keeps every image on one side, is
refused with the number of images that would reach it, instead of routing at another ratio.
"""
import math
from abc import ABCMeta, abstractmethod
from typing import Dict, Optional, Tuple

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
        ratio_precision: the most the offload ratio reached on the calibration images may miss
            the target by (a calibration split too small for it, or whose scores tie, is
            refused).
    Give one of the two (default: ``target_offload_ratio=DEFAULT_RATIO``, 0.5).
    """

    #: (low, high) of the scores; a finite threshold must lie in it
    score_range: Tuple[float, float] = (0.0, 1.0)

    #: the target offload ratio of a router given neither a threshold nor a ratio
    DEFAULT_RATIO = 0.5
    #: why the light edge runtime (:mod:`ecc_edge.exits`) cannot run this router; a router it
    #: runs defines ``light_edge_params`` in its own class instead
    light_edge_refusal = 'it is not ported to the runtime'
    #: True when the light edge's graph must output F_k's channel statistics for the score
    #: (the router's ``feature_stats(features)``)
    needs_feature_stats = False

    def __init__(self, threshold: Optional[float] = None,
                 target_offload_ratio: Optional[float] = None, ratio_precision: float = 0.05):
        super().__init__()
        name = type(self).__name__
        if threshold is not None and target_offload_ratio is not None:
            raise ConfigError(f'router ({name}): give threshold or target_offload_ratio, not both')
        if not 0.0 < float(ratio_precision) <= 1.0:
            raise ConfigError(f'router.ratio_precision must be in (0, 1], got {ratio_precision}')
        self.ratio_precision = float(ratio_precision)
        target_offload_ratio = self.target_ratio(threshold, target_offload_ratio)
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
            if not self.ratio_needs_calibration(r):
                value = math.inf if r == 0.0 else -math.inf
        self.target_offload_ratio = target_offload_ratio
        # NaN = not calibrated yet. Not checkpointed: the config (threshold, or a target ratio
        # calibrated by RouterCalibrationHook / the benchmark) is the single source of truth
        self.register_buffer('threshold', torch.tensor(value, dtype=torch.float64),
                             persistent=False)

    # ---- the calibration rule: asked by the config checks, the hook, the tools and export ----
    @classmethod
    def target_ratio(cls, threshold: Optional[float] = None,
                     target_offload_ratio: Optional[float] = None) -> Optional[float]:
        """The offload ratio a router built with these arguments targets: None with a fixed
        threshold, :attr:`DEFAULT_RATIO` when neither is given."""
        if threshold is None and target_offload_ratio is None:
            return cls.DEFAULT_RATIO
        return None if threshold is not None else target_offload_ratio

    @staticmethod
    def ratio_needs_calibration(ratio: Optional[float]) -> bool:
        """A target ratio takes its threshold from a calibration split; 0 and 1 do not (the
        threshold is then inf / -inf), nor does a fixed threshold (``ratio=None``)."""
        return ratio is not None and float(ratio) not in (0.0, 1.0)

    @classmethod
    def config_needs_calibration(cls, router_cfg) -> bool:
        """:attr:`needs_calibration` of the router a config dict would build (before building
        it: config checks and tools decide from the config)."""
        return cls.ratio_needs_calibration(cls.target_ratio(
            router_cfg.get('threshold'), router_cfg.get('target_offload_ratio')))

    @property
    def needs_calibration(self) -> bool:
        """Whether this router's threshold comes from a calibration split."""
        return self.ratio_needs_calibration(self.target_offload_ratio)

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
        self._check_reached(torch.as_tensor(scores, dtype=torch.float64).flatten(), t,
                            float(ratio))
        self.threshold.fill_(t)
        return t

    def _check_reached(self, scores: Tensor, t: float, ratio: float) -> None:
        """ConfigError when the threshold ``t`` misses ``ratio`` on the calibration ``scores``
        by more than ``ratio_precision``, or (0 < ratio < 1) offloads all or none of them."""
        n, p = scores.numel(), self.ratio_precision
        hits = int((scores > t).sum())
        reached = hits / n
        if abs(reached - ratio) <= p + 1e-9 and (ratio in (0.0, 1.0) or 0 < hits < n):
            return
        name = type(self).__name__
        # enough images: steps of 1/n <= 2p, and at least one image on each side of the ratio
        need = max(math.ceil(1 / (2 * p)), math.floor(0.5 / min(ratio, 1 - ratio)) + 1)
        if n < need:
            raise ConfigError(
                f'{name}: calibrating target_offload_ratio={ratio} on {n} images reaches '
                f'{reached:.3f} ({hits} of {n}); the calibration split is too small for this '
                f'ratio within ratio_precision={p}: use at least {need} calibration images '
                '(RouterCalibrationHook.num_images, the calibration split\'s size), a larger '
                'router.ratio_precision, or router.threshold instead')
        tied = int((scores == scores.sort(descending=True).values[round(ratio * n) - 1]).sum())
        raise ConfigError(
            f'{name}: calibrating target_offload_ratio={ratio} on {n} images reaches only '
            f'{reached:.3f} ({hits} of {n}): {tied} of them share the score at the threshold, '
            'and tied images are offloaded together. Calibrate on more varied images, choose '
            'a router whose scores separate them, or a larger router.ratio_precision')

    def light_edge_spec(self) -> Dict:
        """The export sidecar's ``router`` entry for the light edge runtime: kind, calibrated
        threshold and the parameters of ``light_edge_params``. ConfigError when the runtime does
        not run this exact class (a subclass may score differently) or it is not calibrated."""
        kind = type(self).__name__
        params = vars(type(self)).get('light_edge_params')
        if params is None:
            raise ConfigError(
                f'the light edge runtime ports {", ".join(_light_edge_kinds())}, not {kind}: '
                f'{self.light_edge_refusal}. Use one of those routers, or run the edge with '
                'PyTorch')
        t = float(self.threshold)
        if math.isnan(t):
            raise ConfigError(
                f'the {kind} router has target_offload_ratio={self.target_offload_ratio} but no '
                'calibrated threshold: calibrate the model before export (tools/export_edge_onnx'
                '.py --data-root DIR calibrates it on the config\'s calibration split), or give '
                'router.threshold')
        return dict(kind=kind, threshold=t, **params(self))


def _light_edge_kinds(cls=BaseRouter) -> list:
    """Names of the router classes the light edge runtime runs (those with their own port)."""
    out = [cls.__name__] if 'light_edge_params' in vars(cls) else []
    for sub in cls.__subclasses__():
        out += _light_edge_kinds(sub)
    return sorted(set(out))
