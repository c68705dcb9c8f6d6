"""Payload framing: the one place that turns what crosses the edge-cloud link into bytes and back.

Every message is framed here, whatever produced its body: a compressed latent (learned entropy
bottleneck, n-bit quantiser, float16), an encoded image (the cloud-only baseline), an edge
detections report, or a parameter update sent down to the edge. Layout of format version 2 (all
integers little-endian)::

    offset  size        field
    0       4           magic b'ECCB'
    4       1           format version (FORMAT_VERSION = 2)
    5       1           message type (MessageType)
    6       1           codec id: CodecId for FEATURES, ImageCodecId for IMAGE, 0 otherwise
    7       1           rate point of the codec (0..254), 255 = the codec has a single rate
    8       8           model fingerprint: the edge weights and coding tables that produced the
                        message (see ecc_mmdet.deployment.fingerprint); zeros when no model did
    16      1           latent ndim D (1..4 for FEATURES and IMAGE, 0 for the others)
    17      4*D         latent dims, u32 each (IMAGE: the decoded image's h, w, channels)
    ...     21 or 33    image meta, FEATURES and IMAGE only (see ImageMeta below)
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
  bytes after the CRC, or (with ``check_meta``) an image meta whose fields contradict each
  other.
* :class:`RatePointError` (a :class:`CorruptedBitstreamError`) -- raised by the decoders, not
  by ``unpack``: the header's rate point is not one the decoding model has.
* :class:`UnsupportedVersionError` -- a format version this code does not read (version 1
  payloads included: they carry no message type and no fingerprint).
* :class:`CodecMismatchError` -- a valid message of another type or codec than the caller
  expected.
* :class:`ModelMismatchError` -- a valid message produced by another model (fingerprint).

A checksum is not authentication: a forged message with a valid CRC gets through the framing, so
the framing also checks what it can of the header's consistency (``check_meta``: finite positive
scale factors, shapes that agree with them, an image inside its padded batch shape), and the
decoders check the latent against the image size before allocating anything.

Checks run in this order: magic (on as many bytes as are present), length of the fixed header,
version, message type, codec id, rate point, structural fields and declared lengths against the
actual length, CRC, trailing bytes, expected type/codec, fingerprint, meta consistency. A flipped
bit is therefore reported as corruption (by the CRC), except in the version byte
(UnsupportedVersionError) and in the few structural bytes (message type, latent ndim, meta
flags, the two length fields), where it may instead make a declared length run past the end and
read as truncation.
"""
from __future__ import annotations

import enum
import math
import struct
import zlib
from dataclasses import dataclass
from typing import Optional, Tuple, Union

__all__ = [
    'BitstreamError', 'TruncatedBitstreamError', 'CorruptedBitstreamError',
    'UnsupportedVersionError', 'CodecMismatchError', 'ModelMismatchError', 'RatePointError',
    'CodecId',
    'ImageCodecId', 'MessageType', 'ImageMeta', 'Payload', 'MAGIC', 'FORMAT_VERSION',
    'FINGERPRINT_BYTES', 'NO_FINGERPRINT', 'pack', 'unpack', 'pack_message', 'unpack_message',
    'framing_overhead', 'as_bytes'
]

MAGIC = b'ECCB'
FORMAT_VERSION = 2
MAX_LATENT_NDIM = 4
FINGERPRINT_BYTES = 8
NO_FINGERPRINT = bytes(FINGERPRINT_BYTES)
_SINGLE_RATE = 255
#: largest scale factor a real pipeline produces (a 1-pixel image resized to 65535)
MAX_SCALE_FACTOR = 65536.0


class BitstreamError(ValueError):
    """Base class of every error raised while parsing a payload."""


class TruncatedBitstreamError(BitstreamError):
    """The payload ends before the fields it declares."""


class CorruptedBitstreamError(BitstreamError):
    """Bad magic, impossible or contradictory field values, checksum mismatch, trailing bytes."""


class RatePointError(CorruptedBitstreamError):
    """A payload coded at a rate point the decoding model does not have (or a rate point sent
    to a single-rate model): decoding it with another point's tables would be silently wrong."""


class UnsupportedVersionError(BitstreamError):
    """The payload's format version is not one this code can read."""


class CodecMismatchError(BitstreamError):
    """A valid payload of another message type or codec than the caller expected."""


class ModelMismatchError(BitstreamError):
    """A valid payload produced by another model (its fingerprint is not the decoder's)."""


class MessageType(enum.IntEnum):
    """What a message carries; stored as one byte."""
    FEATURES = 1  # edge -> cloud: a compressed feature map (the split detector's uplink)
    IMAGE = 2  # edge -> cloud: an encoded image (the cloud-only baseline)
    DETECTIONS = 3  # edge -> cloud: an edge-finished image's compact detections report
    PARAM_UPDATE = 4  # cloud -> edge: updated edge parameters (online adaptation)


class CodecId(enum.IntEnum):
    """Which feature codec produced a FEATURES body; stored as one byte."""
    ENTROPY_BOTTLENECK = 1
    QUANTIZE = 2
    FLOAT16 = 3
    FLOAT32 = 4  # lossless identity, for tests
    VARIABLE_RATE_BOTTLENECK = 5  # one model, several rate points (the point is in the header)
    HYPERPRIOR_BOTTLENECK = 6  # mean-scale hyperprior (side information + Gaussian conditional)
    VARIABLE_RATE_HYPERPRIOR = 7  # the hyperprior with rate points (the point is in the header)
    CHANNEL_CONTEXT_HYPERPRIOR = 8  # the hyperprior with y coded in channel slices, in order
    VARIABLE_RATE_CHANNEL_CONTEXT = 9  # the channel-context hyperprior with rate points


class ImageCodecId(enum.IntEnum):
    """Which image codec produced an IMAGE body."""
    JPEG = 1
    WEBP = 2
    PNG = 3
    AVIF = 4
    JPEG_XL = 5


#: message types whose header carries a latent shape and an image meta; their codec enum
_CODECS = {MessageType.FEATURES: CodecId, MessageType.IMAGE: ImageCodecId}

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

    def check_consistent(self) -> None:
        """ValueError unless the fields agree the way an mmdet test pipeline makes them agree:
        non-empty shapes, finite positive scale factors, ``img_shape`` = ``ori_shape`` x
        ``scale_factor`` (within a pixel), and the image inside its padded batch shape.

        Box rescaling divides by the scale factor and clips to ``img_shape``: a forged meta that
        breaks these would give infinite or out-of-image boxes.
        """
        if min(*self.ori_shape, *self.img_shape) < 1:
            raise ValueError(f'empty image: ori_shape {self.ori_shape}, img_shape '
                             f'{self.img_shape}')
        if any(not (math.isfinite(s) and 0 < s <= MAX_SCALE_FACTOR) for s in self.scale_factor):
            raise ValueError(f'scale_factor {self.scale_factor} is not a finite positive number')
        for i, axis in ((1, 0), (0, 1)):  # scale_factor is (w, h), shapes (h, w)
            expected = self.ori_shape[axis] * self.scale_factor[i]
            if abs(expected - self.img_shape[axis]) > 1.0 + 1e-4 * expected:
                raise ValueError(
                    f'img_shape {self.img_shape} is not ori_shape {self.ori_shape} scaled by '
                    f'{self.scale_factor}')
        if any(i > b for i, b in zip(self.img_shape, self.batch_input_shape)):
            raise ValueError(f'img_shape {self.img_shape} exceeds batch_input_shape '
                             f'{self.batch_input_shape}')

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
    """One message: a header (type, codec, rate point, fingerprint, latent shape, image meta)
    plus the codec's own parameters and body.

    For FEATURES and IMAGE messages ``latent_shape`` has 1..4 dims and ``meta`` is required; for
    DETECTIONS and PARAM_UPDATE both are empty. ``rate_point`` is None for single-rate codecs.
    """
    codec_id: int
    latent_shape: Tuple[int, ...]
    meta: Optional[ImageMeta]
    codec_params: bytes = b''
    body: bytes = b''
    msg_type: MessageType = MessageType.FEATURES
    rate_point: Optional[int] = None
    fingerprint: bytes = NO_FINGERPRINT

    def __post_init__(self):
        self.msg_type = MessageType(self.msg_type)
        codecs = _CODECS.get(self.msg_type)
        if codecs is not None:
            self.codec_id = codecs(self.codec_id)
            if not 1 <= len(tuple(self.latent_shape)) <= MAX_LATENT_NDIM:
                raise ValueError(f'{self.msg_type.name}: latent_shape must have '
                                 f'1..{MAX_LATENT_NDIM} dims, got {self.latent_shape}')
            if not isinstance(self.meta, ImageMeta):
                raise ValueError(f'{self.msg_type.name} messages carry an ImageMeta')
        else:
            if int(self.codec_id) != 0 or tuple(self.latent_shape) or self.meta is not None:
                raise ValueError(f'{self.msg_type.name} messages carry no codec id, latent '
                                 'shape or image meta')
            self.codec_id = 0
        self.latent_shape = tuple(int(d) for d in self.latent_shape)
        if any(not 0 <= d < 2**32 for d in self.latent_shape):
            raise ValueError(f'latent dims must fit in u32, got {self.latent_shape}')
        if self.rate_point is not None and not 0 <= int(self.rate_point) < _SINGLE_RATE:
            raise ValueError(f'rate_point must be in 0..{_SINGLE_RATE - 1}, got '
                             f'{self.rate_point}')
        self.fingerprint = bytes(self.fingerprint)
        if len(self.fingerprint) != FINGERPRINT_BYTES:
            raise ValueError(f'fingerprint must be {FINGERPRINT_BYTES} bytes, got '
                             f'{len(self.fingerprint)}')
        self.codec_params = bytes(self.codec_params)
        self.body = bytes(self.body)


_U32 = struct.Struct('<I')
_FIXED = struct.Struct(f'<4sBBBB{FINGERPRINT_BYTES}sB')  # magic .. fingerprint, ndim


def pack(payload: Payload) -> bytes:
    """Serialise a message (see the module docstring for the layout)."""
    shape = tuple(payload.latent_shape)
    params, body = bytes(payload.codec_params), bytes(payload.body)
    if len(params) >= 2**32 or len(body) >= 2**32:
        raise ValueError('codec_params and body must each be shorter than 4 GiB')
    rate = _SINGLE_RATE if payload.rate_point is None else int(payload.rate_point)
    out = bytearray(_FIXED.pack(MAGIC, FORMAT_VERSION, int(payload.msg_type),
                                int(payload.codec_id), rate, payload.fingerprint, len(shape)))
    out += struct.pack(f'<{len(shape)}I', *shape)
    if payload.meta is not None:
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
    meta = len(payload.meta.to_bytes()) if payload.meta is not None else 0
    return (_FIXED.size + 4 * len(payload.latent_shape) + meta + 4 + len(payload.codec_params) +
            4 + 4)


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


def _read_header(r: _Reader) -> tuple:
    """Fixed header and latent shape -> (msg_type, codec_id, rate, fingerprint, shape)."""
    _, _, mtype, codec, rate, fingerprint, ndim = _FIXED.unpack(
        r.take(_FIXED.size, 'fixed header'))
    try:
        msg_type = MessageType(mtype)
    except ValueError:
        raise CorruptedBitstreamError(f'unknown message type {mtype}') from None
    codecs = _CODECS.get(msg_type)
    if codecs is not None:
        try:
            codec_id = codecs(codec)
        except ValueError:
            raise CorruptedBitstreamError(f'unknown {msg_type.name} codec id {codec}') from None
        if not 1 <= ndim <= MAX_LATENT_NDIM:
            raise CorruptedBitstreamError(f'latent ndim {ndim} outside 1..{MAX_LATENT_NDIM}')
    else:
        if codec != 0 or ndim != 0:
            raise CorruptedBitstreamError(
                f'{msg_type.name} message with codec id {codec} / latent ndim {ndim} (both '
                'must be 0)')
        codec_id = 0
    shape = struct.unpack(f'<{ndim}I', r.take(4 * ndim, 'latent shape'))
    return msg_type, codec_id, rate, fingerprint, tuple(shape)


def _read_meta_fields(r: _Reader) -> tuple:
    """The image meta block of a feature message -> (flags, shapes, scale), not yet validated."""
    flags = r.take(1, 'meta flags')[0]
    if flags & ~_FLAG_MASK:
        raise CorruptedBitstreamError(f'reserved meta flag bits set: {flags:#04x}')
    wide = bool(flags & _WIDE_BIT)
    shapes = struct.unpack('<6I' if wide else '<6H', r.take(24 if wide else 12,
                                                            'meta shapes'))
    scale = struct.unpack('<2f', r.take(8, 'meta scale factor'))
    return flags, shapes, scale


def _check_checksum(r: _Reader, data: bytes) -> None:
    crc_end = r.pos
    (crc, ) = _U32.unpack(r.take(4, 'checksum'))
    if crc != zlib.crc32(data[:crc_end]):
        raise CorruptedBitstreamError('checksum mismatch: payload corrupted')
    if r.pos != len(data):
        raise CorruptedBitstreamError(f'{len(data) - r.pos} unexpected bytes after the checksum')


def _check_expected(msg_type: MessageType, codec_id, fingerprint: bytes,
                    expected_codec: Optional[int], expected_type: Optional[MessageType],
                    expected_fingerprint: Optional[bytes]) -> None:
    """Refuse a well-formed message that is not the one this reader was built for."""
    if expected_type is None and expected_codec is not None:
        expected_type = MessageType.FEATURES
    if expected_type is not None and msg_type != expected_type:
        raise CodecMismatchError(f'a {msg_type.name} message, expected '
                                 f'{MessageType(expected_type).name}')
    if expected_codec is not None and codec_id != expected_codec:
        name = getattr(codec_id, 'name', codec_id)
        raise CodecMismatchError(f'payload was produced by codec {name}, expected '
                                 f'{_CODECS.get(msg_type)(expected_codec).name}')
    if expected_fingerprint is not None and bytes(expected_fingerprint) != NO_FINGERPRINT \
            and fingerprint != bytes(expected_fingerprint):
        raise ModelMismatchError(
            f'payload was produced by the model with fingerprint {fingerprint.hex()}, this '
            f'decoder holds {bytes(expected_fingerprint).hex()}: deploy the edge and the cloud '
            'from the same checkpoint')


def _image_meta(meta_fields: tuple, check_meta: bool) -> ImageMeta:
    flags, shapes, scale = meta_fields
    try:
        meta = ImageMeta(ori_shape=shapes[0:2], img_shape=shapes[2:4],
                         batch_input_shape=shapes[4:6], scale_factor=scale,
                         flip_direction=_FLIP_NAMES[flags & 0x03])
        if check_meta:
            meta.check_consistent()
    except ValueError as e:
        raise CorruptedBitstreamError(f'invalid image meta: {e}') from e
    return meta


def unpack(data: Union[bytes, bytearray, memoryview],
           expected_codec: Optional[int] = None,
           expected_type: Optional[MessageType] = None,
           expected_fingerprint: Optional[bytes] = None,
           check_meta: bool = False) -> Payload:
    """Parse and validate a message; raises only BitstreamError subclasses on bad bytes.

    ``expected_type`` defaults to FEATURES when ``expected_codec`` is given. A fingerprint of
    zeros in ``expected_fingerprint`` accepts any message (an untrained, unfingerprinted model).
    The checks run in the order of the bytes, so the first damage found is the one reported.
    """
    data = as_bytes(data, 'unpack: the payload')
    if data[:len(MAGIC)] != MAGIC[:len(data)]:
        raise CorruptedBitstreamError(f'bad magic {data[:4]!r}, expected {MAGIC!r}')
    if len(data) > len(MAGIC) and data[4] != FORMAT_VERSION:
        raise UnsupportedVersionError(
            f'payload format version {data[4]}; this code reads version {FORMAT_VERSION} '
            '(re-encode it with this version of ecc_mmdet on the edge)')
    r = _Reader(data)
    msg_type, codec_id, rate, fingerprint, shape = _read_header(r)
    has_meta = msg_type in _CODECS
    meta_fields = _read_meta_fields(r) if has_meta else None
    params = r.take(r.u32('codec params length'), 'codec params')
    body = r.take(r.u32('body length'), 'body')
    _check_checksum(r, data)
    _check_expected(msg_type, codec_id, fingerprint, expected_codec, expected_type,
                    expected_fingerprint)
    meta = _image_meta(meta_fields, check_meta) if has_meta else None
    return Payload(codec_id=codec_id, latent_shape=shape, meta=meta, codec_params=params,
                   body=body, msg_type=msg_type,
                   rate_point=None if rate == _SINGLE_RATE else rate, fingerprint=fingerprint)


def pack_message(msg_type: 'MessageType', body: bytes, fingerprint: bytes = NO_FINGERPRINT
                 ) -> bytes:
    """A message without a feature map (detections report, parameter update): the framing,
    type and fingerprint around ``body``."""
    return pack(Payload(0, (), None, body=bytes(body), msg_type=msg_type,
                        fingerprint=fingerprint))


def unpack_message(data, msg_type: 'MessageType', head: struct.Struct, what: str,
                   expected_fingerprint: Optional[bytes] = None) -> Tuple[bytes, tuple]:
    """Validate a :func:`pack_message` message of ``msg_type`` -> (body, the fields of its
    leading ``head`` struct); a body shorter than ``head`` is a :class:`TruncatedBitstreamError`
    naming ``what``."""
    body = unpack(data, expected_type=msg_type, expected_fingerprint=expected_fingerprint).body
    if len(body) < head.size:
        raise TruncatedBitstreamError(f'{what} body of {len(body)} bytes is truncated')
    return body, head.unpack_from(body)
