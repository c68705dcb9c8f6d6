"""Payload framing: the one place that turns a compressed latent into bytes and back.

Every payload that crosses the edge -> cloud link is framed here, whatever produced its body
(learned entropy bottleneck, n-bit quantiser, float16 baseline, ...). The layout (all integers
little-endian) is::

    offset  size        field
    0       4           magic b'ECCB'
    4       1           format version (FORMAT_VERSION = 1)
    5       1           codec id (CodecId)
    6       1           latent ndim D (1..4)
    7       4*D         latent dims, u32 each
    ...     21 or 33    image meta (see ImageMeta below)
    ...     4 + P       u32 P = len(codec_params), then codec_params (codec-specific header)
    ...     4 + B       u32 B = len(body), then body
    ...     4           CRC32 (zlib.crc32) of every byte before it

Image meta: one flags byte (bit 0-1: flip direction 0=none, 1=horizontal, 2=vertical,
3=diagonal; bit 2: "wide" shapes; bits 3-7 must be zero), then ori_shape, img_shape and
batch_input_shape as (h, w) pairs of u16 (u32 when any side exceeds 65535 -- the wide bit),
then scale_factor (w_scale, h_scale) as two float32. scale_factor therefore round-trips
float32-exactly, not float64-exactly (``to_metainfo`` returns the float32 value widened to a
Python float); that is ~7 significant digits, far below a pixel for any image size.

Errors. ``unpack`` raises only subclasses of :class:`BitstreamError` (itself a ``ValueError``)
for ANY input bytes, and ``TypeError`` when the input is not bytes-like:

* :class:`TruncatedBitstreamError` -- the data ends before the fields it declares (shorter than
  the fixed header, or a declared length runs past the end). Every strict prefix of a valid
  payload raises this.
* :class:`CorruptedBitstreamError` -- bad magic, a field with an impossible value, CRC mismatch,
  or bytes after the CRC.
* :class:`UnsupportedVersionError` -- a format version this code does not read.
* :class:`CodecMismatchError` -- a valid payload whose codec is not the one the caller expected.

Checks run in this order: magic (on as many bytes as are present), length of the fixed header,
version, codec id, structural fields and declared lengths against the actual length, CRC,
trailing bytes, expected codec. A flipped bit is therefore reported as corruption (by the CRC),
except in the version byte (UnsupportedVersionError) and in the few structural bytes (latent
ndim, meta flags, the two length fields), where it may instead make a declared length run past
the end and read as truncation.
"""
from __future__ import annotations

import enum
import struct
import zlib
from dataclasses import dataclass
from typing import Optional, Tuple, Union

__all__ = [
    'BitstreamError', 'TruncatedBitstreamError', 'CorruptedBitstreamError',
    'UnsupportedVersionError', 'CodecMismatchError', 'CodecId', 'ImageMeta', 'Payload',
    'MAGIC', 'FORMAT_VERSION', 'pack', 'unpack', 'framing_overhead'
]

MAGIC = b'ECCB'
FORMAT_VERSION = 1
MAX_LATENT_NDIM = 4


class BitstreamError(ValueError):
    """Base class of every error raised while parsing a payload."""


class TruncatedBitstreamError(BitstreamError):
    """The payload ends before the fields it declares."""


class CorruptedBitstreamError(BitstreamError):
    """Bad magic, impossible field value, checksum mismatch or trailing bytes."""


class UnsupportedVersionError(BitstreamError):
    """The payload's format version is not one this code can read."""


class CodecMismatchError(BitstreamError):
    """A valid payload produced by a different codec than the caller expected."""


class CodecId(enum.IntEnum):
    """Which codec produced the body; stored as one byte."""
    ENTROPY_BOTTLENECK = 1
    QUANTIZE = 2
    FLOAT16 = 3
    FLOAT32 = 4  # lossless identity, for tests
    VARIABLE_RATE_BOTTLENECK = 5  # one model, several rate points (the point is in codec_params)


_FLIP_CODES = {None: 0, 'horizontal': 1, 'vertical': 2, 'diagonal': 3}
_FLIP_NAMES = {v: k for k, v in _FLIP_CODES.items()}
_WIDE_BIT = 0x04
_FLAG_MASK = 0x07

Shape2 = Tuple[int, int]


def _pair(value, name: str) -> Shape2:
    try:
        h, w = (int(v) for v in tuple(value)[:2])
    except (TypeError, ValueError) as e:
        raise ValueError(f'{name} must be an (h, w) pair, got {value!r}') from e
    return h, w


@dataclass
class ImageMeta:
    """What the cloud needs of mmdet's image meta to finish detection and rescale boxes.

    Shapes are (h, w); scale_factor is (w_scale, h_scale) as in mmdet 3.x.
    """
    ori_shape: Shape2
    img_shape: Shape2
    batch_input_shape: Optional[Shape2] = None
    scale_factor: Tuple[float, float] = (1.0, 1.0)
    flip_direction: Optional[str] = None

    def __post_init__(self):
        self.ori_shape = _pair(self.ori_shape, 'ori_shape')
        self.img_shape = _pair(self.img_shape, 'img_shape')
        self.batch_input_shape = (self.img_shape if self.batch_input_shape is None else
                                  _pair(self.batch_input_shape, 'batch_input_shape'))
        sf = self.scale_factor
        if isinstance(sf, (int, float)):
            sf = (sf, sf)
        sf = tuple(float(v) for v in tuple(sf))
        if len(sf) != 2:
            raise ValueError(f'scale_factor must be (w_scale, h_scale), got {self.scale_factor!r}')
        self.scale_factor = sf
        if self.flip_direction not in _FLIP_CODES:
            raise ValueError(f'unknown flip_direction {self.flip_direction!r}')
        for name in ('ori_shape', 'img_shape', 'batch_input_shape'):
            if any(not 0 <= v < 2**32 for v in getattr(self, name)):
                raise ValueError(f'{name} {getattr(self, name)} does not fit in u32')

    @classmethod
    def from_metainfo(cls, metainfo: dict) -> 'ImageMeta':
        """Build from ``DetDataSample.metainfo``; missing optional keys get defaults.

        ``flip=True`` without ``flip_direction`` means 'horizontal' (mmdet's RandomFlip default);
        ``flip=False`` wins over a stale ``flip_direction``.
        """
        img_shape = metainfo.get('img_shape', metainfo.get('ori_shape'))
        ori_shape = metainfo.get('ori_shape', img_shape)
        if img_shape is None:
            raise ValueError('metainfo needs at least img_shape or ori_shape')
        flip = metainfo.get('flip', None)
        direction = metainfo.get('flip_direction', None)
        if flip is False:
            direction = None
        elif flip and direction is None:
            direction = 'horizontal'
        sf = metainfo.get('scale_factor', (1.0, 1.0))
        if sf is None:
            sf = (1.0, 1.0)
        return cls(ori_shape=ori_shape, img_shape=img_shape,
                   batch_input_shape=metainfo.get('batch_input_shape', None),
                   scale_factor=tuple(sf) if not isinstance(sf, (int, float)) else sf,
                   flip_direction=direction)

    def to_metainfo(self) -> dict:
        return dict(ori_shape=tuple(self.ori_shape), img_shape=tuple(self.img_shape),
                    batch_input_shape=tuple(self.batch_input_shape),
                    scale_factor=tuple(float(v) for v in self.scale_factor),
                    flip=self.flip_direction is not None, flip_direction=self.flip_direction)

    def to_bytes(self) -> bytes:
        shapes = (*self.ori_shape, *self.img_shape, *self.batch_input_shape)
        wide = any(v > 0xFFFF for v in shapes)
        flags = _FLIP_CODES[self.flip_direction] | (_WIDE_BIT if wide else 0)
        return (struct.pack('<B', flags) + struct.pack('<6I' if wide else '<6H', *shapes) +
                struct.pack('<2f', *self.scale_factor))

    @staticmethod
    def encoded_size(flags: int) -> int:
        return 1 + (24 if flags & _WIDE_BIT else 12) + 8


@dataclass
class Payload:
    """One image's compressed latent plus what the cloud needs to decode and rescale it."""
    codec_id: CodecId
    latent_shape: Tuple[int, ...]
    meta: ImageMeta
    codec_params: bytes = b''
    body: bytes = b''

    def __post_init__(self):
        self.codec_id = CodecId(self.codec_id)
        self.latent_shape = tuple(int(d) for d in self.latent_shape)
        self.codec_params = bytes(self.codec_params)
        self.body = bytes(self.body)


_U32 = struct.Struct('<I')
_FIXED = struct.Struct('<4sBBB')  # magic, version, codec, ndim


def pack(payload: Payload) -> bytes:
    """Serialise a payload (see the module docstring for the layout)."""
    shape = tuple(payload.latent_shape)
    if not 1 <= len(shape) <= MAX_LATENT_NDIM:
        raise ValueError(f'latent_shape must have 1..{MAX_LATENT_NDIM} dims, got {shape}')
    if any(not 0 <= d < 2**32 for d in shape):
        raise ValueError(f'latent dims must fit in u32, got {shape}')
    params, body = bytes(payload.codec_params), bytes(payload.body)
    if len(params) >= 2**32 or len(body) >= 2**32:
        raise ValueError('codec_params and body must each be shorter than 4 GiB')
    out = bytearray(_FIXED.pack(MAGIC, FORMAT_VERSION, int(CodecId(payload.codec_id)), len(shape)))
    out += struct.pack(f'<{len(shape)}I', *shape)
    try:
        out += payload.meta.to_bytes()
    except (struct.error, KeyError, TypeError) as e:  # fields mutated after construction
        raise ValueError(f'invalid image meta {payload.meta!r}: {e}') from e
    out += _U32.pack(len(params)) + params
    out += _U32.pack(len(body)) + body
    out += _U32.pack(zlib.crc32(out))
    return bytes(out)


def framing_overhead(payload: Payload) -> int:
    """Bytes of ``pack(payload)`` that are not body: header + codec params + checksum."""
    shape_bytes = 4 * len(payload.latent_shape)
    return (_FIXED.size + shape_bytes + len(payload.meta.to_bytes()) + 4 +
            len(payload.codec_params) + 4 + 4)


class _Reader:
    """Cursor over the payload that reports running past the end as truncation."""

    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def take(self, n: int, what: str) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise TruncatedBitstreamError(
                f'payload truncated: {what} needs bytes {self.pos}..{end}, '
                f'only {len(self.data)} present')
        chunk = self.data[self.pos:end]
        self.pos = end
        return chunk

    def u32(self, what: str) -> int:
        return _U32.unpack(self.take(4, what))[0]


def as_bytes(data, what: str = 'data') -> bytes:
    """``bytes(data)`` for bytes-like input; ``TypeError`` naming ``what`` for anything else.

    Every reader of untrusted bytes (framing, range decoders, compressors) goes through this, so
    a str, an int or a tensor is refused the same way everywhere instead of being coerced.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f'{what} must be bytes-like, got {type(data).__name__}')
    return bytes(data)


def unpack(data: Union[bytes, bytearray, memoryview],
           expected_codec: Optional[CodecId] = None) -> Payload:
    """Parse and validate a payload; raises only BitstreamError subclasses on bad bytes."""
    data = as_bytes(data, 'unpack: the payload')
    if data[:len(MAGIC)] != MAGIC[:len(data)]:
        raise CorruptedBitstreamError(f'bad magic {data[:4]!r}, expected {MAGIC!r}')
    r = _Reader(data)
    magic, version, codec, ndim = _FIXED.unpack(r.take(_FIXED.size, 'fixed header'))
    if version != FORMAT_VERSION:
        raise UnsupportedVersionError(
            f'payload format version {version}; this code reads version {FORMAT_VERSION}')
    try:
        codec_id = CodecId(codec)
    except ValueError:
        raise CorruptedBitstreamError(f'unknown codec id {codec}') from None
    if not 1 <= ndim <= MAX_LATENT_NDIM:
        raise CorruptedBitstreamError(f'latent ndim {ndim} outside 1..{MAX_LATENT_NDIM}')
    shape = struct.unpack(f'<{ndim}I', r.take(4 * ndim, 'latent shape'))
    flags = r.take(1, 'meta flags')[0]
    if flags & ~_FLAG_MASK:
        raise CorruptedBitstreamError(f'reserved meta flag bits set: {flags:#04x}')
    wide = bool(flags & _WIDE_BIT)
    shapes = struct.unpack('<6I' if wide else '<6H', r.take(24 if wide else 12, 'meta shapes'))
    scale = struct.unpack('<2f', r.take(8, 'meta scale factor'))
    params = r.take(r.u32('codec params length'), 'codec params')
    body = r.take(r.u32('body length'), 'body')
    crc_end = r.pos
    (crc, ) = _U32.unpack(r.take(4, 'checksum'))
    if crc != zlib.crc32(data[:crc_end]):
        raise CorruptedBitstreamError('checksum mismatch: payload corrupted')
    if r.pos != len(data):
        raise CorruptedBitstreamError(f'{len(data) - r.pos} unexpected bytes after the checksum')
    if expected_codec is not None and codec_id != CodecId(expected_codec):
        raise CodecMismatchError(
            f'payload was produced by codec {codec_id.name}, '
            f'expected {CodecId(expected_codec).name}')
    try:
        meta = ImageMeta(ori_shape=shapes[0:2], img_shape=shapes[2:4],
                         batch_input_shape=shapes[4:6], scale_factor=scale,
                         flip_direction=_FLIP_NAMES[flags & 0x03])
    except ValueError as e:  # defensive: every field above is range-checked by construction
        raise CorruptedBitstreamError(f'invalid image meta: {e}') from e
    return Payload(codec_id=codec_id, latent_shape=tuple(shape), meta=meta,
                   codec_params=params, body=body)
