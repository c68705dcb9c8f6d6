"""Bjøntegaard delta rate between two rate-accuracy curves (here: bytes/image vs bbox mAP).

BD-rate is the average relative rate difference of a test curve against an anchor curve at equal
accuracy, over the accuracy range both curves cover: -50 % means the test method needs half the
bytes for the same mAP. Each curve is reduced to its Pareto front (more bytes must buy more mAP)
and log-rate is interpolated as a function of accuracy with a monotone piecewise-cubic (PCHIP)
curve, the variant used by current codec reports; with only two points it is linear.
"""
from typing import Optional, Sequence, Tuple

import numpy as np
from scipy.interpolate import PchipInterpolator


def pareto_front(rates: Sequence[float], scores: Sequence[float]) -> Tuple[np.ndarray, np.ndarray]:
    """Points sorted by rate whose score beats every cheaper point."""
    order = np.argsort(np.asarray(rates, dtype=float), kind='stable')
    r, s = np.asarray(rates, float)[order], np.asarray(scores, float)[order]
    keep, best = [], -np.inf
    for i in range(len(r)):
        if s[i] > best:
            keep.append(i)
            best = s[i]
    return r[keep], s[keep]


def bd_rate(anchor_rates, anchor_scores, test_rates, test_scores) -> Optional[float]:
    """Average rate change (fraction, -0.5 = half the bytes) of test vs anchor at equal score.

    Returns None when the curves share no score interval (or one has fewer than two points).
    """
    ra, sa = pareto_front(anchor_rates, anchor_scores)
    rt, st = pareto_front(test_rates, test_scores)
    if len(ra) < 2 or len(rt) < 2:
        return None
    lo, hi = max(sa.min(), st.min()), min(sa.max(), st.max())
    if hi <= lo:
        return None
    fa = PchipInterpolator(sa, np.log(ra))
    ft = PchipInterpolator(st, np.log(rt))
    grid = np.linspace(lo, hi, 201)
    avg_diff = np.trapezoid(ft(grid) - fa(grid), grid) / (hi - lo)
    return float(np.exp(avg_diff) - 1.0)
