"""The downlink of online adaptation: updated edge parameters (normalisation layers) as a
PARAM_UPDATE message of the bitstream format (:mod:`.bitstream`: header with the fingerprint of
the edge model the update applies to, CRC). Body (little-endian)::

    offset  size    field
    0       4       sequence number (u32): the edge applies only newer updates
    4       2       tensor count N (u16, <= MAX_TENSORS)
    then N times:
            2       name length L (u16, <= MAX_NAME_BYTES)
            L       parameter name (UTF-8, as in the edge model's state dict)
            1       dtype (0 = float32, 1 = float16)
            1       ndim (<= MAX_NDIM)
            4*ndim  dims (u32)
            ...     the values, C order

:func:`unpack_params` raises only :class:`~ecc_edge.codecs.bitstream.BitstreamError`
subclasses, allocates no more than the input's length implies, and refuses non-finite values (a
CRC is not authentication: a forged update with a valid checksum still cannot put NaN into the
edge). Whether the names and shapes fit the edge model is the receiver's check.
"""
import struct
from typing import Dict, NamedTuple

import numpy as np

from .bitstream import (NO_FINGERPRINT, CorruptedBitstreamError, MessageType,
                        TruncatedBitstreamError, pack_message, unpack_message)

__all__ = ['ParamUpdate', 'pack_params', 'unpack_params', 'MAX_TENSORS', 'MAX_NAME_BYTES']

MAX_TENSORS = 4096
MAX_NAME_BYTES = 256
MAX_NDIM = 4
_HEAD = struct.Struct('<IH')
_DTYPES = {0: np.dtype('<f4'), 1: np.dtype('<f2')}


class ParamUpdate(NamedTuple):
    seq: int
    tensors: Dict[str, np.ndarray]


def pack_params(seq: int, tensors: Dict[str, np.ndarray], fingerprint: bytes = NO_FINGERPRINT,
                half: bool = False) -> bytes:
    """``tensors`` (name -> array) -> message bytes; ``half`` sends float16 (half the bytes)."""
    if not 0 <= int(seq) < 2**32:
        raise ValueError(f'seq must fit in 32 bits, got {seq}')
    if len(tensors) > MAX_TENSORS:
        raise ValueError(f'{len(tensors)} tensors: an update holds at most {MAX_TENSORS}')
    body = bytearray(_HEAD.pack(int(seq), len(tensors)))
    code = 1 if half else 0
    for name, value in tensors.items():
        raw = name.encode('utf-8')
        # (np.ascontiguousarray would turn a 0-d tensor, e.g. a scale, into shape (1,))
        arr = np.array(value, dtype=_DTYPES[code], order='C', copy=True)
        if not 0 < len(raw) <= MAX_NAME_BYTES or arr.ndim > MAX_NDIM:
            raise ValueError(f'{name!r}: names of 1..{MAX_NAME_BYTES} bytes and at most '
                             f'{MAX_NDIM} dims')
        if not np.isfinite(arr).all():
            raise ValueError(f'{name!r} holds non-finite values')
        body += struct.pack('<H', len(raw)) + raw + struct.pack('<BB', code, arr.ndim)
        body += struct.pack(f'<{arr.ndim}I', *arr.shape) + arr.tobytes()
    return pack_message(MessageType.PARAM_UPDATE, body, fingerprint)


def unpack_params(data, expected_fingerprint=None) -> ParamUpdate:
    body, (seq, n) = unpack_message(data, MessageType.PARAM_UPDATE, _HEAD, 'parameter update',
                                    expected_fingerprint)
    if n > MAX_TENSORS:
        raise CorruptedBitstreamError(f'parameter update declares {n} tensors (max '
                                      f'{MAX_TENSORS})')
    pos, out = _HEAD.size, {}

    def take(k, what):
        nonlocal pos
        if pos + k > len(body):
            raise TruncatedBitstreamError(f'parameter update truncated in {what}')
        chunk = body[pos:pos + k]
        pos += k
        return chunk

    for _ in range(n):
        (length, ) = struct.unpack('<H', take(2, 'a name length'))
        if not 0 < length <= MAX_NAME_BYTES:
            raise CorruptedBitstreamError(f'parameter name of {length} bytes')
        try:
            name = take(length, 'a name').decode('utf-8')
        except UnicodeDecodeError as e:
            raise CorruptedBitstreamError('parameter name is not UTF-8') from e
        code, ndim = struct.unpack('<BB', take(2, 'a dtype'))
        if code not in _DTYPES or ndim > MAX_NDIM:
            raise CorruptedBitstreamError(f'{name!r}: dtype code {code}, ndim {ndim}')
        dims = struct.unpack(f'<{ndim}I', take(4 * ndim, 'dims'))
        count = int(np.prod(dims, dtype=np.int64)) if dims else 1
        size = count * _DTYPES[code].itemsize
        if size > len(body) - pos:  # before any allocation: the input bounds the output
            raise TruncatedBitstreamError(f'{name!r} declares {dims}: more values than the '
                                          'message holds')
        arr = np.frombuffer(take(size, name), dtype=_DTYPES[code]).reshape(dims)
        if not np.isfinite(arr).all():
            raise CorruptedBitstreamError(f'{name!r} holds non-finite values')
        if name in out:
            raise CorruptedBitstreamError(f'{name!r} appears twice')
        out[name] = arr.astype(np.float32)
    if pos != len(body):
        raise CorruptedBitstreamError(f'{len(body) - pos} bytes after the last tensor')
    return ParamUpdate(int(seq), out)
