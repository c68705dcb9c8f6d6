"""Lossless range coding of integer symbol arrays, built on ``constriction`` (queue = FIFO).

Three static-model coders:

* :func:`encode_with_cdf_tables` / :func:`decode_with_cdf_tables` -- per-channel integer
  frequency tables shipped with the learned factorized entropy model. Row ``c`` of the tables
  holds the frequencies of the symbols ``offsets[c] + 0 .. L_c - 1`` followed by ONE overflow
  ("escape") bin. Every int32 value is codable:

  1. main section: channel by channel, each symbol's table index, with values outside
     ``[offsets[c], offsets[c] + L_c)`` coded as the overflow bin ``L_c``;
  2. escape section, for each escaped value in the same order: with ``u`` its distance past
     the support edge (``offsets[c] - 1 - s`` below, ``s - offsets[c] - L_c`` above) and
     ``z = 2*u + below`` (zig-zag), the Elias-gamma class ``n = bit_length(z + 1) - 1`` in
     ``Uniform(33)``, then the ``n`` low bits of ``z + 1`` in ``Uniform(2**k)`` chunks of at
     most 16 bits. Escapes therefore cost ~5 + n bits each; they are rare for a trained model
     whose tables cover its tails (tail mass 1e-9).

  Frequencies are integers (any total; the entropy model uses a fixed 2**16) so encoder and
  decoder build the identical model: ``Categorical(freq / freq.sum(), perfect=False)`` from
  float64 values that are exact functions of the integers.

* :func:`encode_with_indexed_tables` / :func:`decode_with_indexed_tables` -- a conditional
  model: symbol ``i`` is coded with table ``indexes[i]`` (the Gaussian conditional of a
  hyperprior, whose indexes both sides derive from the side information). Symbols are grouped
  by table in a stable order both sides compute from the indexes alone, each group is coded
  like a channel above (escapes included). :func:`encode_indexed_sections` /
  :class:`IndexedSectionDecoder` put several such sections in one stream and decode them one
  at a time, for models whose later indexes depend on earlier symbols.

* :func:`encode_with_histogram` / :func:`decode_with_histogram` -- training-free n-bit
  quantiser symbols in ``[0, alphabet_size)``. The body starts with the empirical histogram
  (``alphabet_size`` LEB128 varint counts), followed by the symbols range-coded with that
  histogram as a static model over the symbols that occur (so zero counts cost nothing; when
  at most one symbol value occurs no range-coded part is needed at all).

Range-coded sections are ``constriction``'s uint32 words, written little-endian.

The two table coders bound the symbols' magnitude by ``max_abs`` (default
:data:`MAX_LATENT_SYMBOL` = 2**15; ``None``: the whole int32 range): an encoder given a larger
symbol raises ``ValueError``, a decoder that meets one raises ``CorruptedBitstreamError``. No
trained latent comes near it, while a forged but validly coded body could otherwise decode to
latents of 2**31 that flow into the cloud's convolutions as huge finite features.

Decoding checks everything it can and raises :class:`CorruptedBitstreamError` for garbage:
constriction errors, impossible escape values, histogram counts that do not add up, body
lengths that are not whole words, and -- because a range decoder happily decodes random
words -- a final canonical check (``verify=True``): the decoded symbols are re-encoded and
must reproduce the input bytes exactly. That costs one encode (~1-2 ms for 270k symbols) and
turns "silently wrong output" into an exception.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import constriction
import numpy as np

from .bitstream import CorruptedBitstreamError, as_bytes

__all__ = [
    'CodingTables', 'encode_with_cdf_tables', 'decode_with_cdf_tables',
    'encode_with_indexed_tables', 'decode_with_indexed_tables', 'encode_indexed_sections',
    'IndexedSectionDecoder', 'encode_with_histogram',
    'decode_with_histogram', 'MAX_HISTOGRAM_ALPHABET', 'MAX_LATENT_SYMBOL'
]

# constriction is a native extension: its submodules are attributes, not importable modules.
Categorical = constriction.stream.model.Categorical
Uniform = constriction.stream.model.Uniform
RangeEncoder = constriction.stream.queue.RangeEncoder
RangeDecoder = constriction.stream.queue.RangeDecoder

_CHUNK_BITS = 16
_NUM_CLASSES = 33  # n = bit_length(z + 1) - 1 <= 32 for any int32 symbol and int32 offset
_INT32_MIN, _INT32_MAX = -2**31, 2**31 - 1
MAX_HISTOGRAM_ALPHABET = 2**16
#: the largest symbol magnitude the table coders accept by default (module docstring)
MAX_LATENT_SYMBOL = 2**15


# --------------------------------------------------------------------------- helpers
def _words_to_bytes(words: np.ndarray) -> bytes:
    return np.asarray(words, dtype='<u4').tobytes()


def _bytes_to_words(data: bytes, what: str) -> np.ndarray:
    if len(data) % 4:
        raise CorruptedBitstreamError(f'{what}: {len(data)} bytes is not a whole number of words')
    return np.frombuffer(data, dtype='<u4').astype(np.uint32)


def _categorical(freq: np.ndarray) -> Categorical:
    """Deterministic constriction model from integer frequencies."""
    f = freq.astype(np.float64)
    return Categorical(f / f.sum(), perfect=False)


def _normalise_tables(pmf_tables, offsets, lengths) -> Tuple[list, np.ndarray]:
    """-> (list of int64 1-D tables incl. overflow bin, int64 offsets); validates shapes."""
    if lengths is not None:
        rows = np.asarray(pmf_tables)
        lengths = np.asarray(lengths, dtype=np.int64).reshape(-1)
        if rows.ndim != 2 or rows.shape[0] != lengths.shape[0]:
            raise ValueError('with lengths, pmf_tables must be a (C, Lmax) array')
        if lengths.size and (lengths.min() < 0 or lengths.max() > rows.shape[1]):
            raise ValueError('lengths out of range of the pmf table rows')
        tables = [np.asarray(rows[c, :lengths[c]]) for c in range(rows.shape[0])]
    else:
        tables = [np.asarray(t) for t in pmf_tables]
    offsets = np.asarray(offsets).astype(np.int64).reshape(-1)
    if len(tables) != offsets.shape[0]:
        raise ValueError(f'{len(tables)} pmf tables but {offsets.shape[0]} offsets')
    out = []
    for c, t in enumerate(tables):
        if t.ndim != 1 or t.size < 2 or not np.issubdtype(t.dtype, np.integer):
            raise ValueError(f'pmf table {c} must be a 1-D integer array of >= 2 entries '
                             '(support + overflow bin)')
        t = t.astype(np.int64)
        if t.min() < 1:
            raise ValueError(f'pmf table {c} has a zero/negative frequency')
        out.append(t)
    if offsets.size and (offsets.min() < _INT32_MIN or offsets.max() > _INT32_MAX):
        raise ValueError('offsets must fit in int32')
    return out, offsets


class CodingTables:
    """Validated tables with their constriction models built once (reused for every image)."""

    def __init__(self, pmf_tables, offsets, lengths: Optional[Sequence[int]] = None):
        self.tables, self.offsets = _normalise_tables(pmf_tables, offsets, lengths)
        self.models = [_categorical(t) for t in self.tables]


def _prepared(pmf_tables, offsets, lengths) -> CodingTables:
    if isinstance(pmf_tables, CodingTables):
        return pmf_tables
    return CodingTables(pmf_tables, offsets, lengths)


def _check_int32(symbols: np.ndarray, max_abs: Optional[int] = None) -> np.ndarray:
    symbols = np.asarray(symbols)
    if symbols.size and not np.issubdtype(symbols.dtype, np.integer):
        raise ValueError(f'symbols must be integers, got dtype {symbols.dtype}')
    symbols = symbols.astype(np.int64)
    if symbols.size and (symbols.min() < _INT32_MIN or symbols.max() > _INT32_MAX):
        raise ValueError('symbols must fit in int32')
    if max_abs is not None and symbols.size and np.abs(symbols).max() > max_abs:
        raise ValueError(f'a symbol of magnitude {int(np.abs(symbols).max())} is beyond the '
                         f'coder\'s bound {max_abs}: the latent is not one a trained model makes')
    return symbols


def _check_decoded(out: np.ndarray, max_abs: Optional[int]) -> np.ndarray:
    if max_abs is not None and out.size and np.abs(out).max() > max_abs:
        raise CorruptedBitstreamError(f'the body decodes to a symbol of magnitude '
                                      f'{int(np.abs(out).max())}, beyond the bound {max_abs} '
                                      'of any encoder: a forged body')
    return out.astype(np.int32)


def _bit_length(x: np.ndarray) -> np.ndarray:
    """bit_length of positive int64 values < 2**53 (exact through float64 frexp)."""
    return np.frexp(x.astype(np.float64))[1].astype(np.int64)


def _escape_chunks(n: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """-> (escape index, chunk index, chunk bits) of every chunk of the escapes' n low bits,
    in coding order (escape-major, least significant chunk first)."""
    num = (n + _CHUNK_BITS - 1) // _CHUNK_BITS
    owner = np.repeat(np.arange(n.size), num)
    first = np.repeat(np.cumsum(num) - num, num)
    k = np.arange(owner.size) - first  # chunk index within its escape
    bits = np.minimum(n[owner] - k * _CHUNK_BITS, _CHUNK_BITS)
    return owner, k, bits


# ---------------------------------------------------------------- cdf-table coder
def _encode_groups(groups, prep: CodingTables) -> bytes:
    """Range-code ``(table index, int64 symbols)`` groups in order, escapes last."""
    enc = RangeEncoder()
    _encode_groups_into(enc, groups, prep)
    return _words_to_bytes(enc.get_compressed())


def _encode_groups_into(enc, groups, prep: CodingTables) -> None:
    """:func:`_encode_groups` onto an open encoder (several sections share one stream)."""
    escaped = []
    for c, sym in groups:
        table = prep.tables[c]
        support = table.size - 1
        idx = sym - prep.offsets[c]
        esc = (idx < 0) | (idx >= support)
        enc.encode(np.where(esc, support, idx).astype(np.int32), prep.models[c])
        if esc.any():
            v = idx[esc]
            below = v < 0
            escaped.append(2 * np.where(below, -v - 1, v - support) + below)
    if escaped:
        zp1 = np.concatenate(escaped) + 1  # >= 1, < 2**33
        n = _bit_length(zp1) - 1
        enc.encode(n.astype(np.int32), Uniform(_NUM_CLASSES))
        owner, k, bits = _escape_chunks(n)
        if owner.size:
            chunk = (zp1[owner] >> (k * _CHUNK_BITS)) & ((1 << bits) - 1)
            enc.encode(chunk.astype(np.int32), Uniform(), (1 << bits).astype(np.int32))


def _decode_groups(data: bytes, groups, prep: CodingTables) -> list:
    """Inverse of :func:`_encode_groups` for ``(table index, count)`` groups -> int64 arrays."""
    words = _bytes_to_words(data, 'range-coded body')
    try:
        dec = RangeDecoder(words)
    except Exception as e:
        raise CorruptedBitstreamError(f'range decoding failed: {e}') from e
    return _decode_groups_from(dec, groups, prep)


def _decode_groups_from(dec, groups, prep: CodingTables) -> list:
    """:func:`_decode_groups` from an open decoder (the next section of its stream)."""
    out = []
    try:
        esc_groups = []
        for g, (c, count) in enumerate(groups):
            support = prep.tables[c].size - 1
            idx = dec.decode(prep.models[c], int(count)).astype(np.int64)
            out.append(idx + prep.offsets[c])
            esc = idx == support
            if esc.any():
                esc_groups.append((g, np.flatnonzero(esc), support, prep.offsets[c]))
        if esc_groups:
            total = sum(pos.size for _, pos, _, _ in esc_groups)
            n = dec.decode(Uniform(_NUM_CLASSES), total).astype(np.int64)
            owner, k, bits = _escape_chunks(n)
            zp1 = np.ones(total, dtype=np.int64) << n
            if owner.size:
                chunk = dec.decode(Uniform(), (1 << bits).astype(np.int32)).astype(np.int64)
                np.add.at(zp1, owner, chunk << (k * _CHUNK_BITS))
            z = zp1 - 1
            u, below = z >> 1, (z & 1).astype(bool)
            start = 0
            for g, pos, support, offset in esc_groups:
                uc, bc = u[start:start + pos.size], below[start:start + pos.size]
                start += pos.size
                out[g][pos] = np.where(bc, offset - 1 - uc, offset + support + uc)
    except CorruptedBitstreamError:
        raise
    except Exception as e:  # constriction raises ValueError/KeyError/... on garbage
        raise CorruptedBitstreamError(f'range decoding failed: {e}') from e
    for arr in out:
        if arr.size and (arr.min() < _INT32_MIN or arr.max() > _INT32_MAX):
            raise CorruptedBitstreamError('decoded escape value outside int32')
    return out


def encode_with_cdf_tables(symbols: np.ndarray, pmf_tables, offsets,
                           lengths: Optional[Sequence[int]] = None,
                           max_abs: Optional[int] = MAX_LATENT_SYMBOL) -> bytes:
    """Range-code a (C, N) int32 array, channel c with table c. Lossless for any int32 within
    ``max_abs`` (module docstring).

    ``pmf_tables``: C 1-D integer arrays (support frequencies then the overflow bin), or a
    padded (C, Lmax) array plus ``lengths`` (entries used per row, overflow bin included).
    ``offsets[c]`` is the symbol value of row c's first entry. A :class:`CodingTables` may be
    passed as ``pmf_tables`` (``offsets``/``lengths`` are then ignored) to skip rebuilding the
    models for every call.
    """
    prep = _prepared(pmf_tables, offsets, lengths)
    symbols = _check_int32(symbols, max_abs)
    if symbols.ndim != 2 or symbols.shape[0] != len(prep.tables):
        raise ValueError(f'symbols must have shape (C={len(prep.tables)}, N), '
                         f'got {symbols.shape}')
    if symbols.size == 0:
        return b''
    return _encode_groups([(c, symbols[c]) for c in range(symbols.shape[0])], prep)


def decode_with_cdf_tables(data: bytes, num_symbols_per_channel: int, pmf_tables, offsets,
                           lengths: Optional[Sequence[int]] = None,
                           verify: bool = True,
                           max_abs: Optional[int] = MAX_LATENT_SYMBOL) -> np.ndarray:
    """Inverse of :func:`encode_with_cdf_tables` -> (C, N) int32 array.

    Raises CorruptedBitstreamError when ``data`` cannot be the encoding of C x N symbols
    with these tables (``verify`` adds the canonical re-encode check, see module docstring).
    """
    data = as_bytes(data, 'the range-coded body')
    prep = _prepared(pmf_tables, offsets, lengths)
    n_sym = int(num_symbols_per_channel)
    if n_sym < 0:
        raise ValueError('num_symbols_per_channel must be >= 0')
    if not prep.tables or n_sym == 0:
        if data:
            raise CorruptedBitstreamError(f'{len(data)} bytes for an empty symbol array')
        return np.zeros((len(prep.tables), n_sym), dtype=np.int32)
    out = np.stack(_decode_groups(data, [(c, n_sym) for c in range(len(prep.tables))], prep))
    out = _check_decoded(out, max_abs)
    if verify and encode_with_cdf_tables(out, prep, None, max_abs=max_abs) != data:
        raise CorruptedBitstreamError('range-coded body is not a valid encoding of its symbols')
    return out


# ------------------------------------------------------------- indexed-table coder
def _check_indexes(indexes: np.ndarray, n: int, num_tables: int) -> np.ndarray:
    indexes = np.asarray(indexes)
    if indexes.shape != (n, ) or (indexes.size and not np.issubdtype(indexes.dtype, np.integer)):
        raise ValueError(f'indexes must be a 1-D integer array of {n} entries')
    indexes = indexes.astype(np.int64)
    if indexes.size and (indexes.min() < 0 or indexes.max() >= num_tables):
        raise ValueError(f'indexes must lie in [0, {num_tables})')
    return indexes


def _index_groups(indexes: np.ndarray):
    """Symbols grouped by table, in a fixed order both sides derive from the indexes alone:
    -> (positions sorted by table (stable), [(table, count), ...] of the tables that occur)."""
    # a stable sort of <= 16-bit keys is numpy's radix sort: linear, where int64 keys merge-sort
    keys = indexes.astype(np.uint16) if indexes.size and indexes.max() < 2**16 else indexes
    order = np.argsort(keys, kind='stable')
    counts = np.bincount(indexes)
    present = np.flatnonzero(counts)
    return order, list(zip(present.tolist(), counts[present].tolist()))


def _indexed_parts(symbols: np.ndarray, indexes: np.ndarray, tables: CodingTables,
                   max_abs: Optional[int]) -> list:
    """Checked symbols and indexes -> the ``(table, symbols)`` groups in coding order."""
    symbols = _check_int32(symbols, max_abs).reshape(-1)
    indexes = _check_indexes(indexes, symbols.size, len(tables.tables))
    if symbols.size == 0:
        return []
    order, groups = _index_groups(indexes)
    sorted_sym = symbols[order]
    parts, start = [], 0
    for c, count in groups:
        parts.append((c, sorted_sym[start:start + count]))
        start += count
    return parts


def encode_with_indexed_tables(symbols: np.ndarray, indexes: np.ndarray,
                               tables: CodingTables,
                               max_abs: Optional[int] = MAX_LATENT_SYMBOL) -> bytes:
    """Range-code a 1-D int32 array, symbol i with table ``indexes[i]`` (a conditional entropy
    model: the decoder must know the same indexes, e.g. from a hyperprior). Lossless for any
    int32 within ``max_abs``, with the escape scheme of :func:`encode_with_cdf_tables`."""
    parts = _indexed_parts(symbols, indexes, tables, max_abs)
    return _encode_groups(parts, tables) if parts else b''


def encode_indexed_sections(sections: Sequence[Tuple[np.ndarray, np.ndarray]],
                            tables: CodingTables,
                            max_abs: Optional[int] = MAX_LATENT_SYMBOL) -> bytes:
    """Several ``(symbols, indexes)`` sections in ONE range-coded stream, each coded like
    :func:`encode_with_indexed_tables` (its escapes right after it). A decoder can take the
    sections one at a time (:class:`IndexedSectionDecoder`), so a section's indexes may depend
    on the sections decoded before it (a channel-context model), at no per-section cost."""
    enc = RangeEncoder()
    for symbols, indexes in sections:
        parts = _indexed_parts(symbols, indexes, tables, max_abs)
        if parts:
            _encode_groups_into(enc, parts, tables)
    return _words_to_bytes(enc.get_compressed())


class IndexedSectionDecoder:
    """Inverse of :func:`encode_indexed_sections`, one section per :meth:`decode` call.

    Every section is bounded by ``max_abs`` as it comes out, before the caller computes
    anything from it; :meth:`finish` re-encodes all sections and requires the input bytes
    (``verify``), so trailing garbage or a non-canonical stream is refused at the end.
    """

    def __init__(self, data: bytes, tables: CodingTables, verify: bool = True,
                 max_abs: Optional[int] = MAX_LATENT_SYMBOL):
        self._data = as_bytes(data, 'the range-coded body')
        self._tables, self._verify, self._max_abs = tables, verify, max_abs
        self._sections = []
        words = _bytes_to_words(self._data, 'range-coded body')
        try:
            self._dec = RangeDecoder(words)
        except Exception as e:
            raise CorruptedBitstreamError(f'range decoding failed: {e}') from e

    def decode(self, indexes: np.ndarray) -> np.ndarray:
        """The next section's symbols (1-D int32, one per index)."""
        indexes = np.asarray(indexes).reshape(-1)
        indexes = _check_indexes(indexes, indexes.size, len(self._tables.tables))
        out = np.empty(indexes.size, dtype=np.int64)
        if indexes.size:
            order, groups = _index_groups(indexes)
            out[order] = np.concatenate(_decode_groups_from(self._dec, groups, self._tables))
        out = _check_decoded(out, self._max_abs)
        self._sections.append((out, indexes))
        return out

    def finish(self) -> None:
        """Refuses a body that is not exactly the encoding of the sections decoded."""
        if self._verify and encode_indexed_sections(self._sections, self._tables,
                                                    self._max_abs) != self._data:
            raise CorruptedBitstreamError(
                'range-coded body is not a valid encoding of its sections')


def decode_with_indexed_tables(data: bytes, indexes: np.ndarray, tables: CodingTables,
                               verify: bool = True,
                               max_abs: Optional[int] = MAX_LATENT_SYMBOL) -> np.ndarray:
    """Inverse of :func:`encode_with_indexed_tables` -> 1-D int32 array (one per index)."""
    data = as_bytes(data, 'the range-coded body')
    indexes = np.asarray(indexes).reshape(-1)
    indexes = _check_indexes(indexes, indexes.size, len(tables.tables))
    if indexes.size == 0:
        if data:
            raise CorruptedBitstreamError(f'{len(data)} bytes for an empty symbol array')
        return np.zeros(0, dtype=np.int32)
    order, groups = _index_groups(indexes)
    out = np.empty(indexes.size, dtype=np.int64)
    out[order] = np.concatenate(_decode_groups(data, groups, tables))
    out = _check_decoded(out, max_abs)
    if verify and encode_with_indexed_tables(out, indexes, tables, max_abs) != data:
        raise CorruptedBitstreamError('range-coded body is not a valid encoding of its symbols')
    return out


# ------------------------------------------------------------------ histogram coder
def _check_alphabet(alphabet_size: int) -> int:
    a = int(alphabet_size)
    if not 1 <= a <= MAX_HISTOGRAM_ALPHABET:
        raise ValueError(f'alphabet_size must be in 1..{MAX_HISTOGRAM_ALPHABET}, got {a}')
    return a


def _write_varint(out: bytearray, value: int) -> None:
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return


def _read_varints(data: bytes, count: int, max_value: int) -> Tuple[list, int]:
    values, pos = [], 0
    for _ in range(count):
        value, shift = 0, 0
        while True:
            if pos >= len(data):
                raise CorruptedBitstreamError('histogram header runs past the end of the body')
            byte = data[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                break
            shift += 7
            if shift > 63:
                raise CorruptedBitstreamError('histogram varint too long')
        if value > max_value:
            raise CorruptedBitstreamError('histogram count exceeds the number of symbols')
        values.append(value)
    return values, pos


def encode_with_histogram(symbols: np.ndarray, alphabet_size: int) -> bytes:
    """Code symbols in ``[0, alphabet_size)`` with their own histogram as a static model.

    The array is flattened (C order). Layout: ``alphabet_size`` varint counts, then the
    range-coded words (absent when at most one distinct value occurs).
    """
    a = _check_alphabet(alphabet_size)
    symbols = np.asarray(symbols).reshape(-1)
    if symbols.size and not np.issubdtype(symbols.dtype, np.integer):
        raise ValueError(f'symbols must be integers, got dtype {symbols.dtype}')
    symbols = symbols.astype(np.int64)
    if symbols.size and (symbols.min() < 0 or symbols.max() >= a):
        raise ValueError(f'symbols must lie in [0, {a})')
    counts = np.bincount(symbols, minlength=a)
    out = bytearray()
    for cnt in counts.tolist():
        _write_varint(out, cnt)
    present = np.flatnonzero(counts)
    if present.size > 1:
        rank = np.zeros(a, dtype=np.int64)
        rank[present] = np.arange(present.size)
        enc = RangeEncoder()
        enc.encode(rank[symbols].astype(np.int32), _categorical(counts[present]))
        out += _words_to_bytes(enc.get_compressed())
    return bytes(out)


def decode_with_histogram(data: bytes, num_symbols: int, alphabet_size: int,
                          verify: bool = True) -> np.ndarray:
    """Inverse of :func:`encode_with_histogram` -> 1-D int32 array of ``num_symbols``."""
    data = as_bytes(data, 'the range-coded body')
    a = _check_alphabet(alphabet_size)
    n = int(num_symbols)
    if n < 0:
        raise ValueError('num_symbols must be >= 0')
    counts, pos = _read_varints(data, a, n)
    counts = np.asarray(counts, dtype=np.int64)
    if int(counts.sum()) != n:
        raise CorruptedBitstreamError(
            f'histogram counts add up to {int(counts.sum())}, expected {n} symbols')
    present = np.flatnonzero(counts)
    rest = data[pos:]
    if present.size <= 1:
        if rest:
            raise CorruptedBitstreamError(f'{len(rest)} unexpected bytes after the histogram')
        return np.full(n, present[0] if present.size else 0, dtype=np.int32)
    words = _bytes_to_words(rest, 'histogram-coded body')
    try:
        rank = RangeDecoder(words).decode(_categorical(counts[present]), n)
    except Exception as e:
        raise CorruptedBitstreamError(f'range decoding failed: {e}') from e
    out = present[rank.astype(np.int64)].astype(np.int32)
    if verify and encode_with_histogram(out, a) != data:
        raise CorruptedBitstreamError('histogram-coded body is not a valid encoding of its symbols')
    return out
