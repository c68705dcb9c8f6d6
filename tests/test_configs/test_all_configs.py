"""Every config in configs/ loads and builds what it names: the model, its custom hooks, its
teacher (a file next to it) and, for the synthetic configs, one training step on a seeded batch.
A new config is picked up by the glob: none can rot unloaded."""
import copy
import glob
import os.path as osp

import pytest
import torch
from mmengine.config import Config

from conftest import REPO, fake_batch

CONFIGS = sorted(osp.basename(p) for p in glob.glob(osp.join(REPO, 'configs', '*.py')))
# the COCO-size ones also run a full predict in test_configs_and_errors.py
COCO = {'ecc_faster_rcnn.py', 'ecc_dino_r50_coco.py', 'ecc_rtmdet_tiny_coco.py',
        'ecc_yolox_s_coco.py'}


def test_the_glob_finds_every_config():
    assert len(CONFIGS) >= 21 and COCO <= set(CONFIGS)
    assert {'ecc_faster_rcnn_r18_synthetic_kd_hp_task.py',
            'ecc_faster_rcnn_r18_synthetic_kd_vr_hp_task.py',
            'ecc_faster_rcnn_r18_synthetic_kd_cc_task.py'} <= set(CONFIGS)


def _classes(cfg):
    return tuple((cfg.train_dataloader.dataset.get('metainfo') or {}).get('classes', ()))


def _num_classes(model_cfg):
    head = model_cfg.roi_head.bbox_head if 'roi_head' in model_cfg else model_cfg.bbox_head
    return head.num_classes


@pytest.mark.parametrize('name', CONFIGS)
def test_config_loads_and_builds(name):
    import ecc_mmdet  # noqa: F401
    from mmdet.registry import HOOKS, MODELS
    from mmdet.utils import register_all_modules
    register_all_modules(init_default_scope=True)
    cfg = Config.fromfile(osp.join(REPO, 'configs', name))
    assert cfg.get('default_scope') == 'mmdet', name
    model_cfg = copy.deepcopy(cfg.model)
    if 'measure_flops' in model_cfg or model_cfg.type.startswith('EdgeCloud'):
        model_cfg.measure_flops = False  # the FLOP count is not what is tested here
    torch.manual_seed(0)
    model = MODELS.build(model_cfg)
    split = model_cfg.type.startswith('EdgeCloud')
    assert split == hasattr(model, 'compressor'), name
    for hook in cfg.get('custom_hooks', []):  # e.g. the *_task distortion weights
        hook = copy.deepcopy(hook)
        hook.pop('priority', None)  # the Runner's key, not the hook's (as Runner.register_hook)
        HOOKS.build(hook)
    teacher = cfg.get('teacher_config')
    if teacher and not teacher.startswith('mmdet::'):
        assert osp.isfile(teacher), teacher
        tcfg = Config.fromfile(teacher)
        assert _num_classes(tcfg.model) == _num_classes(cfg.model)
        assert _classes(tcfg) == _classes(cfg)
        MODELS.build(tcfg.model)
    if name in COCO:
        return
    # synthetic: the head fits the dataset and one training step computes finite losses
    assert _num_classes(cfg.model) == len(_classes(cfg)) == 6
    model.train()
    inputs, samples = fake_batch(model, n=1, size=64, with_gt=True, training=True)
    losses = model.loss(inputs, samples)
    total = sum(v.sum() if torch.is_tensor(v) else sum(x.sum() for x in v)
                for k, v in losses.items() if 'loss' in k)
    assert torch.isfinite(total) and total > 0, (name, losses)
    total.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    if split:
        assert 'loss_rate' in losses or model_cfg.get('train_exits_only'), sorted(losses)
