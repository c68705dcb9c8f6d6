"""Learned bottleneck with a (mean-)scale hyperprior (Ballé et al. 2018, Minnen et al. 2018).

The factorized bottleneck codes every latent element with its channel's fixed density, so it
pays for the background as much as for the objects. Here a hyper-encoder ``h_a`` summarises the
latent into side information ``z`` (``hyper_downsample`` times smaller), coded with a factorized
model; the hyper-synthesis ``h_s`` turns the decoded ``z_hat`` into a mean and a scale per latent
element, and a :class:`GaussianConditionalEntropyModel` codes ``y`` with them: flat regions get
small scales and cost almost nothing, the bits go where the content is.

Determinism: ``h_s`` is an :class:`ExactHyperSynthesis` evaluated in integer arithmetic when
coding, so the means and scale indexes -- and therefore the tables the range coder uses -- are
bit-identical on the edge and the cloud, across devices, batch sizes and after a checkpoint
reload. Eval ``forward`` returns exactly ``decompress(compress(x))``.

Payload parts of one image:

* codec_params: ``u32 H, u32 W, u32 Z`` -- the feature map's size and the length of z's body;
* body: z's range-coded symbols (Z bytes), then y's (indexed Gaussian tables);
* latent_shape: y's ``(latent_channels, ceil(H / downsample), ceil(W / downsample))``; z's shape
  follows from it, ``ceil(. / hyper_downsample)``.

The rate term counts both parts (``-log2 p(y | z) - log2 p(z)``).
"""
from __future__ import annotations

import math
import struct
from typing import Dict, List, Optional, Tuple

import torch
from mmcv.cnn import build_activation_layer
from mmdet.registry import MODELS
from torch import Tensor, nn

from ecc_edge.codecs.bitstream import CodecId, CorruptedBitstreamError
from ...entropy_models import (ExactHyperSynthesis, FactorizedEntropyModel,
                               GaussianConditionalEntropyModel)
from .base import CompressedImage
from .entropy_bottleneck import EntropyBottleneckNeck

__all__ = ['HyperpriorBottleneckNeck']


@MODELS.register_module()
class HyperpriorBottleneckNeck(EntropyBottleneckNeck):
    """Encoder + hyperprior (side information z) + Gaussian conditional model + decoder.

    Args (besides :class:`EntropyBottleneckNeck`'s; its ``entropy_model`` configures the
    factorized model of z):
        hyper_channels: channels of z.
        hyper_downsample: spatial reduction of z w.r.t. y, 2 or 4.
        predict_means: mean-scale (True, Minnen 2018) or scale-only (False, Ballé 2018).
        gaussian: kwargs of :class:`GaussianConditionalEntropyModel` (num_scales, scale_min,
            scale_max, tail_mass, ...).
        hyper_synthesis: kwargs of :class:`ExactHyperSynthesis` (frac_bits, act_max, ...).
    """

    codec_id = CodecId.HYPERPRIOR_BOTTLENECK
    codec_name = 'hyperprior_bottleneck'
    _PARAMS = struct.Struct('<3I')
    _PARAMS_DOC = "u32 H, u32 W of the feature map, u32 length of z's body"

    def __init__(self, in_channels: int, hyper_channels: int = 32, hyper_downsample: int = 4,
                 predict_means: bool = True, gaussian: Optional[dict] = None,
                 hyper_synthesis: Optional[dict] = None, **kwargs):
        super().__init__(in_channels, **kwargs)
        name = type(self).__name__
        if isinstance(hyper_channels, bool) or not isinstance(hyper_channels, int) \
                or hyper_channels < 1:
            raise ValueError(f'{name}: hyper_channels must be a positive int, '
                             f'got {hyper_channels!r}')
        if hyper_downsample not in (2, 4):
            raise ValueError(f'{name}: hyper_downsample must be 2 or 4, got {hyper_downsample!r}')
        self.hyper_channels = hyper_channels
        self.hyper_downsample = hyper_downsample
        self.predict_means = bool(predict_means)
        steps = int(math.log2(hyper_downsample))
        act_cfg = kwargs.get('act_cfg') or dict(type='LeakyReLU', negative_slope=0.1)
        c, hc = self.latent_channels, hyper_channels
        layers = [nn.Conv2d(c, hc, 3, padding=1)]
        for _ in range(steps):
            layers += [build_activation_layer(act_cfg), nn.Conv2d(hc, hc, 3, stride=2, padding=1)]
        self.h_a = nn.Sequential(*layers)
        del self.entropy_model  # the factorized model codes z here
        self.hyper_entropy_model = FactorizedEntropyModel(hc, **self.entropy_model_cfg)
        self.h_s = ExactHyperSynthesis(hc, c, c, up_steps=steps, predict_means=predict_means,
                                       **(hyper_synthesis or {}))
        gcfg = dict(quantization=self.quantization)
        gcfg.update(gaussian or {})
        if gcfg['quantization'] != self.quantization:
            raise ValueError(f"{name}: gaussian.quantization={gcfg['quantization']!r} "
                             f'contradicts quantization={self.quantization!r}')
        self.gaussian = GaussianConditionalEntropyModel(**gcfg)

    # ------------------------------------------------------------------ helpers
    def hyper_size(self, h: int, w: int) -> Tuple[int, int]:
        """Spatial size of z for a latent of size (h, w)."""
        d = self.hyper_downsample
        return (h + d - 1) // d, (w + d - 1) // d

    def _hyper_exact(self, z_hat: Tensor, size) -> Tuple[Tensor, Tensor]:
        """z_hat -> h_s's exact (means, log-scale accumulators) cropped to spatial ``size``."""
        h, w = size
        return tuple(t[..., :h, :w] for t in self.h_s.exact(z_hat))

    def _exact_params(self, z_hat: Tensor, size) -> Tuple[Tensor, Tensor]:
        """z_hat -> (means, scale indexes) of a latent of spatial ``size``, exactly."""
        means, log_acc = self._hyper_exact(z_hat, size)
        return means, self.gaussian.index_from_fixed_point(log_acc, 2 * self.h_s.frac_bits)

    def _hyper_train(self, z_hat: Tensor, size) -> Tuple[Tensor, Tensor]:
        """h_s's training path (fake-quantised) cropped to spatial ``size``."""
        h, w = size
        return tuple(t[..., :h, :w] for t in self.h_s(z_hat))

    # ---- how y is modelled given z_hat: the override points of a context model (one each for
    # training, the exact parameters, encoding and decoding)
    def _exact_code(self, y: Tensor, z_hat: Tensor) -> Tuple[Tensor, Tensor]:
        """-> (means, scale indexes) of y exactly as both coding sides compute them."""
        return self._exact_params(z_hat, y.shape[-2:])

    def _train_latent(self, y: Tensor, z_hat: Tensor) -> Tuple[Tensor, Tensor]:
        """Training proxy -> (y_hat for the decoder, likelihoods of y)."""
        means, log_scales = self._hyper_train(z_hat, y.shape[-2:])
        y_hat, y_tilde = self.gaussian.quantize(y, means, True)
        return y_hat, self.gaussian.likelihood(y_tilde, means, self._scales(log_scales))

    def _scales(self, log_scales: Tensor) -> Tensor:
        g = self.gaussian
        return torch.exp(torch.clamp(log_scales, math.log(g.scale_min), math.log(g.scale_max)))

    def _encode_latent(self, y: Tensor, idx: Tensor, means: Tensor) -> bytes:
        """One image's y (C, h, w) -> its body."""
        return self.gaussian.compress(y, idx, means)

    def _decode_latent(self, body: bytes, z_hat: Tensor, shape) -> Tensor:
        """Inverse of :meth:`_encode_latent` given the decoded z_hat -> y_hat (1, C, h, w)."""
        means, idx = self._exact_params(z_hat, shape[1:])
        return self.gaussian.decompress(body, idx[0], means[0].to(self.device))[None]

    def _coded(self, x: Tensor, point: tuple):
        """The deployed (eval) coding path -> (y_hat, y likelihoods, z likelihoods)."""
        y = self._latent(x, *point)
        z_hat, z_lik = self.hyper_entropy_model(self.h_a(y), training=False)
        means, idx = self._exact_code(y, z_hat)
        y_hat, _ = self.gaussian.quantize(y, means.to(y.dtype), False)
        y_lik = self.gaussian.likelihood(y_hat, means.to(y.dtype), self.gaussian.scales_of(idx))
        return y_hat, y_lik, z_lik

    # --------------------------------------------------------------- interface
    def forward(self, x: Tensor, num_pixels=None,
                object_mask: Optional[Tensor] = None) -> Tuple[Tensor, Dict[str, Tensor]]:
        """-> (x_hat, dict(loss_rate=beta * rate)). The coding path (rounding, exact indexes,
        table scales) runs when the entropy models are in eval mode: at test time and in the
        fine-tune stage, where they are frozen as deployed."""
        self._check_input(x)
        h, w = x.shape[-2:]
        point = self._rate_point(self.training)
        if not self.gaussian.training:
            y_hat, y_lik, z_lik = self._coded(x, point)
        else:
            y = self._latent(x, *point)
            z_hat, z_lik = self.hyper_entropy_model(self.h_a(y))
            y_hat, y_lik = self._train_latent(y, z_hat)
        bits = (self._latent_bits(self.gaussian, y_lik, object_mask)
                + self.hyper_entropy_model.bits(z_lik))
        y_hat = self._decoder_input(y_hat, *point)
        if self.training:
            x_hat = self._decode(y_hat, h, w)
        else:  # batch 1 per image, exactly as decompress runs
            x_hat = torch.cat([self._decode(y_hat[i:i + 1], h, w) for i in range(x.shape[0])])
        rate = self._rate(bits, x, num_pixels)
        return x_hat, dict(loss_rate=self._rate_weight_of(*point) * rate.mean())

    @torch.no_grad()
    def estimate_bits(self, x: Tensor) -> Tensor:
        """-log2 p(y_hat | z_hat) - log2 p(z_hat) per image under the coding tables' scales."""
        self._check_input(x)
        _, y_lik, z_lik = self._coded(x, self._rate_point(False))
        return (self.gaussian.bits(y_lik) + self.hyper_entropy_model.bits(z_lik)).float()

    @torch.no_grad()
    def bit_map(self, x: Tensor) -> Tensor:
        """Estimated bits per latent position (N, h, w): y's, plus each z cell's bits spread
        evenly over the latent cells it describes."""
        self._check_input(x)
        _, y_lik, z_lik = self._coded(x, self._rate_point(False))
        d = self.hyper_downsample
        z_bits = -torch.log2(z_lik).sum(1) / (d * d)
        z_bits = z_bits.repeat_interleave(d, -2).repeat_interleave(d, -1)
        h, w = y_lik.shape[-2:]
        return (-torch.log2(y_lik).sum(1) + z_bits[..., :h, :w]).float()

    @torch.no_grad()
    def compress(self, x: Tensor) -> List[CompressedImage]:
        self._check_input(x)
        h, w = (int(v) for v in x.shape[-2:])
        y = self._latent(x, *self._rate_point(False))
        z = self.h_a(y)
        z_bodies = self.hyper_entropy_model.compress(z)
        z_hat = self.hyper_entropy_model.dequantize_eval(z)  # == what the decoder gets
        means, idx = self._exact_code(y, z_hat)
        latent_shape = tuple(int(d) for d in y.shape[1:])
        out = []
        for i, zb in enumerate(z_bodies):
            yb = self._encode_latent(y[i], idx[i], means[i].to(y.dtype))
            out.append((self._PARAMS.pack(h, w, len(zb)), zb + yb, latent_shape))
        return out

    @torch.no_grad()
    def decompress(self, codec_params: bytes, body: bytes, latent_shape,
                   rate_point: Optional[int] = None) -> Tensor:
        point, (h, w, z_len), shape, body = self._parse(codec_params, body, latent_shape,
                                                        rate_point)
        if z_len > len(body):
            raise CorruptedBitstreamError(
                f"{type(self).__name__}: codec_params declare {z_len} bytes of z's body, the body "
                f'has {len(body)}')
        zh, zw = self.hyper_size(*shape[1:])
        z_hat = self.hyper_entropy_model.decompress([body[:z_len]], (zh, zw)).to(self.device)
        y_hat = self._decode_latent(body[z_len:], z_hat, shape)
        y_hat = self._decoder_input(y_hat.to(z_hat.dtype), *point)
        return self._decode(y_hat, h, w).float()

    def edge_modules(self) -> List[nn.Module]:
        """Encoder, hyper-encoder, hyper-synthesis (the edge needs the indexes too) and both
        entropy models."""
        return [self.g_a, self.h_a, self.h_s, self.hyper_entropy_model, self.gaussian]

    def coding_models(self) -> List[nn.Module]:
        return [self.hyper_entropy_model, self.gaussian]

    def cloud_modules(self) -> List[nn.Module]:
        return [self.hyper_entropy_model, self.h_s, self.gaussian, self.g_s]

    def extra_repr(self) -> str:
        return (super().extra_repr() + f', hyper_channels={self.hyper_channels}, '
                f'hyper_downsample={self.hyper_downsample}, predict_means={self.predict_means}')
