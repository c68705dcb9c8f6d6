"""Refuse a checkpoint that does not fit the model before its weights are used.

mmengine loads ``load_from`` and ``resume`` non-strictly: a checkpoint of another model (the
unsplit teacher given to a split config, a student without the dynamic model's exit) loads with a
warning, and the run goes on with random weights where the file had none. Here the keys and
shapes are compared first; a mismatch raises :class:`CheckpointError` naming the keys by prefix
(``missing 24 keys under compressor.*``) and the config the checkpoint seems to come from (read
from the ``meta`` mmengine saves: ``experiment_name``, ``cfg``). Loading what fits stays possible
on purpose: ``partial`` (the tools' ``--allow-partial-checkpoint``), or a list of parts that may
be absent or extra (training a split student from its teacher's weights).

Every reader of checkpoint files goes through :func:`read_checkpoint`, so a truncated or foreign
file gets the same message everywhere.
"""
import ast
import logging
import os.path as osp
import re
from collections import OrderedDict
from typing import Dict, List, Mapping, NamedTuple, Sequence, Tuple, Union

import torch
from mmengine.logging import print_log
from mmengine.runner.checkpoint import _load_checkpoint, _load_checkpoint_to_model

from ..errors import ConfigError

__all__ = ['CheckpointError', 'KeyDiff', 'check_checkpoint', 'checkpoint_origin',
           'compare_state', 'load_checked', 'read_checkpoint']

PARTIAL_HINT = ('pass --allow-partial-checkpoint (in code: partial=True) to load what fits on '
                'purpose')


class CheckpointError(ConfigError):
    """A checkpoint file is unreadable, or its weights do not fit the model."""


def _reason(e: Exception) -> str:
    """One line of an exception: torch's ``weights_only`` message names the global it refused
    in its middle, other errors say what matters first."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    named = [ln for ln in lines if 'Unsupported global' in ln]
    line = (named or lines or [''])[0]
    line = line.split('. ')[0]  # the first sentence
    return f'{type(e).__name__}: {line[:200]}'


def read_checkpoint(path: str) -> dict:
    """The checkpoint dict at ``path`` (local file, memory-mapped when torch can; or a URL
    mmengine downloads) -> ``CheckpointError`` for a missing, truncated or foreign file."""
    path = str(path)
    local = '://' not in path
    if local and not osp.isfile(path):
        raise CheckpointError(f'Checkpoint not found: {path}')
    try:
        try:  # mmap: the keys and shapes without reading every tensor
            ckpt = torch.load(path, map_location='cpu', mmap=True) if local else \
                _load_checkpoint(path, map_location='cpu')
        except RuntimeError as e:
            if 'mmap' not in str(e):  # the legacy (non-zip) format cannot be mapped
                raise
            ckpt = torch.load(path, map_location='cpu')
    except Exception as e:  # noqa: BLE001 -- whatever the file is, name it and why
        raise CheckpointError(
            f'{path} is not a readable checkpoint ({_reason(e)}): the file is truncated, '
            'corrupted or not a PyTorch checkpoint; copy or save it again') from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f'{path} holds a {type(ckpt).__name__}, not a checkpoint')
    return ckpt


def _state_of(ckpt: Mapping, path: str) -> Dict[str, torch.Tensor]:
    state = ckpt.get('state_dict', ckpt)
    if not isinstance(state, Mapping) or not all(isinstance(k, str) for k in state):
        raise CheckpointError(f'{path} holds no state_dict of weights')
    return {(k[7:] if k.startswith('module.') else k): v for k, v in state.items()}


class KeyDiff(NamedTuple):
    """How a state dict differs from a model's."""
    missing: List[str]
    unexpected: List[str]
    shapes: List[Tuple[str, tuple, tuple]]  # (key, checkpoint shape, model shape)

    def __bool__(self) -> bool:
        return bool(self.missing or self.unexpected or self.shapes)

    def keys(self) -> List[str]:
        return self.missing + self.unexpected + [k for k, _, _ in self.shapes]

    def only_under(self, parts: Sequence[str]) -> bool:
        """Every difference is inside one of the top-level ``parts`` (e.g. ``compressor``)."""
        return all(k.split('.', 1)[0] in parts for k in self.keys())


def _derived_keys(model) -> set:
    """Keys a module may carry or not, with any shape: the entropy models' coding tables
    (derived from the weights; present once built), see their ``TABLE_KEYS``."""
    return {f'{name}.{t}' if name else t for name, m in model.named_modules()
            for t in getattr(m, 'TABLE_KEYS', ())}


def compare_state(model, state: Mapping[str, torch.Tensor]) -> KeyDiff:
    """Missing, unexpected and differently shaped keys of ``state`` for ``model`` (absent BN
    ``num_batches_tracked`` forgiven, as mmengine does)."""
    own, derived = model.state_dict(), _derived_keys(model)
    missing = [k for k in own if k not in state and k not in derived
               and not k.endswith('num_batches_tracked')]
    unexpected = [k for k in state if k not in own and k not in derived]
    shapes = [(k, tuple(state[k].shape), tuple(own[k].shape)) for k in own
              if k in state and k not in derived and hasattr(state[k], 'shape')
              and tuple(state[k].shape) != tuple(own[k].shape)]
    return KeyDiff(missing, unexpected, shapes)


def _by_prefix(what: str, keys: Sequence[str]) -> str:
    """``missing 24 keys under compressor.* (e.g. compressor.g_a.0.weight)``, one group per
    top-level part."""
    groups: Dict[str, List[str]] = OrderedDict()
    for k in keys:
        groups.setdefault(k.split('.', 1)[0], []).append(k)
    if len(groups) == 1 and len(keys) > 1:
        return f'{what} {len(keys)} keys under {keys[0].split(".", 1)[0]}.* (e.g. {keys[0]})'
    text = [f'{len(v)} under {p}.* (e.g. {v[0]})' if len(v) > 1 else v[0]
            for p, v in groups.items()]
    return f'{what} {len(keys)} key{"s" if len(keys) > 1 else ""}: {", ".join(text)}'


def describe(diff: KeyDiff) -> str:
    """What differs, in one line."""
    parts = [_by_prefix(what, keys) for what, keys in (('missing', diff.missing),
                                                       ('unexpected', diff.unexpected)) if keys]
    if diff.shapes:
        k, got, want = diff.shapes[0]
        parts.append(f'{_by_prefix("reshaped", [s[0] for s in diff.shapes])} ({k} is {got} '
                     f'in the checkpoint, {want} in the model)')
    return '; '.join(parts)


def _model_of_cfg_text(text: str) -> str:
    """``FasterRCNN`` or ``EdgeCloudTwoStageDetector (split_after=0, EntropyBottleneckNeck)``
    from a saved config's text; parsed, never executed (it comes from the file)."""
    try:
        tree = ast.parse(text[:1_000_000])
    except (SyntaxError, ValueError, RecursionError, MemoryError):  # forged or odd text
        return ''
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, 'id', None) == 'model'
                                                 for t in node.targets) \
                and isinstance(node.value, ast.Call):
            kw = {k.arg: k.value for k in node.value.keywords if k.arg}
            name = getattr(kw.get('type'), 'value', None)
            extra = [f'split_after={kw["split_after"].value}'] \
                if isinstance(kw.get('split_after'), ast.Constant) else []
            comp = kw.get('compressor')
            if isinstance(comp, ast.Call):
                extra += [str(getattr(k.value, 'value', '')) for k in comp.keywords
                          if k.arg == 'type']
            if isinstance(kw.get('edge_exit'), ast.Call):
                extra.append('an edge exit')
            return f'{name} ({", ".join(extra)})' if extra else str(name or '')
    return ''


def checkpoint_origin(ckpt: Mapping) -> str:
    """What the checkpoint's ``meta`` says it was trained with, in a phrase ('' if nothing)."""
    meta = ckpt.get('meta')
    if not isinstance(meta, Mapping):
        return ''
    name = meta.get('experiment_name')
    name = re.sub(r'_\d{8}_\d{6}$', '', name) if isinstance(name, str) else ''
    text = meta.get('cfg') or meta.get('config')
    model = _model_of_cfg_text(text) if isinstance(text, str) else ''
    side = f' ({meta["side"]} side export)' if isinstance(meta.get('side'), str) else ''
    if not (name or model):
        return ''
    return ('it seems to come from ' + (f'config {name}' if name else 'a config') +
            (f' with model {model}' if model else '') + side)


def _what_happens(diff: KeyDiff) -> str:
    return ', '.join(
        text for keys, text in ((diff.missing or diff.shapes, 'the model parts it lacks start '
                                 'from their initialisation'),
                                (diff.unexpected, 'its extra parts are not used')) if keys)


def check_checkpoint(model, ckpt: Mapping, path: str, allow: Sequence[str] = (),
                     partial: bool = False, logger='current') -> KeyDiff:
    """Raise :class:`CheckpointError` unless ``ckpt`` fits ``model``.

    Args:
        allow: top-level parts (e.g. ``('compressor', 'edge_exit')``) that may be missing or
            extra: the run says so in one INFO line and starts them from their initialisation.
        partial: load whatever fits (one WARNING line says what does not).
    """
    diff = compare_state(model, _state_of(ckpt, path))
    if not diff:
        return diff
    text, allowed = describe(diff), diff.only_under(allow)
    if allowed or partial:
        level, how = (logging.INFO, _what_happens(diff)) if allowed else \
            (logging.WARNING, 'loading what fits (partial checkpoint allowed)')
        print_log(f'checkpoint {path}: {text}; {how}', logger=logger, level=level)
        return diff
    origin = checkpoint_origin(ckpt)
    raise CheckpointError(
        f'checkpoint {path} does not fit this {type(model).__name__}: {text}. '
        + (f'{origin[0].upper()}{origin[1:]}. ' if origin else '')
        + f'Use the checkpoint trained with this config, or {PARTIAL_HINT}')


def load_checked(model, checkpoint: Union[str, Mapping], allow: Sequence[str] = (),
                 partial: bool = False, path: str = None) -> Mapping:
    """:func:`read_checkpoint` (unless given the dict), :func:`check_checkpoint`, then load
    the weights that fit (the coding tables by their own rules) -> the checkpoint dict."""
    path = path or (checkpoint if isinstance(checkpoint, str) else 'checkpoint')
    ckpt = read_checkpoint(checkpoint) if isinstance(checkpoint, str) else checkpoint
    check_checkpoint(model, ckpt, path, allow, partial)
    _load_checkpoint_to_model(model, ckpt, strict=False, logger='silent')
    return ckpt
