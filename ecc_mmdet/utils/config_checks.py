"""Checks run on a config before a Runner is built, so mistakes surface as clear messages.

MMDetection would otherwise fail late and deep (a KeyError from the registry, a FileNotFoundError
from pycocotools after the model is built). The datasets' checks live in :mod:`.dataset_checks`.
``tools/train.py`` and ``tools/test.py`` call :func:`check_config`; user code can call it too.
"""
from typing import Callable, List

from mmdet import registry
from mmengine.config import Config

from ..errors import ConfigError
# the dataset checks live in .dataset_checks; re-exported for the callers that import them here
from .dataset_checks import (check_dataset_classes, check_dataset_paths,  # noqa: F401
                             iter_dataset_keys, iter_datasets, iter_evaluators)
from .pretrained import check_pretrained


def ecc_type_names():
    """Type names that ``import ecc_mmdet`` registers into mmdet's registries."""
    names = set()
    for reg in (registry.MODELS, registry.HOOKS, registry.METRICS, registry.TRANSFORMS,
                registry.DATASETS, registry.LOOPS):
        for name, obj in reg.module_dict.items():
            if getattr(obj, '__module__', '').startswith('ecc_mmdet.'):
                names.add(name)
    return names


def _iter_types(node):
    if isinstance(node, dict):
        t = node.get('type')
        if isinstance(t, str):
            yield t
        for v in node.values():
            yield from _iter_types(v)
    elif isinstance(node, (list, tuple)):
        for v in node:
            yield from _iter_types(v)


def check_custom_imports(cfg: Config):
    """A config that uses our components must load the plugin itself.

    Our own tools import ``ecc_mmdet``, so the config would work here and then fail with
    MMDetection's tools or a bare Runner; we reject it here instead with a message naming the fix.
    """
    used = sorted(set(_iter_types(cfg.to_dict())) & ecc_type_names())
    if not used:
        return
    imports = (cfg.get('custom_imports') or {}).get('imports', [])
    if isinstance(imports, str):
        imports = [imports]
    if not any(i == 'ecc_mmdet' or str(i).startswith('ecc_mmdet.') for i in imports):
        raise ConfigError(
            f'The config uses ecc_mmdet components ({", ".join(used)}) but does not load the '
            "plugin. Add this line to the config:\n    custom_imports = dict(imports=['ecc_mmdet'], "
            'allow_failed_imports=False)')


#: pipeline transforms that make an unsplit detector a cloud-only ("send the image") baseline
CLOUD_ONLY_TRANSFORMS = ('CompressImage', 'JPEGCompressImage')


def check_cloud_only_accounting(cfg: Config, loader: str = 'test_dataloader',
                                evaluator: str = 'test_evaluator'):
    """A cloud-only baseline evaluated with CommunicationMetric needs CloudOnlyAccountingHook.

    Without it the records hold the image's bytes but not the cloud's time and FLOPs, and the
    report would silently lack ``comm/cloud_gflops`` and every modelled latency.
    """
    metrics = {e.get('type') for _, e in iter_evaluators(cfg, (evaluator, ))}
    if 'CommunicationMetric' not in metrics:
        return
    transforms = {t for _, ds in iter_datasets(cfg, (loader, ))
                  for t in _iter_types(list(ds.get('pipeline') or []))}
    used = sorted(transforms & set(CLOUD_ONLY_TRANSFORMS))
    hooks = {h.get('type') for h in cfg.get('custom_hooks') or [] if isinstance(h, dict)}
    if used and 'CloudOnlyAccountingHook' not in hooks:
        raise ConfigError(
            f'{loader} sends the image ({", ".join(used)}) and {evaluator} has '
            'CommunicationMetric, but the cloud\'s time and FLOPs are not measured. Add to the '
            "config:\n    custom_hooks = [dict(type='CloudOnlyAccountingHook')]")


#: checks that components of higher layers add for their own config keys (the router's
#: calibration split: :mod:`ecc_mmdet.engine.hooks.router_calibration_hook`), run last by
#: :func:`check_config`; ``import ecc_mmdet`` registers them
COMPONENT_CHECKS: List[Callable[[Config], None]] = []


def register_config_check(check: Callable[[Config], None]) -> Callable[[Config], None]:
    """Decorator: :func:`check_config` also runs ``check(cfg)``."""
    if check not in COMPONENT_CHECKS:
        COMPONENT_CHECKS.append(check)
    return check


def check_config(cfg: Config, mode: str = 'train'):
    """All pre-flight checks for ``mode`` in {'train', 'test'}."""
    check_custom_imports(cfg)
    if mode == 'train':
        check_pretrained(cfg)  # the Runner loads them first thing in train(), load_from or not
        val = cfg.get('val_cfg') is not None
        loaders = ('train_dataloader', 'val_dataloader') if val else ('train_dataloader',)
        check_dataset_paths(cfg, loaders, ('val_evaluator',) if val else ())
        check_dataset_classes(cfg, loaders)
        if val:
            check_cloud_only_accounting(cfg, 'val_dataloader', 'val_evaluator')
    else:
        check_dataset_paths(cfg, ('test_dataloader',), ('test_evaluator',))
        check_dataset_classes(cfg, ('test_dataloader',))
        check_cloud_only_accounting(cfg)
    for check in COMPONENT_CHECKS:
        check(cfg)
