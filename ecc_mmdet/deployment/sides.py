"""Edge-only and cloud-only builds of a split detector, for shipping each side on its own.

A device should hold only the weights it runs: the edge the stem, the edge stages, the encoder,
the entropy model's tables, the exit and the router; the cloud the entropy model's tables, the
decoder, the remaining stages, the neck and the heads. Each build is a deep copy of the full
model (eval mode) in which the other side's modules are replaced by :class:`RemovedModule`
placeholders: they hold no parameters or buffers, so ``state_dict()``, ``named_parameters()`` and
``.to()`` see only this side, and calling a step of the other side fails with a message naming
the missing module instead of a deep ``AttributeError``.

Modules are chosen by object identity and replaced through ``deepcopy``'s memo, so a module
reachable under several names (or held in a plain attribute, like the splitter's backbone) is
replaced, or kept, under all of them at once, and its weights are never even copied.

The builds run the very same step methods as the full model (:mod:`ecc_mmdet.deployment.pipeline`),
so edge build + cloud build give the full model's payloads and detections bit for bit. Both
carry the full model's fingerprint (:mod:`.fingerprint`) in their state dicts, so payloads of an
edge build are accepted by the cloud build of the same model and refused by any other.
"""
import copy
from typing import Dict, Iterable, List

from torch import nn

from .fingerprint import model_fingerprint, pin_fingerprint

__all__ = ['RemovedModule', 'build_cloud', 'build_edge']


class RemovedModule(nn.Module):
    """Stands where a module of the other side was: no weights, a clear error when used.

    Attribute lookups raise an ``AttributeError`` subclass, so ``hasattr`` (used by torch and
    mmengine while walking modules) still just answers False.
    """

    def __init__(self, name: str, side: str):
        super().__init__()
        self.removed_name, self.side = name, side

    def _message(self, what: str) -> str:
        # read through __dict__: __getattr__ must not recurse on a half-unpickled instance
        name, side = self.__dict__.get('removed_name'), self.__dict__.get('side')
        other = 'cloud' if side == 'edge' else 'edge'
        return (f'{what}: {name!r} is not part of this {side}-only build '
                f'(ecc_mmdet.deployment.build_{side}); run the {other} steps on the '
                f'{other} build or on the full model')

    def forward(self, *args, **kwargs):
        raise RuntimeError(self._message('cannot run it'))

    def __getattr__(self, attr: str):
        raise _RemovedAttributeError(self._message(f'no attribute {attr!r}'))

    def extra_repr(self) -> str:
        return f'{self.removed_name}, removed from the {self.side} build'


class _RemovedAttributeError(AttributeError):
    pass


# top-level children that are not cloud-only: the edge's, and those both sides use
_NOT_CLOUD_ONLY = ('backbone', 'splitter', 'compressor', 'edge_exit', 'router', 'extension_exit',
                   'data_preprocessor')


def _cloud_only(model) -> List[nn.Module]:
    """The backbone's cloud stages, every other top-level child of the detector (neck, heads,
    a DETR's encoder, decoder and query embeddings, ...) and the compressor's decoder."""
    mods = list(model.splitter.cloud_modules())
    mods += [m for name, m in model.named_children() if name not in _NOT_CLOUD_ONLY]
    comp = model.compressor
    return mods + _minus(comp.cloud_modules(), list(comp.edge_modules()) + comp.coding_models())


def _edge_only(model) -> List[nn.Module]:
    comp = model.compressor
    mods = list(model.splitter.edge_modules()) + [model.edge_exit, model.router,
                                                  getattr(model, 'extension_exit', None)]
    return mods + _minus(comp.edge_modules(), list(comp.cloud_modules()) + comp.coding_models())


def _minus(mods: Iterable[nn.Module], others: Iterable[nn.Module]) -> List[nn.Module]:
    others = {id(m) for m in others}
    return [m for m in mods if id(m) not in others]


def _build_side(model, side: str):
    if not hasattr(model, 'splitter') or not hasattr(model, 'compressor'):
        raise TypeError(f'build_{side} needs a split (EdgeCloud*) detector, got '
                        f'{type(model).__name__}')
    own, other = (_edge_only, _cloud_only) if side == 'edge' else (_cloud_only, _edge_only)
    # whatever this side runs stays, even when the other side's lists name it too (shared
    # modules, the entropy model); modules inside a dropped one that this side reaches by
    # another path are still copied through that path
    needed = {id(d) for m in own(model) + model.compressor.coding_models()
              if m is not None for d in m.modules()}
    names: Dict[int, str] = {}
    for name, m in model.named_modules(remove_duplicate=False):
        names.setdefault(id(m), name)
    placeholders = {id(m): RemovedModule(names.get(id(m), type(m).__name__), side)
                    for m in other(model)
                    if isinstance(m, nn.Module) and m is not model and id(m) not in needed}
    # through the memo every reference to a dropped module becomes its placeholder; the
    # distiller (a frozen teacher, training only) is left out altogether
    memo = dict(placeholders)
    if side == 'edge':  # bare parameters of the detector itself (a DETR's level_embed) are cloud's
        memo.update({id(p): None for p in model._parameters.values() if p is not None})
    if getattr(model, 'distiller', None) is not None:
        memo[id(model.distiller)] = None
    fingerprint = model_fingerprint(model)
    out = copy.deepcopy(model, memo)
    if out.splitter.backbone is not out.backbone:
        raise RuntimeError('deepcopy separated the splitter from the backbone')
    pin_fingerprint(out, fingerprint)  # this side cannot recompute it: see .fingerprint
    return out.eval()


def build_edge(model):
    """Deep copy of ``model`` (eval mode) without the cloud-only modules: the backbone stages
    after the split, the neck, the heads and the compressor's decoder. ``encode`` and
    ``run_edge`` work on it and give the full model's payloads and edge detections."""
    return _build_side(model, 'edge')


def build_cloud(model):
    """Deep copy of ``model`` (eval mode) without the edge-only modules: the stem, the edge
    stages, the compressor's encoder, the edge exit and the router. ``decode_and_predict`` works
    on it and gives the full model's detections."""
    return _build_side(model, 'cloud')
