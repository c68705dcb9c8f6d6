"""Point a config at another dataset in one step: its root (``--data-root``) and its classes
(``--classes-from-data``)."""
import os.path as osp
from typing import Iterator, Tuple

from mmengine.config import Config

from ..errors import ConfigError
from .dataset_checks import (_datasets, iter_datasets, iter_evaluators, iter_num_classes,
                             read_categories)

LOADERS = ('train_dataloader', 'val_dataloader', 'test_dataloader')
EVALUATORS = ('val_evaluator', 'test_evaluator')


def _all_datasets(cfg: Config) -> Iterator[dict]:
    """Every leaf dataset config: the dataloaders' and those of hooks' dataloaders (e.g.
    RouterCalibrationHook's calibration split)."""
    for _, ds in iter_datasets(cfg, LOADERS):
        yield ds
    for hook in cfg.get('custom_hooks') or []:
        loader = hook.get('dataloader') if hasattr(hook, 'get') else None
        if hasattr(loader, 'get'):
            for _, ds in _datasets(loader.get('dataset')):
                yield ds


def set_data_root(cfg: Config, data_root: str) -> Config:
    """Replace ``data_root`` of every (wrapped) dataset -- those of hooks' dataloaders too -- and
    re-root the evaluators' ann_file.

    The file names stay the config's (mmdet's COCO bases: ``annotations/instances_train2017.json``
    and ``train2017/``). An evaluator's ann_file under a dataset's old root moves with it
    (``data/coco/annotations/x`` -> ``<new>/annotations/x``). Saves the five ``--cfg-options``
    that the same change needs.
    """
    new = data_root.rstrip('/') + '/'
    old_roots = set()
    for ds in _all_datasets(cfg):
        if ds.get('data_root'):
            old_roots.add(ds['data_root'].rstrip('/') + '/')
        ds['data_root'] = new
    for _, e in iter_evaluators(cfg, EVALUATORS):
        ann = e.get('ann_file')
        if not isinstance(ann, str):
            continue
        for old in old_roots:
            if ann.startswith(old):
                e['ann_file'] = osp.join(new, ann[len(old):])
                break
    return cfg


def _data_classes(cfg: Config) -> Tuple[Tuple[str, ...], str]:
    """(categories, file) of the first dataset, train split first, whose annotation file is a
    local COCO-format file with named categories."""
    for _, ds in iter_datasets(cfg, LOADERS):
        ann = ds.get('ann_file')
        path = osp.join(ds.get('data_root') or '', ann) if isinstance(ann, str) else None
        if path and '://' not in path and osp.isfile(path):
            names = read_categories(path)
            if names:
                return tuple(names), path
    raise ConfigError('--classes-from-data: no dataloader of the config names a local '
                      'COCO-format annotation file with categories (check --data-root)')


def use_data_classes(cfg: Config) -> Tuple[str, ...]:
    """Make the config detect the classes of its data: the categories of the training
    annotation file, in the file's order, as every dataset's ``metainfo.classes`` and every
    ``num_classes`` of the model (heads, exits). Returns the classes.

    For an mmdet base (80 COCO classes) trained on another COCO-format dataset; the evaluators
    take the classes from the datasets.
    """
    classes, _ = _data_classes(cfg)
    for ds in _all_datasets(cfg):
        meta = ds.get('metainfo')
        ds['metainfo'] = dict(meta if isinstance(meta, dict) else {}, classes=classes)
    for key in iter_num_classes(cfg.get('model')):
        node = cfg
        for part in key.split('.'):
            node = node[int(part)] if isinstance(node, (list, tuple)) else node[part]
        node['num_classes'] = len(classes)
    return classes
