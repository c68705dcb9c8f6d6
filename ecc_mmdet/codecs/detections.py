"""The compact detections report: what an image finished on the edge may send up instead of
features, when the application needs every result centrally.

Layout (little-endian)::

    offset  size    field
    0       4       magic b'ECDR'
    4       1       version (1)
    5       4       image id (u32)
    9       2       box count N (u16, <= MAX_BOXES)
    11      10*N    per box: x1, y1, x2, y2 (u16, whole pixels of the original image),
                    label (u8), score (u8, round(score * 255))
    ...     4       CRC32 of every byte before it

Boxes are rounded to whole pixels and scores to 1/255: the report is for collection and
display, not for re-scoring. :func:`unpack_detections` raises only
:class:`~ecc_mmdet.codecs.bitstream.BitstreamError` subclasses for any input and allocates no more
than the input's length implies; it also refuses boxes whose x2 < x1 or y2 < y1 (a CRC is not
authentication: a forged report with a valid checksum still cannot yield an impossible box).
"""
import struct
import zlib
from typing import NamedTuple

import numpy as np

from .bitstream import (CorruptedBitstreamError, TruncatedBitstreamError,
                        UnsupportedVersionError, as_bytes)

__all__ = ['Detections', 'pack_detections', 'unpack_detections', 'MAX_BOXES', 'FRAMING_BYTES']

MAGIC = b'ECDR'
VERSION = 1
MAX_BOXES = 1000
_HEAD = struct.Struct('<4sBIH')
_BOX = struct.Struct('<4HBB')
#: bytes of a report that are not boxes (header + CRC)
FRAMING_BYTES = _HEAD.size + 4


class Detections(NamedTuple):
    img_id: int
    bboxes: np.ndarray  # (N, 4) float32, xyxy
    scores: np.ndarray  # (N,) float32
    labels: np.ndarray  # (N,) int64


def pack_detections(img_id: int, bboxes, scores, labels) -> bytes:
    """One image's detections -> report bytes (boxes clipped to [0, 65535] px)."""
    b = np.clip(np.rint(np.asarray(bboxes, dtype=np.float64).reshape(-1, 4)), 0, 65535)
    s = np.clip(np.rint(np.asarray(scores, dtype=np.float64).reshape(-1) * 255), 0, 255)
    lab = np.asarray(labels).reshape(-1)
    if not len(b) == len(s) == len(lab):
        raise ValueError(f'{len(b)} boxes, {len(s)} scores, {len(lab)} labels')
    if len(b) > MAX_BOXES:
        raise ValueError(f'{len(b)} boxes: a report holds at most {MAX_BOXES}; keep the top ones')
    if len(lab) and (lab.min() < 0 or lab.max() > 255):
        raise ValueError('labels must be in [0, 255]')
    if not 0 <= int(img_id) < 2**32:
        raise ValueError(f'img_id must fit in 32 bits, got {img_id}')
    out = bytearray(_HEAD.pack(MAGIC, VERSION, int(img_id), len(b)))
    for box, score, label in zip(b.astype(int), s.astype(int), lab.astype(int)):
        out += _BOX.pack(*box.tolist(), label, score)
    out += struct.pack('<I', zlib.crc32(out))
    return bytes(out)


def unpack_detections(data) -> Detections:
    data = as_bytes(data)
    if data[:4] != MAGIC[:len(data[:4])]:
        raise CorruptedBitstreamError('not a detections report (bad magic)')
    if len(data) < _HEAD.size + 4:
        raise TruncatedBitstreamError(f'detections report of {len(data)} bytes is truncated')
    _, version, img_id, n = _HEAD.unpack_from(data)
    if version != VERSION:
        raise UnsupportedVersionError(f'detections report version {version}, this reads '
                                      f'{VERSION}')
    if n > MAX_BOXES:
        raise CorruptedBitstreamError(f'detections report declares {n} boxes (max {MAX_BOXES})')
    size = _HEAD.size + n * _BOX.size + 4
    if len(data) < size:
        raise TruncatedBitstreamError(f'detections report declares {n} boxes: {size} bytes, '
                                      f'got {len(data)}')
    if len(data) > size:
        raise CorruptedBitstreamError(f'{len(data) - size} bytes after the report\'s CRC')
    if struct.unpack_from('<I', data, size - 4)[0] != zlib.crc32(data[:size - 4]):
        raise CorruptedBitstreamError('detections report CRC mismatch')
    rows = np.frombuffer(data, dtype=np.dtype([('box', '<u2', 4), ('label', 'u1'),
                                               ('score', 'u1')]),
                         count=n, offset=_HEAD.size)
    boxes = rows['box'].astype(np.float32)
    if n and ((boxes[:, 2] < boxes[:, 0]).any() or (boxes[:, 3] < boxes[:, 1]).any()):
        raise CorruptedBitstreamError('detections report holds a box with x2 < x1 or y2 < y1')
    return Detections(int(img_id), boxes, rows['score'].astype(np.float32) / 255,
                      rows['label'].astype(np.int64))
