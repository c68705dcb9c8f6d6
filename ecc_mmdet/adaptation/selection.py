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

A selector sees a batch's entropies and image keys and returns which to upload; it keeps only
running statistics (``reset()`` forgets them), so the decision for an image never depends on
anything after it in the stream.
"""
import hashlib
from abc import ABCMeta, abstractmethod
from typing import Dict, Sequence

import torch
from mmdet.registry import TASK_UTILS
from torch import Tensor

from ..errors import ConfigError

__all__ = ['UploadSelector', 'EntropySelector', 'UploadAll', 'UploadNone', 'RandomUpload']


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
    """

    def __init__(self, e_max0: float = 0.4, e_min: float = 0.0, dynamic: bool = True,
                 lam: float = 1.0, warmup: int = 32, band=None):
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
        self.reset()

    def reset(self) -> None:
        self.count, self.total = 0, 0.0
        self.warm_total, self.warm_count = 0.0, 0
        self.warm_values = []
        self.e_max0, self.e_min = self._given

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
        """The current upper bound."""
        base = self.e_max0 * self.lam
        return base + self._drift() if self.band is not None else base * self._drift()

    @property
    def e_low(self) -> float:
        """The current lower bound (it moves only in band mode)."""
        return self.e_min + self._drift() if self.band is not None else self.e_min

    def select(self, entropy: Tensor, keys: Sequence) -> Tensor:
        e = entropy.detach().double().cpu()
        out = torch.zeros(len(e), dtype=torch.bool)
        for i, v in enumerate(e.tolist()):  # one image at a time: the bounds move as it streams
            self.count += 1
            self.total += v
            if self.warm_count < self.warmup:
                self.warm_count += 1
                self.warm_total += v
                if self.band is not None:
                    self.warm_values.append(v)
                    qs = torch.quantile(torch.tensor(self.warm_values, dtype=torch.float64),
                                        torch.tensor(self.band, dtype=torch.float64)).tolist()
                    self.e_min, self.e_max0 = qs[0], qs[1]
            out[i] = self.e_low < v < self.e_max
        return out

    def state(self) -> Dict[str, float]:
        return dict(e_max=self.e_max, e_min=self.e_low,
                    running_entropy=self.total / max(self.count, 1))


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
