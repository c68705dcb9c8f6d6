"""Build and load a frozen teacher detector from its mmdet config and checkpoint.

Every failure names the file involved and how to fix it (train the teacher, download it from the
model zoo, use the config it was trained with), because a wrong teacher otherwise shows up only as
a distillation that silently does not help.
"""
import os
import os.path as osp
from typing import Union

from mmengine.config import Config, ConfigDict
from mmengine.runner.checkpoint import _load_checkpoint, _load_checkpoint_to_model
from mmdet.registry import MODELS
from torch import nn

from ..errors import ConfigError

__all__ = ['build_teacher', 'resolve_path']

_MODEL_ZOO = 'https://mmdetection.readthedocs.io/en/latest/model_zoo.html'


def resolve_path(path: str, owner: str = 'KnowledgeAdaptationHook') -> str:
    """Existing file for ``path`` (relative paths from the working directory), or ''.

    Configs that ship a teacher next to themselves can write
    ``teacher_config = '{{fileDirname}}/teacher.py'`` (mmengine expands it to the config's own
    directory), which works from any working directory.
    """
    if '::' in path:  # mmdet::faster_rcnn/... (an installed package's config)
        try:
            return Config._get_cfg_path(path, '')[0]
        except Exception as e:  # noqa: BLE001 -- shown to the user with the cause
            raise FileNotFoundError(
                f'{owner}: cannot resolve teacher_config {path!r}: {e}') from e
    return path if osp.isfile(path) else ''


def _how_to_get_teacher(teacher_config) -> str:
    if isinstance(teacher_config, str) and teacher_config.startswith('mmdet::'):
        return ('Download the checkpoint of that MMDetection model from its model zoo '
                f'({_MODEL_ZOO}) and pass it with --cfg-options teacher_checkpoint=PATH.')
    cfg = teacher_config if isinstance(teacher_config, str) else 'the teacher config'
    return (f'Train the teacher first (an ordinary MMDetection training of {cfg}, e.g. '
            'with tools/train.py), then pass its checkpoint with --cfg-options '
            'teacher_checkpoint=PATH.')


def _check_state_dict_fits(teacher, state, teacher_config, teacher_checkpoint, owner) -> None:
    """Strict key/shape check, forgiving only absent ``num_batches_tracked``: a teacher loaded
    half-way would distil noise without any error."""
    state = {(k[7:] if k.startswith('module.') else k): v for k, v in state.items()}
    own = teacher.state_dict()
    missing = [k for k in own if k not in state and not k.endswith('num_batches_tracked')]
    unexpected = [k for k in state if k not in own]
    shape = [f'{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}'
             for k in own if k in state and hasattr(state[k], 'shape')
             and tuple(state[k].shape) != tuple(own[k].shape)]
    if not (missing or unexpected or shape):
        return
    parts = []
    for what, keys in (('missing', missing), ('unexpected', unexpected),
                       ('shape mismatch', shape)):
        if keys:
            more = f' (+{len(keys) - 5} more)' if len(keys) > 5 else ''
            parts.append(f'{len(keys)} {what}: {", ".join(keys[:5])}{more}')
    hint = ''
    if any(k.startswith('compressor.') for k in unexpected):
        hint = ('It looks like a split (student) checkpoint; the teacher is the unsplit '
                'detector. ')
    raise ConfigError(
        f'{owner}: teacher_checkpoint {teacher_checkpoint!r} does not fit '
        f'teacher_config {teacher_config if isinstance(teacher_config, str) else "(dict)"}'
        f' -- {"; ".join(parts)}. {hint}Use a checkpoint trained with exactly that config, '
        'or set teacher_config to the config the checkpoint was trained with.')


def _teacher_model_cfg(teacher_config: Union[str, dict, None], owner: str):
    """-> (the teacher's ``model`` config, the name the messages give it)."""
    if teacher_config is None:
        raise ConfigError(f"{owner} needs teacher_config (the unsplit detector's config) and "
                          f'teacher_checkpoint: give them to {owner} or as top-level '
                          'teacher_config / teacher_checkpoint in the config')
    if isinstance(teacher_config, str):
        path = resolve_path(teacher_config, owner)
        if not path:
            raise FileNotFoundError(
                f'{owner}: teacher_config {teacher_config!r} does not exist '
                f'(relative paths are read from the working directory {os.getcwd()}). Set '
                'teacher_config to the config of the unsplit detector the student is '
                'distilled from: an absolute path, a path relative to where you run '
                "training, or an 'mmdet::...' config.")
        model_cfg = Config.fromfile(path).get('model')
        name = teacher_config
    else:
        model_cfg = teacher_config.get('model', teacher_config)
        name = 'the given teacher_config dict'
    if not isinstance(model_cfg, dict) or 'type' not in model_cfg:
        raise ConfigError(f'{owner}: {name} has no model=dict(type=...)')
    return model_cfg, name


def _teacher_checkpoint_path(teacher_checkpoint, teacher_config, owner: str):
    """The checkpoint to load: an existing local file, or a URL left to mmengine."""
    if teacher_checkpoint is None:
        raise ConfigError(f'{owner}: teacher_checkpoint is not set. '
                          + _how_to_get_teacher(teacher_config))
    if '://' in str(teacher_checkpoint):  # URLs: mmengine downloads them
        return teacher_checkpoint
    found = resolve_path(str(teacher_checkpoint), owner)
    if not found:
        raise FileNotFoundError(
            f'{owner}: teacher checkpoint {teacher_checkpoint!r} not '
            f'found (relative paths are read from the working directory {os.getcwd()}). '
            + _how_to_get_teacher(teacher_config))
    return found


def build_teacher(teacher_config: Union[str, dict, None], teacher_checkpoint,
                  owner: str = 'KnowledgeAdaptationHook', logger=None) -> nn.Module:
    """The teacher of ``teacher_config`` with the weights of ``teacher_checkpoint``, frozen.

    Args:
        teacher_config: the teacher's mmdet config: a file path (``'configs/x.py'``, also
            ``'mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py'``), a full config (dict with a
            ``model`` key) or a model config dict. Relative paths are read from the working
            directory.
        teacher_checkpoint: checkpoint of that teacher (path, same lookup, or a URL mmengine
            can load).
        owner: who asks, the prefix of every error message.
        logger: receives one line naming what was loaded.

    Returns:
        the teacher on the CPU, in eval mode, with ``requires_grad`` off.
    """
    model_cfg, name = _teacher_model_cfg(teacher_config, owner)
    teacher_checkpoint = _teacher_checkpoint_path(teacher_checkpoint, teacher_config, owner)
    teacher = MODELS.build(ConfigDict(model_cfg))
    ckpt = _load_checkpoint(teacher_checkpoint, map_location='cpu')
    state = ckpt.get('state_dict', ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise ConfigError(f'{owner}: {teacher_checkpoint!r} holds no state_dict')
    _check_state_dict_fits(teacher, state, teacher_config, teacher_checkpoint, owner)
    # the check above is the strict one (it forgives only absent num_batches_tracked)
    _load_checkpoint_to_model(teacher, ckpt, strict=False)
    if logger is not None:
        logger.info(f'teacher {type(teacher).__name__} from {name} loaded from '
                    f'{teacher_checkpoint} (frozen, eval mode, not part of the student)')
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher
