"""Which images the edge uploads for adaptation (CEMA's selection, and the controls).

The statistic is the edge exit's uncertainty about the image: the mean class entropy of its
top-k anchors in [0, 1] (:func:`~ecc_mmdet.models.routers.features.top_k_entropy`, the same as
``EntropyRouter``'s score). CEMA drops two kinds of samples:

* unreliable ones, E >= E_max(t): their pseudo labels would be wrong. With ``dynamic=True`` the
  bound follows the stream: E_max(t) = e_max0 * lam * (running mean of E) / (mean of E over the
  first ``warmup`` images), so when the whole stream gets harder the bound rises with it instead
  of starving the cloud; during the warm-up E_max = e_max0 * lam;
* low-informative ones, E <= e_min: the edge is already sure, there is little to learn.

CEMA's bounds are absolute (0.4 ln C on ImageNet). A detector's top-k entropy lives in a
narrower, model-dependent range (the synthetic exit: 0.47..0.81 between the 10th and 90th
percentile under blur, 0.82..0.87 under noise), so ``band=(q_lo, q_hi)`` instead sets e_min and
e_max0 to quantiles of the warm-up images' entropies (of the images seen so far while warming up):
the same selection rule, with bounds that mean the same on any model. In this mode the dynamic
rule moves both bounds by (running mean - warm-up mean) instead of scaling the upper one: in so
narrow a range a 2 % drop of the mean, as adaptation brings, would otherwise push E_max below
e_min and stop all uploads.

The band's width q_hi - q_lo is an upload budget, and the warm-up quantiles moved by the mean
drift do not hold it when the shape of the distribution changes: a distribution that narrows (an
exit becoming confidently empty, as under fog and contrast) puts more images into a band of
fixed width (53 % instead of 30 % on the narrow segment of the test's synthetic stream), one
that moves away from the running mean fewer. Band mode therefore holds it by
default (``budget``, :class:`UploadBudget`): the bounds are the band's quantiles of the last
``window`` images instead (they follow the shift and the spread), and a feedback term on the
uploads owed, ratio x images - uploads, widens or narrows the band until the running ratio is
back on target (``budget=False``: the rule above).

A selector sees a batch's entropies and image keys and returns which to upload; it keeps only
running statistics (``reset()`` forgets them), so the decision for an image never depends on
anything after it in the stream.
"""
import hashlib
from abc import ABCMeta, abstractmethod
from collections import deque
from typing import Dict, Optional, Sequence, Tuple, Union

import torch
from mmdet.registry import TASK_UTILS
from torch import Tensor

from ..errors import ConfigError

__all__ = ['UploadSelector', 'EntropySelector', 'UploadAll', 'UploadBudget', 'UploadNone',
           'RandomUpload']


class UploadSelector(metaclass=ABCMeta):
    """Base: ``select(entropy (N,), keys) -> (N,) bool`` (True = upload)."""

    @abstractmethod
    def select(self, entropy: Tensor, keys: Sequence) -> Tensor:
        """Decide for one edge batch, in stream order."""

    def reset(self) -> None:
        """Forget the stream's running statistics (a new stream starts)."""

    def state(self) -> Dict[str, float]:
        """Running figures worth logging (thresholds)."""
        return {}


class UploadBudget:
    """Holds the upload ratio of a quantile band ``(q_lo, q_hi)`` at its width q_hi - q_lo.

    Each image is compared with the band's quantiles of the last ``window`` entropies (itself
    included), so the bounds follow both the level and the spread of the stream. The levels are
    moved by ``d = gain * owed / window`` (clipped so they stay in [0, 1]), owed = ratio x images
    seen - uploads: behind budget the band widens, ahead of it the band narrows, and owed, the
    integral of the error, is repaid over about ``window / gain`` images. The band keeps its place:
    it grows or shrinks on each side in proportion to the room outside it (q_lo below, 1 - q_hi
    above).
    """

    def __init__(self, band: Tuple[float, float], window: int = 64, gain: float = 1.0):
        if int(window) < 2 or not float(gain) > 0:
            raise ConfigError(f'EntropySelector.budget needs window >= 2 images and gain > 0, '
                              f'got window={window}, gain={gain}')
        self.band, self.ratio = band, band[1] - band[0]
        self.window, self.gain = int(window), float(gain)
        room = band[0] + 1.0 - band[1]
        self.share = band[0] / room if room > 0 else 0.5  # of a change taken by the lower level
        self.reset()

    def reset(self) -> None:
        self.recent = deque(maxlen=self.window)
        self.seen, self.uploads = 0, 0
        self.bounds = (0.0, 0.0)

    def levels(self) -> Tuple[float, float]:
        """The band's quantile levels for the next image."""
        owed = self.ratio * self.seen - self.uploads
        d = min(max(self.gain * owed / self.window, -self.ratio), 1.0 - self.ratio)
        return (min(max(self.band[0] - d * self.share, 0.0), 1.0),
                min(max(self.band[1] + d * (1.0 - self.share), 0.0), 1.0))

    def decide(self, v: float) -> bool:
        """Upload the image of entropy ``v``?"""
        self.recent.append(v)
        lo, hi = torch.quantile(torch.tensor(list(self.recent), dtype=torch.float64),
                                torch.tensor(self.levels(), dtype=torch.float64)).tolist()
        self.bounds = (lo, hi)
        up = lo < v < hi
        self.seen += 1
        self.uploads += int(up)
        return up


@TASK_UTILS.register_module()
class EntropySelector(UploadSelector):
    """CEMA's entropy-band selection with the dynamic upper bound (see the module docstring).

    Args:
        e_max0: upper bound on the normalised entropy (CEMA: 0.4 ln C, i.e. 0.4 normalised).
        e_min: lower bound (0 disables it).
        dynamic: let the bound(s) follow the running mean entropy.
        lam: scale of the upper bound (CEMA's lambda).
        warmup: images whose mean entropy is the reference of the dynamic bound.
        band: (q_lo, q_hi) quantiles of the warm-up entropies that replace e_min and e_max0
            (``lam`` still scales the upper one).
        budget: band mode only: hold the upload ratio at q_hi - q_lo (:class:`UploadBudget`;
            True: its defaults, a dict: its ``window`` and ``gain``, False: the warm-up
            quantiles moved by the drift). It replaces ``warmup`` and the drift rule, so it
            needs ``dynamic=True`` and ``lam=1``. Default: on in band mode.
    """

    def __init__(self, e_max0: float = 0.4, e_min: float = 0.0, dynamic: bool = True,
                 lam: float = 1.0, warmup: int = 32, band=None,
                 budget: Union[bool, dict, None] = True):
        if band is not None:
            if not (isinstance(band, (list, tuple)) and len(band) == 2
                    and 0.0 <= float(band[0]) < float(band[1]) <= 1.0):
                raise ConfigError(f'EntropySelector.band must be (q_lo, q_hi) with 0 <= q_lo < '
                                  f'q_hi <= 1, got {band!r}')
            band = (float(band[0]), float(band[1]))
        if float(lam) <= 0 or (band is None and
                               not 0.0 <= float(e_min) < float(e_max0) * float(lam) <= 1.0):
            raise ConfigError('EntropySelector needs 0 <= e_min < e_max0 * lam <= 1 and lam > 0 '
                              f'(normalised entropies), got e_min={e_min}, e_max0={e_max0}, '
                              f'lam={lam}')
        if int(warmup) < 1:
            raise ConfigError(f'EntropySelector.warmup must be >= 1 image, got {warmup}')
        self.lam, self.dynamic, self.band = float(lam), bool(dynamic), band
        self.warmup = int(warmup)
        self._given = (float(e_max0), float(e_min))
        self.budget = self._build_budget(budget)
        self.reset()

    def _build_budget(self, budget) -> Optional[UploadBudget]:
        if budget is None or budget is False or (budget is True and self.band is None):
            return None  # absolute bounds have no target ratio: on by default in band mode only
        if self.band is None:
            raise ConfigError('EntropySelector.budget holds the ratio of a quantile band: give '
                              'band=(q_lo, q_hi) (its target is q_hi - q_lo), or budget=False')
        if not self.dynamic or self.lam != 1.0:
            raise ConfigError(
                f'EntropySelector.budget moves the band\'s bounds itself; dynamic={self.dynamic}'
                f' and lam={self.lam} ask for other ones: use dynamic=True and lam=1, or '
                'budget=False (the warm-up quantiles moved by the drift)')
        kw = {} if budget is True else budget
        if not isinstance(kw, dict) or set(kw) - {'window', 'gain'}:
            raise ConfigError(f'EntropySelector.budget must be True, False or dict(window=..., '
                              f'gain=...), got {budget!r}')
        return UploadBudget(self.band, **kw)

    def reset(self) -> None:
        self.count, self.total = 0, 0.0
        self.warm_total, self.warm_count = 0.0, 0
        self.warm_values = []
        self.e_max0, self.e_min = self._given
        if self.budget is not None:
            self.budget.reset()

    def _drift(self) -> float:
        """Running mean entropy against the warm-up's: a ratio (a difference in band mode)."""
        if not self.dynamic or self.warm_count < self.warmup or self.count == 0:
            return 0.0 if self.band is not None else 1.0
        run, warm = self.total / self.count, self.warm_total / self.warm_count
        if self.band is not None:
            return run - warm
        return run / warm if warm > 0 else 1.0

    @property
    def e_max(self) -> float:
        """The current upper bound (the last image's, under a budget)."""
        if self.budget is not None:
            return self.budget.bounds[1]
        base = self.e_max0 * self.lam
        return base + self._drift() if self.band is not None else base * self._drift()

    @property
    def e_low(self) -> float:
        """The current lower bound (it moves only in band mode)."""
        if self.budget is not None:
            return self.budget.bounds[0]
        return self.e_min + self._drift() if self.band is not None else self.e_min

    def _decide(self, v: float) -> bool:
        """The band rule without a budget: warm-up quantiles (or given bounds), drift."""
        if self.warm_count < self.warmup:
            self.warm_count += 1
            self.warm_total += v
            if self.band is not None:
                self.warm_values.append(v)
                qs = torch.quantile(torch.tensor(self.warm_values, dtype=torch.float64),
                                    torch.tensor(self.band, dtype=torch.float64)).tolist()
                self.e_min, self.e_max0 = qs[0], qs[1]
        return self.e_low < v < self.e_max

    def select(self, entropy: Tensor, keys: Sequence) -> Tensor:
        e = entropy.detach().double().cpu()
        out = torch.zeros(len(e), dtype=torch.bool)
        for i, v in enumerate(e.tolist()):  # one image at a time: the bounds move as it streams
            self.count += 1
            self.total += v
            out[i] = self.budget.decide(v) if self.budget is not None else self._decide(v)
        return out

    def state(self) -> Dict[str, float]:
        out = dict(e_max=self.e_max, e_min=self.e_low,
                   running_entropy=self.total / max(self.count, 1))
        if self.budget is not None:
            out.update(upload_ratio=self.budget.uploads / max(self.budget.seen, 1),
                       target_ratio=self.budget.ratio)
        return out


@TASK_UTILS.register_module()
class UploadAll(UploadSelector):
    """Upload every image (the most the cloud can learn from; the most bytes)."""

    def select(self, entropy: Tensor, keys: Sequence) -> Tensor:
        return torch.ones(len(entropy), dtype=torch.bool)


@TASK_UTILS.register_module()
class UploadNone(UploadSelector):
    """Upload nothing (no adaptation, or edge-only adaptation)."""

    def select(self, entropy: Tensor, keys: Sequence) -> Tensor:
        return torch.zeros(len(entropy), dtype=torch.bool)


@TASK_UTILS.register_module()
class RandomUpload(UploadSelector):
    """Upload each image with probability ``ratio``, a pure function of ``seed`` and the image key
    (the control at another method's budget)."""

    def __init__(self, ratio: float, seed: int = 0):
        if not 0.0 <= float(ratio) <= 1.0:
            raise ConfigError(f'RandomUpload.ratio must be in [0, 1], got {ratio}')
        self.ratio, self.seed = float(ratio), int(seed)

    def select(self, entropy: Tensor, keys: Sequence) -> Tensor:
        u = [int.from_bytes(hashlib.sha256(f'{self.seed}:{k}'.encode()).digest()[:8], 'little')
             / 2.0**64 for k in keys]
        return torch.tensor([x < self.ratio for x in u], dtype=torch.bool)
