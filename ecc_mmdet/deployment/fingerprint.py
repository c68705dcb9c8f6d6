"""The model fingerprint in every payload header: which edge weights and coding tables made it.

A cloud that holds another checkpoint than the edge would decode a payload into garbage features
without any error (the symbols decode fine; they just mean something else). The edge writes an
8-byte digest of what the cloud decodes with -- the edge backbone stages' weights, the
compressor's edge modules and its entropy coding tables -- into each header, and the cloud
refuses a payload whose digest is not its own (:class:`~ecc_edge.codecs.ModelMismatchError`).

The normalisation layers of the edge backbone stages are left out: they are the state online
adaptation changes (the edge re-estimates their statistics, the cloud sends new affine
parameters), and an adapted edge still speaks the same bitstream to the same decoder. Which
adapted parameters an edge runs is its PARAM_UPDATE sequence number, not its identity.

The full model derives the digest from its weights, and again whenever their values change
(compared by value: an EMA swap through ``.data`` changes no version counter).
An edge-only or cloud-only build lacks half of those weights, so it carries the full model's
digest as a buffer, ``pairing_fingerprint``, in its state dict: exporting a side and loading it
back keeps the digest that matches the weights it was exported with.
"""
import hashlib
from typing import Dict, List, Tuple

import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase

from ecc_edge.codecs.bitstream import FINGERPRINT_BYTES
from ..utils.derived import DerivedCache
from ..utils.device import tensor_bytes

__all__ = ['BUFFER_NAME', 'NORM_TYPES', 'compute_fingerprint', 'model_fingerprint',
           'pin_fingerprint']

BUFFER_NAME = 'pairing_fingerprint'
#: the normalisation layers online adaptation may change (left out of the identity)
NORM_TYPES = (_NormBase, nn.GroupNorm, nn.LayerNorm)


def _coding_modules(model) -> List[nn.Module]:
    comp = model.compressor
    mods = list(model.splitter.edge_modules()) + list(comp.edge_modules())
    mods += list(comp.coding_models())
    out, seen = [], set()
    for m in mods:
        if id(m) not in seen:
            seen.add(id(m))
            out.append(m)
    return out


def _adaptable_prefixes(model) -> Dict[int, Tuple[str, ...]]:
    """id(edge stage) -> state-dict prefixes of its normalisation layers (the compressor's own
    norm layers, if any, stay in: nothing adapts them)."""
    out = {}
    for mod in model.splitter.edge_modules():
        out[id(mod)] = tuple(f'{name}.' for name, sub in mod.named_modules()
                             if name and isinstance(sub, NORM_TYPES))
        if isinstance(mod, NORM_TYPES):
            out[id(mod)] = ('', )
    return out


def _tensors(model):
    skip = _adaptable_prefixes(model)
    for i, mod in enumerate(_coding_modules(model)):
        prefixes = skip.get(id(mod), ())
        for name, t in sorted(mod.state_dict(keep_vars=True).items()):
            if not (prefixes and name.startswith(prefixes)):
                yield f'{i}.{type(mod).__name__}.{name}', t


def _digest(compressor_name: str, named) -> bytes:
    h = hashlib.sha256(compressor_name.encode())
    for name, t in named:
        h.update(f'{name}|{t.dtype}|{(t.numel(), )}'.encode())
        h.update(tensor_bytes(t))
    return h.digest()[:FINGERPRINT_BYTES]


def compute_fingerprint(model) -> bytes:
    """SHA-256 over names, dtypes, shapes and bytes of the edge-side and coding tensors (not
    the edge stages' normalisation layers), truncated to FINGERPRINT_BYTES."""
    return _digest(type(model.compressor).__name__, list(_tensors(model)))


def model_fingerprint(model) -> bytes:
    """The fingerprint of ``model``'s bitstream: the pinned one of a side build, otherwise
    derived from the weights, rehashed only when their values change (a
    :class:`~ecc_mmdet.utils.derived.DerivedCache`: both sides call this for every payload,
    and hashing costs ~0.5 ms for the demo's edge; mmengine's EMA swaps weights through
    ``.data``, which no version counter sees, so the cache compares values)."""
    pinned = getattr(model, BUFFER_NAME, None)
    if isinstance(pinned, torch.Tensor):
        return bytes(pinned.cpu().tolist())
    named = list(_tensors(model))
    key = (type(model.compressor).__name__, tuple(name for name, _ in named))
    cache = model.__dict__.setdefault('_fingerprint_cache', DerivedCache())
    return cache.get([t for _, t in named], lambda: _digest(key[0], named), key=key)


def pin_fingerprint(side, fingerprint: bytes) -> None:
    """Store ``fingerprint`` in ``side``'s state dict (a side build lacks the weights to
    compute it)."""
    value = torch.tensor(list(fingerprint), dtype=torch.uint8)
    if isinstance(getattr(side, BUFFER_NAME, None), torch.Tensor):
        getattr(side, BUFFER_NAME).copy_(value)
    else:
        side.register_buffer(BUFFER_NAME, value)
