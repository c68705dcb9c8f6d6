"""The dynamic system through the real tools: exit training with router calibration, test,
learned-router fitting and the benchmark, on tiny images."""
import glob
import json
import os.path as osp
import shutil

import pytest

from conftest import REPO, data_options, run_tool

DYNAMIC_CFG = osp.join(REPO, 'configs', 'ecc_faster_rcnn_r18_synthetic_dynamic.py')
LEARNED_CFG = osp.join(REPO, 'configs', 'ecc_faster_rcnn_r18_synthetic_dynamic_learned.py')
FAST = ['load_from=None', 'train_dataloader.batch_size=4', 'default_hooks.logger.interval=1',
        'train_cfg.max_epochs=1', 'train_cfg.val_interval=1', 'param_scheduler.0.end=2',
        'custom_hooks.0.num_images=8']


@pytest.fixture(scope='module')
def trained(tiny_coco_calib, tmp_path_factory):
    work = tmp_path_factory.mktemp('dynamic')
    proc = run_tool('train', DYNAMIC_CFG, '--work-dir', work, *data_options(tiny_coco_calib),
                    '--cfg-options', *FAST)
    return work, proc.stdout + proc.stderr


def test_exit_training_calibrates_the_router_before_validation(trained):
    work, log = trained
    assert 'RouterCalibrationHook: EntropyRouter threshold' in log
    assert 'exit_loss_cls' in log and 'loss_rpn_cls' not in log  # the exit alone trains
    assert 'comm/tier_' in log  # the validation reports where images finished
    assert osp.isfile(work / 'epoch_1.pth')


def test_test_tool_reports_tiers_and_edge_bytes(trained, tiny_coco_calib, tmp_path):
    work, _ = trained
    # calibrated on the 4 evaluation images themselves (a copy of their annotations under
    # another name, which the split check cannot tell apart): a 0.5 target then offloads
    # exactly 2 of them, so both tiers are present in what is checked below
    calib = tmp_path / 'val_copy.json'
    shutil.copy(osp.join(tiny_coco_calib, 'annotations', 'instances_val.json'), calib)
    run_tool('test', DYNAMIC_CFG, work / 'epoch_1.pth', '--work-dir', tmp_path,
             *data_options(tiny_coco_calib), '--cfg-options',
             f'custom_hooks.0.dataloader.dataset.ann_file={calib}',
             'custom_hooks.0.dataloader.dataset.data_prefix.img=val/',
             'custom_hooks.0.num_images=4', 'model.router.target_offload_ratio=0.5')
    metrics = json.load(open(glob.glob(str(tmp_path / '*' / '*.json'))[0]))
    shares = {k: v for k, v in metrics.items() if k.startswith('comm/tier_')}
    assert sum(shares.values()) == pytest.approx(1.0)
    assert metrics['comm/offload_ratio'] == pytest.approx(0.5)
    assert metrics['comm/offload_ratio'] == pytest.approx(shares['comm/tier_cloud_share'])
    # bytes over all images = bytes over offloaded images x offload ratio (edge images send 0)
    assert metrics['comm/bytes_mean'] > 0
    assert metrics['comm/bytes_per_image_mean'] == pytest.approx(
        metrics['comm/bytes_mean'] * metrics['comm/offload_ratio'])
    assert metrics['comm/exit_gflops'] > 0
    assert metrics['comm/edge_flops_fraction_without_exits'] < metrics['comm/edge_flops_fraction']


def test_calibration_on_the_evaluation_split_is_refused(tiny_coco_calib, tmp_path):
    ckpt = tmp_path / 'never_loaded.pth'  # the config is refused before the checkpoint is read
    ckpt.write_bytes(b'')
    proc = run_tool('test', DYNAMIC_CFG, ckpt, '--work-dir', tmp_path,
                    *data_options(tiny_coco_calib), '--cfg-options',
                    'custom_hooks.0.dataloader.dataset.ann_file=annotations/instances_val.json',
                    check=False)
    assert proc.returncode != 0
    assert 'which is also' in proc.stderr and 'Calibrate on another split' in proc.stderr
    proc = run_tool('test', DYNAMIC_CFG, ckpt, '--work-dir', tmp_path,
                    *data_options(tiny_coco_calib), '--cfg-options', 'custom_hooks=[]',
                    check=False)
    assert proc.returncode != 0 and 'needs a calibration split' in proc.stderr


def test_select_hard_classes(trained, tiny_coco_calib):
    work, _ = trained
    proc = run_tool('select_hard_classes', DYNAMIC_CFG, work / 'epoch_1.pth', '--num-images', 8,
                    '--data-root', tiny_coco_calib)
    line = [x for x in proc.stdout.splitlines() if x.startswith('hard_classes=')]
    hard = json.loads(line[0].split('=', 1)[1])
    assert len(hard) == 3 and all(0 <= c < 6 for c in hard)  # half of the 6 classes
    assert proc.stdout.count('   hard') == 3


def test_learned_router_and_benchmark(trained, tiny_coco_calib, tmp_path):
    work, _ = trained
    ckpt = tmp_path / 'learned.pth'
    proc = run_tool('train_router', DYNAMIC_CFG, work / 'epoch_1.pth', '--out', ckpt,
                    '--skip', 8, '--num-images', 8, '--data-root', tiny_coco_calib)
    assert 'fitted (regress):' in proc.stdout and ckpt.is_file()
    run_tool('test', LEARNED_CFG, ckpt, '--work-dir', tmp_path / 'test',
             *data_options(tiny_coco_calib), '--cfg-options', 'custom_hooks.0.num_images=8')
    # a router checkpoint that does not fit the configured router is refused, not half-loaded
    proc = run_tool('test', LEARNED_CFG, ckpt, '--work-dir', tmp_path / 'other',
                    *data_options(tiny_coco_calib), '--cfg-options', 'custom_hooks.0.num_images=8',
                    'model.router.hidden=8', check=False)
    assert proc.returncode == 2 and 'does not fit' in proc.stderr and 'router.mlp' in proc.stderr
    # the gain router (configs/..._dynamic_gain.py's settings, on this factorized model: its
    # settings come from the config and --cfg-options); on these 8 images the one-epoch exit and
    # cloud find the same (nothing): nothing to learn, said in one line, no checkpoint written
    gain = tmp_path / 'gain.pth'
    as_gain = ['--cfg-options', 'model.router.gain_features=True',
               'model.router.objective=classify']
    proc = run_tool('train_router', LEARNED_CFG, work / 'epoch_1.pth', '--out', gain,
                    '--skip', 8, '--num-images', 8, '--data-root', tiny_coco_calib, *as_gain,
                    check=False)
    assert proc.returncode == 2 and 'nothing to classify' in proc.stderr and not gain.exists()
    # it fits only on calibration images: a calibration split that is the evaluation split is
    # refused before any image is read
    proc = run_tool('train_router', LEARNED_CFG, work / 'epoch_1.pth', '--out', gain,
                    '--skip', 8, '--num-images', 8, '--data-root', tiny_coco_calib, *as_gain,
                    'custom_hooks.0.dataloader.dataset.ann_file=annotations/instances_val.json',
                    check=False)
    assert proc.returncode == 2 and 'which is also' in proc.stderr and not gain.exists()
    out = tmp_path / 'bench' / 'dynamic.json'
    # rate-accuracy rows drawn beside the curves (as docs/results.md passes the demo's)
    ra = tmp_path / 'ra.json'
    ra.write_text(json.dumps(dict(rows=[
        dict(method='teacher', setting='original image', bytes_per_image=0.0, bbox_mAP=1.0),
        dict(method='cloud-only WebP', setting='q=5', bytes_per_image=600.0, bbox_mAP=0.5),
        dict(method='cloud-only WebP', setting='q=30', bytes_per_image=1100.0, bbox_mAP=0.8)])))
    proc = run_tool('benchmark_dynamic', '--config', DYNAMIC_CFG, '--checkpoint',
                    work / 'epoch_1.pth',
             '--teacher-checkpoint', work / 'epoch_1.pth', '--data-root', tiny_coco_calib,
             '--num-router-train', 8, '--num-calib', 8, '--ratios', 0, 0.5, 1,
             '--bootstrap', 5, '--rate-accuracy-json', ra, '--out', out)
    res = json.load(open(out))
    rows = res['rows']
    routers = {r['router'] for r in rows if r['variant'] == 'Dynamic'}
    assert {'random', 'score band', 'entropy', 'empty exit', 'learned', 'oracle'} <= routers
    # the gain routers, unless the tiny set gives one nothing to learn (then it is said)
    assert all(name in routers or f"'{name}' left out" in proc.stdout
               for name in ('gain rank', 'gain class', 'gain class+ood'))
    empty = res['empty_exit']  # images where the exit finds nothing and the cloud something
    assert empty['of'] == res['num_images'] and set(empty['offloaded']) >= {'entropy',
                                                                             'empty exit'}
    adaptive = next(r for r in rows if r['variant'] == 'Adaptive')
    dynamic = [r for r in rows if r['variant'] == 'Dynamic']
    assert {r['target_ratio'] for r in dynamic} >= {0, 1}  # the checks below have rows to check
    for r in rows:
        if r['variant'] == 'Dynamic' and r['target_ratio'] == 0:
            assert r['offload_ratio'] == 0 and r['bytes_per_image'] == 0 and r['cloud_gflops'] == 0
        if r['variant'] == 'Dynamic' and r['target_ratio'] == 1:
            assert r['offload_ratio'] == 1 and r['mAP'] == pytest.approx(adaptive['mAP'])
            assert r['bytes_per_image'] == pytest.approx(adaptive['bytes_per_image'])
    assert osp.isfile(str(out).replace('.json', '.txt')) and osp.isfile(
        str(out).replace('.json', '.png'))
    # the evaluation images corrupted (the routers still calibrated on clean held-out images)
    fog = tmp_path / 'bench' / 'fog.json'
    run_tool('benchmark_dynamic', '--checkpoint', work / 'epoch_1.pth',
             '--teacher-config', osp.join(REPO, 'configs', 'faster_rcnn_r18_fpn_synthetic.py'),
             '--teacher-checkpoint', work / 'epoch_1.pth', '--data-root', tiny_coco_calib,
             '--num-router-train', 8, '--num-calib', 8, '--ratios', 0, 1, '--bootstrap', 2,
             '--corruption', 'fog', 3, '--out', fog)
    res_fog = json.load(open(fog))
    assert res_fog['corruption'] == ['fog', '3'] and res.get('corruption') is None
    assert 'corrupted: fog severity 3' in open(str(fog).replace('.json', '.txt')).read()
    assert res_fog['empty_exit']['of'] == res_fog['num_images'] == res['num_images']


def test_independent_teacher_sees_the_corrupted_evaluation_images():
    """benchmark_dynamic --corruption: the Independent row's teacher gets the camera image
    corrupted like the evaluation images, then JPEG-coded (not the clean image)."""
    from ecc_tools.dynamic import independent_pipeline
    pipeline = [dict(type='LoadImageFromFile'), dict(type='Resize', scale=(64, 64)),
                dict(type='PackDetInputs')]
    steps = [s['type'] for s in independent_pipeline(pipeline, 50, ('fog', 3))]
    assert steps == ['LoadImageFromFile', 'CorruptImage', 'CompressImage', 'Resize',
                     'PackDetInputs']
    corrupt = independent_pipeline(pipeline, 50, ('fog', 3))[1]
    assert (corrupt['corruption'], corrupt['severity']) == ('fog', 3)
    assert 'CorruptImage' not in [s['type'] for s in independent_pipeline(pipeline, 50)]
