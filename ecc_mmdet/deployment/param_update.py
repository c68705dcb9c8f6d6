"""Normalisation-parameter updates for the edge (the downlink of online adaptation, CEMA-style):
collect the edge model's normalisation parameters, send them as a PARAM_UPDATE message
(:mod:`ecc_edge.codecs.param_update`), and apply a received one atomically.

The edge model is what predicts on the device: the backbone's edge stages and the edge exit
(not the compressor: its coding tables must stay those of the cloud's decoder). Only the affine
parameters and running statistics of normalisation layers travel.

:func:`apply_param_update` validates everything first -- fingerprint of the model the update
was made for, a newer sequence number, every name an edge normalisation tensor of this model,
every shape equal, finite values -- and only then copies; a bad update raises a
:class:`~ecc_edge.codecs.bitstream.BitstreamError` and leaves the model exactly as it was.
The fingerprint leaves the edge's normalisation layers out
(:mod:`~ecc_mmdet.deployment.fingerprint`), so an updated edge keeps its identity: the cloud
decodes its payloads with the same model, and the update's sequence number says which
parameters the edge runs.
"""
from typing import Dict, List

import torch
from torch import Tensor, nn

from ecc_edge.codecs.bitstream import BitstreamError, CorruptedBitstreamError
from ecc_edge.codecs.param_update import pack_params, unpack_params
from .fingerprint import NORM_TYPES, model_fingerprint
from ..utils.device import to_numpy

__all__ = ['StaleUpdateError', 'edge_norm_modules', 'edge_norm_parameters', 'make_param_update',
           'apply_param_update']


class StaleUpdateError(BitstreamError):
    """An update not newer than the last one applied (a replay or a reordering)."""


def _edge_modules(model) -> List[nn.Module]:
    mods = list(model.splitter.edge_modules())
    return mods + [m for m in (getattr(model, 'edge_exit', None),
                               getattr(model, 'extension_exit', None)) if m is not None]


def edge_norm_modules(model) -> Dict[str, nn.Module]:
    """Name -> every normalisation layer of the edge model (edge backbone stages and exits)."""
    wanted = {id(m) for e in _edge_modules(model) for m in e.modules() if isinstance(m, NORM_TYPES)}
    return {name: mod for name, mod in model.named_modules() if id(mod) in wanted}


def edge_norm_parameters(model) -> Dict[str, Tensor]:
    """State-dict name -> tensor of every normalisation parameter and statistic on the edge."""
    out = {}
    for name, mod in edge_norm_modules(model).items():
        for key, t in list(mod.named_parameters(recurse=False)) + \
                list(mod.named_buffers(recurse=False)):
            if t is not None and t.is_floating_point():
                out[f'{name}.{key}'] = t
    return out


def make_param_update(model, seq: int, base_fingerprint: bytes, half: bool = False,
                      affine_only: bool = False) -> bytes:
    """The cloud's adapted copy ``model`` -> a PARAM_UPDATE for an edge whose current
    fingerprint is ``base_fingerprint``. ``affine_only``: only the layers' weights and biases,
    not their running statistics (an edge that estimates those itself)."""
    params = edge_norm_parameters(model)
    if affine_only:
        params = {k: v for k, v in params.items() if isinstance(v, nn.Parameter)}
    tensors = {k: to_numpy(v.float()) for k, v in params.items()}
    return pack_params(seq, tensors, fingerprint=base_fingerprint, half=half)


@torch.no_grad()
def apply_param_update(model, data: bytes, last_seq: int = -1) -> int:
    """Apply a PARAM_UPDATE to the edge ``model`` (all or nothing); returns its sequence
    number."""
    update = unpack_params(data, expected_fingerprint=model_fingerprint(model))
    if update.seq <= last_seq:
        raise StaleUpdateError(f'update {update.seq} is not newer than the last applied '
                               f'({last_seq})')
    params = edge_norm_parameters(model)
    unknown = sorted(set(update.tensors) - set(params))
    if unknown:
        raise CorruptedBitstreamError(f'update names {len(unknown)} tensor(s) that are not '
                                      f'edge normalisation parameters of this model, e.g. '
                                      f'{unknown[:3]}')
    for name, arr in update.tensors.items():
        if tuple(arr.shape) != tuple(params[name].shape):
            raise CorruptedBitstreamError(f'{name}: shape {tuple(arr.shape)}, the model has '
                                          f'{tuple(params[name].shape)}')
    for name, arr in update.tensors.items():
        t = params[name]
        t.copy_(torch.from_numpy(arr).to(device=t.device, dtype=t.dtype))
    return update.seq
