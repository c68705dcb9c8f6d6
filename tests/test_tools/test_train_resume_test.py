"""Train -> resume -> test round trip through the real tools and Runner, on 8 tiny images."""
import glob
import json
import pickle

import pytest
import torch

from conftest import BASELINE_CFG, data_options, predictions_as_ground_truth, run_tool

FAST = ['train_dataloader.batch_size=4', 'default_hooks.checkpoint.interval=1',
        'default_hooks.logger.interval=1', 'train_cfg.val_interval=100',
        'param_scheduler.0.end=2']


def test_train_resume_test_round_trip(tiny_coco, tmp_path):
    work = tmp_path / 'work'
    run_tool('train', BASELINE_CFG, '--work-dir', work, *data_options(tiny_coco),
             '--cfg-options', 'train_cfg.max_epochs=1', *FAST)
    ckpt1 = work / 'epoch_1.pth'
    assert ckpt1.is_file()

    # The checkpoint loads with torch's default weights_only=True once ecc_mmdet is imported.
    import ecc_mmdet  # noqa: F401
    state = torch.load(ckpt1, map_location='cpu')
    assert state['meta']['epoch'] == 1 and 'log_scalars' in state['message_hub']
    assert 'optimizer' in state and 'backbone.conv1.weight' in state['state_dict']

    # --resume (auto): continues from epoch_1 to epoch 2 rather than starting over.
    proc = run_tool('train', BASELINE_CFG, '--work-dir', work, '--resume',
                    *data_options(tiny_coco), '--cfg-options', 'train_cfg.max_epochs=2', *FAST)
    log = proc.stdout + proc.stderr
    assert 'resumed epoch: 1' in log
    assert 'Epoch(train) [1]' not in log.split('resumed epoch: 1')[1]
    state2 = torch.load(work / 'epoch_2.pth', map_location='cpu')
    assert state2['meta']['epoch'] == 2
    assert state2['meta']['iter'] == 2 * state['meta']['iter']
    changed = any(not torch.equal(state['state_dict'][k], state2['state_dict'][k])
                  for k in state['state_dict'])
    assert changed, 'resumed training did not update any weight'

    # tools/test.py CONFIG CKPT: COCO evaluation + dumped predictions for every val image. It
    # evaluates exactly the checkpoint's predictions with a real COCO evaluation: against ground
    # truth made of those predictions (computed here, in-process), mAP is 1.
    gt = tmp_path / 'own_predictions.json'
    n_boxes = predictions_as_ground_truth(BASELINE_CFG, str(work / 'epoch_2.pth'), tiny_coco, gt)
    out = tmp_path / 'preds.pkl'
    test_work = tmp_path / 'test'
    run_tool('test', BASELINE_CFG, work / 'epoch_2.pth', '--work-dir', test_work, '--out', out,
             *data_options(tiny_coco), '--cfg-options', f'test_evaluator.ann_file={gt}')
    preds = pickle.load(open(out, 'rb'))
    assert len(preds) == 4
    assert {'img_id', 'pred_instances'} <= set(preds[0])
    assert preds[0]['pred_instances']['bboxes'].shape[-1] == 4
    assert n_boxes > 0
    assert n_boxes == sum(len(p['pred_instances']['bboxes']) for p in preds)
    metrics_files = glob.glob(str(test_work / '*' / '*.json'))
    assert metrics_files, 'tools/test.py wrote no metrics json'
    metrics = json.load(open(metrics_files[0]))
    assert metrics['coco/bbox_mAP'] == pytest.approx(1.0, abs=1e-6)
    assert metrics['coco/bbox_mAP_50'] == pytest.approx(1.0, abs=1e-6)


def test_load_from_checkpoint(tiny_coco, tmp_path):
    """load_from (fine-tuning start point) loads a checkpoint the project wrote, every weight."""
    work = tmp_path / 'a'
    run_tool('train', BASELINE_CFG, '--work-dir', work, *data_options(tiny_coco),
             '--cfg-options', 'train_cfg.max_epochs=1', *FAST)
    # lr = 0: training then leaves the parameters exactly where load_from put them
    proc = run_tool('train', BASELINE_CFG, '--work-dir', tmp_path / 'b', *data_options(tiny_coco),
                    '--cfg-options', 'train_cfg.max_epochs=1', f'load_from={work / "epoch_1.pth"}',
                    'optim_wrapper.optimizer.lr=0.0', *FAST)
    assert 'Load checkpoint from' in proc.stdout + proc.stderr
    import ecc_mmdet  # noqa: F401
    from ecc_mmdet.apis import build_detector
    from mmengine.config import Config
    model = build_detector(Config.fromfile(BASELINE_CFG).model)
    params = [k for k, _ in model.named_parameters()]
    loaded = torch.load(work / 'epoch_1.pth', map_location='cpu')['state_dict']
    after = torch.load(tmp_path / 'b' / 'epoch_1.pth', map_location='cpu')['state_dict']
    assert params and set(params) <= set(loaded)
    for k in params:
        assert torch.equal(after[k], loaded[k]), k
    # (without load_from, run b would start from the same seeded initialisation as run a, which
    # one epoch of training moved: equality means the trained weights were loaded)
