"""The multi-process path users take (torchrun + DDP), exercised on CPUs with gloo.

Two processes train a tiny split student with knowledge adaptation through
``tools/dist_train.sh``; each rank sees different images, so the ranks end with identical
weights only if DDP averaged their gradients (and ``find_unused_parameters`` let the
stage-frozen parameters through). Two processes test a split model through
``tools/dist_test.sh``; each rank scores half of the images, so the mAP against the model's own
predictions is 1 only if the ranks' results were gathered.
"""
import glob
import json
import os
import os.path as osp
import socket
import subprocess
import sys
import textwrap

import torch
from mmengine.config import Config
from mmengine.runner import save_checkpoint

from conftest import REPO, own_predictions_root

KD_CFG = osp.join(REPO, 'configs', 'ecc_faster_rcnn_r18_synthetic_kd.py')
TEACHER_CFG = osp.join(REPO, 'configs', 'faster_rcnn_r18_fpn_synthetic.py')

# A test-only hook that saves every rank's parameters at the end of training (mmengine saves
# checkpoints from rank 0 only).
RANK_DUMP = '''
import os.path as osp
import torch
from mmengine.dist import get_rank
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmdet.registry import HOOKS


@HOOKS.register_module()
class RankParamsDumpHook(Hook):
    def after_train(self, runner):
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        params = {k: v.detach().clone() for k, v in model.named_parameters()}
        torch.save(dict(params=params, wrapper=type(runner.model).__name__,
                        world_size=runner.world_size),
                   osp.join(runner.work_dir, f'rank{get_rank()}_params.pth'))
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _dist_env(**extra):
    return dict(os.environ, PYTHON=sys.executable, PORT=str(_free_port()), OMP_NUM_THREADS='1',
                PYTHONUNBUFFERED='1', **extra)


def test_two_process_test_gathers_every_rank(served_model, tmp_path):
    root = own_predictions_root(served_model['config'], served_model['checkpoint'],
                                served_model['data_root'], tmp_path / 'own')
    work = tmp_path / 'work'
    proc = subprocess.run(
        ['bash', osp.join(REPO, 'tools', 'dist_test.sh'), served_model['config'],
         served_model['checkpoint'], '2', '--work-dir', str(work), '--data-root', str(root),
         '--cfg-options', 'test_dataloader.batch_size=1', 'default_hooks.logger.interval=1'],
        cwd=str(tmp_path), env=_dist_env(), capture_output=True, text=True, timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    # 4 images, batch 1: two iterations on each of the two ranks
    assert 'Distributed launcher: pytorch' in log and 'Epoch(test) [2/2]' in log
    metrics = json.load(open(glob.glob(str(work / '*' / '*.json'))[0]))
    assert metrics['coco/bbox_mAP'] == 1.0 and metrics['coco/bbox_mAP_50'] == 1.0
    assert metrics['comm/offload_ratio'] == 1.0 and metrics['comm/bytes_mean'] > 0


def test_two_process_kd_training_keeps_ranks_identical(tiny_coco, tmp_path):
    import ecc_mmdet  # noqa: F401
    from ecc_mmdet.apis import build_detector
    torch.manual_seed(0)
    teacher = build_detector(Config.fromfile(TEACHER_CFG).model)
    teacher_ckpt = str(tmp_path / 'teacher.pth')
    save_checkpoint({'state_dict': teacher.state_dict(), 'meta': {}}, teacher_ckpt)

    (tmp_path / 'rank_dump_hook.py').write_text(RANK_DUMP)
    kd = Config.fromfile(KD_CFG)
    kd_hook = dict(kd.custom_hooks[0], bottleneck_epochs=1)
    cfg_file = tmp_path / 'kd_dist.py'
    cfg_file.write_text(textwrap.dedent(f"""
        _base_ = [{KD_CFG!r}]
        custom_imports = dict(imports=['ecc_mmdet', 'rank_dump_hook'],
                              allow_failed_imports=False)
        custom_hooks = [{kd_hook!r}, dict(type='RankParamsDumpHook')]
        find_unused_parameters = True
    """))
    work = tmp_path / 'work'
    env = _dist_env(PYTHONPATH=str(tmp_path))
    proc = subprocess.run(
        ['bash', osp.join(REPO, 'tools', 'dist_train.sh'), str(cfg_file), '2', '--work-dir',
         str(work), '--data-root', tiny_coco, '--cfg-options', 'train_cfg.max_epochs=2',
         'train_cfg.val_interval=100', 'train_dataloader.batch_size=2',
         'default_hooks.logger.interval=1', f'teacher_checkpoint={teacher_ckpt}',
         'param_scheduler.0.end=2'],
        cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]

    dumps = [torch.load(work / f'rank{r}_params.pth', map_location='cpu') for r in (0, 1)]
    assert [d['world_size'] for d in dumps] == [2, 2]
    assert dumps[0]['wrapper'] == 'MMDistributedDataParallel'
    p0, p1 = dumps[0]['params'], dumps[1]['params']
    assert p0.keys() == p1.keys()
    differing = [k for k in p0 if not torch.equal(p0[k], p1[k])]
    assert not differing, f'ranks diverged in {differing[:5]}'
    # and training did something on both sides of the split: the compressor (stage 1) and the
    # cloud heads (stage 2) moved away from their starting values
    t_state = teacher.state_dict()
    assert not torch.equal(p0['roi_head.bbox_head.fc_cls.weight'],
                           t_state['roi_head.bbox_head.fc_cls.weight'])
    assert 'entering stage 2/2' in log
    # 8 images over 2 ranks, batch 2: 2 iterations per epoch on each rank
    assert 'Epoch(train) [2][2/2]' in log
