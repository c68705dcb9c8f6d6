"""tools/demo.py end to end at its --tiny setting (8 train / 4 val / 8 calibration images, one
epoch per stage; ~40 s on 2 cores): every stage runs through the real tools, and a second run
reuses every stage's result."""
import json

from conftest import run_tool

ROWS = [('teacher', 'original image'), ('cloud-only JPEG', 'q=10'), ('cloud-only JPEG', 'q=30'),
        ('cloud-only JPEG', 'q=60'), ('cloud-only JPEG', 'q=90'), ('cloud-only WebP', 'q=5'),
        ('cloud-only WebP', 'q=30'), ('cloud-only AVIF', 'q=5'), ('cloud-only AVIF', 'q=30'),
        ('8-bit features', 'split_after=0'), ('learned bottleneck', 'KD student (beta=0.05)'),
        ('dynamic (exit + router)', 'entropy router, target offload 0.5')]


def test_tiny_demo_runs_every_stage_then_reuses_them(tmp_path):
    work = tmp_path / 'demo'
    proc = run_tool('demo', '--tiny', '--work-dir', work)
    out = proc.stdout
    # its own tiny dataset, in the work dir (a user's data/synthetic_coco is left alone)
    assert f'generated {work / "data"}: 8 train / 4 val / 8 held-out' in out
    for step in range(1, 6):
        assert f'[{step}/5]' in out
    # each stage trained from its tiny config; the student went through both KD stages
    assert (work / 'baseline' / 'epoch_1.pth').is_file()
    assert (work / 'dynamic' / 'epoch_1.pth').is_file()
    assert (work / 'student' / 'epoch_2.pth').is_file()
    student_log = (work / 'student' / 'train.log').read_text()
    assert 'entering stage 1/2' in student_log and 'entering stage 2/2' in student_log
    assert 'EntropyRouter threshold' in (work / 'dynamic' / 'train.log').read_text()
    summary = json.loads((work / 'summary.json').read_text())
    rows = {(r['method'], r['setting']): r for r in summary['rows']}
    assert list(rows) == ROWS
    learned, dynamic = rows[ROWS[-2]], rows[ROWS[-1]]
    assert learned['bytes_per_image'] > 0 and 0 < dynamic['offload_ratio'] < 1
    assert dynamic['bytes_per_image'] < learned['bytes_per_image']
    assert all(r['bytes_per_image'] > 0 for k, r in rows.items() if k[0].startswith('cloud-only'))
    assert (work / 'comparison.txt').read_text().count('\n') >= len(ROWS)
    assert (work / 'rate_accuracy.png').stat().st_size > 0
    # everything exists: the second run trains and evaluates nothing
    again = run_tool('demo', '--tiny', '--work-dir', work).stdout
    assert 'reused' in again and again.count('  reusing ') == 4  # 3 checkpoints + comparison
    assert '$ ' not in again  # no training command was run
    assert json.loads((work / 'summary.json').read_text())['rows'] == summary['rows']


