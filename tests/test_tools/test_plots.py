"""The benchmark plots people read: one series per codec family, the teacher as a reference
line, a log byte axis with plain KB ticks, and re-plotting a saved JSON."""
import json

import pytest
import replot
from ecc_tools import plotting, rate_accuracy

FACTORIZED = 'factorized students (EntropyBottleneckNeck)'
HYPERPRIOR = 'hyperprior students (HyperpriorBottleneckNeck)'


def _row(method, setting, kb, mAP, codec=None):
    r = dict(method=method, setting=setting, bytes_per_image=kb * 1000.0, bbox_mAP=mAP,
             bbox_mAP_50=1.5 * mAP, edge_gflops=0.1, cloud_gflops=0.9, mAP_ci=[mAP - 1, mAP + 1])
    if codec:
        r['codec'] = codec
    return r


ROWS = [_row('teacher', 'original image', 0.0, 20.0),
        _row('cloud-only JPEG', 'q=10', 2.0, 10.0), _row('cloud-only JPEG', 'q=90', 8.0, 19.0),
        _row('cloud-only JPEG (fitted)', 'q=10', 1.0, 9.0),
        _row('8-bit features', 'split_after=1', 40.0, 19.8),
        # listed out of byte order, and interleaved across families as a real run writes them
        _row('learned bottleneck', 'beta=0.01', 2.0, 16.0, 'entropy_bottleneck'),
        _row('learned bottleneck', 'hp beta=0.05', 0.5, 12.0, 'hyperprior_bottleneck'),
        _row('learned bottleneck', 'beta=0.2', 1.0, 14.0, 'entropy_bottleneck'),
        _row('learned bottleneck', 'hp beta=0.2', 1.5, 11.0, 'hyperprior_bottleneck'),
        _row('learned bottleneck', 'mystery', 3.0, 15.0, 'mystery_codec')]


@pytest.fixture
def axes(monkeypatch):
    """The Axes that ``rate_accuracy.plot`` drew (kept open instead of saved)."""
    figs = []
    monkeypatch.setattr(plotting, 'save', lambda fig, path, dpi=120: figs.append(fig))
    rate_accuracy.plot(ROWS, 'unused.png')
    yield figs[0].axes[0]
    plotting.pyplot().close(figs[0])


def _series(ax):
    return {ln.get_label(): ln for ln in ax.get_lines() if not ln.get_label().startswith('_')}


def test_each_compressor_family_is_its_own_series(axes):
    lines = _series(axes)
    assert FACTORIZED in lines and HYPERPRIOR in lines
    # sorted by bytes, and no family's line runs through the other's points
    assert list(lines[FACTORIZED].get_xdata()) == [1.0, 2.0]
    assert list(lines[FACTORIZED].get_ydata()) == [14.0, 16.0]
    # the line joins the family's non-dominated points; the dominated one is a marker alone
    assert list(lines[HYPERPRIOR].get_xdata()) == [0.5]
    off = [ln for ln in axes.get_lines() if ln.get_label().startswith('_') and
           ln.get_color() == lines[HYPERPRIOR].get_color()]
    assert [list(ln.get_xdata()) for ln in off] == [[1.5]]
    assert lines[FACTORIZED].get_marker() != lines[HYPERPRIOR].get_marker()
    # an unknown compressor: a series of its own, by method and codec
    assert 'learned bottleneck (mystery_codec)' in lines
    # the image sent at camera size and fitted to the detector input: two series
    assert {'JPEG image', 'JPEG image, fitted to the detector input'} <= set(lines)


def test_teacher_line_title_and_kb_axis(axes):
    teacher = [ln for label, ln in _series(axes).items() if label.startswith('teacher')]
    assert len(teacher) == 1 and set(teacher[0].get_ydata()) == {20.0}
    assert axes.get_title()
    assert axes.get_xscale() == 'log' and 'KB' in axes.get_xlabel()
    assert 'mAP' in axes.get_ylabel()
    axes.figure.canvas.draw()
    labels = [t.get_text() for t in axes.get_xticklabels() if t.get_text()]
    assert labels and all('10^' not in t and '$' not in t for t in labels)
    assert {'0.5', '1', '2', '4', '8', '16', '32'} <= set(labels)


def test_kb_ticks_stay_readable_on_narrow_ranges():
    ticks, (lo, hi) = plotting.kb_ticks([2.0, 2.1])
    assert len(ticks) >= 2 and lo < 2.0 and hi > 2.1 and 2.0 in ticks
    assert plotting.kb_ticks([0.3, 48])[0] == [0.25, 0.5, 1, 2, 4, 8, 16, 32]


def test_replot_writes_a_png(tmp_path):
    src = tmp_path / 'rate_accuracy.json'
    src.write_text(json.dumps(dict(rows=ROWS, summary={}, bandwidth_mbps=1.0)))
    replot.main([str(src), '--title', 'a title'])
    assert (tmp_path / 'rate_accuracy.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    rob = tmp_path / 'robustness.json'
    rob.write_text(json.dumps(dict(
        config='configs/x.py', severities=[3, 5], mAP={'fog': {'3': 5.0, '5': 2.0}}, bytes={},
        summary=dict(clean_mAP=10.0, mPC=3.5, rPC=0.35, per_corruption_mean={'fog': 3.5}))))
    out = replot.replot(str(rob), str(tmp_path / 'rob.png'))
    assert open(out, 'rb').read(4) == b'\x89PNG'
    with pytest.raises(SystemExit, match='not the JSON of a benchmark'):
        replot.kind_of({'rows': [{'x': 1}]})
