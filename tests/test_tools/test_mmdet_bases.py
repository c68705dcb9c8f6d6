"""Every mmdet base the docs name, split the way a user splits their own config: a small file with
``_base_ = 'mmdet::...'``, ``custom_imports``, the split type, ``split_after`` and a compressor.
Each trains (one epoch) through ``tools/train.py`` and tests through ``tools/test.py`` with
``comm/`` metrics, on a COCO-layout copy of the synthetic data (``--data-root`` +
``--classes-from-data``). Only ``--cfg-options`` make them tiny for a CPU: narrower models and
images a tenth of the base's size.

The tools run in-process (their ``main(argv)``) to save an interpreter start each.
"""
import glob
import importlib.util
import json
import os
import os.path as osp

import pytest
import torch

from conftest import REPO

#: the user's config, as the docs write it (EMAHook families keep mmdet's hooks and add ours)
USER_CONFIG = """
_base_ = 'mmdet::{base}'
custom_imports = dict(imports=['ecc_mmdet'], allow_failed_imports=False)
model = dict(type='{split_type}', split_after=1,
             compressor=dict(type='EntropyBottleneckNeck', latent_channels=16, beta=0.01))
val_evaluator = [dict(type='CocoMetric', ann_file='data/coco/annotations/instances_val2017.json'),
                 dict(type='CommunicationMetric', bandwidth_mbps=[5.0, 20.0])]
test_evaluator = val_evaluator
{extra}"""
EMA_HOOKS = "custom_hooks = [*_base_.custom_hooks, dict(type='EMACodingTablesHook')]\n"
EMA_FAMILIES = ('rtmdet', 'yolox')  # their bases train with mmdet's EMAHook

#: ResNet-50 -> ResNet-18 at 1/4 width
R18 = {'model.backbone.depth': 18, 'model.backbone.base_channels': 16,
       'model.backbone.init_cfg': None}
FPN = {**R18, 'model.neck.in_channels': [16, 32, 64, 128], 'model.neck.out_channels': 16}
# untrained heads score below the bases' thresholds: keep every box, so that mAP is computed
DENSE = {**FPN, 'model.bbox_head.in_channels': 16, 'model.bbox_head.feat_channels': 32,
         'model.bbox_head.stacked_convs': 1, 'model.test_cfg.score_thr': 0.0}  # GN: 32 groups
# CSPNeXt / CSPDarknet at 1/8 width: stage outputs 32, 64, 128
CSP = {'model.backbone.widen_factor': 0.125, 'model.neck.in_channels': [32, 64, 128],
       'model.neck.out_channels': 32, 'model.neck.num_csp_blocks': 1,
       'model.bbox_head.in_channels': 32, 'model.bbox_head.feat_channels': 32,
       'model.bbox_head.stacked_convs': 1, 'model.test_cfg.score_thr': 0.0}
FAMILIES = {
    'faster_rcnn': ('faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py', 'EdgeCloudTwoStageDetector', {
        **FPN, 'model.rpn_head.in_channels': 16, 'model.rpn_head.feat_channels': 16,
        'model.roi_head.bbox_roi_extractor.out_channels': 16,
        'model.roi_head.bbox_head.in_channels': 16, 'model.roi_head.bbox_head.fc_out_channels': 32,
        'model.test_cfg.rcnn.score_thr': 0.0,
        'model.train_cfg.rpn_proposal.nms_pre': 200, 'model.train_cfg.rcnn.sampler.num': 64,
        'model.test_cfg.rpn.nms_pre': 200, 'model.test_cfg.rpn.max_per_img': 100}),
    'retinanet': ('retinanet/retinanet_r50_fpn_1x_coco.py', 'EdgeCloudSingleStageDetector', DENSE),
    'atss': ('atss/atss_r50_fpn_1x_coco.py', 'EdgeCloudSingleStageDetector', DENSE),
    'rtmdet': ('rtmdet/rtmdet_tiny_8xb32-300e_coco.py', 'EdgeCloudRTMDet',
               {**CSP, 'model.backbone.init_cfg': None}),
    'yolox': ('yolox/yolox_s_8xb8-300e_coco.py', 'EdgeCloudYOLOX', CSP),
    # mmdet's DINO decoder encodes reference points at a fixed 4 x 128 = 2 x 256 channels: the
    # embedding stays 256 wide (one layer each, 30 queries, a narrow feed-forward)
    'dino': ('dino/dino-4scale_r50_8xb2-12e_coco.py', 'EdgeCloudDINO', {
        **R18, 'model.neck.in_channels': [32, 64, 128], 'model.num_queries': 30,
        'model.dn_cfg.group_cfg.num_dn_queries': 10, 'model.test_cfg.max_per_img': 30,
        **{f'model.{part}.{k}': v for part in ('encoder', 'decoder') for k, v in (
            ('num_layers', 1), ('layer_cfg.ffn_cfg.feedforward_channels', 64))}}),
}
RUN = {'randomness.seed': 0, 'train_cfg.max_epochs': 1, 'train_cfg.val_interval': 1,
       'default_hooks.logger.interval': 1, 'default_hooks.checkpoint.interval': 1,
       **{f'{loader}.{k}': v for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader')
          for k, v in (('batch_size', 2), ('num_workers', 0), ('persistent_workers', False))}}
#: transform / preprocessor keys that hold an image size (or a list of them)
SIZE_KEYS = ('scale', 'scales', 'img_scale', 'crop_size', 'size', 'border', 'random_size_range')


def _tool(name):
    """tools/<name>.py as a module (its ``main(argv)``)."""
    spec = importlib.util.spec_from_file_location(f'ecc_tool_{name}',
                                                  osp.join(REPO, 'tools', f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _sizes(node, key, factor=10):
    """``{dotted key: size / factor}`` for every image size below ``node`` (pipelines, hooks'
    pipelines, batch augments)."""
    out = {}
    if isinstance(node, dict):
        for k, v in node.items():
            if k in SIZE_KEYS and isinstance(v, (tuple, list)) and v:
                out[f'{key}.{k}'] = _scaled(v, factor)
            else:
                out.update(_sizes(v, f'{key}.{k}', factor))
    elif isinstance(node, (list, tuple)):
        for i, v in enumerate(node):
            out.update(_sizes(v, f'{key}.{i}', factor))
    return out


def _scaled(value, factor):
    if isinstance(value, (tuple, list)):
        return type(value)(_scaled(v, factor) for v in value)
    return int(round(value / factor)) if isinstance(value, int) else value


def _option(key, value):
    """``key=value`` as mmengine's DictAction reads it back."""
    def text(v):
        if isinstance(v, tuple):
            return '(' + ','.join(map(text, v)) + ')'
        if isinstance(v, list):
            return '[' + ','.join(map(text, v)) + ']'
        return str(v)
    return f'{key}={text(value)}'


@pytest.fixture(scope='module')
def coco_layout(tiny_coco, tmp_path_factory):
    """The tiny synthetic set under COCO 2017's names (links): annotations/instances_{train,val}
    2017.json, {train,val}2017/ -- what mmdet's COCO bases read."""
    root = tmp_path_factory.mktemp('coco_layout')
    os.makedirs(root / 'annotations')
    for split in ('train', 'val'):
        os.symlink(osp.join(tiny_coco, 'annotations', f'instances_{split}.json'),
                   root / 'annotations' / f'instances_{split}2017.json')
        os.symlink(osp.join(tiny_coco, split), root / f'{split}2017')
    return str(root)


def user_config(tmp_path, family):
    base, split_type, _ = FAMILIES[family]
    path = tmp_path / f'my_split_{family}.py'
    extra = EMA_HOOKS if family in EMA_FAMILIES else ''
    path.write_text(USER_CONFIG.format(base=base, split_type=split_type, extra=extra))
    return str(path)


def tiny_options(config, family):
    from mmengine.config import Config
    cfg = Config.fromfile(config)
    opts = {**RUN, **FAMILIES[family][2]}
    for key in ('train_dataloader', 'val_dataloader', 'test_dataloader', 'custom_hooks'):
        opts.update(_sizes(cfg.get(key), key))
    opts.update(_sizes(cfg.model.get('data_preprocessor'), 'model.data_preprocessor'))
    return [_option(k, v) for k, v in opts.items()]


@pytest.fixture
def unformatted_config_text(monkeypatch):
    """mmengine formats the config text with yapf each time a Runner logs, dumps or saves it
    (9 times per train + test): 24 of DINO's 28 s here. The same text unformatted is the same
    config (what ``Config(format_python_code=False)`` gives)."""
    import mmengine.config.config as mmengine_config
    monkeypatch.setattr(mmengine_config, 'FormatCode', lambda text, **kwargs: (text, False))


@pytest.mark.parametrize('family', list(FAMILIES))
def test_mmdet_base_trains_and_tests_split(family, coco_layout, tmp_path, unformatted_config_text):
    config = user_config(tmp_path, family)
    common = ['--data-root', coco_layout, '--classes-from-data', '--cfg-options',
              *tiny_options(config, family)]
    work = tmp_path / 'work'
    assert _tool('train').main([config, '--work-dir', str(work), *common]) == 0
    if family in EMA_FAMILIES:  # mmdet's EMAHook ran and saved the averaged model
        assert 'ema_state_dict' in torch.load(work / 'epoch_1.pth', map_location='cpu')
    assert _tool('test').main([config, str(work / 'epoch_1.pth'), '--work-dir',
                               str(tmp_path / 'test'), *common]) == 0
    metrics = json.load(open(glob.glob(str(tmp_path / 'test' / '*' / '*.json'))[0]))
    assert 'coco/bbox_mAP' in metrics
    assert metrics['comm/bytes_mean'] > 0 and metrics['comm/cloud_gflops'] > 0


# ------------------------------------------------------------------ a COCO base without its data
def test_coco_base_on_another_layout_names_the_layout_and_the_fix(tiny_coco, tmp_path, capsys):
    """--data-root at the synthetic set (instances_train.json, train/) with a COCO base: the
    error lists the layout the config expects, what the folder holds, and options that name the
    folder's files -- which then get past the file check to the class check."""
    from ecc_mmdet.apis import load_config
    from ecc_mmdet.utils import ConfigError, check_config, use_data_classes
    config = user_config(tmp_path, 'faster_rcnn')
    init = 'model.backbone.init_cfg=None'
    assert _tool('train').main([config, '--data-root', tiny_coco, '--cfg-options', init]) == 2
    err = capsys.readouterr().err
    assert f'{tiny_coco}/annotations/instances_train2017.json' in err
    assert 'train2017/ (train_dataloader.dataset.data_prefix.img; missing)' in err
    assert 'annotations/instances_val.json' in err and 'synthetic_coco --out' not in err
    options = err.split('--cfg-options ', 1)[1].split()  # the message ends with them
    assert 'train_dataloader.dataset.ann_file=annotations/instances_train.json' in options
    assert f'val_evaluator.0.ann_file={tiny_coco}/annotations/instances_val.json' in options
    cfg = load_config(config, tiny_coco, dict(o.split('=', 1) for o in options + [init]))
    with pytest.raises(ConfigError, match='6 categories .circle, rectangle'):
        check_config(cfg, 'train')
    assert use_data_classes(cfg)[:2] == ('circle', 'rectangle')
    check_config(cfg, 'train')
    assert cfg.model.roi_head.bbox_head.num_classes == 6


def test_coco_classes_on_other_data_name_both_lists_and_the_fix(coco_layout, capsys):
    """The issue's case: tools/train.py configs/ecc_faster_rcnn.py --data-root <COCO-layout
    copy of the synthetic set> stopped with `need at least one array to concatenate`."""
    assert _tool('train').main([osp.join(REPO, 'configs', 'ecc_faster_rcnn.py'),
                                '--data-root', coco_layout]) == 2
    err = capsys.readouterr().err
    assert 'has 6 categories (circle, rectangle, triangle, star, ring, cross)' in err
    assert 'expects 80 classes (person, bicycle' in err and 'filtered out' in err
    assert '--classes-from-data' in err
    assert "metainfo = dict(classes=('circle', 'rectangle'," in err
    assert 'train_dataloader = dict(dataset=dict(metainfo=metainfo))' in err
    assert 'model = dict(roi_head=dict(bbox_head=dict(num_classes=6)))' in err


@pytest.mark.parametrize('classes, match', [
    (('circle', 'hexagon'), 'hexagon is not in the file.*labels would shift'),
    (('rectangle', 'circle'), 'another order'),
])
def test_missing_or_reordered_classes_are_refused(tiny_coco, classes, match):
    from ecc_mmdet.apis import load_config
    from ecc_mmdet.utils import ConfigError, check_config
    cfg = load_config(osp.join(REPO, 'configs', 'faster_rcnn_r18_fpn_synthetic.py'), tiny_coco)
    cfg.train_dataloader.dataset.metainfo = dict(classes=classes)
    with pytest.raises(ConfigError, match=match):
        check_config(cfg, 'train')
    cfg.train_dataloader.dataset.metainfo = dict(classes=('circle', 'triangle'))  # a subset
    check_config(cfg, 'train')


def test_categories_of_a_large_file_are_found_without_parsing_it(tmp_path, monkeypatch):
    from ecc_mmdet.utils import dataset_checks
    monkeypatch.setattr(dataset_checks, '_PARSE_LIMIT', 0)  # every file is "large"
    cats = [dict(id=1, name='a'), dict(id=2, name='b b')]
    for i, doc in enumerate([dict(images=[dict(id=1, file_name='"categories": x')],
                                  annotations=[], categories=cats),  # COCO's order
                             dict(categories=cats, images=[], annotations=[])]):
        path = tmp_path / f'{i}.json'
        path.write_text(json.dumps(doc))
        assert dataset_checks.read_categories(str(path)) == ['a', 'b b']
    (tmp_path / 'none.json').write_text(json.dumps(dict(images=[])))
    assert dataset_checks.read_categories(str(tmp_path / 'none.json')) is None
