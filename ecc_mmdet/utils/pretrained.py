"""Can the pretrained weights a config names be loaded here? Asked before anything trains.

mmdet's bases name their backbone weights as ``init_cfg=dict(type='Pretrained',
checkpoint='torchvision://resnet50')`` (or ``open-mmlab://``, ``mmcls://``, a URL). mmengine
resolves them only when the Runner initialises the weights, after the model and the datasets are
built, and a machine without torchvision or without a network then stops with a raw
``ModuleNotFoundError`` or a socket error. Here each such checkpoint is resolved the way mmengine
would, without downloading: a cached copy in torch's hub directory counts, a local path must exist.
"""
import os
import os.path as osp
import socket
from typing import Iterator, List, Optional, Tuple
from urllib.parse import urlparse

from ..errors import ConfigError

_ZOO_SCHEMES = ('torchvision://', 'modelzoo://', 'open-mmlab://', 'openmmlab://', 'mmcls://')


def iter_pretrained(node, path: str = 'model') -> Iterator[Tuple[str, str]]:
    """``(config key, checkpoint)`` of every ``Pretrained`` init_cfg below ``node``."""
    if isinstance(node, dict):
        if node.get('type') == 'Pretrained' and isinstance(node.get('checkpoint'), str):
            yield f'{path}.checkpoint', node['checkpoint']
        for key, value in node.items():
            yield from iter_pretrained(value, f'{path}.{key}')
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            yield from iter_pretrained(value, f'{path}[{i}]')


def _zoo_url(checkpoint: str) -> str:
    """The URL behind a model-zoo name, as mmengine's loaders look it up (KeyError: unknown)."""
    from mmengine.runner import checkpoint as ckpt
    if checkpoint.startswith(('torchvision://', 'modelzoo://')):
        return ckpt.get_torchvision_models()[checkpoint.split('://', 1)[1]]  # imports torchvision
    if checkpoint.startswith('mmcls://'):
        return ckpt.get_mmcls_models()[checkpoint.split('://', 1)[1]]
    name = checkpoint.split('://', 1)[1]
    name = ckpt.get_deprecated_model_names().get(name, name)
    url = ckpt.get_external_models()[name]
    if url.startswith(('http://', 'https://')):
        return url
    # a file under mmengine's home (where its loader looks for it)
    home = os.getenv('MMENGINE_HOME', osp.join(os.getenv('XDG_CACHE_HOME', '~/.cache'), 'mmengine'))
    return osp.join(osp.expanduser(home), url)


def _cached(url: str) -> bool:
    """mmengine's ``load_url`` reads ``<torch hub>/checkpoints/<file name>`` without a download."""
    from torch.hub import get_dir
    return osp.isfile(osp.join(get_dir(), 'checkpoints', osp.basename(urlparse(url).path)))


def _reachable(url: str, timeout: float) -> bool:
    parsed = urlparse(url)
    try:
        port = parsed.port or (443 if parsed.scheme == 'https' else 80)
    except ValueError:  # a port that is not a number
        return False
    if not parsed.hostname:
        return False
    try:
        with socket.create_connection((parsed.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def pretrained_problem(checkpoint: str, timeout: float = 3.0) -> Optional[str]:
    """Why ``checkpoint`` cannot be loaded on this machine, or None when it can."""
    url = checkpoint
    if checkpoint.startswith(_ZOO_SCHEMES):
        try:
            url = _zoo_url(checkpoint)
        except ImportError as e:
            return f'resolving {checkpoint.split("://")[0]}:// names needs torchvision ({e})'
        except KeyError:
            return f'mmengine knows no model named {checkpoint!r}'
    if url.startswith(('http://', 'https://')):
        if _cached(url) or _reachable(url, timeout):
            return None
        return f'it is downloaded from {url}, which is unreachable, and no cached copy exists'
    if '://' in url:
        return None  # another storage backend (s3://, pavi://): mmengine's file clients decide
    if not osp.isfile(osp.expanduser(url)):
        return f'no file at {url}'
    return None


def check_pretrained(cfg, timeout: float = 3.0) -> None:
    """Refuse, before training, the pretrained weights of ``cfg.model`` that cannot load here."""
    problems: List[str] = []
    for key, checkpoint in iter_pretrained(cfg.get('model', {})):
        why = pretrained_problem(checkpoint, timeout)
        if why:
            init = key.rsplit('.', 1)[0]
            problems.append(
                f'{key}={checkpoint!r} cannot be loaded: {why}.\n  Fix: give a local copy of the '
                f'weights (--cfg-options {key}=/path/to/weights.pth), or train that part from '
                f'scratch (--cfg-options {init}=None).')
    if problems:
        raise ConfigError('pretrained weights the config asks for cannot be loaded on this '
                          'machine:\n' + '\n'.join(problems))
