"""Hyper-synthesis whose decoded parameters are exact integers: the same on every machine.

A hyperprior decoder predicts each latent element's mean and scale from the decoded side
information ``z_hat``; both sides must then pick the *same* coding table. A float network does
not guarantee that: convolution sums in another order (CPU vs GPU, other BLAS, other batch size)
differ in the last bits, an index near a table boundary flips, and the range decoder silently
desynchronises (a known CompressAI pitfall across CPU/GPU).

Following Ballé et al., "Integer networks for data compression" (ICLR 2019), the network here is
evaluated in integer arithmetic at coding time:

* weights are ``round(w * 2**F)`` (clamped to ``+-w_max``), biases ``round(b * 2**(2F))``;
* activations are fixed point with ``F`` fractional bits, clamped to ``[0, a_max]`` after ReLU
  (the input ``z_hat`` to ``+-a_max``);
* every convolution's products and sums are integers below 2**53, so computing them in float64
  is exact in *any* summation order and on any IEEE-754 device; rescaling is a division by a
  power of two and a floor, also exact. On a CPU the convolutions run in float32 wherever the
  weights and the activations at hand keep every sum below 2**24, splitting the activations into
  digits where needed (:mod:`.exact_float32`): the same integers, faster.

Outputs are the means on a ``2**-F`` grid and the log-scale as an exact integer accumulator that
:meth:`GaussianConditionalEntropyModel.index_from_fixed_point` turns into a table index with
integer thresholds. Training runs the same arithmetic in float32 with straight-through rounding
(fake quantisation), so the trained network is the one that codes.
"""
from __future__ import annotations

from typing import List, NamedTuple, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .exact_float32 import digit_plan
from ..utils.derived import DerivedCache

__all__ = ['ExactHyperSynthesis', 'exact_conv3x3']


def _ste_round(x: Tensor) -> Tensor:
    return x + (torch.round(x) - x).detach()


class _IntegerConv(NamedTuple):
    weight: Tensor  # float64 integers round(clamp(w) * 2**F)
    bias: Tensor  # float64 integers round(b * 2**(2F))
    weight32: Tensor  # the same weights in float32 (exact: |w| * 2**F < 2**24)
    row_l1: float  # max over output channels of sum |weight|: bounds every partial sum


def _float32_is_ieee() -> bool:
    """False when the user let torch trade float32 precision for speed (TF32 / bf16 matmuls or
    convolutions): then float32 sums are no longer exact and the float64 path runs."""
    mk = torch.backends.mkldnn
    knobs = (getattr(torch.backends, 'fp32_precision', 'none'),
             getattr(mk, 'fp32_precision', 'none'),
             getattr(getattr(mk, 'conv', None), 'fp32_precision', 'none'))
    return torch.get_float32_matmul_precision() == 'highest' and \
        all(k in ('none', 'ieee') for k in knobs)


def exact_conv3x3(a: Tensor, layer: _IntegerConv) -> Tensor:
    """``conv2d(a, weight, bias, padding=1)`` of float64 integers, exactly. On a CPU in float32,
    on base-2**d digits of ``a`` where one pass would exceed 2**24 (the digits' results are
    recombined in float64, exact); on other devices (TF32 convolutions) in float64."""
    plan = None
    if a.device.type == 'cpu' and a.numel() and _float32_is_ieee():
        plan = digit_plan(layer.row_l1, float(a.abs().max()))
    if plan is None:
        return F.conv2d(a, layer.weight, layer.bias, padding=1)
    d, num = plan
    if num == 1:  # the common case: one float32 pass
        return F.conv2d(a.float(), layer.weight32, None, padding=1).double().add_(
            layer.bias.view(1, -1, 1, 1))
    base, rest, digits = 2.0**d, a, []
    for _ in range(num - 1):  # low digits in [0, base), the last one signed
        high = torch.floor(rest / base)
        digits.append(rest - high * base)
        rest = high
    digits.append(rest)
    out = F.conv2d(torch.cat(digits).float(), layer.weight32, None, padding=1).double()
    parts = out.split(a.shape[0])
    acc = parts[-1]
    for part in reversed(parts[:-1]):  # Horner: every intermediate is an exact integer
        acc = acc * base + part
    return acc + layer.bias.view(1, -1, 1, 1)


class ExactHyperSynthesis(nn.Module):
    """z_hat (N, Cz, h, w) -> means and log-scales of a (N, C, h * 2**up, w * 2**up) latent.

    Layers: ``up_steps`` x (nearest 2x upsampling, 3x3 conv, ReLU), then a 3x3 conv to ``2 * C``
    (means, log-scales) or ``C`` (log-scales only; means zero). With ``upsample=False`` the
    hidden layers keep the input's size: the same exact network at the latent's resolution
    (the channel-context model's slice transforms).

    Args:
        in_channels: channels of z.
        hidden_channels: width of the hidden convs.
        out_channels: latent channels C.
        up_steps: number of hidden layers, each after a 2x upsampling (the hyper-encoder's
            downsampling, 1 or 2).
        upsample: False keeps every layer at the input's size.
        predict_means: mean-scale (True) or scale-only (False) hyperprior.
        frac_bits: fractional bits F of weights and activations.
        act_max: clamp of activations (and of |z_hat|), bounding the integer sums.
        weight_max: clamp of |weights|.
        mean_max: clamp of |means| (keeps them exact in float32 on the 2**-F grid).
    """

    def __init__(self, in_channels: int, hidden_channels: int, out_channels: int,
                 up_steps: int = 1, predict_means: bool = True, frac_bits: int = 8,
                 act_max: float = 255.0, weight_max: float = 64.0, mean_max: float = 1024.0,
                 upsample: bool = True):
        super().__init__()
        if up_steps not in (1, 2):
            raise ValueError(f'up_steps must be 1 or 2, got {up_steps!r}')
        if not 4 <= frac_bits <= 12:
            raise ValueError(f'frac_bits must be in 4..12, got {frac_bits!r}')
        self.out_channels = int(out_channels)
        self.predict_means = bool(predict_means)
        self.up_steps = int(up_steps)
        self.upsample = bool(upsample)
        self.frac_bits = int(frac_bits)
        self.act_max = float(act_max)
        self.weight_max = float(weight_max)
        self.mean_max = float(mean_max)
        if mean_max * 2**frac_bits >= 2**24:
            raise ValueError('ExactHyperSynthesis: mean_max * 2**frac_bits must be < 2**24')
        if not float(act_max * 2**frac_bits).is_integer() or act_max <= 0:
            raise ValueError('ExactHyperSynthesis: act_max * 2**frac_bits must be a positive '
                             'integer (the clamped activations must stay integers)')
        widths = [in_channels] + [hidden_channels] * up_steps
        self.convs = nn.ModuleList(nn.Conv2d(widths[i], widths[i + 1], 3, padding=1)
                                   for i in range(up_steps))
        self.out = nn.Conv2d(hidden_channels, out_channels * (2 if predict_means else 1), 3,
                             padding=1)
        # the largest integer sum: (3*3*Cin) * a_max*2**F * w_max*2**F + bias, must be < 2**53;
        # the bias is clamped to the products' bound (integer_layers), hence the factor 2
        worst = 9 * max(widths + [hidden_channels]) * (act_max * 2**frac_bits) * \
            (weight_max * 2**frac_bits) * 2
        if worst >= 2**52:
            raise ValueError('ExactHyperSynthesis: act_max, weight_max, frac_bits and the widths '
                             'allow sums beyond 2**52; float64 would no longer be exact')
        with torch.no_grad():  # start at log-scale ~ log(1)... small outputs
            self.out.weight.mul_(0.1)
            self.out.bias.zero_()
        self._integer_cache = DerivedCache()

    def _layers(self):
        return [*self.convs, self.out]

    def _split(self, acc: Tensor) -> Tuple[Tensor, Tensor]:
        if self.predict_means:
            return acc[:, :self.out_channels], acc[:, self.out_channels:]
        return torch.zeros_like(acc), acc

    # ----------------------------------------------------------------- training
    def forward(self, z_hat: Tensor) -> Tuple[Tensor, Tensor]:
        """Fake-quantised float path -> (means, log_scales), differentiable."""
        s = 2.0**self.frac_bits
        a = _ste_round(torch.clamp(z_hat, -self.act_max, self.act_max) * s) / s
        for i, conv in enumerate(self._layers()):
            w = _ste_round(torch.clamp(conv.weight, -self.weight_max, self.weight_max) * s) / s
            b = _ste_round(conv.bias * s * s) / (s * s)
            if self.upsample and i < self.up_steps:
                a = F.interpolate(a, scale_factor=2, mode='nearest')
            acc = F.conv2d(a, w, b, padding=1)
            if conv is self.out:
                means, log_scales = self._split(acc)
                means = torch.clamp(means, -self.mean_max, self.mean_max)
                return _ste_round(means * s) / s, log_scales
            a = _ste_round(torch.clamp(acc, 0, self.act_max) * s) / s
        raise AssertionError('unreachable')

    # ------------------------------------------------------------------- coding
    @torch.no_grad()
    def integer_layers(self) -> List[Tuple[Tensor, Tensor]]:
        """(weight, bias) of every conv as the integer path uses them, float64 integers:
        ``round(clamp(w) * 2**F)`` and ``round(b * 2**(2F))`` (what the light edge exports)."""
        return [(layer.weight, layer.bias) for layer in self._integer_convs()]

    def _integer_convs(self) -> List[_IntegerConv]:
        """The integer layers, derived once per weight values (both coding sides run the
        network for every image)."""
        params = [p for conv in self._layers() for p in (conv.weight, conv.bias)]
        return self._integer_cache.get(params, self._derive_integer_convs)

    @torch.no_grad()
    def _derive_integer_convs(self) -> List[_IntegerConv]:
        s = 2.0**self.frac_bits
        out = []
        for conv in self._layers():
            # |bias| up to the largest sum of the products, so the total stays below 2**53
            b_max = 9 * conv.in_channels * self.act_max * self.weight_max
            w = torch.round(torch.clamp(conv.weight.to(torch.float64), -self.weight_max,
                                        self.weight_max) * s)
            b = torch.round(torch.clamp(conv.bias.to(torch.float64), -b_max, b_max) * s * s)
            out.append(_IntegerConv(w, b, w.float(),
                                    float(w.abs().flatten(1).sum(1).max()) if w.numel() else 0.))
        return out

    @torch.no_grad()
    def exact(self, z_hat: Tensor) -> Tuple[Tensor, Tensor]:
        """Integer path -> (means float32 on the 2**-F grid, log-scale accumulators as float64
        integers at scale 2**(2F)). Bit-identical on any device and for any batch split."""
        s = 2.0**self.frac_bits
        a = torch.round(torch.clamp(z_hat.to(torch.float64), -self.act_max, self.act_max) * s)
        for i, (conv, layer) in enumerate(zip(self._layers(), self._integer_convs())):
            if self.upsample and i < self.up_steps:
                a = F.interpolate(a, scale_factor=2, mode='nearest')
            acc = exact_conv3x3(a, layer)  # integers at scale 2**(2F), exact
            if conv is self.out:
                means, log_acc = self._split(acc)
                # exact: a dyadic rational with |numerator| < 2**24 (float32-exact)
                means = torch.clamp(torch.floor(means / s + 0.5) / s, -self.mean_max,
                                    self.mean_max)
                return means.float(), log_acc
            a = acc.div_(s).add_(0.5).floor_().clamp_(0, self.act_max * s)  # in place: fewer
            # allocations on the small maps the coding runs on
        raise AssertionError('unreachable')

    def extra_repr(self) -> str:
        return (f'up_steps={self.up_steps}, upsample={self.upsample}, '
                f'predict_means={self.predict_means}, frac_bits={self.frac_bits}')
