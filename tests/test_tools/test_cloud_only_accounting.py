"""The cloud-only (JPEG) baseline reports the same figures through tools/test.py (the Runner,
with CloudOnlyAccountingHook) as through evaluate_detector (outside the Runner)."""
import glob
import json
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmengine.runner import save_checkpoint

from conftest import REPO, predictions_as_ground_truth, run_tool

JPEG_CFG = osp.join(REPO, 'configs', 'faster_rcnn_r18_fpn_synthetic_jpeg.py')


@pytest.fixture(scope='module')
def teacher_ckpt(tmp_path_factory):
    import ecc_mmdet  # noqa: F401
    from ecc_mmdet.apis import build_detector
    torch.manual_seed(0)
    model = build_detector(Config.fromfile(JPEG_CFG).model)
    path = str(tmp_path_factory.mktemp('jpeg') / 'teacher.pth')
    save_checkpoint({'state_dict': model.state_dict(), 'meta': {}}, path)
    return path


def _half_own_predictions(tiny_coco, teacher_ckpt, path):
    """Ground truth = every other box the (untrained) model predicts on the JPEG-decoded images:
    both paths then score a mAP strictly between 0 and 1, which only agrees if they run the
    same images through the same model (on the real labels, the untrained model scores 0)."""
    n = predictions_as_ground_truth(JPEG_CFG, teacher_ckpt, tiny_coco, path)
    gt = json.load(open(path))
    gt['annotations'] = gt['annotations'][::2]
    json.dump(gt, open(path, 'w'))
    assert n >= 8
    return str(path)


def test_runner_and_evaluate_detector_report_the_same_fields(tiny_coco, teacher_ckpt, tmp_path):
    from ecc_mmdet.apis import build_detector, build_test_dataset, evaluate_detector, load_config
    gt = _half_own_predictions(tiny_coco, teacher_ckpt, tmp_path / 'half_own.json')
    run_tool('test', JPEG_CFG, teacher_ckpt, '--work-dir', tmp_path / 't', '--data-root',
             tiny_coco, '--cfg-options', f'test_evaluator.0.ann_file={gt}')
    runner = json.load(open(glob.glob(str(tmp_path / 't' / '*' / '*.json'))[0]))

    cfg = load_config(JPEG_CFG, tiny_coco)
    model = build_detector(cfg.model, teacher_ckpt)
    direct = evaluate_detector(model, build_test_dataset(cfg), gt,
                               bandwidth_mbps=[1.0, 10.0], batch_size=4, progress=False)
    assert 0.05 < direct['coco/bbox_mAP'] < 0.95 and 0.05 < direct['coco/bbox_mAP_50'] < 1

    comm = sorted(k for k in direct if k.startswith('comm/'))
    assert comm == sorted(k for k in runner if k.startswith('comm/'))
    for key in ('comm/cloud_gflops', 'comm/cloud_time_ms', 'comm/latency_ms_at_1mbps',
                'comm/latency_ms_at_10mbps', 'comm/edge_time_ms'):
        assert key in comm
    # what is deterministic is equal: the JPEG bytes, the FLOPs, the detections
    for key in ('comm/bytes_mean', 'comm/bytes_p95', 'comm/cloud_gflops', 'comm/edge_gflops',
                'comm/offload_ratio', 'coco/bbox_mAP', 'coco/bbox_mAP_50'):
        assert runner[key] == pytest.approx(direct[key], rel=1e-9, abs=1e-12), key
    assert runner['comm/cloud_gflops'] > 0.05 and runner['comm/edge_gflops'] == 0.0
    # latency = edge (JPEG) + cloud compute + the uplink of the real bytes
    uplink_ms = runner['comm/bytes_mean'] * 8 / 1e6 * 1e3
    assert runner['comm/latency_ms_at_1mbps'] == pytest.approx(
        runner['comm/edge_time_ms'] + runner['comm/cloud_time_ms'] + uplink_ms, rel=1e-6)


def test_cloud_only_config_without_the_hook_is_refused(tiny_coco, teacher_ckpt, tmp_path):
    proc = run_tool('test', JPEG_CFG, teacher_ckpt, '--work-dir', tmp_path / 't', '--data-root',
                    tiny_coco, '--cfg-options', 'custom_hooks=[]', check=False)
    assert proc.returncode == 2
    assert "custom_hooks = [dict(type='CloudOnlyAccountingHook')]" in proc.stderr
    assert 'JPEGCompressImage' in proc.stderr
