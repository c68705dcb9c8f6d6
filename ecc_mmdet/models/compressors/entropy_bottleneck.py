"""Learned entropy bottleneck at the split point (Entropic Student / Ballé et al. 2018 style).

Edge: ``y = g_a(F)`` (three 3x3 convs, of stride ``downsample`` together), ``y_hat =
round(y - median) + median`` per channel, range-coded with the
:class:`~ecc_mmdet.entropy_models.FactorizedEntropyModel`'s integer tables. Cloud: the same
entropy model decodes ``y_hat``, ``F_hat = g_s(y_hat)`` (3x3 conv, one 2x transposed conv per
factor 2 of ``downsample``, 3x3 conv back to ``in_channels``) cropped to the original (H, W) --
a stride-2 encoder maps H to ceil(H / 2), the decoder back to 2 * ceil(H / 2) >= H, so odd
sizes need the crop, and the decoder must know (H, W).

Payload parts of one image:

* codec_params: ``u32 H, u32 W`` (little-endian) -- the feature map's size, for the crop;
* body: the entropy model's range-coded symbols (see :mod:`ecc_edge.codecs.range_coding`);
* latent_shape: ``(latent_channels, ceil(H / downsample), ceil(W / downsample))``, checked
  against (H, W) on decode.

Losses of ``forward`` (training):

* ``loss_rate = beta * rate`` with ``rate`` the batch mean of ``bits = -sum(log2 p(y_tilde))``
  per image divided by a per-image size that depends on ``rate_unit``:

  - ``'bpp'`` (default): bits per pixel of the network input. The detector passes
    ``num_pixels`` (pixels of the padded batch input); without it the pixel count is estimated as
    ``H * W * feature_stride**2`` (``feature_stride=4``: a split after ResNet's first stage).
  - ``'bits_per_element'``: bits per element of the input feature map (C * H * W);
  - ``'bits'``: raw bits per image (scale ``beta`` accordingly).

* No auxiliary loss: the entropy model finds its tail quantiles by bisection when its tables
  are built (``eval()``/``update()``), so the detector's single optimiser and gradient clipping
  see only the task, rate and distillation losses.

Eval ``forward`` returns exactly ``decompress(compress(x))``: the decoder runs image by image
(as ``decompress`` does, with batch 1), so batch-size-dependent convolution algorithms cannot make
the two paths differ. The entropy model's coding tables are (re)built on ``eval()`` and saved
in the state dict; ``compress``/``decompress`` refuse stale tables (RuntimeError).
"""
from __future__ import annotations

import struct
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from mmcv.cnn import build_activation_layer
from mmdet.registry import MODELS
from torch import Tensor, nn

from ecc_edge.codecs.bitstream import CodecId, CorruptedBitstreamError, as_bytes
from ...entropy_models import FactorizedEntropyModel
from .base import MAX_DECODED_ELEMENTS, BaseFeatureCompressor, CompressedImage
from .gdn import GDN

__all__ = ['EntropyBottleneckNeck']

_RATE_UNITS = ('bpp', 'bits_per_element', 'bits')

@MODELS.register_module()
class EntropyBottleneckNeck(BaseFeatureCompressor):
    """Encoder + factorized entropy model + decoder at the split point.

    Args:
        in_channels: channels C of the split feature map.
        latent_channels: channels of the coded latent.
        hidden_channels: width of the hidden convs of g_a and g_s (default: latent_channels,
            which keeps the edge encoder at a few % of a detector's FLOPs).
        downsample: stride of the encoder, 1, 2 or 4 (4: two stride-2 convs in g_a and two
            2x transposed convs in g_s; a quarter of the positions of stride 2).
        beta: weight of the rate term.
        rate_unit: 'bpp', 'bits_per_element' or 'bits' (see the module docstring).
        feature_stride: stride of the split feature map w.r.t. the input image; only used to
            estimate the pixel count for 'bpp' when ``forward`` gets no ``num_pixels``.
        quantization: training proxy, 'noise' (additive uniform noise) or 'ste' (rounding with a
            straight-through gradient for the decoder, noise for the rate).
        entropy_model: extra kwargs of :class:`FactorizedEntropyModel` (filters, init_scale,
            tail_mass, ...); default ``dict(filters=(3, 3, 3))``.
        act_cfg: activation between convs (mmcv config).
        gdn: GDN between g_a's convs and IGDN between g_s's instead of ``act_cfg`` (the
            image codecs' nonlinearity, :mod:`.gdn`).
        object_rate_weight: in (0, 1]; in training, the bits of latent elements inside
            ground-truth boxes count at this weight in the rate term (a region-aware rate: bits
            are cheaper where the detector needs them). 1 (default): every bit counts alike.
        init_cfg: mmengine init config (default: PyTorch's default initialisation).
    """

    codec_id = CodecId.ENTROPY_BOTTLENECK
    codec_name = 'entropy_bottleneck'

    def __init__(self, in_channels: int, latent_channels: int = 64,
                 hidden_channels: Optional[int] = None, downsample: int = 2, beta: float = 0.01,
                 rate_unit: str = 'bpp', feature_stride: int = 4, quantization: str = 'noise',
                 entropy_model: Optional[dict] = None,
                 act_cfg: Optional[dict] = None, gdn: bool = False,
                 object_rate_weight: float = 1.0, init_cfg=None):
        super().__init__(in_channels, init_cfg=init_cfg)
        if downsample not in (1, 2, 4) or isinstance(downsample, bool):
            raise ValueError('EntropyBottleneckNeck: downsample must be 1, 2 or 4, '
                             f'got {downsample!r}')
        if rate_unit not in _RATE_UNITS:
            raise ValueError(f'EntropyBottleneckNeck: rate_unit must be one of {_RATE_UNITS}, '
                             f'got {rate_unit!r}')
        if quantization not in ('noise', 'ste'):
            raise ValueError("EntropyBottleneckNeck: quantization must be 'noise' or 'ste', "
                             f'got {quantization!r}')
        for name, value in (('latent_channels', latent_channels),
                            ('hidden_channels', hidden_channels or latent_channels),
                            ('feature_stride', feature_stride)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f'EntropyBottleneckNeck: {name} must be a positive int, '
                                 f'got {value!r}')
        w = object_rate_weight
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 < w <= 1:
            raise ValueError('EntropyBottleneckNeck: object_rate_weight must be in (0, 1], '
                             f'got {object_rate_weight!r}')
        self.object_rate_weight = float(object_rate_weight)
        em_cfg = dict(filters=(3, 3, 3))
        em_cfg.update(entropy_model or {})
        if em_cfg.setdefault('quantization', quantization) != quantization:
            raise ValueError('EntropyBottleneckNeck: entropy_model.quantization='
                             f"{em_cfg['quantization']!r} contradicts "
                             f'quantization={quantization!r}')
        self.latent_channels = int(latent_channels)
        self.hidden_channels = int(hidden_channels or latent_channels)
        self.downsample = int(downsample)
        self.beta = float(beta)
        self.rate_unit = rate_unit
        self.feature_stride = int(feature_stride)
        self.quantization = quantization
        act_cfg = act_cfg or dict(type='LeakyReLU', negative_slope=0.1)
        self.gdn = bool(gdn)

        c, h, z = self.in_channels, self.hidden_channels, self.latent_channels

        def act(inverse: bool) -> nn.Module:
            return GDN(h, inverse=inverse) if self.gdn else build_activation_layer(act_cfg)

        halvings = self.downsample.bit_length() - 1  # 0, 1 or 2 stride-2 steps
        self.g_a = nn.Sequential(
            nn.Conv2d(c, h, 3, stride=2 if halvings >= 1 else 1, padding=1), act(False),
            nn.Conv2d(h, h, 3, stride=2 if halvings >= 2 else 1, padding=1), act(False),
            nn.Conv2d(h, z, 3, padding=1))

        # built before g_s's first conv, as always: strides 1 and 2 keep their initialisation
        # and their layer indexes (checkpoints); stride 4 upsamples twice
        if halvings == 0:
            ups = [nn.Conv2d(h, h, 3, padding=1), act(True)]
        else:
            ups = [m for _ in range(halvings)
                   for m in (nn.ConvTranspose2d(h, h, 4, stride=2, padding=1), act(True))]
        self.g_s = nn.Sequential(
            nn.Conv2d(z, h, 3, padding=1), act(True), *ups,
            nn.Conv2d(h, c, 3, padding=1))
        self.entropy_model_cfg = em_cfg  # validated; subclasses build more models from it
        self.entropy_model = FactorizedEntropyModel(z, **em_cfg)

    # ------------------------------------------------------------------ helpers
    def latent_size(self, h: int, w: int) -> Tuple[int, int]:
        """Spatial size of the latent of an (h, w) feature map."""
        d = self.downsample
        return (h + d - 1) // d, (w + d - 1) // d

    def _decode(self, y_hat: Tensor, h: int, w: int) -> Tensor:
        return self.g_s(y_hat)[..., :h, :w]

    def _latent_bits(self, coder, likelihoods: Tensor, object_mask: Optional[Tensor]) -> Tensor:
        """Bits of y per image (N,); with an ``object_mask`` (N, 1, H, W) of the feature map and
        ``object_rate_weight`` < 1, each element's bits are weighted by 1 - (1 - w) * the share
        of its latent cell that objects cover."""
        if object_mask is None or self.object_rate_weight == 1.0:
            return coder.bits(likelihoods)
        share = F.adaptive_avg_pool2d(object_mask.to(likelihoods), likelihoods.shape[-2:])
        weights = 1.0 - (1.0 - self.object_rate_weight) * share
        return (-torch.log2(likelihoods) * weights).flatten(1).sum(1)

    def _rate(self, bits: Tensor, x: Tensor, num_pixels) -> Tensor:
        """bits (N,) -> rate per image in ``rate_unit``."""
        if self.rate_unit == 'bits':
            return bits
        if self.rate_unit == 'bits_per_element':
            return bits / float(x[0].numel())
        if num_pixels is None:
            num_pixels = x.shape[-2] * x.shape[-1] * self.feature_stride**2
        if isinstance(num_pixels, Tensor):
            num_pixels = num_pixels.to(device=bits.device, dtype=bits.dtype)
            if not bool((num_pixels > 0).all()):
                raise ValueError('num_pixels must be positive')
        elif not num_pixels > 0:
            raise ValueError(f'num_pixels must be positive, got {num_pixels!r}')
        return bits / num_pixels

    # ------------------------------------------- rate points (one here; see VariableRate...)
    #: codec_params layout: the feature map's (H, W) (the rate point is in the payload header)
    _PARAMS = struct.Struct('<2I')
    _PARAMS_DOC = 'u32 H, u32 W of the feature map'

    def _rate_point(self, training: bool) -> tuple:
        """Arguments of the coding-path hooks for the point used now (none: a single rate)."""
        return ()

    def _point_from_header(self, rate_point: Optional[int]) -> tuple:
        """The header's rate point -> the hooks' arguments; refuses a point this model lacks."""
        self._single_rate(rate_point)
        return ()

    def _coder(self, *point) -> FactorizedEntropyModel:
        return self.entropy_model

    def _latent(self, x: Tensor, *point) -> Tensor:
        return self.g_a(x)

    def _decoder_input(self, y_hat: Tensor, *point) -> Tensor:
        return y_hat

    def _rate_weight_of(self, *point) -> float:
        return self.beta

    # --------------------------------------------------------------- interface
    def forward(self, x: Tensor, num_pixels=None,
                object_mask: Optional[Tensor] = None) -> Tuple[Tensor, Dict[str, Tensor]]:
        """-> (x_hat, dict(loss_rate=beta * rate))."""
        self._check_input(x)
        h, w = x.shape[-2:]
        point = self._rate_point(self.training)
        coder = self._coder(*point)
        y_hat, likelihoods = coder(self._latent(x, *point))
        y_hat = self._decoder_input(y_hat, *point)
        if self.training:
            x_hat = self._decode(y_hat, h, w)
        else:  # batch 1 per image, exactly as decompress runs
            x_hat = torch.cat([self._decode(y_hat[i:i + 1], h, w) for i in range(x.shape[0])])
        rate = self._rate(self._latent_bits(coder, likelihoods, object_mask), x, num_pixels)
        losses = dict(loss_rate=self._rate_weight_of(*point) * rate.mean())
        return x_hat, losses

    @torch.no_grad()
    def estimate_bits(self, x: Tensor) -> Tensor:
        """-sum(log2 p(y_hat)) per image under the (continuous) entropy model -> (N,)."""
        self._check_input(x)
        point = self._rate_point(False)
        coder = self._coder(*point)
        _, likelihoods = coder(self._latent(x, *point), training=False)
        return coder.bits(likelihoods).float()

    @torch.no_grad()
    def bit_map(self, x: Tensor) -> Tensor:
        """Estimated bits per latent position (N, h, w), summed over channels: where the rate
        goes (diagnostics; its sum per image is :meth:`estimate_bits`)."""
        self._check_input(x)
        point = self._rate_point(False)
        coder = self._coder(*point)
        _, likelihoods = coder(self._latent(x, *point), training=False)
        return -torch.log2(likelihoods).sum(1).float()

    @torch.no_grad()
    def compress(self, x: Tensor) -> List[CompressedImage]:
        self._check_input(x)
        h, w = (int(v) for v in x.shape[-2:])
        point = self._rate_point(False)
        y = self._latent(x, *point)
        bodies = self._coder(*point).compress(y)
        params = self._PARAMS.pack(h, w)
        latent_shape = tuple(int(d) for d in y.shape[1:])
        return [(params, body, latent_shape) for body in bodies]

    @torch.no_grad()
    def decompress(self, codec_params: bytes, body: bytes, latent_shape,
                   rate_point: Optional[int] = None) -> Tensor:
        point, (h, w), shape, body = self._parse(codec_params, body, latent_shape, rate_point)
        y_hat = self._coder(*point).decompress([body], shape[1:]).to(self.device)
        return self._decode(self._decoder_input(y_hat, *point), h, w).float()

    def _parse(self, codec_params, body, latent_shape, rate_point):
        """Validate what ``decompress`` got -> (rate point hook arguments, the codec_params
        fields (H, W first), the checked latent shape, the body as bytes)."""
        params = as_bytes(codec_params, 'codec_params')
        body = as_bytes(body, 'body')
        if len(params) != self._PARAMS.size:
            raise CorruptedBitstreamError(
                f'{type(self).__name__}: codec_params must be {self._PARAMS.size} bytes '
                f'({self._PARAMS_DOC}), got {len(params)}')
        point = self._point_from_header(rate_point)
        fields = self._PARAMS.unpack(params)
        return point, fields, self._checked_latent_shape(*fields[:2], latent_shape), body

    def _checked_latent_shape(self, h: int, w: int, latent_shape) -> Tuple[int, ...]:
        """The latent shape, checked against the feature size (h, w) read from codec_params."""
        name = type(self).__name__
        if h < 1 or w < 1 or self.in_channels * h * w > MAX_DECODED_ELEMENTS:
            raise CorruptedBitstreamError(
                f'{name}: impossible feature map size {h}x{w} in codec_params')
        shape = self._check_latent_shape(latent_shape, self.latent_channels)
        if shape[1:] != self.latent_size(h, w):
            raise CorruptedBitstreamError(
                f'{name}: latent_shape {shape} does not match a {h}x{w} feature map (expected '
                f'spatial size {self.latent_size(h, w)} at downsample {self.downsample})')
        return shape

    def edge_modules(self) -> List[nn.Module]:
        """Encoder and entropy model (the edge codes with the entropy model's tables)."""
        return [self.g_a, self.entropy_model]

    def coding_models(self) -> List[nn.Module]:
        return [self.entropy_model]

    def cloud_modules(self) -> List[nn.Module]:
        """Entropy model (decoding needs the same tables -- it is listed on both sides) and
        decoder."""
        return [self.entropy_model, self.g_s]

    def extra_repr(self) -> str:
        return (f'in_channels={self.in_channels}, latent_channels={self.latent_channels}, '
                f'downsample={self.downsample}, beta={self.beta}, rate_unit={self.rate_unit!r}, '
                f'gdn={self.gdn}, object_rate_weight={self.object_rate_weight}')
