import numpy as np
import torch

from ecc_edge.codecs.range_coding import _index_groups
from ecc_mmdet.utils.derived import DerivedCache


def test_derived_cache_recomputes_only_on_value_changes():
    calls = []
    w = torch.nn.Parameter(torch.arange(6.0).reshape(2, 3))
    cache = DerivedCache()

    def derive():
        calls.append(1)
        return w.detach().sum().item()

    assert cache.get([w], derive) == 15 and cache.get([w], derive) == 15 and len(calls) == 1
    w.data.add_(1)  # in place through .data: no version bump
    assert cache.get([w], derive) == 21 and len(calls) == 2
    w.data = torch.arange(4.0)  # another shape
    assert cache.get([w], derive) == 6 and len(calls) == 3
    assert cache.get([w, w], derive) == 6 and len(calls) == 4  # another set of tensors
    cache.clear()
    cache.get([w, w], derive)
    assert len(calls) == 5


def test_index_groups_are_the_stable_sort_of_the_indexes():
    """Both coding sides derive the symbol order from the indexes alone: the linear-time
    grouping must equal a stable sort and the sorted table counts, for small and wide keys."""
    rng = np.random.default_rng(0)
    for high in (3, 64, 70000):
        idx = rng.integers(0, high, size=5000).astype(np.int64)
        idx[::7] = high - 1
        order, groups = _index_groups(idx)
        np.testing.assert_array_equal(order, np.argsort(idx, kind='mergesort'))
        present, counts = np.unique(idx, return_counts=True)
        assert groups == list(zip(present.tolist(), counts.tolist()))
