"""One learned bottleneck, several rate points chosen at run time (gain units).

An edge device whose bandwidth changes should not swap weights to change its bitrate. Following
the gain-unit idea (Cui et al., CVPR 2021), the latent of the shared encoder is scaled per
channel by a learned gain vector of the selected rate point before quantisation, and the decoder
input by a learned inverse gain: a small gain quantises coarsely (few bits), a large one finely.
Each rate point has its own factorized entropy model (a few hundred parameters per channel), so
its coding tables fit its own latent statistics. Training samples a rate point per iteration and
weights the rate term with that point's ``beta``.

Three necks share the mechanism (:class:`RatePoints`): :class:`VariableRateBottleneckNeck` (a
factorized entropy model per point), :class:`VariableRateHyperpriorNeck` (one hyperprior for
all points) and :class:`VariableRateChannelContextNeck` (the same with the channel context). Payload parts of one image are those of the underlying bottleneck; the rate point
travels in the payload header (``header_rate_point``). A payload whose rate point this model does
not have is refused (``RatePointError``, a ``CorruptedBitstreamError``) before any decoding.
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence

import torch
from mmdet.registry import MODELS
from torch import Tensor, nn

from ecc_edge.codecs.bitstream import CodecId, RatePointError
from ...entropy_models import FactorizedEntropyModel
from .channel_context import ChannelContextHyperpriorNeck
from .entropy_bottleneck import EntropyBottleneckNeck
from .hyperprior import HyperpriorBottleneckNeck

__all__ = ['RatePoints', 'VariableRateBottleneckNeck', 'VariableRateHyperpriorNeck',
           'VariableRateChannelContextNeck']


class _Gains(nn.Module):
    """Per-rate-point, per-channel positive gains, stored as logs. A module (not bare
    parameters on the neck) so the edge (gains) and the cloud (inverse gains) can be frozen
    separately."""

    def __init__(self, num_rates: int, channels: int, log_init: Sequence[float]):
        super().__init__()
        init = torch.tensor(list(log_init), dtype=torch.float32).view(num_rates, 1)
        self.log_gain = nn.Parameter(init.repeat(1, channels))

    def forward(self, y: Tensor, rate_point: int) -> Tensor:
        return y * self.log_gain[rate_point].exp().view(1, -1, *([1] * (y.dim() - 2)))


class RatePoints:
    """Mixin: R rate points of one learned bottleneck, chosen at run time by per-channel gains
    on the latent (and inverse gains on the decoder input). It fills the coding-path hooks of
    :class:`EntropyBottleneckNeck` (``_rate_point``, ``_point_from_header``, ``_latent``,
    ``_decoder_input``, ``_rate_weight_of``), so any bottleneck built on them becomes variable
    rate by listing this mixin first.

    Args (besides the bottleneck's):
        num_rates: rate points R (2..16); point 0 is the lowest rate, R-1 the highest.
        betas: rate-term weight of each point (lowest rate first, decreasing); default
            ``beta * 2**(R - 1 - r)``: ``beta`` at the highest rate, doubling per point down.
        gain_step: initial ratio between the gains of neighbouring points (default 2: each
            point down quantises twice as coarsely at the start of training).
        rate_point: the point ``compress``/eval ``forward`` use (default R-1); change it at run
            time with :meth:`set_rate_point`. The decoder reads the point from the payload.
    """

    def __init__(self, in_channels: int, num_rates: int = 4,
                 betas: Optional[Sequence[float]] = None, gain_step: float = 2.0,
                 rate_point: Optional[int] = None, **kwargs):
        super().__init__(in_channels, **kwargs)
        name = type(self).__name__
        if isinstance(num_rates, bool) or not isinstance(num_rates, int) \
                or not 2 <= num_rates <= 16:
            raise ValueError(f'{name}: num_rates must be an int in 2..16, got {num_rates!r}')
        if betas is None:
            betas = [self.beta * 2.0**(num_rates - 1 - r) for r in range(num_rates)]
        betas = [float(b) for b in betas]
        if len(betas) != num_rates or any(not b > 0 for b in betas):
            raise ValueError(f'{name}: betas must be {num_rates} positive '
                             f'numbers (lowest rate first), got {betas!r}')
        if not gain_step > 1:
            raise ValueError(f'{name}: gain_step must be > 1, got {gain_step}')
        self.num_rates = num_rates
        self.betas = betas
        logs = [-(num_rates - 1 - r) * math.log(gain_step) for r in range(num_rates)]
        self.gain = _Gains(num_rates, self.latent_channels, logs)
        self.inv_gain = _Gains(num_rates, self.latent_channels, [-v for v in logs])
        self.rate_point = num_rates - 1
        self._last_rate_point = self.rate_point
        self.set_rate_point(num_rates - 1 if rate_point is None else rate_point)

    def set_rate_point(self, rate_point: int) -> None:
        """Select the rate point of the edge (``compress``) and of eval ``forward``."""
        if isinstance(rate_point, bool) or not isinstance(rate_point, int) \
                or not 0 <= rate_point < self.num_rates:
            raise ValueError(f'{type(self).__name__}: rate_point must be an int in '
                             f'0..{self.num_rates - 1}, got {rate_point!r}')
        self.rate_point = rate_point

    @property
    def rate_weight(self) -> float:
        return self.betas[self._last_rate_point]

    @property
    def header_rate_point(self) -> int:
        return self.rate_point

    def _rate_point(self, training: bool) -> tuple:
        """Training: a random point per call; otherwise the selected one, as deployed."""
        r = int(torch.randint(self.num_rates, ())) if training else self.rate_point
        self._last_rate_point = r
        return (r, )

    def _point_from_header(self, rate_point: Optional[int]) -> tuple:
        if rate_point is None or not 0 <= int(rate_point) < self.num_rates:
            raise RatePointError(
                f'{type(self).__name__}: the payload was coded at rate point {rate_point}, '
                f'this model has rate points 0..{self.num_rates - 1}')
        return (int(rate_point), )

    def _latent(self, x: Tensor, r: int) -> Tensor:
        return self.gain(self.g_a(x), r)

    def _decoder_input(self, y_hat: Tensor, r: int) -> Tensor:
        return self.inv_gain(y_hat, r)

    def _rate_weight_of(self, r: int) -> float:
        return self.betas[r]

    def edge_modules(self) -> List[nn.Module]:
        return [*super().edge_modules(), self.gain]

    def cloud_modules(self) -> List[nn.Module]:
        return [*super().cloud_modules(), self.inv_gain]

    def extra_repr(self) -> str:
        return (super().extra_repr() + f', num_rates={self.num_rates}, '
                f'rate_point={self.rate_point}, betas={self.betas}')


@MODELS.register_module()
class VariableRateBottleneckNeck(RatePoints, EntropyBottleneckNeck):
    """Encoder + per-rate gains + per-rate factorized entropy models + decoder (see
    :class:`RatePoints` for the arguments)."""

    codec_id = CodecId.VARIABLE_RATE_BOTTLENECK
    codec_name = 'variable_rate_bottleneck'

    def __init__(self, in_channels: int, **kwargs):
        super().__init__(in_channels, **kwargs)
        del self.entropy_model  # one per rate point instead
        self.rate_entropy_models = nn.ModuleList(
            FactorizedEntropyModel(self.latent_channels, **self.entropy_model_cfg)
            for _ in range(self.num_rates))

    def _coder(self, r: int) -> FactorizedEntropyModel:
        return self.rate_entropy_models[r]

    def edge_modules(self) -> List[nn.Module]:
        return [self.g_a, self.gain, *self.rate_entropy_models]

    def coding_models(self) -> List[nn.Module]:
        return list(self.rate_entropy_models)

    def cloud_modules(self) -> List[nn.Module]:
        return [*self.rate_entropy_models, self.inv_gain, self.g_s]


@MODELS.register_module()
class VariableRateHyperpriorNeck(RatePoints, HyperpriorBottleneckNeck):
    """One hyperprior bottleneck, several rate points (gains on the latent).

    The factorized variable-rate neck needs one entropy model per point, each fitted on a
    fraction of the training updates. Here the Gaussian conditional has no learned density:
    the hyperprior predicts each element's scale from the scaled latent itself, so every point
    shares all coding machinery and only the gains differ. Arguments: :class:`RatePoints`' and
    :class:`HyperpriorBottleneckNeck`'s.
    """

    codec_id = CodecId.VARIABLE_RATE_HYPERPRIOR
    codec_name = 'variable_rate_hyperprior'


@MODELS.register_module()
class VariableRateChannelContextNeck(RatePoints, ChannelContextHyperpriorNeck):
    """The channel-context hyperprior with rate points: the gains scale y before it is cut
    into slices, so the slices, their exact parameters and the one coded stream are the
    context model's at every point. Arguments: :class:`RatePoints`' and
    :class:`ChannelContextHyperpriorNeck`'s."""

    codec_id = CodecId.VARIABLE_RATE_CHANNEL_CONTEXT
    codec_name = 'variable_rate_channel_context'
