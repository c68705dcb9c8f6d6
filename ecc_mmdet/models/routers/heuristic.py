"""Rule-based routers: the random control, DCSB's score band, class-distribution entropy,
entropy that also counts an empty exit as uncertain, and one that also counts edge features
unlike the calibration images' (a distribution shift) as uncertain."""
import hashlib
from typing import Dict, Optional, Tuple

import torch
from mmdet.registry import MODELS
from torch import Tensor

from ...errors import ConfigError
from .base import BaseRouter
from .features import channel_statistics, top_k_entropy

__all__ = ['RandomRouter', 'ScoreBandRouter', 'EntropyRouter', 'EmptyExitRouter', 'ShiftRouter']


@MODELS.register_module()
class RandomRouter(BaseRouter):
    """The control: a uniform score per image, a pure function of ``seed`` and the image id, so
    the same image gets the same decision in every batch and run (and on the light edge, which
    draws from the image id it is given)."""

    def __init__(self, seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.seed = int(seed)

    def scores(self, exits) -> Tensor:
        out = []
        for s in exits.samples:
            key = s.metainfo.get('img_id', s.metainfo.get('img_path'))
            digest = hashlib.sha256(f'{self.seed}:{key}'.encode()).digest()
            out.append(int.from_bytes(digest[:8], 'little') / 2.0**64)
        return torch.tensor(out, dtype=torch.float64)

    def light_edge_params(self) -> Dict:
        return dict(seed=self.seed)


@MODELS.register_module()
class ScoreBandRouter(BaseRouter):
    """DCSB-style difficulty: the number of exit detections whose score lies in the uncertain band
    ``[low, high)``. The fractional part (in [0, 1)) breaks the many ties between images with the
    same count, so calibration can reach any ratio: how close the image's detections come to the
    band's middle on average (Gaussian in units of half the band), and the maximum for an image
    where the exit found nothing at all (every image is expected to hold something)."""

    score_range: Tuple[float, float] = (0.0, float('inf'))

    def __init__(self, low: float = 0.2, high: float = 0.6, **kwargs):
        if not 0.0 <= low < high <= 1.0:
            raise ConfigError(f'ScoreBandRouter needs 0 <= low < high <= 1, got low={low}, '
                              f'high={high}')
        super().__init__(**kwargs)
        self.low, self.high = float(low), float(high)

    def scores(self, exits) -> Tensor:
        mid, half = (self.low + self.high) / 2, (self.high - self.low) / 2
        out = []
        for res in exits.results:
            s = res.scores.detach().double()
            count = int(((s >= self.low) & (s < self.high)).sum())
            frac = float(torch.exp(-((s - mid) / half)**2).mean()) if s.numel() else 1.0
            out.append(count + 0.999 * frac)
        return torch.tensor(out, dtype=torch.float64)

    def light_edge_params(self) -> Dict:
        return dict(low=self.low, high=self.high)


@MODELS.register_module()
class EntropyRouter(BaseRouter):
    """Mean entropy of the class distributions of the exit's ``top_k`` most confident anchors,
    normalised by ln(C + 1) into [0, 1] (C classes + background; a sigmoid head's scores p_c are
    turned into a distribution over [p_1..p_C, 1 - max p] and renormalised)."""

    def __init__(self, top_k: int = 10, **kwargs):
        if int(top_k) < 1:
            raise ConfigError(f'EntropyRouter.top_k must be >= 1, got {top_k}')
        super().__init__(**kwargs)
        self.top_k = int(top_k)

    def scores(self, exits) -> Tensor:
        return top_k_entropy(exits, self.top_k)

    def light_edge_params(self) -> Dict:
        return dict(top_k=self.top_k)


@MODELS.register_module()
class EmptyExitRouter(EntropyRouter):
    """:class:`EntropyRouter` that treats "nothing found where something usually is" as the
    most uncertain case: an image on which no exit detection scores ``empty_below`` or more
    scores 1 + its entropy, above every image where the exit found something. Under blur, fog
    or low contrast an exit becomes confidently empty (its entropy falls, so entropy alone keeps
    those images on the edge); this sends them to the cloud first.

    What counts as "nothing" depends on the exit: a light exit's top scores are low everywhere.
    By default ``empty_below`` is fitted on the calibration images (with the threshold) as the
    ``empty_quantile`` quantile of their top exit scores: 0.1 calls an image empty when its best
    detection is weaker than on 90 % of the clean calibration images. Meant for streams where
    (nearly) every image holds an object of interest, as on the synthetic set and most of COCO.
    """

    score_range: Tuple[float, float] = (0.0, 2.0)

    def __init__(self, top_k: int = 10, empty_below: Optional[float] = None,
                 empty_quantile: float = 0.1, **kwargs):
        if empty_below is not None and not 0.0 < float(empty_below) <= 1.0:
            raise ConfigError(f'EmptyExitRouter.empty_below must be in (0, 1], got {empty_below}')
        if not 0.0 < float(empty_quantile) < 1.0:
            raise ConfigError(f'EmptyExitRouter.empty_quantile must be in (0, 1), got '
                              f'{empty_quantile}')
        super().__init__(top_k=top_k, **kwargs)
        if empty_below is None and not self.needs_calibration:
            raise ConfigError('EmptyExitRouter fits empty_below on the calibration images with '
                              'its threshold: give target_offload_ratio, or give empty_below '
                              'with a fixed threshold')
        self.empty_quantile = float(empty_quantile)
        self.empty_below = None if empty_below is None else float(empty_below)

    def calibration_parts(self, exits) -> Tensor:
        """(N, 2) float64: each image's entropy and best exit detection score (0 without any),
        what the score is made of (kept per calibration image instead of the exits' maps)."""
        top = [float(r.scores.max()) if len(r.scores) else 0.0 for r in exits.results]
        return torch.stack([super().scores(exits).double().cpu(),
                            torch.tensor(top, dtype=torch.float64)], 1)

    def fit_calibration(self, parts: Tensor) -> Tensor:
        """Before the threshold: ``empty_below`` from the calibration images' top scores (their
        :meth:`calibration_parts`) -> their scores."""
        self.empty_below = max(float(torch.quantile(parts[:, 1], self.empty_quantile)), 1e-6)
        return self._combine(parts)

    def _combine(self, parts: Tensor) -> Tensor:
        return parts[:, 0] + (parts[:, 1] < self.empty_below).double()

    def scores(self, exits) -> Tensor:
        if self.empty_below is None:
            raise RuntimeError('EmptyExitRouter: empty_below is not fitted yet; calibrate the '
                               'router on a calibration split (RouterCalibrationHook, or '
                               'ecc_mmdet.deployment.calibration.calibrate_router)')
        return self._combine(self.calibration_parts(exits)).to(exits.features.device)

    def light_edge_params(self) -> Dict:
        if self.empty_below is None:
            raise ConfigError('EmptyExitRouter: calibrate the router before exporting it '
                              '(empty_below is fitted on the calibration images)')
        return dict(top_k=self.top_k, empty_below=self.empty_below)


@MODELS.register_module()
class ShiftRouter(EmptyExitRouter):
    """:class:`EmptyExitRouter` that also sends first the images whose edge features lie out of
    the calibration images' distribution: an image scores 1 + its entropy when the exit found
    nothing *or* when the mean squared z-score of F_k's channel means and deviations (against
    the calibration images) exceeds their ``ood_quantile`` quantile. Under fog, low contrast or
    blur the exit can still fire weakly while the features have plainly left the training
    distribution; a cloud that is more robust than the exit should see those images.

    Everything is fitted on the (clean) calibration images with the threshold, so a share of
    about ``1 - ood_quantile`` of in-distribution images is flagged as well. ``flag_empty=False``
    leaves the empty-exit term out (entropy + the out-of-distribution term only).
    """

    #: the edge graph outputs F_k's channel statistics for it (``feature_stats``)
    needs_feature_stats = True

    def __init__(self, top_k: int = 10, ood_quantile: float = 0.9, flag_empty: bool = True,
                 **kwargs):
        if not 0.0 < float(ood_quantile) < 1.0:
            raise ConfigError(f'ShiftRouter.ood_quantile must be in (0, 1), got {ood_quantile}')
        if kwargs.get('target_offload_ratio') is None:
            raise ConfigError('ShiftRouter fits the feature statistics on the calibration images '
                              'with its threshold: give target_offload_ratio')
        super().__init__(top_k=top_k, **kwargs)
        self.ood_quantile, self.flag_empty = float(ood_quantile), bool(flag_empty)
        self.stats_mean = self.stats_std = self.ood_above = None

    def calibration_parts(self, exits) -> Tensor:
        """(N, 2 + 2C) float64: entropy, best exit score, F_k's channel means and deviations."""
        stats = self.feature_stats(exits.features).double().cpu()
        return torch.cat([super().calibration_parts(exits), stats], 1)

    @staticmethod
    def feature_stats(features: Tensor) -> Tensor:
        """(N, 2C): F_k's channel statistics, which the light edge's graph outputs for it."""
        return channel_statistics(features)

    def _distance(self, parts: Tensor) -> Tensor:
        return ((parts[:, 2:] - self.stats_mean) / self.stats_std).square().mean(1)

    def fit_calibration(self, parts: Tensor) -> Tensor:
        """The feature statistics, ``ood_above`` and ``empty_below`` from the calibration images
        -> their scores."""
        self.stats_mean = parts[:, 2:].mean(0)
        self.stats_std = parts[:, 2:].std(0).clamp_min(1e-6)
        self.ood_above = float(torch.quantile(self._distance(parts), self.ood_quantile))
        return super().fit_calibration(parts)

    def _combine(self, parts: Tensor) -> Tensor:
        flagged = self._distance(parts) > self.ood_above
        if self.flag_empty:
            flagged |= parts[:, 1] < self.empty_below
        return parts[:, 0] + flagged.double()

    def scores(self, exits) -> Tensor:
        if self.ood_above is None:
            raise RuntimeError('ShiftRouter: the feature statistics are not fitted yet; calibrate '
                               'the router on a calibration split (RouterCalibrationHook, or '
                               'ecc_mmdet.deployment.calibration.calibrate_router)')
        return super().scores(exits)

    def light_edge_params(self) -> Dict:
        if self.ood_above is None or self.empty_below is None:
            raise ConfigError('ShiftRouter: calibrate the router before exporting it (the '
                              'feature statistics, ood_above and empty_below are fitted on the '
                              'calibration images)')
        return dict(top_k=self.top_k, empty_below=self.empty_below, flag_empty=self.flag_empty,
                    stats_mean=[float(v) for v in self.stats_mean],
                    stats_std=[float(v) for v in self.stats_std], ood_above=self.ood_above)
