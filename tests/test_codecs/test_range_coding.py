"""Range coding: lossless for any int32 input (within the latent bound unless lifted); garbage
raises CorruptedBitstreamError."""
import numpy as np
import pytest

from ecc_edge.codecs.bitstream import CorruptedBitstreamError
from ecc_edge.codecs.range_coding import (MAX_LATENT_SYMBOL, CodingTables,
                                           decode_with_cdf_tables, decode_with_histogram,
                                           decode_with_indexed_tables, encode_with_cdf_tables,
                                           encode_with_histogram, encode_with_indexed_tables)

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
    data = _round_trip(symbols.astype(np.int32), tables, offsets, max_abs=None)
    assert isinstance(data, bytes) and len(data) > 0


def test_cdf_tables_extreme_offsets():
    # escapes the full distance from an offset at one end of int32 to a symbol at the other
    tables = [np.array([5, 1]), np.array([3, 3, 1])]
    offsets = np.array([INT32_MIN, INT32_MAX - 1])
    symbols = np.array([[INT32_MAX, INT32_MIN, 0], [INT32_MIN, INT32_MAX, 0]], dtype=np.int32)
    assert len(_round_trip(symbols, tables, offsets, max_abs=None)) > 0


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


# ------------------------------------------------------------- indexed-table coder
def _indexed(rng, num_tables=5, n=600):
    """Tables of the hyperprior's kind (several, of different lengths and offsets), a random
    index per symbol that leaves one table unused, and symbols around the tables' supports."""
    tables, offsets = _tables(rng, num_tables)
    indexes = rng.choice([t for t in range(num_tables) if t != 2], size=n)
    return CodingTables(tables, offsets), indexes


def _indexed_round_trip(symbols, indexes, prep, max_abs=None):
    data = encode_with_indexed_tables(symbols, indexes, prep, max_abs=max_abs)
    out = decode_with_indexed_tables(data, indexes, prep, max_abs=max_abs)
    assert out.dtype == np.int32 and out.shape == (symbols.size, )
    np.testing.assert_array_equal(out, symbols.reshape(-1))
    return data


@pytest.mark.parametrize('kind', ['in_support', 'mixed', 'full_int32', 'extremes'])
def test_indexed_tables_round_trip(kind):
    rng = np.random.default_rng(10)
    prep, indexes = _indexed(rng)
    lo, hi = prep.offsets[indexes], prep.offsets[indexes] + np.array(
        [t.size - 1 for t in prep.tables])[indexes]
    if kind == 'in_support':
        symbols = rng.integers(lo, hi)
    elif kind == 'mixed':  # escapes on both sides of every table's support
        symbols = rng.integers(lo - 30, hi + 30)
    elif kind == 'full_int32':
        symbols = rng.integers(INT32_MIN, INT32_MAX, size=indexes.size, endpoint=True)
    else:
        symbols = rng.choice([INT32_MIN, INT32_MIN + 1, -1, 0, 1, INT32_MAX - 1, INT32_MAX],
                             size=indexes.size)
    symbols = symbols.astype(np.int32)
    escaped = (symbols < lo) | (symbols >= hi)
    assert escaped.any() == (kind != 'in_support')
    data = _indexed_round_trip(symbols, indexes, prep)
    if kind == 'in_support':  # no escape section: the bytes are the tables' cost
        bits = -sum(np.log2(prep.tables[c][s - prep.offsets[c]] / prep.tables[c].sum())
                    for s, c in zip(symbols.tolist(), indexes.tolist()))
        assert len(data) * 8 == pytest.approx(bits, rel=0.05, abs=64)


@pytest.mark.parametrize('coder', ['cdf', 'indexed'])
def test_latent_bound_refuses_forged_huge_symbols(coder):
    """A validly coded body of huge symbols (what a forger can make with the unbounded coder)
    is refused by the default decoder; the default encoder refuses to make one; symbols at the
    bound round-trip."""
    rng = np.random.default_rng(12)
    prep, indexes = _indexed(rng, n=40)
    ok = rng.integers(-3, 3, size=indexes.size)
    ok[:2] = (MAX_LATENT_SYMBOL, -MAX_LATENT_SYMBOL)
    huge = ok.copy()
    huge[5] = 2**31 - 1
    if coder == 'cdf':
        tables = [prep.tables[0]]
        enc = lambda s, **kw: encode_with_cdf_tables(s.reshape(1, -1), tables, [prep.offsets[0]],
                                                     **kw)
        dec = lambda d, **kw: decode_with_cdf_tables(d, indexes.size, tables,
                                                     [prep.offsets[0]], **kw)
    else:
        enc = lambda s, **kw: encode_with_indexed_tables(s, indexes, prep, **kw)
        dec = lambda d, **kw: decode_with_indexed_tables(d, indexes, prep, **kw)
    np.testing.assert_array_equal(dec(enc(ok)).reshape(-1), ok)
    forged = enc(huge, max_abs=None)
    np.testing.assert_array_equal(dec(forged, max_abs=None).reshape(-1), huge)
    with pytest.raises(CorruptedBitstreamError, match='beyond the bound'):
        dec(forged)
    with pytest.raises(ValueError, match="beyond the coder's bound"):
        enc(huge)


def test_indexed_tables_equal_the_cdf_coder_with_one_table_per_channel():
    # the documented grouping: by table in a stable order, each group coded as a channel
    rng = np.random.default_rng(11)
    tables, offsets = _tables(rng, 4)
    symbols = rng.integers(-25, 25, size=(4, 150)).astype(np.int32)
    by_channel = encode_with_cdf_tables(symbols, tables, offsets)
    indexes = np.repeat(np.arange(4), 150)
    prep = CodingTables(tables, offsets)
    assert encode_with_indexed_tables(symbols.reshape(-1), indexes, prep) == by_channel
    # the same symbols and indexes in another order: the decoder puts each symbol back
    perm = rng.permutation(indexes.size)
    _indexed_round_trip(symbols.reshape(-1)[perm], indexes[perm], prep)


def test_indexed_tables_empty_and_refused_arguments():
    prep = CodingTables([np.array([3, 1]), np.array([1, 2, 1])], [0, -1])
    assert encode_with_indexed_tables(np.zeros(0, np.int32), np.zeros(0, int), prep) == b''
    assert decode_with_indexed_tables(b'', np.zeros(0, int), prep).shape == (0, )
    with pytest.raises(CorruptedBitstreamError):
        decode_with_indexed_tables(b'\0' * 4, np.zeros(0, int), prep)
    sym = np.array([0, 1, -1], np.int32)
    for bad in (np.array([0, 1]), np.array([0, 1, 2]), np.array([0, -1, 1]),
                np.array([0.0, 1.0, 1.0]), np.array([[0, 1, 1]])):
        with pytest.raises(ValueError, match='indexes'):
            encode_with_indexed_tables(sym, bad, prep)
    valid = encode_with_indexed_tables(sym, np.array([0, 1, 1]), prep)
    for bad in (np.array([0, 1, 2]), np.array([-1, 0, 0]), np.array([0.5, 1, 1])):
        with pytest.raises(ValueError, match='indexes'):
            decode_with_indexed_tables(valid, bad, prep)
    with pytest.raises(ValueError, match='int32'):
        encode_with_indexed_tables(np.array([2**31, 0, 0]), np.array([0, 1, 1]), prep)


def test_indexed_tables_garbage_truncation_and_other_indexes_raise_corrupted():
    rng = np.random.default_rng(12)
    prep, indexes = _indexed(rng, n=300)
    symbols = rng.integers(-20, 20, size=indexes.size).astype(np.int32)  # escapes included
    valid = encode_with_indexed_tables(symbols, indexes, prep)
    assert len(valid) >= 64
    # every truncation (whole words or not) and every extension by a word
    for cut in range(len(valid)):
        with pytest.raises(CorruptedBitstreamError):
            decode_with_indexed_tables(valid[:cut], indexes, prep)
    with pytest.raises(CorruptedBitstreamError):
        decode_with_indexed_tables(valid + b'\0' * 4, indexes, prep)
    # random bodies of every word count up to twice the valid one, and single flipped bits
    for size in range(0, 2 * len(valid) + 4, 4):
        garbage = rng.integers(0, 256, size=size, dtype=np.uint8).tobytes()
        with pytest.raises(CorruptedBitstreamError):
            decode_with_indexed_tables(garbage, indexes, prep)
    for i in rng.choice(len(valid) * 8, size=64, replace=False):
        flipped = bytearray(valid)
        flipped[i // 8] ^= 1 << (i % 8)
        with pytest.raises(CorruptedBitstreamError):
            decode_with_indexed_tables(bytes(flipped), indexes, prep)
    # random words of the right length: those the decoder reads without an impossible escape
    # are refused by the canonical re-encode check alone (the symbol bound lifted: it refuses
    # most of them on its own)
    decodable = 0
    for _ in range(40):
        fake = rng.integers(0, 256, size=len(valid), dtype=np.uint8).tobytes()
        try:
            decode_with_indexed_tables(fake, indexes, prep, verify=False, max_abs=None)
            decodable += 1
        except CorruptedBitstreamError:
            pass
        with pytest.raises(CorruptedBitstreamError):
            decode_with_indexed_tables(fake, indexes, prep, max_abs=None)
    assert decodable >= 5
    # a valid body with indexes other than the encoder's: shorter, longer, one table's symbols
    # read with another table, or a symbol moved from one table's group to another's
    moved = indexes.copy()
    moved[np.flatnonzero(indexes == 0)[0]] = 1
    for other in (indexes[:-1], np.append(indexes, 0), np.where(indexes == 0, 1, indexes),
                  np.where(indexes == 0, 2, np.where(indexes == 2, 0, indexes)), moved):
        with pytest.raises(CorruptedBitstreamError):
            decode_with_indexed_tables(valid, other, prep)
    # what the body cannot reveal: indexes with the same count per table, in another order,
    # decode each table's group in the same order (the side information must be the encoder's)
    perm = rng.permutation(indexes)
    out = decode_with_indexed_tables(valid, perm, prep)
    np.testing.assert_array_equal(out[np.argsort(perm, kind='stable')],
                                  symbols[np.argsort(indexes, kind='stable')])
    # and other tables than the encoder's
    other_prep = CodingTables([t[::-1].copy() for t in prep.tables], prep.offsets)
    with pytest.raises(CorruptedBitstreamError):
        decode_with_indexed_tables(valid, indexes, other_prep)


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
