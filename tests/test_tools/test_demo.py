"""tools/demo.py end to end at its --tiny setting (8 train / 4 val / 8 calibration images, one
epoch per stage; ~50 s on 2 cores): every stage runs through the real tools, the system is
served over HTTP on loopback and matches its in-process evaluation, and a second run reuses
every stage's result."""
import json

import numpy as np
import os
import stat

from conftest import REPO, run_tool

SYSTEM = ('dynamic (exit + router)', 'system: entropy router, target offload 0.5')
SERVED = ('system, served over HTTP (loopback)', 'light edge client -> serve_cloud.py')
ROWS = [('teacher', 'original image'), ('cloud-only JPEG', 'q=10'), ('cloud-only JPEG', 'q=30'),
        ('cloud-only JPEG', 'q=60'), ('cloud-only JPEG', 'q=90'), ('cloud-only WebP', 'q=5'),
        ('cloud-only WebP', 'q=30'), ('cloud-only AVIF', 'q=5'), ('cloud-only AVIF', 'q=30'),
        ('8-bit features', 'split_after=0'),
        ('learned bottleneck', 'task-driven channel-context GDN KD student (beta=0.05)'), SYSTEM,
        SERVED]


def test_tiny_demo_runs_every_stage_then_reuses_them(tmp_path):
    work = tmp_path / 'demo'
    proc = run_tool('demo', '--tiny', '--work-dir', work)
    out = proc.stdout
    # its own tiny dataset, in the work dir (a user's data/synthetic_coco is left alone)
    assert f'generated {work / "data"}: 8 train / 4 val / 8 held-out' in out
    for step in range(1, 6):
        assert f'[{step}/5]' in out
    # each stage trained from its tiny config; the system went through both KD stages, its exit
    # learning alongside, and its router was calibrated
    assert (work / 'baseline' / 'epoch_1.pth').is_file()
    assert (work / 'system' / 'epoch_2.pth').is_file()
    system_log = (work / 'system' / 'train.log').read_text()
    assert 'entering stage 1/2' in system_log and 'entering stage 2/2' in system_log
    assert 'exit_loss_cls' in system_log.split('entering stage 1/2')[1].split('stage 2/2')[0]
    assert 'EntropyRouter threshold' in system_log
    summary = json.loads((work / 'summary.json').read_text())
    rows = {(r['method'], r['setting']): r for r in summary['rows']}
    assert list(rows) == ROWS
    learned, system, served = rows[ROWS[-3]], rows[SYSTEM], rows[SERVED]
    assert learned['bytes_per_image'] > 0 and 0 < system['offload_ratio'] < 1
    assert system['bytes_per_image'] < learned['bytes_per_image']
    assert all(r['bytes_per_image'] > 0 for k, r in rows.items() if k[0].startswith('cloud-only'))
    table = (work / 'comparison.txt').read_text()
    assert table.count('\n') >= len(ROWS) - 1 and 'vs front' in table
    assert (work / 'rate_accuracy.png').stat().st_size > 0
    _check_served(work, out, summary['served'], system, served)
    # everything exists: the second run trains, evaluates and serves nothing; --no-serve drops
    # the served stage and row
    again = run_tool('demo', '--tiny', '--no-serve', '--work-dir', work).stdout
    assert 'reused' in again and again.count('  reusing ') == 3  # 2 checkpoints + comparison
    assert '$ ' not in again and '[4/4]' in again  # no command was run
    assert json.loads((work / 'summary.json').read_text())['rows'] == summary['rows'][:-1]


def _check_served(work, out, res, system, served):
    """The served stage: a loopback server with a private token file, the light edge client,
    detections and bytes equal to the in-process system's (on non-empty detections)."""
    assert '--server http://127.0.0.1:' in out and '--light' in out
    token = work / 'served' / 'token'
    assert stat.S_IMODE(os.stat(token).st_mode) == 0o600
    assert token.read_text().strip() not in out
    assert res['answered'] == res['images'] == 4 and res['differing_images'] == []
    assert res['wire_bytes_per_image'] == res['metric_bytes_per_image'] == \
        system['bytes_per_image'] > 0
    assert served['bbox_mAP'] == res['mAP'] and res['in_process_mAP'] == system['bbox_mAP']
    assert 0 < res['latency_ms']['p50'] <= res['latency_ms']['p95']
    assert len(json.loads((work / 'served' / 'results.json').read_text())) > 0
    assert 'detections differ from the in-process evaluation on 0 of 4 images' in out


def test_served_detections_comparison():
    """What the served stage calls equal: the JSON's rounding and another runtime's float
    error (1e-4 in a score), nothing more."""
    from ecc_tools.e2e import same_detections
    ref = dict(bboxes=[[1.0, 2.0, 10.0, 20.0]], scores=[0.5], labels=[3])
    assert same_detections(ref, dict(bboxes=[[1.0004, 2.0, 10.0, 19.9996]], scores=[0.500001],
                                     labels=[3]))
    assert not same_detections(ref, dict(bboxes=[[1.01, 2.0, 10.0, 20.0]], scores=[0.5],
                                         labels=[3]))
    assert not same_detections(ref, dict(bboxes=ref['bboxes'], scores=[0.5], labels=[2]))
    assert same_detections(ref, dict(bboxes=ref['bboxes'], scores=[0.49995], labels=[3]))
    assert not same_detections(ref, dict(bboxes=ref['bboxes'], scores=[0.4998], labels=[3]))
    assert not same_detections(ref, None) and same_detections(dict(scores=[]), None)
    # detections whose scores tie within the tolerance may come back in another order
    two = dict(bboxes=[[1.0, 2.0, 10.0, 20.0], [5.0, 5.0, 9.0, 9.0]], scores=[1e-7, 1.2e-7],
               labels=[3, 1])
    swapped = {k: v[::-1] for k, v in two.items()}
    assert same_detections(two, swapped)
    assert not same_detections(two, dict(swapped, labels=[3, 1]))
    assert not same_detections(two, dict(two, scores=[1e-7, 0.3]))


def test_served_scores_compare_through_the_tiers_calibration_map():
    """An isotonic map is steep between close knots: there another runtime's 1e-6 in the raw
    score moves the mapped one by far more than 1e-4. The comparison maps the raw tolerance
    through the tier's map instead, and stays strict where the map is flat."""
    from ecc_mmdet.evaluation.score_calibration import SCORE_TIE_WEIGHT, ScoreMap
    from ecc_tools.e2e import same_detections
    steep = ScoreMap(np.array([0.0, 0.5, 0.50001, 1.0]), np.array([0.0, 0.2, 0.6, 0.9]))
    raw = np.array([0.0, 0.3, 0.500004, 0.7, 2.0, -1.0])
    assert np.allclose(steep.inverse(steep(raw)), raw, atol=1e-9)
    low, high = steep.window(steep(0.500004), 1e-6)
    slope = (1 - SCORE_TIE_WEIGHT) * 0.4 / 1e-5 + SCORE_TIE_WEIGHT
    assert np.isclose(high - low, 2e-6 * slope, rtol=1e-6)  # the slope times the tolerance
    ref = dict(bboxes=[[1.0, 2.0, 10.0, 20.0]], scores=[float(steep(0.500004))], labels=[3])
    moved = dict(ref, scores=[float(steep(0.500005))])  # 1e-6 raw: 4e-2 mapped
    assert not same_detections(ref, moved)
    assert same_detections(ref, moved, steep)
    flat = dict(ref, scores=[float(steep(0.3))])
    assert not same_detections(flat, dict(ref, scores=[float(steep(0.3)) + 3e-4]), steep)
    assert not same_detections(ref, dict(ref, scores=[float(steep(0.500004)) + 0.3]), steep)


def test_demo_system_config_is_the_dynamic_one_on_the_hyperprior_student():
    """configs/..._dynamic_hp.py = the hp_task student's model + the dynamic config's exit,
    router, calibration and schedule: the demo's system compares with the factorized one."""
    from mmengine.config import Config
    cfg = lambda name: Config.fromfile(f'{REPO}/configs/{name}.py').to_dict()  # noqa: E731
    hp, dyn = cfg('ecc_faster_rcnn_r18_synthetic_dynamic_hp'), \
        cfg('ecc_faster_rcnn_r18_synthetic_dynamic')
    student = cfg('ecc_faster_rcnn_r18_synthetic_kd_hp_task')['model']
    assert {k: v for k, v in hp['model'].items() if k in student} == student
    assert {k: hp['model'][k] for k in hp['model'] if k not in student} == \
        {k: dyn['model'][k] for k in dyn['model'] if k not in student}
    for key in set(hp) | set(dyn):
        assert key in ('model', 'load_from') or hp.get(key) == dyn.get(key), key


def test_demo_system_config_trains_the_cc_task_student_with_the_dynamic_exit_alongside():
    """configs/..._system.py = the cc_task_gdn student (model, distillation, schedule) + the
    dynamic_hp exit, router and calibration, with the exit trained jointly instead of alone."""
    from mmengine.config import Config
    cfg = lambda name: Config.fromfile(f'{REPO}/configs/{name}.py').to_dict()  # noqa: E731
    system, task, hp = (cfg(f'ecc_faster_rcnn_r18_synthetic_{n}')
                        for n in ('system', 'kd_cc_task_gdn', 'dynamic_hp'))
    assert system['model'] == dict(hp['model'], train_exits_only=False,
                                   compressor=task['model']['compressor'])
    assert {k: v for k, v in system['model'].items() if k in task['model']} == task['model']
    hooks = {h['type']: h for h in system['custom_hooks']}
    assert hooks.pop('KnowledgeAdaptationHook') == task['custom_hooks'][0]
    assert hooks == {h['type']: h for h in hp['custom_hooks']}
    for key in ('param_scheduler', 'optim_wrapper', 'teacher_config', 'teacher_checkpoint'):
        assert system[key] == task[key], key
    assert system['train_cfg']['max_epochs'] == task['train_cfg']['max_epochs']
    assert system['load_from'] is None
