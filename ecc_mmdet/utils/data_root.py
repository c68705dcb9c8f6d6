"""Point every dataloader and evaluator of a config at another dataset root in one step."""
import os.path as osp

from mmengine.config import Config

from .config_checks import _datasets, iter_datasets, iter_evaluators

LOADERS = ('train_dataloader', 'val_dataloader', 'test_dataloader')
EVALUATORS = ('val_evaluator', 'test_evaluator')


def set_data_root(cfg: Config, data_root: str) -> Config:
    """Replace ``data_root`` of every (wrapped) dataset -- those of hooks' dataloaders too -- and
    re-root the evaluators' ann_file.

    An evaluator's ann_file under a dataset's old root moves with it (``data/coco/annotations/x``
    -> ``<new>/annotations/x``). Saves the five ``--cfg-options`` that the same change needs.
    """
    new = data_root.rstrip('/') + '/'
    old_roots = set()
    for _, ds in iter_datasets(cfg, LOADERS):
        if ds.get('data_root'):
            old_roots.add(ds['data_root'].rstrip('/') + '/')
        ds['data_root'] = new
    for hook in cfg.get('custom_hooks') or []:  # e.g. RouterCalibrationHook's calibration split
        loader = hook.get('dataloader') if hasattr(hook, 'get') else None
        if hasattr(loader, 'get'):
            for ds in _datasets(loader.get('dataset')):
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
