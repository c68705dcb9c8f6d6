"""The compact detections report: what an image finished on the edge may send up instead of
features, when the application needs every result centrally.

It is a DETECTIONS message of the bitstream format (:mod:`.bitstream`: header with the
edge model's fingerprint, no latent, no image meta, CRC); its body (little-endian)::

    offset  size    field
    0       4       image id (u32)
    4       2       box count N (u16, <= MAX_BOXES)
    6       10*N    per box: x1, y1, x2, y2 (u16, whole pixels of the original image),
                    label (u8), score (u8, round(score * 255))

Boxes are rounded to whole pixels and scores to 1/255: the report is for collection and
display, not for re-scoring. :func:`unpack_detections` raises only
:class:`~ecc_edge.codecs.bitstream.BitstreamError` subclasses for any input and allocates no more
than the input's length implies; it also refuses boxes whose x2 < x1 or y2 < y1 (a CRC is not
authentication: a forged report with a valid checksum still cannot yield an impossible box).
"""
import struct
from typing import NamedTuple

import numpy as np

from .bitstream import (NO_FINGERPRINT, CorruptedBitstreamError, MessageType, pack_message,
                        unpack_message)

__all__ = ['Detections', 'pack_detections', 'unpack_detections', 'MAX_BOXES', 'FRAMING_BYTES']

MAX_BOXES = 1000
_HEAD = struct.Struct('<IH')
_BOX = struct.Struct('<4HBB')
#: bytes of a report that are not boxes (message framing + image id + count)
FRAMING_BYTES = len(pack_message(MessageType.DETECTIONS, b'')) + _HEAD.size


class Detections(NamedTuple):
    img_id: int
    bboxes: np.ndarray  # (N, 4) float32, xyxy
    scores: np.ndarray  # (N,) float32
    labels: np.ndarray  # (N,) int64


def pack_detections(img_id: int, bboxes, scores, labels,
                    fingerprint: bytes = NO_FINGERPRINT) -> bytes:
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
    body = bytearray(_HEAD.pack(int(img_id), len(b)))
    for box, score, label in zip(b.astype(int), s.astype(int), lab.astype(int)):
        body += _BOX.pack(*box.tolist(), label, score)
    return pack_message(MessageType.DETECTIONS, body, fingerprint)


def unpack_detections(data, expected_fingerprint=None) -> Detections:
    body, (img_id, n) = unpack_message(data, MessageType.DETECTIONS, _HEAD, 'detections report',
                                       expected_fingerprint)
    if n > MAX_BOXES:
        raise CorruptedBitstreamError(f'detections report declares {n} boxes (max {MAX_BOXES})')
    size = _HEAD.size + n * _BOX.size
    if len(body) != size:
        raise CorruptedBitstreamError(f'detections report declares {n} boxes: a {size}-byte '
                                      f'body, got {len(body)}')
    rows = np.frombuffer(body, dtype=np.dtype([('box', '<u2', 4), ('label', 'u1'),
                                               ('score', 'u1')]),
                         count=n, offset=_HEAD.size)
    boxes = rows['box'].astype(np.float32)
    if n and ((boxes[:, 2] < boxes[:, 0]).any() or (boxes[:, 3] < boxes[:, 1]).any()):
        raise CorruptedBitstreamError('detections report holds a box with x2 < x1 or y2 < y1')
    return Detections(int(img_id), boxes, rows['score'].astype(np.float32) / 255,
                      rows['label'].astype(np.int64))
