"""Configs build (incl. the full-size COCO one), load from outside the repo, and fail clearly."""
import glob
import json
import os.path as osp
import subprocess
import sys
import textwrap

import pytest
import torch
from mmengine.config import Config

from conftest import (BASELINE_CFG, REPO, data_options, fake_batch, predictions_as_ground_truth,
                      run_tool)

ECC_SYNTH = osp.join(REPO, 'configs', 'ecc_faster_rcnn_r18_synthetic.py')


def test_config_from_outside_repo_loads_plugin_via_custom_imports(tmp_path):
    """A user's config elsewhere, inheriting ours: custom_imports alone registers the plugin."""
    cfg_file = tmp_path / 'my_split.py'
    cfg_file.write_text(f"_base_ = [{ECC_SYNTH!r}]\nmodel = dict(split_after=0)\n")
    code = textwrap.dedent(f"""
        import sys
        from mmengine.config import Config
        from mmdet.utils import register_all_modules
        from mmdet.registry import MODELS
        cfg = Config.fromfile({str(cfg_file)!r})   # imports ecc_mmdet through custom_imports
        assert 'ecc_mmdet' in sys.modules
        register_all_modules()
        model = MODELS.build(cfg.model)
        print(type(model).__name__, model.splitter.split_after, type(model.compressor).__name__)
    """)
    out = subprocess.run([sys.executable, '-c', code], cwd=str(tmp_path), capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-3:] == ['EdgeCloudTwoStageDetector', '0', 'EntropyBottleneckNeck']


def test_forgotten_custom_imports_is_named(tmp_path):
    cfg_file = tmp_path / 'no_imports.py'
    cfg_file.write_text(textwrap.dedent(f"""
        _base_ = [{osp.join(REPO, 'configs', '_base_', 'models', 'faster_rcnn_r18_fpn_tiny.py')!r},
                  {osp.join(REPO, 'configs', '_base_', 'datasets', 'synthetic_coco.py')!r},
                  {osp.join(REPO, 'configs', '_base_', 'schedules', 'synthetic_schedule.py')!r},
                  'mmdet::_base_/default_runtime.py']
        model = dict(type='EdgeCloudTwoStageDetector', split_after=1,
                     compressor=dict(type='QuantizeNeck'))
    """))
    proc = run_tool('train', cfg_file, check=False)
    assert proc.returncode == 2
    assert "custom_imports = dict(imports=['ecc_mmdet']" in proc.stderr
    assert 'EdgeCloudTwoStageDetector' in proc.stderr and 'QuantizeNeck' in proc.stderr


def test_missing_dataset_says_how_to_generate_it(tmp_path):
    missing = tmp_path / 'nowhere'
    proc = run_tool('train', BASELINE_CFG, '--work-dir', tmp_path / 'w',
                    *data_options(missing), check=False)
    assert proc.returncode == 2
    assert f'{missing}/annotations/instances_train.json' in proc.stderr
    assert f'python -m ecc_mmdet.datasets.synthetic_coco --out {missing}' in proc.stderr
    assert 'data/coco/' in proc.stderr
    proc = run_tool('test', BASELINE_CFG, tmp_path / 'missing.pth', check=False)
    assert proc.returncode == 2 and 'Checkpoint not found' in proc.stderr


def test_split_config_trains_and_reports_map_and_communication(tiny_coco, tmp_path):
    """Done-when of the split-detector issue, on 8 tiny images: train, then test reports both."""
    run_tool('train', ECC_SYNTH, '--work-dir', tmp_path / 'w', *data_options(tiny_coco),
             '--cfg-options', 'train_cfg.max_epochs=1', 'param_scheduler.0.end=2',
             'default_hooks.logger.interval=1')
    # mAP against the model's own deployed-path predictions (made in-process) is 1: tools/test.py
    # ran the same encode -> bitstream -> decode round trip on the same weights (see conftest)
    gt = tmp_path / 'own_predictions.json'
    assert predictions_as_ground_truth(ECC_SYNTH, str(tmp_path / 'w' / 'epoch_1.pth'), tiny_coco,
                                       gt) > 0
    run_tool('test', ECC_SYNTH, tmp_path / 'w' / 'epoch_1.pth', '--work-dir', tmp_path / 't',
             *data_options(tiny_coco), '--cfg-options', f'test_evaluator.0.ann_file={gt}')
    metrics = json.load(open(glob.glob(str(tmp_path / 't' / '*' / '*.json'))[0]))
    assert metrics['coco/bbox_mAP'] == pytest.approx(1.0, abs=1e-6)
    assert metrics['comm/offload_ratio'] == 1.0
    assert metrics['comm/bytes_mean'] > metrics['comm/header_bytes_mean'] > 0
    assert 0.9 < metrics['comm/real_to_est_ratio'] < 1.5
    assert 0 < metrics['comm/edge_flops_fraction'] < 0.5
    assert 'latency_ms_at_10mbps' in ''.join(metrics)
    assert 'loss_rate' in open(glob.glob(str(tmp_path / 'w' / '*' / '*.log'))[0]).read()


@pytest.mark.parametrize('name', ['ecc_faster_rcnn_r18_synthetic.py',
                                  'ecc_faster_rcnn_r18_synthetic_kd_fg.py',
                                  'ecc_retinanet_r18_synthetic.py',
                                  'faster_rcnn_r18_fpn_synthetic.py'])
def test_synthetic_configs_build_and_compute_their_losses(name):
    """Each config's model fits its dataset (classes) and computes exactly its losses, finite and
    with a gradient for every trainable parameter, on a seeded batch."""
    import ecc_mmdet  # noqa: F401
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    register_all_modules()
    cfg = Config.fromfile(osp.join(REPO, 'configs', name))
    classes = cfg.train_dataloader.dataset.metainfo['classes']
    head = cfg.model.roi_head.bbox_head if 'roi_head' in cfg.model else cfg.model.bbox_head
    assert head.num_classes == len(classes) == 6
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.train()
    inputs, samples = fake_batch(model, size=64, with_gt=True, training=True)
    losses = model.loss(inputs, samples)
    expected = {'faster_rcnn_r18_fpn_synthetic.py': {'loss_rpn_cls', 'loss_rpn_bbox', 'loss_cls',
                                                     'acc', 'loss_bbox'},
                'ecc_faster_rcnn_r18_synthetic.py': {'loss_rpn_cls', 'loss_rpn_bbox', 'loss_cls',
                                                     'acc', 'loss_bbox', 'loss_rate'},
                'ecc_faster_rcnn_r18_synthetic_kd_fg.py': {'loss_rpn_cls', 'loss_rpn_bbox',
                                                           'loss_cls', 'acc', 'loss_bbox',
                                                           'loss_rate'},
                'ecc_retinanet_r18_synthetic.py': {'loss_cls', 'loss_bbox', 'loss_rate'}}[name]
    assert set(losses) == expected
    total = sum(v.sum() if torch.is_tensor(v) else sum(x.sum() for x in v)
                for k, v in losses.items() if 'loss' in k)
    assert torch.isfinite(total) and total > 0
    total.backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_grad, no_grad[:5]


def test_coco_config_builds_and_runs_800x1333():
    """The full-size COCO split config builds and runs one real predict on an 800x1333 input."""
    import ecc_mmdet  # noqa: F401
    from mmdet.registry import MODELS
    from mmdet.structures import DetDataSample
    from mmdet.utils import register_all_modules
    from ecc_mmdet.structures import read
    register_all_modules()
    cfg = Config.fromfile(osp.join(REPO, 'configs', 'ecc_faster_rcnn.py'))
    assert cfg.model.backbone.depth == 50 and cfg.model.split_after == 1
    assert [e['type'] for e in cfg.val_evaluator] == ['CocoMetric', 'CommunicationMetric']
    torch.manual_seed(0)
    model = MODELS.build(cfg.model).eval()
    img = torch.randint(0, 256, (3, 800, 1333), dtype=torch.uint8)
    sample = DetDataSample(metainfo=dict(img_id=0, ori_shape=(800, 1333), img_shape=(800, 1333),
                                         scale_factor=(1.0, 1.0)))
    data = model.data_preprocessor(dict(inputs=[img], data_samples=[sample]), False)
    assert tuple(data['inputs'].shape[-2:]) == (800, 1344)
    with torch.no_grad():
        res = model.predict(data['inputs'], data['data_samples'])[0]
    assert res.pred_instances.bboxes.shape[-1] == 4
    rec = read(res)
    assert rec.payload_bytes > rec.header_bytes > 0
    assert rec.edge_flops > 0 and rec.cloud_flops > rec.edge_flops


@pytest.mark.parametrize('name,split_type,edge_channels', [
    ('ecc_rtmdet_tiny_coco.py', 'EdgeCloudRTMDet', 48),
    ('ecc_yolox_s_coco.py', 'EdgeCloudYOLOX', 64),
    ('ecc_dino_r50_coco.py', 'EdgeCloudDINO', 256),
])
def test_full_size_family_configs_build_and_run(name, split_type, edge_channels):
    """RTMDet-tiny, YOLOX-S and DINO-R50 from mmdet's own configs, split: they build and one
    predict runs through the real bitstream (a 320x320 input keeps DINO's encoder fast)."""
    import ecc_mmdet  # noqa: F401
    from mmdet.registry import MODELS
    from mmdet.structures import DetDataSample
    from mmdet.utils import register_all_modules
    from ecc_mmdet.structures import read
    register_all_modules()
    cfg = Config.fromfile(osp.join(REPO, 'configs', name))
    assert [e['type'] for e in cfg.val_evaluator] == ['CocoMetric', 'CommunicationMetric']
    torch.manual_seed(0)
    cfg.model.measure_flops = False
    model = MODELS.build(cfg.model)
    if split_type == 'EdgeCloudDINO':
        model.init_weights()  # level_embed is an uninitialised torch.Tensor until then
    model.eval()
    assert type(model).__name__ == split_type
    assert model.splitter.split_channels() == edge_channels
    img = torch.randint(0, 256, (3, 320, 320), dtype=torch.uint8)
    sample = DetDataSample(metainfo=dict(img_id=0, ori_shape=(320, 320), img_shape=(320, 320),
                                         scale_factor=(1.0, 1.0)))
    data = model.data_preprocessor(dict(inputs=[img], data_samples=[sample]), False)
    with torch.no_grad():
        res = model.predict(data['inputs'], data['data_samples'])[0]
    assert res.pred_instances.bboxes.shape[-1] == 4
    rec = read(res)
    assert rec.payload_bytes > rec.header_bytes > 0
