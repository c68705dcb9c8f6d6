"""IMAGE messages: an encoded image file in the bitstream framing (:mod:`.bitstream`).

What an edge sends when the cloud needs the pixels: the cloud-only baseline's uplink, and the
images an edge uploads for online adaptation. The header carries the :class:`ImageCodecId`, the
shape (h, w, 3) of the image the cloud is to rebuild (the file may hold it scaled down: the
cloud scales it back), the image meta and the fingerprint of the edge model that chose it; the
codec parameters are empty and the body is the file itself.

:func:`unpack_image` raises only :class:`~.bitstream.BitstreamError` subclasses: besides the
framing's checks, a consistent image meta, a shape within :data:`MAX_IMAGE_SIDE` (a forged
header cannot make the cloud allocate a huge image), a non-empty file whose leading bytes are
those of the declared codec. Decoding the file is the receiver's (an image library's) job.
"""
from typing import NamedTuple, Optional, Tuple

from .bitstream import (NO_FINGERPRINT, CorruptedBitstreamError, ImageCodecId, ImageMeta,
                        MessageType, Payload, as_bytes, pack, unpack)

__all__ = ['MAX_IMAGE_SIDE', 'ImageMessage', 'pack_image', 'unpack_image']

#: largest side (pixels) of an image an IMAGE message may declare
MAX_IMAGE_SIDE = 4096


class ImageMessage(NamedTuple):
    codec: ImageCodecId
    shape: Tuple[int, int, int]  # (h, w, channels) of the image to rebuild
    meta: ImageMeta
    file_bytes: bytes


def _magic_ok(codec: ImageCodecId, f: bytes) -> bool:
    """Whether ``f`` starts like a file of ``codec`` (its container signature)."""
    if codec == ImageCodecId.JPEG:
        return f[:3] == b'\xff\xd8\xff'
    if codec == ImageCodecId.WEBP:
        return f[:4] == b'RIFF' and f[8:12] == b'WEBP'
    if codec == ImageCodecId.PNG:
        return f[:8] == b'\x89PNG\r\n\x1a\n'
    if codec == ImageCodecId.AVIF:  # an ISO-BMFF file: a leading 'ftyp' box
        return f[4:8] == b'ftyp'
    return f[:2] == b'\xff\x0a' or f[:12] == b'\x00\x00\x00\x0cJXL \r\n\x87\n'  # JPEG XL


def _problem(codec: ImageCodecId, shape: tuple, file_bytes: bytes) -> Optional[str]:
    """What is wrong with these fields of an IMAGE message (None: nothing)."""
    if len(shape) != 3 or shape[2] != 3:
        return f'image shape {shape} is not (h, w, 3)'
    if not all(1 <= s <= MAX_IMAGE_SIDE for s in shape[:2]):
        return f'image shape {shape}: each side must be in 1..{MAX_IMAGE_SIDE}'
    if not file_bytes:
        return 'the image file is empty'
    if not _magic_ok(codec, file_bytes):
        return f'the image file does not start like a {codec.name} file'
    return None


def pack_image(file_bytes, codec: ImageCodecId, shape_hwc: tuple, meta: ImageMeta,
               fingerprint: bytes = NO_FINGERPRINT) -> bytes:
    """An encoded image file -> IMAGE message bytes; ValueError for fields a receiver would
    refuse (the sender finds out first)."""
    codec = ImageCodecId(codec)
    file_bytes = as_bytes(file_bytes, 'pack_image: the image file')
    shape = tuple(int(s) for s in shape_hwc)
    problem = _problem(codec, shape, file_bytes)
    if problem:
        raise ValueError(f'pack_image: {problem}')
    meta.check_consistent()
    return pack(Payload(codec, shape, meta, body=file_bytes, msg_type=MessageType.IMAGE,
                        fingerprint=fingerprint))


def unpack_image(data, expected_fingerprint: Optional[bytes] = None) -> ImageMessage:
    """Validate an IMAGE message -> :class:`ImageMessage`; only BitstreamError subclasses for
    bad bytes (``ModelMismatchError`` when it was made by another model than
    ``expected_fingerprint``)."""
    p = unpack(data, expected_type=MessageType.IMAGE, expected_fingerprint=expected_fingerprint,
               check_meta=True)
    if p.codec_params or p.rate_point is not None:
        raise CorruptedBitstreamError('an IMAGE message carries no codec parameters and no '
                                      'rate point')
    problem = _problem(p.codec_id, p.latent_shape, p.body)
    if problem:
        raise CorruptedBitstreamError(f'IMAGE message: {problem}')
    return ImageMessage(p.codec_id, p.latent_shape, p.meta, p.body)
