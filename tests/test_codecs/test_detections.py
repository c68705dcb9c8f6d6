"""The compact detections report: round trip, size, and refusal of bad or forged bytes."""
import struct

import numpy as np
import pytest

from ecc_edge.codecs import BitstreamError
from ecc_edge.codecs.bitstream import (CodecId, CodecMismatchError, CorruptedBitstreamError,
                                        ImageMeta, MessageType, ModelMismatchError, Payload,
                                        TruncatedBitstreamError, pack)
from ecc_edge.codecs.detections import (FRAMING_BYTES, MAX_BOXES, pack_detections,
                                         unpack_detections)


def _example():
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 100, (7, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(1, 50, (7, 2))], 1)
    return boxes, rng.uniform(0, 1, 7), rng.integers(0, 80, 7)


def test_round_trip_within_the_stated_precision():
    boxes, scores, labels = _example()
    data = pack_detections(42, boxes, scores, labels)
    assert len(data) == FRAMING_BYTES + 10 * 7
    d = unpack_detections(data)
    assert d.img_id == 42 and np.array_equal(d.labels, labels)
    assert np.abs(d.bboxes - boxes).max() <= 0.5 + 1e-6  # whole pixels
    assert np.abs(d.scores - scores).max() <= 0.5 / 255 + 1e-6
    empty = pack_detections(1, np.zeros((0, 4)), [], [])
    assert len(empty) == FRAMING_BYTES and len(unpack_detections(empty).labels) == 0


def test_bad_and_forged_reports_are_refused():
    boxes, scores, labels = _example()
    data = pack_detections(3, boxes, scores, labels)
    for cut in range(len(data)):
        with pytest.raises(BitstreamError):
            unpack_detections(data[:cut])
    flipped = bytearray(data)
    flipped[30] ^= 0x01
    with pytest.raises(CorruptedBitstreamError, match='checksum'):
        unpack_detections(bytes(flipped))
    with pytest.raises(CorruptedBitstreamError, match='after'):
        unpack_detections(data + b'\0')
    with pytest.raises(CodecMismatchError):  # a feature payload is not a report
        unpack_detections(pack(Payload(CodecId.FLOAT32, (1, ), ImageMeta((1, 1), (1, 1)))))

    def forged(body):  # a valid message (CRC included) around a hostile body
        return pack(Payload(0, (), None, body=body, msg_type=MessageType.DETECTIONS))

    # a huge declared count is refused before any allocation
    with pytest.raises(CorruptedBitstreamError, match='declares'):
        unpack_detections(forged(struct.pack('<IH', 0, 65535)))
    # an impossible box (x2 < x1) with a valid checksum
    bad = struct.pack('<IH', 0, 1) + struct.pack('<4HBB', 50, 0, 10, 10, 1, 200)
    with pytest.raises(CorruptedBitstreamError, match='x2 < x1'):
        unpack_detections(forged(bad))
    with pytest.raises(TruncatedBitstreamError):
        unpack_detections(forged(b'\x01'))
    # another edge model's report
    fp = bytes(range(8))
    with pytest.raises(ModelMismatchError):
        unpack_detections(pack_detections(3, boxes, scores, labels, fingerprint=fp),
                          expected_fingerprint=bytes(8 * [9]))
    assert unpack_detections(pack_detections(3, boxes, scores, labels, fingerprint=fp),
                             expected_fingerprint=fp).img_id == 3
    with pytest.raises(CorruptedBitstreamError, match='magic'):
        unpack_detections(b'JUNK' + data[4:])
    with pytest.raises(ValueError, match='at most'):
        pack_detections(0, np.zeros((MAX_BOXES + 1, 4)), np.zeros(MAX_BOXES + 1),
                        np.zeros(MAX_BOXES + 1, int))
