"""Train -> resume -> test round trip through the real tools and Runner, on 8 tiny images."""
import glob
import json
import os.path as osp
import pickle

import torch

from conftest import BASELINE_CFG, data_options, run_tool

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

    # tools/test.py CONFIG CKPT: COCO evaluation + dumped predictions for every val image.
    out = tmp_path / 'preds.pkl'
    test_work = tmp_path / 'test'
    run_tool('test', BASELINE_CFG, work / 'epoch_2.pth', '--work-dir', test_work, '--out', out,
             *data_options(tiny_coco))
    preds = pickle.load(open(out, 'rb'))
    assert len(preds) == 4
    assert {'img_id', 'pred_instances'} <= set(preds[0])
    assert preds[0]['pred_instances']['bboxes'].shape[-1] == 4
    metrics_files = glob.glob(str(test_work / '*' / '*.json'))
    assert metrics_files, 'tools/test.py wrote no metrics json'
    metrics = json.load(open(metrics_files[0]))
    assert 0.0 <= metrics['coco/bbox_mAP'] <= 1.0


def test_load_from_checkpoint(tiny_coco, tmp_path):
    """load_from (fine-tuning start point) takes a checkpoint the project wrote."""
    work = tmp_path / 'a'
    run_tool('train', BASELINE_CFG, '--work-dir', work, *data_options(tiny_coco),
             '--cfg-options', 'train_cfg.max_epochs=1', *FAST)
    proc = run_tool('train', BASELINE_CFG, '--work-dir', tmp_path / 'b', *data_options(tiny_coco),
                    '--cfg-options', 'train_cfg.max_epochs=1', f'load_from={work / "epoch_1.pth"}',
                    *FAST)
    log = proc.stdout + proc.stderr
    assert 'Load checkpoint from' in log
    assert osp.isfile(tmp_path / 'b' / 'epoch_1.pth')
