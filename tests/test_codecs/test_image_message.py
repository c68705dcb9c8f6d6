"""IMAGE messages: round trip, and every damaged or forged message is a BitstreamError."""
import struct
import zlib

import cv2
import numpy as np
import pytest

from ecc_edge.codecs import (BitstreamError, CodecId, CodecMismatchError, CorruptedBitstreamError,
                             ImageCodecId, ImageMeta, MessageType, ModelMismatchError, Payload,
                             TruncatedBitstreamError, pack, pack_image, unpack_image)
from ecc_edge.codecs.image_message import MAX_IMAGE_SIDE

FP = b'\x01\x02\x03\x04\x05\x06\x07\x08'
META = ImageMeta(ori_shape=(30, 40), img_shape=(60, 80), batch_input_shape=(64, 96),
                 scale_factor=(2.0, 2.0), flip_direction=None)


@pytest.fixture(scope='module')
def webp():
    img = np.random.default_rng(0).integers(0, 256, (60, 80, 3), dtype=np.uint8)
    return cv2.imencode('.webp', img, [cv2.IMWRITE_WEBP_QUALITY, 50])[1].tobytes()


def _forged(file_bytes, shape=(60, 80, 3), meta=META, codec=ImageCodecId.WEBP, params=b''):
    """A message with any field, framed with a valid CRC (the framing cannot tell)."""
    data = pack(Payload(codec, shape, meta, codec_params=params, body=file_bytes,
                        msg_type=MessageType.IMAGE, fingerprint=FP))
    return data[:-4] + struct.pack('<I', zlib.crc32(data[:-4]))


def test_round_trip(webp):
    data = pack_image(webp, ImageCodecId.WEBP, (60, 80, 3), META, FP)
    msg = unpack_image(data, expected_fingerprint=FP)
    assert msg.codec == ImageCodecId.WEBP and msg.shape == (60, 80, 3)
    assert msg.file_bytes == webp and msg.meta == META
    assert len(data) - len(webp) < 64  # the framing is small
    with pytest.raises(ModelMismatchError):
        unpack_image(data, expected_fingerprint=bytes(reversed(FP)))
    features = pack(Payload(CodecId.FLOAT32, (1, 2), META, body=b'\0' * 8, fingerprint=FP))
    with pytest.raises(CodecMismatchError):
        unpack_image(features)


def test_every_truncation_and_every_bit_flip_is_refused(webp):
    data = pack_image(webp[:300], ImageCodecId.WEBP, (60, 80, 3), META, FP)
    for n in range(len(data)):
        with pytest.raises(BitstreamError):
            unpack_image(data[:n])
    for n in range(5, len(data)):  # past the magic: a declared length runs past the end
        with pytest.raises(TruncatedBitstreamError):
            unpack_image(data[:n])
    for pos in range(len(data)):
        for bit in range(8):
            bad = bytearray(data)
            bad[pos] ^= 1 << bit
            with pytest.raises(BitstreamError):
                unpack_image(bytes(bad))


@pytest.mark.parametrize('kw, match', [
    (dict(shape=(60, 80, 1)), r'\(h, w, 3\)'),
    (dict(shape=(60, MAX_IMAGE_SIDE + 1, 3)), '4096'),
    (dict(shape=(0, 80, 3)), '4096'),
    (dict(shape=(60, 80)), r'\(h, w, 3\)'),
    (dict(meta=ImageMeta((30, 40), (60, 80), (64, 96), (5.0, 2.0))), 'scale'),
    (dict(meta=ImageMeta((30, 40), (60, 80), (32, 96), (2.0, 2.0))), 'batch_input_shape'),
    (dict(meta=ImageMeta((30, 40), (60, 80), (64, 96), (float('nan'), 2.0))), 'finite'),
    (dict(codec=ImageCodecId.JPEG), 'JPEG'),
    (dict(params=b'x'), 'codec parameters'),
])
def test_forged_fields_are_refused(webp, kw, match):
    with pytest.raises(CorruptedBitstreamError, match=match):
        unpack_image(_forged(webp, **kw))


def test_an_empty_or_foreign_file_is_refused_and_the_sender_finds_out_first(webp):
    with pytest.raises(CorruptedBitstreamError, match='empty'):
        unpack_image(_forged(b''))
    with pytest.raises(CorruptedBitstreamError, match='WEBP'):
        unpack_image(_forged(b'\x89PNG\r\n\x1a\n' + webp))
    for bad in (dict(file_bytes=b'', shape=(60, 80, 3)), dict(file_bytes=webp, shape=(9000, 8, 3))):
        with pytest.raises(ValueError):
            pack_image(bad['file_bytes'], ImageCodecId.WEBP, bad['shape'], META)
    with pytest.raises(ValueError, match='scaled'):
        pack_image(webp, ImageCodecId.WEBP, (60, 80, 3),
                   ImageMeta((30, 40), (60, 80), None, (3.0, 2.0)))
