"""Pretrained weights that cannot load on this machine are refused before anything trains."""
import os.path as osp

import pytest
import torch
from mmengine.config import Config

from ecc_mmdet.errors import ConfigError
from ecc_mmdet.utils.pretrained import check_pretrained, iter_pretrained, pretrained_problem


def _cfg(checkpoint, nested_list=False):
    init = dict(type='Pretrained', checkpoint=checkpoint)
    return Config(dict(model=dict(type='RetinaNet', backbone=dict(
        type='ResNet', init_cfg=[dict(type='Kaiming'), init] if nested_list else init))))


def test_every_pretrained_init_is_found_with_its_key():
    cfg = _cfg('a.pth', nested_list=True)
    cfg.model.neck = dict(init_cfg=dict(type='Pretrained', checkpoint='b.pth'))
    assert sorted(iter_pretrained(cfg.model)) == [
        ('model.backbone.init_cfg[1].checkpoint', 'a.pth'),
        ('model.neck.init_cfg.checkpoint', 'b.pth')]


def test_an_unloadable_zoo_name_names_the_key_and_both_fixes():
    with pytest.raises(ConfigError) as e:
        check_pretrained(_cfg('open-mmlab://no_such_model'))
    msg = str(e.value)
    assert "model.backbone.init_cfg.checkpoint='open-mmlab://no_such_model'" in msg
    assert 'knows no model' in msg
    assert '--cfg-options model.backbone.init_cfg.checkpoint=/path/to/weights.pth' in msg
    assert '--cfg-options model.backbone.init_cfg=None' in msg


def test_torchvision_names_need_torchvision():
    try:
        import torchvision  # noqa: F401
        pytest.skip('torchvision imports here; the refusal is for machines without it')
    except Exception:  # ImportError, or the operator error of a mismatched build
        pass
    assert 'needs torchvision' in pretrained_problem('torchvision://resnet50')


def test_local_paths_and_unreachable_urls(tmp_path):
    weights = tmp_path / 'w.pth'
    torch.save({'state_dict': {}}, weights)
    assert pretrained_problem(str(weights)) is None
    assert 'no file at' in pretrained_problem(str(tmp_path / 'missing.pth'))
    # a loopback port nobody listens on: unreachable at once, and no cached copy
    assert 'unreachable' in pretrained_problem('http://127.0.0.1:9/none/weights.pth', timeout=1)


def test_a_cached_download_counts_as_loadable(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, 'get_dir', lambda: str(tmp_path))
    (tmp_path / 'checkpoints').mkdir()
    (tmp_path / 'checkpoints' / 'weights-1234.pth').write_bytes(b'x')
    assert pretrained_problem('http://127.0.0.1:9/zoo/weights-1234.pth', timeout=1) is None
    assert pretrained_problem('http://127.0.0.1:9/zoo/other.pth', timeout=1) is not None


def test_configs_without_pretrained_weights_pass():
    check_pretrained(Config(dict(model=dict(type='RetinaNet', backbone=dict(init_cfg=None)))))
    check_pretrained(_cfg(osp.abspath(__file__)))  # any existing file: loading is mmengine's


def test_train_tool_refuses_an_mmdet_base_with_torchvision_weights(tmp_path, tiny_coco):
    """The README's own example (a split RetinaNet on mmdet's base) on a machine without
    torchvision: a clear refusal before any model or dataset is built, exit code 2."""
    from conftest import run_tool
    cfg = tmp_path / 'split_retinanet.py'
    cfg.write_text(
        "_base_ = 'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py'\n"
        "custom_imports = dict(imports=['ecc_mmdet'], allow_failed_imports=False)\n"
        "model = dict(type='EdgeCloudSingleStageDetector', split_after=1,\n"
        "             compressor=dict(type='EntropyBottleneckNeck'))\n")
    proc = run_tool('train', cfg, '--work-dir', tmp_path / 'work', '--data-root', tiny_coco,
                    '--cfg-options', 'model.backbone.init_cfg.checkpoint=open-mmlab://no_such',
                    check=False, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    out = proc.stdout + proc.stderr
    assert "model.backbone.init_cfg.checkpoint='open-mmlab://no_such'" in out
    assert 'model.backbone.init_cfg=None' in out
    assert 'Traceback' not in out
