"""What a config's datasets need on disk, checked before a Runner is built.

MMDetection would otherwise fail late and deep: a ``FileNotFoundError`` from pycocotools after the
model is built, or, when the annotation file's categories match none of the config's classes,
``ValueError: need at least one array to concatenate`` (every image filtered out). Here a missing
file names the whole layout the config expects and what the folder holds instead, and a class
mismatch names both class lists and the fix.
"""
import json
import os
import os.path as osp
import re
from typing import Iterator, List, Optional, Sequence, Tuple

from mmengine.config import Config, ConfigDict

from ..errors import ConfigError, DatasetNotFoundError

SYNTHETIC_HINT = ('To create the synthetic dataset, run: '
                  'python -m ecc_mmdet.datasets.synthetic_coco --out {root}')
COCO_HINT = ('For COCO 2017: annotations/instances_{train,val}2017.json, train2017/ and val2017/ '
             'under data/coco/, or under the folder given with --data-root (tools/*.py) or '
             'data_root in the config.')
#: annotation files of the synthetic dataset (``ecc_mmdet.datasets.synthetic``)
SYNTHETIC_ANN_FILES = ('instances_train.json', 'instances_val.json', 'instances_calib.json')
#: an annotation file larger than this is searched for its categories, not parsed whole
_PARSE_LIMIT = 64 << 20


def _datasets(dataset_cfg, key: str = 'dataset') -> Iterator[Tuple[str, dict]]:
    """(dotted key, leaf dataset config) inside wrappers (RepeatDataset, ConcatDataset, ...)."""
    if dataset_cfg is None:
        return
    if 'datasets' in dataset_cfg:
        for i, d in enumerate(dataset_cfg['datasets']):
            yield from _datasets(d, f'{key}.datasets.{i}')
    elif 'dataset' in dataset_cfg:
        yield from _datasets(dataset_cfg['dataset'], f'{key}.dataset')
    else:
        yield key, dataset_cfg


def iter_dataset_keys(cfg: Config, loaders) -> Iterator[Tuple[str, dict]]:
    """(dotted config key, leaf dataset config) for every dataset the given dataloaders use."""
    for key in loaders:
        loader = cfg.get(key)
        if loader:
            yield from _datasets(loader.get('dataset'), f'{key}.dataset')


def iter_datasets(cfg: Config, loaders) -> Iterator[Tuple[str, dict]]:
    """(loader key, leaf dataset config) for every dataset the given dataloaders use."""
    for key, ds in iter_dataset_keys(cfg, loaders):
        yield key.split('.', 1)[0], ds


def iter_evaluators(cfg: Config, keys, with_index: bool = False):
    """(evaluator key, metric config) for single and list-valued evaluators; ``with_index``:
    the key names the metric (``val_evaluator.0``) where the evaluator is a list."""
    for key in keys:
        ev = cfg.get(key)
        many = isinstance(ev, (list, tuple))
        for i, e in enumerate(ev if many else [ev]):
            if isinstance(e, (dict, ConfigDict)):
                yield (f'{key}.{i}' if many and with_index else key), e


def _is_local(path):
    return isinstance(path, str) and '://' not in path


def _expected_files(cfg: Config, loaders, evaluators) -> List[Tuple[str, str, str, bool]]:
    """(config key, data root, path under it, is a folder) of every local file the datasets and
    evaluators name."""
    out = []
    for key, ds in iter_dataset_keys(cfg, loaders):
        if ds.get('backend_args'):
            continue  # remote storage: cannot check here
        root = ds.get('data_root') or ''
        if _is_local(ds.get('ann_file')) and ds['ann_file']:
            out.append((f'{key}.ann_file', root, ds['ann_file'], False))
        img_dir = (ds.get('data_prefix') or {}).get('img')
        if _is_local(img_dir) and img_dir is not None:
            out.append((f'{key}.data_prefix.img', root, img_dir, True))
    for key, e in iter_evaluators(cfg, evaluators, with_index=True):
        if _is_local(e.get('ann_file')) and not e.get('backend_args'):
            out.append((f'{key}.ann_file', '', e['ann_file'], False))
    return out


def _exists(root, path, is_dir):
    return (osp.isdir if is_dir else osp.isfile)(osp.join(root, path))


def check_dataset_paths(cfg: Config, loaders=('train_dataloader', 'val_dataloader'),
                        evaluators=('val_evaluator',)):
    """Every local annotation file / image folder / evaluator ann_file named by the config
    exists; else :class:`DatasetNotFoundError` naming the expected layout and the fix."""
    expected = _expected_files(cfg, loaders, evaluators)
    missing = [e for e in expected if not _exists(*e[1:])]
    if missing:
        raise DatasetNotFoundError(_layout_message(expected, missing))


def _layout_message(expected, missing) -> str:
    """Sentences (one per line; the tools print them as one line) naming the missing file, the
    layout the config expects, what the folder holds instead, and the fixes."""
    key, root, path, is_dir = missing[0]
    what = 'Image folder' if is_dir else 'Annotation file'
    lines = [f'{what} not found: {osp.join(root, path)} ({key}).']
    root = (root or osp.dirname(osp.dirname(path)) or '.').rstrip('/') + '/'
    under = [e for e in expected if e[1].rstrip('/') + '/' == root or e[2].startswith(root)]
    layout = {}  # path under root -> (config keys, exists)
    for k, r, p, d in under:
        rel = osp.relpath(osp.join(r, p), root) + ('/' if d else '')
        layout.setdefault(rel, ([], _exists(r, p, d)))[0].append(k)
    lines.append(f'The config expects this layout under {root}: ' + ', '.join(
        f'{rel} ({", ".join(keys)}{"" if ok else "; missing"})'
        for rel, (keys, ok) in layout.items()) + '.')
    found = _found_layout(root)
    if found:
        renames = _renames(under, found, root)
        lines.append(f'{root} holds: {", ".join(found)}. Put your files at the expected names (a '
                     'copy or symbolic links), or name them: --cfg-options ' +
                     (' '.join(renames) if renames else 'KEY=PATH with the keys above'))
    else:  # nothing there: how to get the data
        if all(osp.basename(p) in SYNTHETIC_ANN_FILES for _, _, p, d in under if not d):
            lines.append(SYNTHETIC_HINT.format(root=root))
        lines.append(COCO_HINT)
    return '\n'.join(lines)


def _found_layout(root: str) -> List[str]:
    """The folders and annotation files (``*.json`` up to one level down) under ``root``."""
    if not osp.isdir(root):
        return []
    found = []
    for name in sorted(os.listdir(root)):
        if osp.isdir(osp.join(root, name)):
            found.append(name + '/')
            found += [f'{name}/{f}' for f in sorted(os.listdir(osp.join(root, name)))
                      if f.endswith('.json')]
        elif name.endswith('.json'):
            found.append(name)
    return found


def _renames(under, found, root) -> List[str]:
    """``key=value`` options naming the found file for each missing one whose name differs only
    in digits (``instances_train2017.json`` <- ``instances_train.json``, ``train2017/`` <-
    ``train/``), when that match is unique."""
    def stem(name):
        return re.sub(r'\d+', '', name.rstrip('/'))
    out = []
    for key, r, p, d in under:
        if _exists(r, p, d):
            continue
        rel = osp.relpath(osp.join(r, p), root) + ('/' if d else '')
        same = [f for f in found if f.endswith('/') == d and osp.dirname(f.rstrip('/')) ==
                osp.dirname(rel.rstrip('/')) and stem(f) == stem(rel)]
        if len(same) != 1:
            return []
        value = osp.join(root, same[0]) if not r else \
            osp.relpath(osp.join(root, same[0]), r) + ('/' if d else '')
        out.append(f'{key}={value}')
    return out


def read_categories(path: str) -> Optional[List[str]]:
    """Category names of a COCO-format annotation file in the file's order (None: it has no
    list of named categories). A file over 64 MB (COCO's train file is 450 MB) is searched for
    its ``"categories"`` from the end, where COCO writes it, instead of being parsed whole."""
    if osp.getsize(path) > _PARSE_LIMIT:
        cats = _find_categories(path)
    else:
        try:
            with open(path, 'rb') as f:
                data = json.load(f)
        except ValueError:  # not JSON: the dataset reports it when it loads the file
            return None
        cats = data.get('categories') if isinstance(data, dict) else None
    if not isinstance(cats, list) or not all(isinstance(c, dict) and isinstance(
            c.get('name'), str) for c in cats):
        return None
    return [c['name'] for c in cats]


def _find_categories(path: str, chunk: int = 4 << 20) -> Optional[list]:
    """The value of the last top-level-looking ``"categories": [...]`` that parses."""
    key = b'"categories"'
    decoder = json.JSONDecoder()
    with open(path, 'rb') as f:
        end = f.seek(0, os.SEEK_END)
        while end > 0:
            start = max(0, end - chunk)
            f.seek(start)
            block = f.read(end - start + len(key))
            at = block.rfind(key)
            while at >= 0:
                f.seek(start + at + len(key))
                text = f.read(chunk).decode('utf-8', 'replace').lstrip(' \t\r\n:')
                try:
                    value = decoder.raw_decode(text)[0]
                except ValueError:
                    value = None
                if isinstance(value, list):
                    return value
                at = block.rfind(key, 0, at)
            end = start
    return None


def config_classes(ds: dict) -> Optional[Tuple[str, ...]]:
    """The classes a COCO-format dataset config asks for: its ``metainfo.classes``, else its
    dataset class's ``METAINFO``; None for datasets that are not COCO-format."""
    from mmdet.datasets import CocoDataset
    from mmdet.registry import DATASETS
    cls = ds.get('type')
    cls = DATASETS.get(cls) if isinstance(cls, str) else cls
    if not (isinstance(cls, type) and issubclass(cls, CocoDataset)):
        return None
    meta = ds.get('metainfo')
    classes = meta.get('classes') if isinstance(meta, dict) else None
    return tuple(classes if classes is not None else cls.METAINFO['classes'])


def iter_num_classes(node, key: str = 'model') -> Iterator[str]:
    """Dotted keys of every config dict below ``node`` that sets ``num_classes`` (heads, exits)."""
    if isinstance(node, dict):
        if 'num_classes' in node:
            yield key
        for k, v in node.items():
            yield from iter_num_classes(v, f'{key}.{k}')
    elif isinstance(node, (list, tuple)):
        for i, v in enumerate(node):
            yield from iter_num_classes(v, f'{key}.{i}')


def check_dataset_classes(cfg: Config, loaders=('train_dataloader', 'val_dataloader')):
    """Each COCO-format dataset's classes are in its annotation file, in the file's order.

    mmdet keeps the file's categories whose names are among the classes and numbers them in the
    file's order: with none in the file every image is filtered out (a bare ``ValueError: need
    at least one array to concatenate``); with some missing or reordered, labels silently shift.
    """
    for key, ds in iter_dataset_keys(cfg, loaders):
        want = config_classes(ds)
        ann = ds.get('ann_file')
        if want is None or not _is_local(ann) or not ann or ds.get('backend_args'):
            continue
        path = osp.join(ds.get('data_root') or '', ann)
        have = read_categories(path) if osp.isfile(path) else None
        if have is not None and [c for c in have if c in want] != list(want):
            raise ConfigError(_classes_message(cfg, key, path, have, want))


def _names(classes: Sequence[str], most: int = 12) -> str:
    shown = list(classes) if len(classes) <= most else \
        [*classes[:most - 2], '...', classes[-1]]
    return ', '.join(shown)


def _classes_message(cfg, key, path, have, want) -> str:
    absent = [c for c in want if c not in have]
    if len(absent) == len(want):
        why = 'none of them is in the file, so every image would be filtered out'
    elif absent:
        why = (f'{_names(absent)} {"is" if len(absent) == 1 else "are"} not in the file, and '
               'mmdet numbers the classes it finds in the file\'s order: labels would shift')
    else:
        why = 'the file lists them in another order, and mmdet numbers them in the file\'s order'
    fix, in_lists = [f'metainfo = dict(classes={tuple(have)!r})'], []
    keys = [(k, 'metainfo=metainfo') for k, _ in iter_dataset_keys(
        cfg, ('train_dataloader', 'val_dataloader', 'test_dataloader'))]
    for k, leaf in keys + [(k, f'num_classes={len(have)}')
                           for k in iter_num_classes(cfg.get('model'))]:
        if any(p.isdigit() for p in k.split('.')):  # a config cannot merge into a list element
            in_lists.append(f'{leaf} in {k}')
        else:
            fix.append(_config_line(k, leaf))
    return (f'{key}: the annotation file {path} has {len(have)} categories ({_names(have)}); '
            f'the config expects {len(want)} classes ({_names(want)}): {why}.\n'
            'Fix: use the file\'s classes, with --classes-from-data (tools/train.py, '
            'tools/test.py) or these config lines:\n    ' + ';\n    '.join(fix) +
            (f'\n(and {", ".join(in_lists)})' if in_lists else '') +
            '\nor point the config at a dataset with its classes.')


def _config_line(key: str, leaf: str) -> str:
    """``a.b.c`` + ``x=y`` -> ``a = dict(b=dict(c=dict(x=y)))``."""
    parts = key.split('.')
    inner = leaf
    for p in reversed(parts[1:]):
        inner = f'{p}=dict({inner})'
    return f'{parts[0]} = dict({inner})'
