"""``tools/demo.py --detector rtmdet`` at its --tiny setting (a file of its own, so that pytest's
workers run it beside the Faster R-CNN demo rather than after it)."""
import json

from conftest import run_tool

IMAGE_ROWS = [('cloud-only JPEG', 'q=10'), ('cloud-only JPEG', 'q=30'), ('cloud-only JPEG', 'q=60'),
              ('cloud-only JPEG', 'q=90'), ('cloud-only WebP', 'q=5'), ('cloud-only WebP', 'q=30'),
              ('cloud-only AVIF', 'q=5'), ('cloud-only AVIF', 'q=30')]


def test_tiny_rtmdet_demo_runs_every_stage(tmp_path):
    """``--detector rtmdet``: teacher, KD student and the table, also when the untrained tiny
    detector finds nothing (CocoMetric then reports no bbox keys: 0 mAP, not a crash)."""
    work = tmp_path / 'demo_rtmdet'
    out = run_tool('demo', '--detector', 'rtmdet', '--tiny', '--work-dir', work).stdout
    for step in range(1, 5):
        assert f'[{step}/4]' in out
    assert (work / 'student' / 'epoch_2.pth').is_file()
    rows = json.loads((work / 'summary.json').read_text())['rows']
    # the Faster R-CNN demo's rows but the dynamic one; RTMDet-tiny splits after stage 1
    assert [(r['method'], r['setting']) for r in rows] == [
        ('teacher', 'original image'), *IMAGE_ROWS, ('8-bit features', 'split_after=1'),
        ('learned bottleneck', 'KD student (beta=0.05)')]
    assert rows[-1]['bytes_per_image'] > 0
