"""Range coding: lossless for any int32 input; garbage raises CorruptedBitstreamError."""
import numpy as np
import pytest

from ecc_edge.codecs.bitstream import CorruptedBitstreamError
from ecc_edge.codecs.range_coding import (decode_with_cdf_tables, decode_with_histogram,
                                           encode_with_cdf_tables, encode_with_histogram)

INT32_MIN, INT32_MAX = -2**31, 2**31 - 1


def _varint_bytes(counts):
    return int(sum(max(1, (int(c).bit_length() + 6) // 7) for c in counts))


def _tables(rng, channels, max_len=20):
    tables = [rng.integers(1, 1000, size=int(rng.integers(2, max_len))) for _ in range(channels)]
    offsets = rng.integers(-15, 5, size=channels)
    return tables, offsets


def _round_trip(symbols, tables, offsets, **kw):
    data = encode_with_cdf_tables(symbols, tables, offsets, **kw)
    out = decode_with_cdf_tables(data, symbols.shape[1], tables, offsets, **kw)
    assert out.dtype == np.int32 and out.shape == symbols.shape
    np.testing.assert_array_equal(out, symbols)
    return data


@pytest.mark.parametrize('kind', ['in_support', 'mixed', 'full_int32', 'extremes', 'zeros'])
def test_cdf_tables_round_trip(kind):
    rng = np.random.default_rng(0)
    channels, n = 6, 500
    tables, offsets = _tables(rng, channels)
    if kind == 'in_support':
        symbols = np.stack([rng.integers(o, o + len(t) - 1, size=n)
                            for t, o in zip(tables, offsets)])
    elif kind == 'mixed':
        symbols = rng.integers(-40, 40, size=(channels, n))
    elif kind == 'full_int32':
        symbols = rng.integers(INT32_MIN, INT32_MAX, size=(channels, n), endpoint=True)
    elif kind == 'extremes':
        symbols = rng.choice([INT32_MIN, INT32_MIN + 1, -1, 0, 1, INT32_MAX - 1, INT32_MAX],
                             size=(channels, n))
    else:
        symbols = np.zeros((channels, n), dtype=np.int64)
    data = _round_trip(symbols.astype(np.int32), tables, offsets)
    assert isinstance(data, bytes) and len(data) > 0


def test_cdf_tables_extreme_offsets():
    # escapes the full distance from an offset at one end of int32 to a symbol at the other
    tables = [np.array([5, 1]), np.array([3, 3, 1])]
    offsets = np.array([INT32_MIN, INT32_MAX - 1])
    symbols = np.array([[INT32_MAX, INT32_MIN, 0], [INT32_MIN, INT32_MAX, 0]], dtype=np.int32)
    assert len(_round_trip(symbols, tables, offsets)) > 0


def test_cdf_tables_padded_form_matches_list_form():
    rng = np.random.default_rng(1)
    tables, offsets = _tables(rng, 4)
    lengths = np.array([len(t) for t in tables])
    padded = np.zeros((4, lengths.max()), dtype=np.int32)
    for c, t in enumerate(tables):
        padded[c, :len(t)] = t
    symbols = rng.integers(-20, 20, size=(4, 300)).astype(np.int32)
    a = _round_trip(symbols, tables, offsets)
    b = _round_trip(symbols, padded, offsets, lengths=lengths)
    assert a == b


def test_cdf_tables_rate_follows_the_model():
    # in-support symbols drawn from the table itself cost about their entropy
    rng = np.random.default_rng(2)
    freq = np.array([1, 10, 200, 1000, 200, 10, 1, 1])
    p = freq[:-1] / freq[:-1].sum()
    symbols = rng.choice(7, p=p, size=(1, 20000)).astype(np.int32)
    data = encode_with_cdf_tables(symbols, [freq], [0])
    model_bits = -np.log2(freq[symbols] / freq.sum()).sum()
    assert len(data) * 8 == pytest.approx(model_bits, rel=0.01)


def test_cdf_tables_empty():
    tables, offsets = [np.array([1, 1])] * 3, [0, 0, 0]
    empty = np.zeros((3, 0), dtype=np.int32)
    assert encode_with_cdf_tables(empty, tables, offsets) == b''
    assert decode_with_cdf_tables(b'', 0, tables, offsets).shape == (3, 0)
    assert encode_with_cdf_tables(np.zeros((0, 5), np.int32), [], []) == b''
    with pytest.raises(CorruptedBitstreamError):
        decode_with_cdf_tables(b'\x00' * 4, 0, tables, offsets)


def test_cdf_tables_reject_bad_tables():
    with pytest.raises(ValueError):
        encode_with_cdf_tables(np.zeros((1, 3), np.int32), [np.array([3, 0, 1])], [0])
    with pytest.raises(ValueError):
        encode_with_cdf_tables(np.zeros((1, 3), np.int32), [np.array([3])], [0])
    with pytest.raises(ValueError):
        encode_with_cdf_tables(np.zeros((2, 3), np.int32), [np.array([3, 1])], [0])
    with pytest.raises(ValueError):
        encode_with_cdf_tables(np.array([[2**31]]), [np.array([3, 1])], [0])


def test_cdf_tables_garbage_raises_corrupted():
    rng = np.random.default_rng(3)
    tables, offsets = _tables(rng, 4)
    symbols = rng.integers(-30, 30, size=(4, 200)).astype(np.int32)
    valid = encode_with_cdf_tables(symbols, tables, offsets)
    for i in range(200):
        size = int(rng.integers(0, 2 * len(valid) // 4 + 2)) * 4
        if i % 10 == 0:
            size += int(rng.integers(1, 4))  # not a whole number of words
        garbage = rng.integers(0, 256, size=size, dtype=np.uint8).tobytes()
        with pytest.raises(CorruptedBitstreamError):
            decode_with_cdf_tables(garbage, 200, tables, offsets)
    # valid data decoded with the wrong length is garbage too
    for n in (199, 201):
        with pytest.raises(CorruptedBitstreamError):
            decode_with_cdf_tables(valid, n, tables, offsets)
    # and so is a valid body with a flipped bit or a dropped word
    flipped = bytearray(valid)
    flipped[len(valid) // 2] ^= 0x10
    for bad in (bytes(flipped), valid[:-4], valid + b'\0\0\0\0'):
        with pytest.raises(CorruptedBitstreamError):
            decode_with_cdf_tables(bad, 200, tables, offsets)


@pytest.mark.parametrize('alphabet,kind', [(16, 'uniform'), (256, 'peaked'), (16, 'gaps'),
                                           (4, 'single'), (1, 'single'), (256, 'two')])
def test_histogram_round_trip(alphabet, kind):
    rng = np.random.default_rng(4)
    n = 3000
    if kind == 'uniform':
        symbols = rng.integers(0, alphabet, size=n)
    elif kind == 'peaked':
        symbols = np.clip(np.round(rng.normal(128, 6, size=n)), 0, 255).astype(int)
    elif kind == 'gaps':  # many zero-count symbols between the used ones
        symbols = rng.choice([0, 5, 15], size=n)
    elif kind == 'single':
        symbols = np.full(n, alphabet - 1)
    else:
        symbols = rng.choice([0, 255], size=n, p=[0.9, 0.1])
    symbols = symbols.reshape(3, -1)
    data = encode_with_histogram(symbols, alphabet)
    out = decode_with_histogram(data, n, alphabet)
    assert out.dtype == np.int32 and out.shape == (n, )
    np.testing.assert_array_equal(out, symbols.reshape(-1))
    if kind == 'single':  # degenerate histogram: header only
        assert len(data) == alphabet - 1 + 2  # zero counts (1 byte each) + varint(3000)
    if kind == 'peaked':
        counts = np.bincount(symbols.reshape(-1), minlength=256)
        p = counts[counts > 0] / n
        entropy_bits = -(counts[counts > 0] * np.log2(p)).sum()
        header = _varint_bytes(counts)
        assert (len(data) - header) * 8 < entropy_bits * 1.02 + 64


def test_histogram_empty_and_invalid():
    assert decode_with_histogram(encode_with_histogram(np.zeros(0, int), 8), 0, 8).shape == (0, )
    with pytest.raises(ValueError):
        encode_with_histogram(np.array([8]), 8)
    with pytest.raises(ValueError):
        encode_with_histogram(np.array([-1]), 8)
    with pytest.raises(ValueError):
        encode_with_histogram(np.array([0]), 0)


def test_histogram_garbage_raises_corrupted():
    rng = np.random.default_rng(5)
    symbols = rng.integers(0, 16, size=500)
    valid = encode_with_histogram(symbols, 16)
    for _ in range(200):
        garbage = rng.integers(0, 256, size=int(rng.integers(0, 2 * len(valid))),
                               dtype=np.uint8).tobytes()
        with pytest.raises(CorruptedBitstreamError):
            decode_with_histogram(garbage, 500, 16)
    # correct header, garbage words: only the canonical re-encode check can catch this
    header_len = _varint_bytes(np.bincount(symbols, minlength=16))
    assert (len(valid) - header_len) % 4 == 0
    for _ in range(20):
        tail = rng.integers(0, 256, size=len(valid) - header_len, dtype=np.uint8).tobytes()
        fake = valid[:header_len] + tail
        assert decode_with_histogram(fake, 500, 16, verify=False).shape == (500, )
        with pytest.raises(CorruptedBitstreamError):
            decode_with_histogram(fake, 500, 16)
    for bad in (valid[:-1], valid[:-4], valid + b'\0' * 4):
        with pytest.raises(CorruptedBitstreamError):
            decode_with_histogram(bad, 500, 16)
    with pytest.raises(CorruptedBitstreamError):
        decode_with_histogram(valid, 499, 16)
