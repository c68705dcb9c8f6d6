"""Raw-float "codecs": the no-compression baseline (float16) and a lossless identity (float32).

Body: the feature map of one image as raw little-endian floats in C order; codec_params: empty;
latent_shape: (C, H, W). Neither has learned parts (``losses == {}``, no edge/cloud modules).

* :class:`Float16Neck` -- what a split-computing system without a learned codec would send.
  Values beyond float16's range are clamped to +-65504 (on both paths) instead of becoming inf.
* :class:`Float32Neck` -- bit-exact identity; used to check that a split detector gives exactly
  the unsplit detector's output.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from mmdet.registry import MODELS
from torch import Tensor

from ecc_edge.codecs.bitstream import CodecId, CorruptedBitstreamError, as_bytes
from ...utils.device import to_numpy
from .base import BaseFeatureCompressor, CompressedImage

__all__ = ['Float16Neck', 'Float32Neck']

class _RawFloatNeck(BaseFeatureCompressor):
    _np_dtype: str = None  # little-endian numpy dtype of the body
    _clamp: Optional[float] = None  # the dtype's largest finite value, where float32's is larger

    @property
    def _bits(self) -> int:
        return 8 * np.dtype(self._np_dtype).itemsize

    def _to_wire(self, x: Tensor) -> Tensor:
        """The values the body carries, as float32 (differentiable)."""
        x = x.float()
        if self._clamp is not None:
            x = x.clamp(-self._clamp, self._clamp)
        return x.to(getattr(torch, np.dtype(self._np_dtype).name)).float()

    def forward(self, x: Tensor, num_pixels=None,
                object_mask: Optional[Tensor] = None) -> Tuple[Tensor, Dict[str, Tensor]]:
        self._check_input(x)
        return self._to_wire(x), {}

    def estimate_bits(self, x: Tensor) -> Tensor:
        self._check_input(x)
        n = x.shape[0]
        return torch.full((n, ), float(self._bits * x[0].numel()), device=x.device)

    @torch.no_grad()
    def compress(self, x: Tensor) -> List[CompressedImage]:
        self._check_input(x)
        wire = to_numpy(self._to_wire(x))
        return [(b'', np.ascontiguousarray(img).astype(self._np_dtype).tobytes(),
                 tuple(int(d) for d in img.shape)) for img in wire]

    @torch.no_grad()
    def decompress(self, codec_params: bytes, body: bytes, latent_shape,
                   rate_point: Optional[int] = None) -> Tensor:
        self._single_rate(rate_point)
        name = type(self).__name__
        params = as_bytes(codec_params, 'codec_params')
        body = as_bytes(body, 'body')
        if params:
            raise CorruptedBitstreamError(
                f'{name}: codec_params must be empty, got {len(params)} bytes')
        c, h, w = self._check_latent_shape(latent_shape, self.in_channels)
        expected = c * h * w * np.dtype(self._np_dtype).itemsize
        if len(body) != expected:
            raise CorruptedBitstreamError(
                f'{name}: body has {len(body)} bytes, a {c}x{h}x{w} {self._np_dtype} map needs '
                f'{expected}')
        arr = np.frombuffer(body, dtype=self._np_dtype).astype(np.float32).reshape(1, c, h, w)
        return torch.from_numpy(arr).to(self.device)


@MODELS.register_module()
class Float16Neck(_RawFloatNeck):
    """Raw float16 features (the "no compression" baseline): 16 bits per element."""

    codec_id = CodecId.FLOAT16
    codec_name = 'float16'
    _np_dtype = '<f2'
    _clamp = 65504.0


@MODELS.register_module()
class Float32Neck(_RawFloatNeck):
    """Lossless identity codec (raw float32): ``decompress(compress(x)) == x`` bit for bit."""

    codec_id = CodecId.FLOAT32
    codec_name = 'float32'
    _np_dtype = '<f4'
