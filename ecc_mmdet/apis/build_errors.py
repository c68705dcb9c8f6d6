"""Turn mmengine's build errors for a misspelled type or key into one ConfigError line.

mmengine answers ``type='EntropyBotleneckNeck'`` with a KeyError about its registry and a URL,
and a misspelled argument with a TypeError from deep inside the constructor; neither says
where in the config the value is. Here the config is searched for the value, and the nearest
registered names (or the class's own arguments) are offered as the fix.
"""
import difflib
import inspect
import re
from typing import Iterator, List, Optional, Tuple

import mmdet.registry
from mmengine.registry import Registry

from ..errors import ConfigError

__all__ = ['config_error_of']

_UNKNOWN_TYPE = re.compile(r"(\S+) is not in the (\S+)::(\S+) registry")
_UNKNOWN_ARG = re.compile(r"(\w+)\.__init__\(\) got an unexpected keyword argument '(\w+)'")


def _nodes(node, path: str = '') -> Iterator[Tuple[str, dict]]:
    """(dotted path, dict) of every dict in a config tree (a ``Config`` or plain dicts)."""
    if not isinstance(node, dict) and hasattr(node, 'to_dict'):
        node = node.to_dict()
    if isinstance(node, dict):
        yield path, node
        items = node.items()
    elif isinstance(node, (list, tuple)):
        items = ((str(i), v) for i, v in enumerate(node))
    else:
        return
    for k, v in items:
        yield from _nodes(v, f'{path}.{k}' if path else str(k))


def _registry(scope: str, name: str) -> Optional[Registry]:
    for reg in vars(mmdet.registry).values():
        if isinstance(reg, Registry) and (reg.scope, reg.name) == (scope, name):
            return reg
    return None


def _registered(reg: Optional[Registry]) -> List[str]:
    names = []
    while reg is not None:
        names += list(reg.module_dict)
        reg = reg.parent
    return names


def _suggest(word: str, choices) -> str:
    near = difflib.get_close_matches(word, list(choices), n=2, cutoff=0.6)
    return f'did you mean {" or ".join(repr(n) for n in near)}?' if near else ''


def _where(cfg, root: str, test) -> Tuple[str, Optional[dict]]:
    """(dotted path, node) of the first dict of ``cfg`` that passes ``test`` ('', None)."""
    for path, node in (_nodes(cfg) if cfg is not None else ()):
        if test(node):
            return '.'.join(x for x in (root, path) if x), node
    return '', None


def _unknown_type(m, cfg, root: str) -> ConfigError:
    name, scope, kind = m.groups()
    where, _ = _where(cfg, root, lambda d: d.get('type') == name)
    fix = _suggest(name, _registered(_registry(scope, kind))) or (
        'a type of another package needs custom_imports=dict(imports=[...]) in the config')
    key = f'{where}.type={name!r}' if where else f'type={name!r}'
    return ConfigError(f'{key}: no {kind} type of that name is registered; {fix}')


def _class_named(name: str):
    for reg in vars(mmdet.registry).values():
        while isinstance(reg, Registry):
            if name in reg.module_dict:
                return reg.module_dict[name]
            reg = reg.parent
    return None


def _unknown_arg(m, cfg, root: str) -> ConfigError:
    cls_name, arg = m.groups()
    where, node = _where(cfg, root, lambda d: arg in d and
                         str(d.get('type', '')).split('.')[-1] == cls_name)
    cls = _class_named(cls_name)
    params = list(inspect.signature(cls.__init__).parameters)[1:] if cls is not None else []
    fix = _suggest(arg, params) or f'remove it (see {cls_name}\'s docstring for its arguments)'
    key = f'{where}.{arg}={node[arg]!r}' if where else arg
    return ConfigError(f'{key}: {cls_name} takes no argument {arg!r}; {fix}')


def config_error_of(e: Exception, cfg=None, root: str = '') -> Optional[ConfigError]:
    """A one-line ConfigError for a registry miss (KeyError) or an unknown constructor
    argument (TypeError) raised while building from ``cfg`` (whose dotted path is ``root``,
    e.g. ``'model'``); None for any other error."""
    msg = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
    m = _UNKNOWN_TYPE.search(msg) if isinstance(e, KeyError) else None
    if m:
        return _unknown_type(m, cfg, root)
    m = _UNKNOWN_ARG.search(msg) if isinstance(e, TypeError) else None
    if m:
        return _unknown_arg(m, cfg, root)
    return None
