"""Let torch >= 2.6 load the checkpoints mmengine 0.10.7 writes, without ``weights_only=False``.

torch 2.6 made ``torch.load(..., weights_only=True)`` the default, and mmengine calls it without the
argument. Its checkpoints carry the MessageHub state: ``HistoryBuffer`` objects (numpy arrays inside,
and references to its statistics methods pickled as ``getattr(HistoryBuffer, 'mean')``). We allow
exactly those globals in torch's restricted unpickler; ``getattr`` is replaced by a version that only
resolves HistoryBuffer's statistics methods, so no other attribute lookup becomes possible.
Applied once, at ``import ecc_mmdet``; ``resume``, ``load_from`` and ``tools/test.py CKPT`` then work.
"""
import pickle

import numpy as np
import torch
from mmengine.logging import HistoryBuffer

_applied = False


def _history_buffer_getattr(obj, name):
    """Stand-in for ``builtins.getattr`` inside checkpoints: HistoryBuffer statistics only."""
    # the four built-ins are only put into _statistics_methods by the first HistoryBuffer()
    allowed = {'min', 'max', 'current', 'mean'} | set(HistoryBuffer._statistics_methods)
    if obj is HistoryBuffer and name in allowed:
        return getattr(obj, name)
    raise pickle.UnpicklingError(
        f'checkpoint asks for getattr({obj!r}, {name!r}); only HistoryBuffer statistics methods '
        'are allowed. If you trust this file, load it with torch.load(..., weights_only=False).')


def _numpy_globals():
    core = getattr(np, '_core', None) or np.core  # numpy 2 renamed np.core -> np._core
    allowed = [core.multiarray._reconstruct, core.multiarray.scalar, np.ndarray, np.dtype]
    dtypes = getattr(np, 'dtypes', None)  # numpy >= 1.25 pickles dtypes by their DType class
    if dtypes is not None:
        numeric = ('Bool', 'Int', 'UInt', 'Float', 'Complex', 'Byte', 'UByte', 'Short', 'UShort',
                   'Long', 'ULong', 'LongLong', 'ULongLong', 'LongDouble', 'CLongDouble')
        allowed += [getattr(dtypes, n) for n in dir(dtypes)
                    if n.endswith('DType') and n[:-5].rstrip('0123456789') in numeric]
    return allowed


def allow_mmengine_checkpoints():
    """Register the globals mmengine checkpoints need with torch's ``weights_only`` unpickler."""
    global _applied
    if _applied or not hasattr(torch.serialization, 'add_safe_globals'):
        return
    torch.serialization.add_safe_globals(
        [HistoryBuffer, (_history_buffer_getattr, 'builtins.getattr')] + _numpy_globals())
    _applied = True
