"""The benchmark commands of docs/results.md and docs/adaptation.md, run with the flags the docs
give them (plus image counts and a tiny data root), on seeded untrained checkpoints."""
import json
import os
import os.path as osp

import pytest
import torch
from mmengine.runner import save_checkpoint

from conftest import REPO, run_tool
from test_benchmarks import STUDENT, _checkpoints

CEMA_CFG = osp.join(REPO, 'configs', 'ecc_faster_rcnn_r18_synthetic_cema.py')
RTM_TEACHER = osp.join(REPO, 'configs', 'rtmdet_tiny_synthetic.py')
RTM_STUDENT = osp.join(REPO, 'configs', 'ecc_rtmdet_tiny_synthetic_kd.py')
TEACHER_CFG = osp.join(REPO, 'configs', 'faster_rcnn_r18_fpn_synthetic.py')


def _save_pair(teacher_cfg, student_cfg, d, seed=0):
    """Seeded teacher and a student initialised from it (eval: coding tables built), as files."""
    from ecc_mmdet.apis import build_detector, load_config
    torch.manual_seed(seed)
    teacher = build_detector(load_config(teacher_cfg).model)
    student = build_detector(load_config(student_cfg).model)
    student.load_state_dict(teacher.state_dict(), strict=False)
    student.eval()
    t, s = str(d / 'teacher.pth'), str(d / 'student.pth')
    save_checkpoint({'state_dict': teacher.state_dict(), 'meta': {}}, t)
    save_checkpoint({'state_dict': student.state_dict(), 'meta': {}}, s)
    return t, s


def _methods(res):
    return [(r['method'], r['setting']) for r in res['rows']]


def test_families_command_of_results_md(tiny_coco, tmp_path):
    """docs/results.md, "Detector families": --family with --family-webp-qualities."""
    teacher, student = _checkpoints(tmp_path)
    (tmp_path / 'rtm').mkdir()
    rtm_t, rtm_s = _save_pair(RTM_TEACHER, RTM_STUDENT, tmp_path / 'rtm')
    out = tmp_path / 'families.json'
    run_tool('benchmark_rate_accuracy', '--teacher-checkpoint', teacher,
             '--student', 'KD beta=0.05', STUDENT, student,
             '--family', 'RTMDet-tiny', RTM_TEACHER, rtm_t, RTM_STUDENT, rtm_s,
             '--family-webp-qualities', '1', '30', '--jpeg-qualities', '30',
             '--webp-qualities', '1', '30', '--avif-qualities', '--quantize-bits',
             '--split-after', '0', '--data-root', tiny_coco, '--num-images', '3',
             '--bootstrap', '10', '--out', out)
    res = json.load(open(out))
    assert _methods(res) == [
        ('teacher', 'original image'), ('cloud-only JPEG', 'q=30'), ('cloud-only WebP', 'q=1'),
        ('cloud-only WebP', 'q=30'), ('learned bottleneck', 'KD beta=0.05'),
        ('RTMDet-tiny teacher', 'original image'), ('RTMDet-tiny cloud-only WebP', 'q=1'),
        ('RTMDet-tiny cloud-only WebP', 'q=30'), ('RTMDet-tiny learned bottleneck', 'KD student')]
    rows = dict(zip(_methods(res), res['rows']))
    assert all(len(r['mAP_samples']) == 10 for r in res['rows'])
    for fam in ('', 'RTMDet-tiny '):
        q1, q30 = (rows[(f'{fam}cloud-only WebP', f'q={q}')]['bytes_per_image'] for q in (1, 30))
        assert 0 < q1 < q30
    rtm = rows[('RTMDet-tiny learned bottleneck', 'KD student')]
    assert rtm['bytes_per_image'] > 0
    fams = res['summary']['families']
    assert set(fams) == {'main', 'RTMDet-tiny'}
    assert fams['RTMDet-tiny']['student'] == 'KD student'
    assert fams['RTMDet-tiny']['student_bytes'] == rtm['bytes_per_image']
    assert fams['RTMDet-tiny']['teacher_mAP'] == rows[('RTMDet-tiny teacher',
                                                       'original image')]['bbox_mAP']
    assert fams['main']['student_bytes'] == rows[('learned bottleneck',
                                                  'KD beta=0.05')]['bytes_per_image']
    assert osp.getsize(tmp_path / 'families.png') > 1000
    assert 'RTMDet-tiny student' in open(tmp_path / 'families.txt').read()


def test_train_betas_command_of_results_md(tiny_coco, tmp_path):
    """docs/results.md, "Rate-accuracy on the demo's 100 images": --train-betas trains a KD
    student per beta (here on 8 images) unless its final checkpoint is there already."""
    teacher, student = _checkpoints(tmp_path)
    students = tmp_path / 'students'
    reused = students / 'beta_0.2' / 'epoch_12.pth'
    reused.parent.mkdir(parents=True)
    os.link(student, reused)  # a finished student: reused, not trained again
    out = tmp_path / 'rate_accuracy.json'
    proc = run_tool('benchmark_rate_accuracy', '--teacher-checkpoint', teacher,
                    '--student', 'beta=0.05', STUDENT, student, '--train-betas', '0.01', '0.2',
                    '--jpeg-qualities', '10', '--webp-qualities', '--avif-qualities',
                    '--quantize-bits', '8', '4', '--split-after', '0',
                    '--students-dir', students, '--data-root', tiny_coco,
                    '--num-images', '2', '--bootstrap', '0', '--out', out)
    assert f'reusing {reused}' in proc.stdout
    trained = students / 'beta_0.01' / 'epoch_12.pth'
    assert osp.isfile(trained) and osp.isfile(students / 'beta_0.01' / 'train.log')
    res = json.load(open(out))
    assert _methods(res) == [
        ('teacher', 'original image'), ('cloud-only JPEG', 'q=10'),
        ('8-bit features', 'split_after=0'), ('4-bit features', 'split_after=0'),
        ('learned bottleneck', 'beta=0.05'), ('learned bottleneck', 'beta=0.01'),
        ('learned bottleneck', 'beta=0.2')]
    rows = dict(zip(_methods(res), res['rows']))
    # the reused checkpoint is the given student's file: the same model, the same row
    given, again = rows[('learned bottleneck', 'beta=0.05')], rows[('learned bottleneck',
                                                                    'beta=0.2')]
    assert given['bytes_per_image'] == again['bytes_per_image'] > 0
    assert given['bbox_mAP'] == again['bbox_mAP']
    assert rows[('learned bottleneck', 'beta=0.01')]['bytes_per_image'] > 0
    assert 0 < rows[('4-bit features', 'split_after=0')]['bytes_per_image'] < \
        rows[('8-bit features', 'split_after=0')]['bytes_per_image']
    assert osp.getsize(tmp_path / 'rate_accuracy.png') > 1000


def test_online_adaptation_commands_of_the_docs(tiny_coco_calib, tmp_path):
    """docs/adaptation.md and docs/results.md, "Online adaptation": the seed-0 run (every method,
    --continual), the seed-1 run (--seeds, --methods) and their merge (--from-json), on one
    corruption, 4 images, with CEMA's band warmed up on 2 images and every teacher box kept."""
    teacher, student = _save_pair(TEACHER_CFG, CEMA_CFG, tmp_path)
    tiny = ['--data-root', tiny_coco_calib, '--num-images', '4', '--corruptions', 'fog',
            '--severities', '3', '--cfg-options', f'teacher_checkpoint={teacher}',
            'custom_hooks.0.num_images=8', 'test_dataloader.batch_size=2',
            'test_cfg.selector.warmup=2', 'test_cfg.cloud.steps=1',
            'test_cfg.cloud.batch_size=2', 'test_cfg.cloud.score_thr=0.0']
    seed0, seed1 = tmp_path / 'seed0.json', tmp_path / 'seed1.json'
    run_tool('benchmark_online_adaptation', CEMA_CFG, student, '--continual', '--out', seed0,
             *tiny)
    # --teacher: the same teacher under another label gives the same rows
    run_tool('benchmark_online_adaptation', CEMA_CFG, student, '--seeds', '1', '--methods',
             'none', 'norm_stats', 'cema', 'upload_all', '--out', seed1,
             '--teacher', 'again', TEACHER_CFG, teacher, *tiny)
    res0, res1 = json.load(open(seed0)), json.load(open(seed1))
    again = {r['method']: r for r in res1['rows'] if '@' in r['method']}
    assert sorted(again) == ['cema@again', 'upload_all@again']
    for m, r in again.items():
        twin = next(x for x in res1['rows'] if x['method'] == m.split('@')[0])
        assert {k: r[k] for k in ('edge_mAP', 'upload_ratio', 'num_updates')} == {
            k: twin[k] for k in ('edge_mAP', 'upload_ratio', 'num_updates')}
    res1['rows'] = [r for r in res1['rows'] if '@' not in r['method']]
    json.dump(res1, open(seed1, 'w'))
    every = ['none', 'norm_stats', 'tent', 'cema', 'upload_all', 'random']
    assert [(r['method'], r['mode'], r['stream'], r['seed']) for r in res0['rows']] == [
        (m, 'reset', 'fog@3', 0) for m in every] + [
        (m, 'continual', 'fog@3', 0) for m in ('none', 'cema')]
    assert [(r['method'], r['seed']) for r in res1['rows']] == [
        (m, 1) for m in ('none', 'norm_stats', 'cema', 'upload_all')]
    for res in (res0, res1):
        assert len(res['clean']) == 1 and res['num_images'] == 4
        rows = {r['method']: r for r in res['rows'] if r['mode'] == 'reset'}
        assert all(r['num_images'] == 4 for r in res['rows'])
        assert rows['none']['upload_ratio'] == 0 and rows['none']['num_updates'] == 0
        assert rows['upload_all']['upload_ratio'] == 1.0
        assert rows['upload_all']['uplink_adapt_bytes_per_image'] > 0
        assert rows['upload_all']['num_updates'] > 0
        assert rows['upload_all']['downlink_bytes_per_update'] > 0
    assert set(res0['summary']['by_severity']['3']) == set(every)
    merged = tmp_path / 'merged.json'
    run_tool('benchmark_online_adaptation', '--from-json', seed0, seed1, '--out', merged)
    res = json.load(open(merged))
    assert res['seeds'] == [0, 1] and len(res['rows']) == 12 and len(res['clean']) == 2
    s3 = res['summary']['by_severity']['3']
    assert set(s3) == set(every)
    # averaged over the two seeds where both ran, seed 0 alone where only it ran (the averaging
    # itself is checked on constructed rows in test_online_benchmark_summary.py)
    cema = [r['upload_ratio'] for r in res['rows'] if r['method'] == 'cema'
            and r['mode'] == 'reset']
    assert len(cema) == 2 and s3['cema']['upload_ratio'] == pytest.approx(sum(cema) / 2)
    assert s3['random']['upload_ratio'] == res0['rows'][5]['upload_ratio']
    assert s3['upload_all']['upload_ratio'] == 1.0 and s3['none']['upload_ratio'] == 0
    assert osp.getsize(tmp_path / 'merged.png') > 1000
