"""Training-free uniform n-bit quantiser with per-channel ranges, entropy-coded.

Per image and channel ``c`` the range ``[lo_c, hi_c]`` is the channel's min/max (or, with
``clip_percentile=p``, its nearest-rank ``(100 - p)``-th and ``p``-th percentiles; values
outside are clipped). With ``L = 2**n_bits - 1`` and ``s_c = (hi_c - lo_c) / L``::

    q = clamp(round((clamp(x, lo_c, hi_c) - lo_c) / s_c), 0, L)      (0 where s_c == 0)
    x_hat = lo_c + q * s_c

so ``|x - x_hat| <= s_c / 2`` for unclipped values. The symbols ``q`` of one image (C order) are
coded with :func:`~ecc_edge.codecs.range_coding.encode_with_histogram`, whose body starts with
the image's own histogram (``2**n_bits`` LEB128 counts: a few hundred bytes at 8 bits, >= 64 KiB
at 16 bits -- the histogram coder is meant for small alphabets).

codec_params (little-endian): ``u8 n_bits``, then ``C float32 lo``, then ``C float32 hi``
(``1 + 8*C`` bytes). The decoder takes ``n_bits`` from there (the stream is self-describing), so
any QuantizeNeck with the same ``in_channels`` decodes it. latent_shape = (C, H, W).

Evaluation ``forward`` returns exactly ``x_hat`` above (the same float32 ops as ``decompress``);
training ``forward`` returns it with a straight-through gradient (identity). No learned
parameters, ``losses == {}``.
"""
from __future__ import annotations

import math
import struct
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from mmdet.registry import MODELS
from torch import Tensor

from ecc_edge.codecs.bitstream import CodecId, CorruptedBitstreamError, as_bytes
from ecc_edge.codecs.range_coding import decode_with_histogram, encode_with_histogram
from ...utils.device import to_numpy
from .base import BaseFeatureCompressor, CompressedImage

__all__ = ['QuantizeNeck']

MIN_BITS, MAX_BITS = 1, 16


def _quantize(x: Tensor, lo: Tensor, hi: Tensor, n_bits: int) -> Tensor:
    """float32 x (N, C, H, W), ranges (N, C, 1, 1) -> integer-valued float32 symbols."""
    levels = float(2**n_bits - 1)
    scale = (hi - lo) / levels
    positive = scale > 0
    safe = torch.where(positive, scale, torch.ones_like(scale))
    q = torch.round((torch.clamp(x, lo, hi) - lo) / safe).clamp_(0, levels)
    return torch.where(positive, q, torch.zeros_like(q))


def _dequantize(q: Tensor, lo: Tensor, hi: Tensor, n_bits: int) -> Tensor:
    """Shared by forward (eval) and decompress, so both give identical float32 values."""
    scale = (hi - lo) / float(2**n_bits - 1)
    return lo + q * scale


@MODELS.register_module()
class QuantizeNeck(BaseFeatureCompressor):
    """Uniform n-bit per-channel quantiser (see the module docstring for the format).

    Args:
        in_channels: channels of the feature map.
        n_bits: bits per symbol, 1..16.
        clip_percentile: None for min/max ranges, or p in (50, 100] to clip each channel to its
            [100 - p, p] percentiles (nearest rank), e.g. 99.9.
        init_cfg: unused (no parameters); accepted for config symmetry.
    """

    codec_id = CodecId.QUANTIZE
    codec_name = 'quantize'

    def __init__(self, in_channels: int, n_bits: int = 8,
                 clip_percentile: Optional[float] = None, init_cfg=None):
        super().__init__(in_channels, init_cfg=init_cfg)
        if (isinstance(n_bits, bool) or not isinstance(n_bits, (int, np.integer))
                or not MIN_BITS <= int(n_bits) <= MAX_BITS):
            raise ValueError(f'QuantizeNeck: n_bits must be an integer in {MIN_BITS}..{MAX_BITS} '
                             f'(symbols are coded over an alphabet of 2**n_bits), got {n_bits!r}')
        if clip_percentile is not None:
            try:
                p = float(clip_percentile)
            except (TypeError, ValueError):
                p = float('nan')
            if not 50.0 < p <= 100.0:
                raise ValueError('QuantizeNeck: clip_percentile must be None or a percentile in '
                                 f'(50, 100], e.g. 99.9; got {clip_percentile!r}')
            clip_percentile = p
        self.n_bits = int(n_bits)
        self.clip_percentile = clip_percentile
        self.codec_name = f'quantize_{self.n_bits}bit'

    # ------------------------------------------------------------------ ranges
    @torch.no_grad()
    def _ranges(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        """float32 (N, C, H, W) -> per image and channel (lo, hi), each (N, C, 1, 1)."""
        flat = x.reshape(x.shape[0], x.shape[1], -1)
        if self.clip_percentile is None or self.clip_percentile >= 100.0:
            lo, hi = flat.amin(dim=-1), flat.amax(dim=-1)
        else:
            n = flat.shape[-1]
            k_hi = min(n, max(1, math.ceil(self.clip_percentile / 100.0 * n - 1e-9)))
            k_lo = n + 1 - k_hi
            hi = flat.kthvalue(k_hi, dim=-1).values
            lo = flat.kthvalue(k_lo, dim=-1).values
        return lo[..., None, None], hi[..., None, None]

    def _quantize_batch(self, x: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        x = x.float()
        lo, hi = self._ranges(x.detach())
        return _quantize(x.detach(), lo, hi, self.n_bits), lo, hi

    # --------------------------------------------------------------- interface
    def forward(self, x: Tensor, num_pixels=None,
                object_mask: Optional[Tensor] = None) -> Tuple[Tensor, Dict[str, Tensor]]:
        self._check_input(x)
        q, lo, hi = self._quantize_batch(x)
        x_hat = _dequantize(q, lo, hi, self.n_bits)
        if self.training and x.requires_grad:
            xf = x.float()
            x_hat = xf + (x_hat - xf).detach()  # straight-through
        return x_hat, {}

    @torch.no_grad()
    def estimate_bits(self, x: Tensor) -> Tensor:
        """Empirical-histogram entropy of each image's symbols x their count (no header)."""
        self._check_input(x)
        q, _, _ = self._quantize_batch(x)
        out = []
        for img in q.reshape(q.shape[0], -1).long():
            counts = torch.bincount(img, minlength=2**self.n_bits).double()
            p = counts[counts > 0] / img.numel()
            out.append(-(p * torch.log2(p)).sum() * img.numel())
        return torch.stack(out).float()

    @torch.no_grad()
    def compress(self, x: Tensor) -> List[CompressedImage]:
        self._check_input(x)
        xf = x.float()
        if not torch.isfinite(xf).all():
            raise ValueError('QuantizeNeck.compress: the feature map has non-finite values')
        q, lo, hi = self._quantize_batch(xf)
        if not torch.isfinite(hi - lo).all():
            raise ValueError('QuantizeNeck.compress: a channel range overflows float32')
        q = to_numpy(q.to(torch.int64))
        lo, hi = (to_numpy(v.reshape(x.shape[0], -1), '<f4') for v in (lo, hi))
        out = []
        for i in range(x.shape[0]):
            params = struct.pack('<B', self.n_bits) + lo[i].tobytes() + hi[i].tobytes()
            body = encode_with_histogram(q[i], 2**self.n_bits)
            out.append((params, body, tuple(int(d) for d in x.shape[1:])))
        return out

    @torch.no_grad()
    def decompress(self, codec_params: bytes, body: bytes, latent_shape,
                   rate_point: Optional[int] = None) -> Tensor:
        self._single_rate(rate_point)
        params = as_bytes(codec_params, 'codec_params')
        body = as_bytes(body, 'body')
        c = self.in_channels
        if len(params) != 1 + 8 * c:
            raise CorruptedBitstreamError(
                f'QuantizeNeck: codec_params must be {1 + 8 * c} bytes (n_bits + {c} float32 '
                f'minima + {c} float32 maxima), got {len(params)}')
        n_bits = params[0]
        if not MIN_BITS <= n_bits <= MAX_BITS:
            raise CorruptedBitstreamError(
                f'QuantizeNeck: n_bits {n_bits} in codec_params outside {MIN_BITS}..{MAX_BITS}')
        ranges = np.frombuffer(params[1:], dtype='<f4').astype(np.float32).reshape(2, c)
        with np.errstate(over='ignore', invalid='ignore'):
            ok = (np.isfinite(ranges).all() and (ranges[0] <= ranges[1]).all()
                  and np.isfinite(ranges[1] - ranges[0]).all())
        if not ok:
            raise CorruptedBitstreamError(
                'QuantizeNeck: channel ranges in codec_params are not finite with min <= max')
        _, h, w = self._check_latent_shape(latent_shape, c)
        sym = decode_with_histogram(body, c * h * w, 2**n_bits)
        q = torch.from_numpy(sym.astype(np.float32).reshape(1, c, h, w)).to(self.device)
        r = torch.from_numpy(ranges).to(self.device)
        lo, hi = r[0].view(1, c, 1, 1), r[1].view(1, c, 1, 1)
        return _dequantize(q, lo, hi, n_bits)
