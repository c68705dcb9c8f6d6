"""Common interface of the feature-compression necks that sit at the split point.

A neck gets the edge feature map ``F`` (N, C, H, W) and gives back a reconstruction ``F_hat`` of
the same shape for the cloud. It has two paths that must agree:

* ``forward(x, num_pixels=None) -> (x_hat, losses)`` -- the differentiable path (training, tensor
  mode, FLOP counting). In training mode it uses a quantisation proxy (additive noise or a
  straight-through estimator); in eval mode it returns exactly what ``compress`` then
  ``decompress`` would give.
* ``compress(x) -> [(codec_params, body, latent_shape), ...]`` on the edge, and
  ``decompress(codec_params, body, latent_shape, rate_point) -> (1, C, H, W)`` on the cloud. The
  triple plus the rate point (``header_rate_point`` at compress time; None for single-rate
  necks) is everything the decoder needs besides the module's own weights; the detector frames
  it with :func:`ecc_edge.codecs.bitstream.pack` (the rate point travels in the header), the
  neck never builds payloads.

``decompress`` validates what it is given and raises
:class:`~ecc_edge.codecs.bitstream.CorruptedBitstreamError` (a ``ValueError``) for impossible
headers or bodies, never a deep torch error; ``TypeError`` only when ``codec_params``/``body``
are not bytes-like.
"""
from __future__ import annotations

import operator
from abc import abstractmethod
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from mmengine.model import BaseModule
from torch import Tensor, nn

from ecc_edge.codecs.bitstream import CodecId, CorruptedBitstreamError, RatePointError

__all__ = ['BaseFeatureCompressor', 'CompressedImage', 'MAX_DECODED_ELEMENTS']

#: ``(codec_params, body, latent_shape)`` of one image.
CompressedImage = Tuple[bytes, bytes, Tuple[int, ...]]

#: Upper bound on the elements of any tensor ``decompress`` allocates (2**28 float32 = 1 GiB,
#: a 256-channel stride-4 feature map of a ~4k x 4k image). Larger declared shapes are treated as
#: corruption instead of attempting the allocation.
MAX_DECODED_ELEMENTS = 2**28


class BaseFeatureCompressor(BaseModule):
    """Base class of the feature-compression necks.

    Args:
        in_channels: channels C of the feature map at the split point.
        init_cfg: mmengine initialisation config.

    Class attributes ``codec_id`` (:class:`CodecId`, written into the payload header) and
    ``codec_name`` (a short string for reports) identify the codec.
    """

    codec_id: CodecId = None
    codec_name: str = None

    def __init__(self, in_channels: int, init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
            raise ValueError(f'in_channels must be a positive int, got {in_channels!r}')
        self.in_channels = int(in_channels)
        # Non-persistent, empty: tells which device/dtype the module lives on even when it has no
        # parameters (float/quantize necks), and never shows up in a state_dict.
        self.register_buffer('_device_anchor', torch.zeros(0), persistent=False)
        self._register_load_state_dict_pre_hook(self._check_checkpoint_shapes)

    def _check_checkpoint_shapes(self, state_dict, prefix, *args):
        """Refuse a checkpoint whose compressor has another architecture.

        mmengine loads non-strictly and only *warns* on a size mismatch, which would leave a
        randomly initialised encoder/decoder behind and produce garbage bitstreams.
        """
        # submodules declare entries whose size legitimately varies (the entropy model's tables)
        resizable = {f'{mod_name}.{b}' if mod_name else b
                     for mod_name, mod in self.named_modules()
                     for b in getattr(mod, 'TABLE_KEYS', ())}
        mismatched = []
        for name, value in self.state_dict().items():
            key = prefix + name
            if key in state_dict and name not in resizable \
                    and tuple(state_dict[key].shape) != tuple(value.shape):
                mismatched.append(f'{key}: checkpoint {tuple(state_dict[key].shape)} vs model '
                                  f'{tuple(value.shape)}')
        if mismatched:
            raise ValueError(
                f'The checkpoint\'s {type(self).__name__} does not match this config '
                f'(it was trained with other compressor settings, e.g. latent_channels, or by '
                f'another version of ecc_mmdet):\n  ' + '\n  '.join(mismatched[:8]) +
                '\nUse the config the checkpoint was trained with.')

    # ------------------------------------------------------------------ helpers
    @property
    def device(self) -> torch.device:
        return self._device_anchor.device

    def _check_input(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[1] != self.in_channels:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f'{type(self).__name__} expects an (N, {self.in_channels}, H, W) '
                             f'feature map, got {shape}')
        return x

    def _check_latent_shape(self, latent_shape: Sequence[int], channels: int,
                            ndim: int = 3) -> Tuple[int, ...]:
        """latent_shape -> tuple of ints, or CorruptedBitstreamError (ndim, channels, sizes)."""
        name = type(self).__name__
        try:
            shape = tuple(operator.index(d) for d in latent_shape)
        except TypeError:
            raise CorruptedBitstreamError(
                f'{name}: latent_shape must be a sequence of ints, got {latent_shape!r}') from None
        if len(shape) != ndim:
            raise CorruptedBitstreamError(
                f'{name}: latent_shape must have {ndim} dims (C, H, W), got {shape}')
        if shape[0] != channels:
            raise CorruptedBitstreamError(
                f'{name}: latent has {shape[0]} channels, this module codes {channels}')
        if any(d < 1 for d in shape[1:]):
            raise CorruptedBitstreamError(f'{name}: empty or negative latent size {shape}')
        numel = 1
        for d in shape:
            numel *= d
        if numel > MAX_DECODED_ELEMENTS:
            raise CorruptedBitstreamError(
                f'{name}: latent_shape {shape} has {numel} elements, more than the '
                f'{MAX_DECODED_ELEMENTS} any real feature map has')
        return shape

    # ------------------------------------------------------------------ interface
    @abstractmethod
    def forward(self, x: Tensor, num_pixels=None,
                object_mask: Optional[Tensor] = None) -> Tuple[Tensor, Dict[str, Tensor]]:
        """(N, C, H, W) -> (x_hat of the same shape, dict of weighted losses).

        ``num_pixels``: pixels of the (padded) input image, used by necks with a rate term in
        bits per pixel; ignored by the others. ``object_mask`` (N, 1, H, W): 1 where a
        ground-truth box lies (training only), for necks whose rate term weighs objects apart;
        ignored by the others.
        """

    @abstractmethod
    def estimate_bits(self, x: Tensor) -> Tensor:
        """Model's estimate of the body bits of each image -> float tensor (N,)."""

    @abstractmethod
    def compress(self, x: Tensor) -> List[CompressedImage]:
        """(N, C, H, W) -> one ``(codec_params, body, latent_shape)`` per image."""

    @abstractmethod
    def decompress(self, codec_params: bytes, body: bytes, latent_shape: Tuple[int, ...],
                   rate_point: Optional[int] = None) -> Tensor:
        """One image's triple and the header's rate point -> float32 (1, C, H, W) on the
        module's device."""

    @property
    def header_rate_point(self) -> Optional[int]:
        """The rate point ``compress`` codes at, for the payload header (None: single rate)."""
        return None

    def _single_rate(self, rate_point: Optional[int]) -> None:
        """Refuse a header rate point sent to a neck that has one rate."""
        if rate_point is not None:
            raise RatePointError(
                f'{type(self).__name__} has a single rate, but the payload names rate point '
                f'{rate_point}: it was coded by a variable-rate model')

    def roundtrip(self, x: Tensor) -> Tensor:
        """``decompress(compress(x))`` for a batch -> (N, C, H, W); for tests and tools."""
        with torch.no_grad():
            return torch.cat([self.decompress(*item, rate_point=self.header_rate_point)
                              for item in self.compress(x)])

    def edge_modules(self) -> List[nn.Module]:
        """Submodules that run on the edge (parameter counting, freezing)."""
        return []

    def coding_models(self) -> List[nn.Module]:
        """Entropy models whose integer tables both sides code with (frozen together with the
        edge once the tables are fixed)."""
        return []

    @property
    def rate_weight(self) -> float:
        """The weight of ``loss_rate`` in the last ``forward`` (0 for necks without one)."""
        return float(getattr(self, 'beta', 0.0) or 0.0)

    def cloud_modules(self) -> List[nn.Module]:
        """Submodules that run on the cloud (parameter counting, freezing)."""
        return []

    def extra_repr(self) -> str:
        return f'in_channels={self.in_channels}, codec={self.codec_name}'

