"""Parameter bookkeeping over groups of modules that may share parameters."""
from typing import Iterable, List

from torch import nn


def unique_parameters(modules: Iterable[nn.Module]) -> List[nn.Parameter]:
    """Parameters of ``modules`` in order, each once even when modules share it (tied weights)."""
    seen, out = set(), []
    for m in modules:
        for p in m.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                out.append(p)
    return out


def count_parameters(modules: Iterable[nn.Module]) -> int:
    """Number of scalar parameters in ``modules``, shared ones counted once."""
    return sum(p.numel() for p in unique_parameters(modules))
