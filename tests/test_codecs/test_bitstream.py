"""Payload framing: round trips and fuzzing (every input must raise a BitstreamError subclass)."""
import struct
import zlib

import numpy as np
import pytest

from ecc_edge.codecs.bitstream import (FORMAT_VERSION, MAGIC, NO_FINGERPRINT, BitstreamError,
                                        CodecId, CodecMismatchError, CorruptedBitstreamError,
                                        ImageCodecId, ImageMeta, MessageType, ModelMismatchError,
                                        Payload, TruncatedBitstreamError,
                                        UnsupportedVersionError, framing_overhead, pack, unpack)


def _meta(**kw):
    base = dict(ori_shape=(480, 640), img_shape=(600, 800), batch_input_shape=(608, 800),
                scale_factor=(1.25, 1.25), flip_direction='horizontal')
    base.update(kw)
    return ImageMeta(**base)


def _payload(**kw):
    base = dict(codec_id=CodecId.ENTROPY_BOTTLENECK, latent_shape=(64, 38, 50), meta=_meta(),
                codec_params=b'\x01\x02\x03', body=bytes(range(256)) * 3,
                fingerprint=b'\x11\x22\x33\x44\x55\x66\x77\x88')
    base.update(kw)
    return Payload(**base)


def _rewrite_crc(data: bytes) -> bytes:
    return data[:-4] + struct.pack('<I', zlib.crc32(data[:-4]))


def _structural_positions(p: Payload) -> set:
    """Bytes whose value decides where later fields lie (message type, ndim, meta flags, two
    lengths)."""
    type_pos, ndim_pos = 5, 16
    flags_pos = 17 + 4 * len(p.latent_shape)
    params_len_pos = flags_pos + len(p.meta.to_bytes())
    body_len_pos = params_len_pos + 4 + len(p.codec_params)
    return ({type_pos, ndim_pos, flags_pos} | set(range(params_len_pos, params_len_pos + 4)) |
            set(range(body_len_pos, body_len_pos + 4)))


@pytest.mark.parametrize('payload', [
    _payload(),
    _payload(codec_id=CodecId.QUANTIZE, latent_shape=(7, ), codec_params=b'', body=b''),
    _payload(codec_id=CodecId.FLOAT32, latent_shape=(1, 2, 3, 4),
             meta=_meta(ori_shape=(70000, 5), img_shape=(1, 2), batch_input_shape=(3, 4),
                        scale_factor=(0.5, 3.0), flip_direction=None)),
    _payload(meta=_meta(flip_direction='diagonal')),
    _payload(codec_id=CodecId.VARIABLE_RATE_BOTTLENECK, rate_point=3),
    _payload(msg_type=MessageType.IMAGE, codec_id=ImageCodecId.WEBP, latent_shape=(480, 640, 3),
             fingerprint=NO_FINGERPRINT),
    Payload(0, (), None, body=b'report', msg_type=MessageType.DETECTIONS),
    Payload(0, (), None, codec_params=b'names', body=b'tensors',
            msg_type=MessageType.PARAM_UPDATE),
])
def test_pack_unpack_round_trip(payload):
    data = pack(payload)
    assert data[:4] == MAGIC and data[4] == FORMAT_VERSION
    out = unpack(data)
    assert out == payload
    assert unpack(bytearray(data)) == payload
    assert unpack(memoryview(data), expected_type=payload.msg_type) == payload
    assert framing_overhead(payload) == len(data) - len(payload.body)


def test_meta_from_to_metainfo():
    info = dict(ori_shape=(427, 640), img_shape=(800, 1199), batch_input_shape=(800, 1216),
                scale_factor=(1.8734375, 1.873536299765808), flip=True,
                flip_direction='vertical', img_id=7, img_path='x.jpg')
    meta = ImageMeta.from_metainfo(info)
    back = unpack(pack(_payload(meta=meta))).meta.to_metainfo()
    assert back['ori_shape'] == (427, 640) and back['img_shape'] == (800, 1199)
    assert back['batch_input_shape'] == (800, 1216)
    assert back['flip'] is True and back['flip_direction'] == 'vertical'
    # scale_factor round-trips float32-exactly (documented).
    assert back['scale_factor'] == tuple(float(np.float32(v)) for v in info['scale_factor'])
    assert all(isinstance(v, float) for v in back['scale_factor'])
    assert back['scale_factor'] != info['scale_factor']  # not float64-exact, as documented
    np.testing.assert_allclose(back['scale_factor'], info['scale_factor'], rtol=1e-7)


def test_meta_defaults_for_missing_keys():
    meta = ImageMeta.from_metainfo(dict(ori_shape=(10, 20), img_shape=(30, 40)))
    info = meta.to_metainfo()
    assert info == dict(ori_shape=(10, 20), img_shape=(30, 40), batch_input_shape=(30, 40),
                        scale_factor=(1.0, 1.0), flip=False, flip_direction=None)
    # flip=False wins over a stale direction; flip=True alone means horizontal.
    assert ImageMeta.from_metainfo(dict(img_shape=(1, 1), flip=False,
                                        flip_direction='vertical')).flip_direction is None
    assert ImageMeta.from_metainfo(dict(img_shape=(1, 1), flip=True)).flip_direction == \
        'horizontal'


def test_meta_is_compact():
    assert len(_meta().to_bytes()) == 21
    assert len(pack(_payload(body=b''))) == framing_overhead(_payload())


def test_pack_rejects_invalid_payloads():
    with pytest.raises(ValueError):
        pack(_payload(latent_shape=()))
    with pytest.raises(ValueError):
        pack(_payload(latent_shape=(1, 2, 3, 4, 5)))
    with pytest.raises(ValueError):
        _payload(codec_id=99)
    with pytest.raises(ValueError):
        _meta(flip_direction='sideways')
    with pytest.raises(TypeError):
        unpack('ECCB')


def test_every_truncation_is_truncated():
    data = pack(_payload())
    for n in range(len(data)):
        with pytest.raises(TruncatedBitstreamError):
            unpack(data[:n])


def test_every_bit_flip_is_detected():
    p = _payload(body=bytes(range(40)))
    data = pack(p)
    structural = _structural_positions(p)
    for pos in range(len(data)):
        for bit in range(8):
            bad = bytearray(data)
            bad[pos] ^= 1 << bit
            with pytest.raises(BitstreamError) as info:
                unpack(bytes(bad))
            if pos == 4:
                assert info.type is UnsupportedVersionError
            elif pos in structural:
                assert info.type in (TruncatedBitstreamError, CorruptedBitstreamError)
            else:
                assert info.type is CorruptedBitstreamError, (pos, bit, info.value)


def test_random_bytes_raise_bitstream_errors():
    rng = np.random.default_rng(1234)
    header = pack(_payload())[:8]
    for i in range(400):
        data = rng.integers(0, 256, size=int(rng.integers(0, 200)), dtype=np.uint8).tobytes()
        if i % 2:  # make half of them get past the magic/version/codec checks
            data = header + data
        with pytest.raises(BitstreamError):
            unpack(data)
    with pytest.raises(CorruptedBitstreamError):
        unpack(b'JUNKJUNKJUNKJUNKJUNKJUNKJUNKJUNK')


def test_wrong_version_and_codec():
    data = bytearray(pack(_payload()))
    for version in (0, 1, 3, 255):
        bad = bytearray(data)
        bad[4] = version
        with pytest.raises(UnsupportedVersionError):
            unpack(_rewrite_crc(bytes(bad)))
    bad = bytearray(data)
    bad[6] = 200  # unknown codec id
    with pytest.raises(CorruptedBitstreamError):
        unpack(_rewrite_crc(bytes(bad)))
    with pytest.raises(CodecMismatchError):
        unpack(bytes(data), expected_codec=CodecId.QUANTIZE)
    assert issubclass(CodecMismatchError, ValueError)


def test_trailing_bytes_and_bad_fields_are_corrupted():
    data = pack(_payload())
    with pytest.raises(CorruptedBitstreamError):
        unpack(data + b'\x00')
    bad = bytearray(data)
    bad[16] = 0  # latent ndim 0
    with pytest.raises(CorruptedBitstreamError):
        unpack(bytes(bad))
    flags_pos = 17 + 4 * 3
    bad = bytearray(data)
    bad[flags_pos] |= 0x80  # reserved flag bit
    with pytest.raises(CorruptedBitstreamError):
        unpack(_rewrite_crc(bytes(bad)))


def _v1_payload() -> bytes:
    """A format-1 payload as the previous release wrote it (no type, no fingerprint)."""
    out = struct.pack('<4sBBB', MAGIC, 1, 1, 3) + struct.pack('<3I', 64, 4, 4)
    out += _meta().to_bytes() + struct.pack('<I', 0) + struct.pack('<I', 2) + b'ab'
    return out + struct.pack('<I', zlib.crc32(out))


def test_version_1_payloads_get_a_clear_error():
    with pytest.raises(UnsupportedVersionError, match='version 1; this code reads version 2'):
        unpack(_v1_payload())


def test_message_type_rate_point_and_fingerprint_checks():
    data = pack(_payload())
    assert unpack(data).rate_point is None
    with pytest.raises(CodecMismatchError, match='IMAGE'):
        unpack(data, expected_type=MessageType.IMAGE)
    with pytest.raises(ModelMismatchError, match='1122334455667788'):
        unpack(data, expected_fingerprint=b'\x00' * 7 + b'\x01')
    assert unpack(data, expected_fingerprint=b'\x11\x22\x33\x44\x55\x66\x77\x88').body
    assert unpack(data, expected_fingerprint=NO_FINGERPRINT).body  # unfingerprinted decoder
    assert issubclass(ModelMismatchError, BitstreamError)
    # types without a latent refuse one, and an unknown type is corruption
    with pytest.raises(ValueError):
        Payload(0, (3, ), None, msg_type=MessageType.DETECTIONS)
    bad = bytearray(data)
    bad[5] = 9
    with pytest.raises(CorruptedBitstreamError, match='message type'):
        unpack(_rewrite_crc(bytes(bad)))
    with pytest.raises(ValueError):
        _payload(rate_point=255)


@pytest.mark.parametrize('meta', [
    dict(scale_factor=(float('nan'), 1.25)),
    dict(scale_factor=(float('inf'), 1.25)),
    dict(scale_factor=(0.0, 1.25)),
    dict(scale_factor=(-1.25, 1.25)),
    dict(scale_factor=(1.25, 3.0)),  # img_shape is not ori_shape x scale
    dict(img_shape=(600, 900), batch_input_shape=(608, 800)),  # image wider than its batch
    dict(ori_shape=(0, 640)),
])
def test_forged_meta_with_a_valid_checksum_is_refused(meta):
    """A CRC is not authentication: each of these packs with a valid checksum, and would make
    boxes infinite or put them outside the image once rescaled."""
    data = pack(_payload(meta=_meta(**meta)))
    assert unpack(data).meta is not None  # the framing alone accepts it
    with pytest.raises(CorruptedBitstreamError, match='invalid image meta'):
        unpack(data, check_meta=True)


def test_consistent_meta_passes_the_check():
    unpack(pack(_payload()), check_meta=True)
    info = dict(ori_shape=(427, 640), img_shape=(800, 1199), batch_input_shape=(800, 1216),
                scale_factor=(1199 / 640, 800 / 427))
    unpack(pack(_payload(meta=ImageMeta.from_metainfo(info))), check_meta=True)
