"""FLOP counting for the accounting, cached per input shape.

A detector's FLOPs depend only on the input shape (and, for two-stage heads, on a fixed number
of proposals), so they are measured once per shape and reused. The cache is bounded: a test set
with many image sizes (``keep_ratio`` resizing without padding to a fixed size) must not grow it
without limit. Custom mmcv ops (RoIAlign, NMS) are not counted by torch's counter.
"""
from collections import OrderedDict
from typing import Callable, Hashable, Tuple, TypeVar

import torch
from torch.utils.flop_counter import FlopCounterMode

T = TypeVar('T')


def count_flops(fn: Callable[[], T]) -> Tuple[float, T]:
    """``(FLOPs spent in torch operators, result)`` of ``fn()``, run without gradients."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        result = fn()
    return float(counter.get_total_flops()), result


class FlopCache:
    """A least-recently-used map ``input shape -> measured FLOPs`` of at most ``max_entries``.

    ``get(key, measure)`` returns the cached value or calls ``measure()`` once and keeps it.
    """

    def __init__(self, max_entries: int = 16):
        if isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 1:
            raise ValueError(f'FlopCache: max_entries must be an int >= 1, got {max_entries!r}')
        self.max_entries = max_entries
        self._entries: 'OrderedDict[Hashable, object]' = OrderedDict()
        self.measurements = 0  # how many times ``measure`` ran (a miss)

    def get(self, key: Hashable, measure: Callable[[], T]) -> T:
        if key in self._entries:
            self._entries.move_to_end(key)
            return self._entries[key]
        value = measure()
        self.measurements += 1
        self._entries[key] = value
        if len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        return value

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entries

    def clear(self) -> None:
        self._entries.clear()
