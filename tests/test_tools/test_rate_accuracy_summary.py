"""The rate-accuracy summary (BD-rate, targets, table) on constructed curves with known answers."""
import pytest
from ecc_tools.rate_accuracy import summarize, table


def _row(method, setting, kb, mAP, edge=None, cloud=None):
    return dict(method=method, setting=setting, bytes_per_image=kb * 1000.0, bbox_mAP=mAP,
                bbox_mAP_50=mAP * 1.5, edge_gflops=edge, cloud_gflops=cloud,
                edge_flops_fraction=None, latency_ms=None, real_to_est=None)


ROWS = [
    _row('teacher', 'original image', 0.0, 20.0),
    _row('cloud-only JPEG', 'q=10', 1.0, 10.0, 0.0, 1.0),
    _row('cloud-only JPEG', 'q=30', 2.0, 15.0, 0.0, 1.0),
    _row('cloud-only JPEG', 'q=90', 4.0, 18.0, 0.0, 1.0),
    # exactly half the bytes of JPEG at every mAP
    _row('learned bottleneck', 'beta=0.2', 0.5, 10.0, 0.1, 0.9),
    _row('learned bottleneck', 'beta=0.05', 1.0, 15.0, 0.1, 0.9),
    _row('learned bottleneck', 'beta=0.01', 2.0, 18.0, 0.1, 0.9),
]


def test_half_the_bytes_is_a_bd_rate_of_minus_50_percent():
    s = summarize(ROWS)
    assert s['bd_rate_learned_vs_jpeg'] == pytest.approx(-0.5, abs=1e-9)
    assert s['best_learned'] == 'beta=0.01'
    assert s['best_learned_mAP_gap_to_teacher'] == pytest.approx(2.0)
    assert s['cheapest_jpeg_reaching_best'] == 'q=90'
    assert s['bytes_ratio_best_learned_to_that_jpeg'] == pytest.approx(0.5)
    assert s['best_learned_edge_flops_fraction'] == pytest.approx(0.1)
    assert s['targets'] == dict(within_1_mAP_of_teacher=False,
                                at_most_one_eighth_of_jpeg_bytes=False,
                                edge_flops_at_most_15pct=True)
    text = table(ROWS, s, 1.0)
    assert 'BD-rate learned bottleneck vs cloud-only JPEG: -50.0 %' in text
    assert 'within_1_mAP_of_teacher: MISSED' in text and 'edge_flops_at_most_15pct: met' in text


def test_targets_met_and_no_jpeg_reaching_the_student():
    rows = ROWS[:4] + [_row('learned bottleneck', 'a', 0.2, 12.0, 0.1, 0.9),
                       _row('learned bottleneck', 'b', 0.4, 19.5, 0.1, 0.9)]
    s = summarize(rows)
    # no JPEG reaches 19.5 mAP: no ratio, so the bytes target cannot be claimed as met
    assert 'cheapest_jpeg_reaching_best' not in s
    assert s['targets']['within_1_mAP_of_teacher'] is True
    assert s['targets']['at_most_one_eighth_of_jpeg_bytes'] is False
    # the common mAP range is 12..18; the learned curve is far cheaper there
    assert s['bd_rate_learned_vs_jpeg'] < -0.8
