"""The mean-scale hyperprior with a channel-conditional context model (Minnen & Singh 2020).

The hyperprior gives every latent element a mean and a scale from z alone. Here y's channels are
cut into ``num_slices`` equal slices coded one after the other, and slice ``i``'s parameters
are the hyper-synthesis' plus a correction predicted from z's parameters *and the decoded slices
before it*: what one channel group showed about a position sharpens the next group's estimate.

Each slice's correction is an :class:`ExactHyperSynthesis` at the latent's resolution
(``upsample=False``): integer weights, fixed-point activations, sums below 2**53 in float64, so
the means and scale indexes are bit-identical on the edge and the cloud, as for h_s. Its inputs
are h_s's means, h_s's log-scales and the previous slices' ``y_hat``, all on the 2**-F grid
(``y_hat = symbol + mean`` is computed in float64 from the integer symbol on both sides). Its
output convolution starts at zero, so an untrained context model *is* the hyperprior.

Payload: codec params and latent shape as the hyperprior's; the body is z's bytes, then ONE
range-coded stream with one section per slice (:func:`~ecc_edge.codecs.range_coding.
encode_indexed_sections`), so slices cost no lengths and no extra flush. The slice count is the
model's (its fingerprint covers it); the payload does not state it, so it cannot be forged.
The decoder bounds every slice's symbols before computing the next slice's parameters, and
re-encodes the whole stream at the end.

The light edge runs the same coding in numpy (``ecc_edge.codecs.hyperprior.ChannelContext``,
the slice transforms' integer layers exported in the sidecar): the same bytes.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from mmdet.registry import MODELS
from torch import Tensor, nn

from ecc_edge.codecs.bitstream import CodecId
from ...entropy_models import ExactHyperSynthesis
from ...entropy_models.hyper_synthesis import _ste_round
from .hyperprior import HyperpriorBottleneckNeck

__all__ = ['ChannelContextHyperpriorNeck']


@MODELS.register_module()
class ChannelContextHyperpriorNeck(HyperpriorBottleneckNeck):
    """Hyperprior bottleneck whose y is coded in channel slices, each conditioned on the last.

    Args (besides :class:`HyperpriorBottleneckNeck`'s):
        num_slices: channel slices of y (must divide ``latent_channels``), 2..16.
        context_channels: width of each slice transform's hidden layers.
        context_layers: hidden layers of each slice transform (1 or 2).
    """

    codec_id = CodecId.CHANNEL_CONTEXT_HYPERPRIOR
    codec_name = 'channel_context_hyperprior'

    def __init__(self, in_channels: int, num_slices: int = 4, context_channels: int = 32,
                 context_layers: int = 2, **kwargs):
        super().__init__(in_channels, **kwargs)
        name, c = type(self).__name__, self.latent_channels
        if isinstance(num_slices, bool) or not isinstance(num_slices, int) \
                or not 2 <= num_slices <= 16 or c % num_slices:
            raise ValueError(f'{name}: num_slices must be an int in 2..16 that divides '
                             f'latent_channels={c}, got {num_slices!r}')
        if isinstance(context_channels, bool) or not isinstance(context_channels, int) \
                or context_channels < 1:
            raise ValueError(f'{name}: context_channels must be a positive int, '
                             f'got {context_channels!r}')
        if context_layers not in (1, 2) or isinstance(context_layers, bool):
            raise ValueError(f'{name}: context_layers must be 1 or 2, got {context_layers!r}')
        self.num_slices = num_slices
        self.slice_channels = c // num_slices
        hs = self.h_s
        numeric = dict(frac_bits=hs.frac_bits, act_max=hs.act_max, weight_max=hs.weight_max,
                       mean_max=hs.mean_max, predict_means=hs.predict_means)
        self.slice_transforms = nn.ModuleList(
            ExactHyperSynthesis(2 * c + i * self.slice_channels, context_channels,
                                self.slice_channels, up_steps=context_layers, upsample=False,
                                **numeric) for i in range(num_slices))
        with torch.no_grad():  # start as the plain hyperprior
            for t in self.slice_transforms:
                t.out.weight.zero_()
                t.out.bias.zero_()

    def _slice(self, i: int) -> slice:
        return slice(i * self.slice_channels, (i + 1) * self.slice_channels)

    # ------------------------------------------------------------------ training
    def _train_latent(self, y: Tensor, z_hat: Tensor) -> Tuple[Tensor, Tensor]:
        """Slices in order; each transform sees the previous slices rounded (straight-through)
        around their means, as the decoder will see them."""
        means, log_scales = self._hyper_train(z_hat, y.shape[-2:])
        g, s = self.gaussian, 2.0**self.h_s.frac_bits
        context, y_hats, liks = [means, log_scales], [], []
        for i, t in enumerate(self.slice_transforms):
            d_mean, d_log = t(torch.cat(context, 1))
            sl = self._slice(i)
            m = torch.clamp(means[:, sl] + d_mean, -t.mean_max, t.mean_max)
            m = _ste_round(m * s) / s
            y_i = y[:, sl]
            y_hat, y_tilde = g.quantize(y_i, m, True)
            liks.append(g.likelihood(y_tilde, m, self._scales(log_scales[:, sl] + d_log)))
            y_hats.append(y_hat)
            context.append(y_i + (torch.round(y_i - m) + m - y_i).detach())
        return torch.cat(y_hats, 1), torch.cat(liks, 1)

    # -------------------------------------------------------------------- coding
    def _hyper_inputs(self, z_hat: Tensor, size) -> Tuple[Tensor, Tensor, Tensor]:
        """h_s's exact output -> (means float64, log accumulators, the slice transforms' common
        inputs: means and log-scales on the 2**-F grid), computed once per image."""
        means, log_acc = self._hyper_exact(z_hat, size)
        means = means.double()
        # log_acc / 2**(2F) is exact (a power of two); the transforms round their inputs half
        # to even, as np.round on the light edge
        return means, log_acc, torch.cat([means, log_acc / 2.0**(2 * self.h_s.frac_bits)], 1)

    def _slice_params(self, i: int, hyper, context: List[Tensor]) -> Tuple[Tensor, Tensor]:
        """Slice ``i``'s exact (means float64 on the 2**-F grid, scale indexes) from
        :meth:`_hyper_inputs` and the float64 y_hat of slices < i."""
        means, log_acc, common = hyper
        t = self.slice_transforms[i]
        d_mean, d_log = t.exact(torch.cat([common, *context], 1) if context else common)
        sl = self._slice(i)
        m = torch.clamp(means[:, sl] + d_mean.double(), -t.mean_max, t.mean_max)
        idx = self.gaussian.index_from_fixed_point(log_acc[:, sl] + d_log,
                                                   2 * self.h_s.frac_bits)
        return m, idx

    def _exact_code(self, y: Tensor, z_hat: Tensor) -> Tuple[Tensor, Tensor]:
        hyper = self._hyper_inputs(z_hat, y.shape[-2:])
        context, means, idx = [], [], []
        for i in range(self.num_slices):
            m, k = self._slice_params(i, hyper, context)
            # the encoder's symbol, computed as Gaussian.compress computes it
            sym = torch.round(y[:, self._slice(i)] - m.to(y.dtype))
            context.append(sym.double() + m)
            means.append(m.float())
            idx.append(k)
        return torch.cat(means, 1), torch.cat(idx, 1)

    def _encode_latent(self, y: Tensor, idx: Tensor, means: Tensor) -> bytes:
        sections = [(y[sl], idx[sl], means[sl])
                    for sl in (self._slice(i) for i in range(self.num_slices))]
        return self.gaussian.compress_sections(sections)

    def _decode_latent(self, body: bytes, z_hat: Tensor, shape) -> Tensor:
        hyper = self._hyper_inputs(z_hat, shape[1:])
        decoder = self.gaussian.section_decoder(body)
        context = []
        for i in range(self.num_slices):
            m, k = self._slice_params(i, hyper, context)
            context.append(decoder.decode(k, m))  # float64: symbols + means, exact
        decoder.finish()
        return torch.cat(context, 1).float().to(self.device)

    def edge_modules(self) -> List[nn.Module]:
        return super().edge_modules() + [self.slice_transforms]

    def cloud_modules(self) -> List[nn.Module]:
        return super().cloud_modules() + [self.slice_transforms]

    def extra_repr(self) -> str:
        t = self.slice_transforms[0]
        return super().extra_repr() + (f', num_slices={self.num_slices}, context_channels='
                                       f'{t.out.in_channels}, context_layers={t.up_steps}')
