import math

import pytest

from ecc_mmdet.evaluation.bd_rate import bd_rate, pareto_front


def test_bd_rate_of_a_curve_needing_half_the_bytes_is_minus_50_percent():
    rates = [1000, 2000, 4000, 8000]
    scores = [10.0, 20.0, 30.0, 40.0]
    half = [r / 2 for r in rates]
    assert bd_rate(rates, scores, half, scores) == pytest.approx(-0.5, abs=1e-9)
    assert bd_rate(rates, scores, rates, scores) == pytest.approx(0.0, abs=1e-12)
    assert bd_rate(half, scores, rates, scores) == pytest.approx(1.0, abs=1e-9)


def test_bd_rate_uses_only_the_common_score_range():
    anchor = ([100, 1000, 10000], [10.0, 20.0, 30.0])
    # the test curve covers 15..25 only; on that range it needs 10x fewer bytes than the anchor
    test_scores = [15.0, 25.0]
    test_rates = [10 ** (2.5 - 1), 10 ** (3.5 - 1)]
    got = bd_rate(*anchor, test_rates, test_scores)
    assert got == pytest.approx(-0.9, abs=0.02)


def test_no_overlap_or_too_few_points_gives_none():
    assert bd_rate([1, 2], [1.0, 2.0], [1, 2], [5.0, 6.0]) is None
    assert bd_rate([1], [1.0], [1, 2], [0.5, 2.0]) is None


def test_pareto_front_drops_dominated_points():
    r, s = pareto_front([4, 1, 2, 3], [5.0, 1.0, 3.0, 2.0])
    assert list(r) == [1, 2, 4] and list(s) == [1.0, 3.0, 5.0]
    assert not math.isnan(s.sum())
