"""Hostile payloads for the cloud server's fuzz test and benchmark.

Every case is (kind, bytes, allowed statuses). Random, truncated and bit-flipped bytes, another
model's payload and oversize bodies must be refused with their specific 4xx; **forged** cases
carry a valid checksum around hostile header values (shapes, scale factors, lengths and rate
points that contradict each other or the latent) -- a CRC is not authentication, so the decoder
itself must refuse them or decode them safely. A forged body behind a valid header decodes to
*some* symbols: 200 is then a correct answer, as long as the boxes are finite and inside the
image.
"""
import dataclasses
import struct
from typing import List, NamedTuple, Sequence

import numpy as np

from ecc_edge.codecs.bitstream import CodecId, MessageType, Payload, pack, unpack

__all__ = ['FuzzCase', 'fuzz_cases', 'check_boxes']


class FuzzCase(NamedTuple):
    kind: str
    data: bytes
    allowed: Sequence[int]


def _forged_shapes(p: Payload) -> list:
    """Latent shapes and codec parameters (the decoder's sizes) that are huge, empty or
    contradict each other."""
    c, lh, lw = p.latent_shape
    h, w = struct.unpack('<2I', p.codec_params) if len(p.codec_params) == 8 else (lh * 2, lw * 2)
    big = 2**31
    R = dataclasses.replace
    return [
        ('forged_latent_huge', R(p, latent_shape=(c, 65535, 65535)), (400, )),
        ('forged_latent_u32_max', R(p, latent_shape=(c, 2**32 - 1, 2**32 - 1)), (400, )),
        ('forged_latent_channels', R(p, latent_shape=(c + 1, lh, lw)), (400, )),
        ('forged_latent_zero', R(p, latent_shape=(c, 0, lw)), (400, )),
        ('forged_latent_ndim', R(p, latent_shape=(c * lh * lw, )), (400, )),
        ('forged_latent_4d', R(p, latent_shape=(1, c, lh, lw)), (400, )),
        ('forged_params_huge_hw', R(p, codec_params=struct.pack('<2I', big, big)), (400, )),
        ('forged_params_contradict', R(p, codec_params=struct.pack('<2I', h + 9, w)), (400, )),
        ('forged_params_zero', R(p, codec_params=struct.pack('<2I', 0, 0)), (400, )),
        ('forged_params_short', R(p, codec_params=b'\x01'), (400, )),
    ]


def _forged_meta(p: Payload) -> list:
    """Image meta with impossible scale factors or shapes that contradict each other."""
    m = p.meta
    R = dataclasses.replace
    return [
        ('forged_scale_nan', R(p, meta=R(m, scale_factor=(float('nan'), 1.0))), (400, )),
        ('forged_scale_inf', R(p, meta=R(m, scale_factor=(float('inf'), 1.0))), (400, )),
        ('forged_scale_zero', R(p, meta=R(m, scale_factor=(0.0, 0.0))), (400, )),
        ('forged_scale_negative', R(p, meta=R(m, scale_factor=(-1.0, -1.0))), (400, )),
        ('forged_scale_tiny', R(p, meta=R(m, scale_factor=(1e-30, 1e-30))), (400, )),
        ('forged_ori_zero', R(p, meta=R(m, ori_shape=(0, 0))), (400, )),
        ('forged_img_exceeds_batch',
         R(p, meta=R(m, img_shape=(m.batch_input_shape[0] + 50, m.img_shape[1]))), (400, )),
        ('forged_batch_huge', R(p, meta=R(m, batch_input_shape=(60000, 60000))), (413, 400)),
        ('forged_batch_small', R(p, meta=R(m, batch_input_shape=(8, 8), img_shape=(8, 8),
                                           ori_shape=(8, 8), scale_factor=(1.0, 1.0))),
         (400, )),
        ('forged_wide_shapes', R(p, meta=R(m, ori_shape=(70000, 70000),
                                           scale_factor=(m.img_shape[1] / 70000,
                                                         m.img_shape[0] / 70000))),
         (400, 200)),
    ]


def _forged_coding(p: Payload) -> list:
    """A rate point, codec, message type or body that does not belong to the header."""
    R = dataclasses.replace
    return [
        ('forged_rate_point', R(p, rate_point=7), (400, )),
        ('forged_codec_quantize', R(p, codec_id=CodecId.QUANTIZE), (400, )),
        ('forged_codec_float32', R(p, codec_id=CodecId.FLOAT32), (400, )),
        ('forged_type_detections',
         Payload(0, (), None, body=p.body, msg_type=MessageType.DETECTIONS,
                 fingerprint=p.fingerprint), (400, )),
        ('forged_type_param_update',
         Payload(0, (), None, body=p.body, msg_type=MessageType.PARAM_UPDATE,
                 fingerprint=p.fingerprint), (400, )),
        ('forged_body_empty', R(p, body=b''), (400, )),
        ('forged_body_truncated', R(p, body=p.body[:max(1, len(p.body) // 3)]), (400, )),
        ('forged_body_padded', R(p, body=p.body + bytes(64)), (400, 200)),
    ]


def _forged(p: Payload, rng) -> List[FuzzCase]:
    """Valid-CRC payloads with hostile or contradictory header fields."""
    m = p.meta
    R = dataclasses.replace
    cases = _forged_shapes(p) + _forged_meta(p) + _forged_coding(p) + [
        # a consistent, tiny original image: every box must land inside 3x3 pixels
        ('forged_ori_tiny', R(p, meta=R(m, ori_shape=(3, 3), scale_factor=(
            m.img_shape[1] / 3, m.img_shape[0] / 3))), (400, 200)),
        ('forged_flip', R(p, meta=R(m, flip_direction='diagonal')), (400, 200)),
    ]
    for i in range(6):  # random bodies behind a valid header: decode safely or refuse
        body = rng.integers(0, 256, len(p.body), dtype=np.uint8).tobytes()
        cases.append(('forged_body_random', R(p, body=body), (400, 200)))
    return [FuzzCase(k, pack(v), allowed) for k, v, allowed in cases]


def _forged_field(src: bytes, rng) -> FuzzCase:
    """``src`` with one header field, drawn at random, set to a random value (valid CRC)."""
    p = unpack(src)
    field = ('latent', 'params', 'scale', 'shapes', 'rate')[int(rng.integers(5))]
    R = dataclasses.replace
    if field == 'latent':
        q = R(p, latent_shape=tuple(int(v) for v in rng.integers(0, 2**16, 3)))
    elif field == 'params':
        q = R(p, codec_params=rng.integers(0, 256, int(rng.integers(0, 12)),
                                           dtype=np.uint8).tobytes())
    elif field == 'scale':
        sf = tuple(float(v) for v in rng.choice(
            [0.0, -1.0, 1e-20, 1e20, float('nan'), float('inf'), 0.5, 2.0], 2))
        q = R(p, meta=dataclasses.replace(p.meta, scale_factor=sf))
    elif field == 'shapes':
        s = [tuple(int(v) for v in rng.integers(0, 70000, 2)) for _ in range(3)]
        q = R(p, meta=dataclasses.replace(p.meta, ori_shape=s[0], img_shape=s[1],
                                          batch_input_shape=s[2]))
    else:
        q = R(p, rate_point=int(rng.integers(0, 255)))
    return FuzzCase(f'forged_{field}', pack(q), (400, 413, 200))


def _generated(kind: str, src: bytes, i: int, rng, other_model: bytes,
               max_body_bytes: int) -> FuzzCase:
    """The ``i``-th generated case, of ``kind``, derived from the valid payload ``src``."""
    if kind == 'random':
        data = rng.integers(0, 256, int(rng.integers(0, 4096)), dtype=np.uint8).tobytes()
        if i % 2:  # get past the magic and the version
            data = src[:5] + data
        return FuzzCase(kind, data, (400, ))
    if kind == 'truncated':
        return FuzzCase(kind, src[:int(rng.integers(0, len(src)))], (400, ))
    if kind == 'bitflip':
        bad = bytearray(src)
        for _ in range(int(rng.integers(1, 4))):
            bad[int(rng.integers(len(bad)))] ^= 1 << int(rng.integers(8))
        return FuzzCase(kind, bytes(bad), (400, ))
    if kind == 'wrong_model':
        return FuzzCase(kind, other_model, (409, ))
    if kind == 'oversize':
        size = max_body_bytes + 1 + int(rng.integers(0, 4096))
        return FuzzCase(kind, src[:5] + bytes(size - 5), (413, ))
    return _forged_field(src, rng)  # one forged field at random, with a random value


def fuzz_cases(valid: Sequence[bytes], other_model: bytes, n: int, max_body_bytes: int,
               seed: int = 0) -> List[FuzzCase]:
    """``n`` (at least all forged kinds once) hostile payloads derived from ``valid`` ones.

    Args:
        valid: payloads the server accepts.
        other_model: a valid payload of another checkpoint (fingerprint mismatch, 409).
        max_body_bytes: the server's body limit (the oversize cases exceed it).
    """
    rng = np.random.default_rng(seed)
    cases = _forged(unpack(valid[0]), rng)
    gens = ('random', 'truncated', 'bitflip', 'wrong_model', 'oversize', 'forged_random')
    i = 0
    while len(cases) < n:
        src = valid[int(rng.integers(len(valid)))]
        cases.append(_generated(gens[i % len(gens)], src, i, rng, other_model, max_body_bytes))
        i += 1
    return cases


def check_boxes(reply: dict) -> List[str]:
    """Problems with a 200 reply's boxes: non-finite values, or outside the image."""
    h, w = reply['image_size']
    problems = []
    for d in reply['detections']:
        x1, y1, x2, y2 = d['bbox']
        vals = [x1, y1, x2, y2, d['score']]
        if not all(np.isfinite(vals)):
            problems.append(f'non-finite {d}')
        elif not (0 <= x1 <= x2 <= w and 0 <= y1 <= y2 <= h):
            problems.append(f'box outside the {h}x{w} image: {d["bbox"]}')
    return problems
