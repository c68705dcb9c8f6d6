"""Per-tier score calibration: make the exit's and the cloud's scores mean the same thing.

A routed system merges detections of two detectors into one ranked list per class, and COCO AP
ranks across images: when one tier's scores run higher than the other's for the same precision,
their detections interleave wrongly and the merged mAP can fall *below both tiers'* own mAPs
(measured: a random 50/50 routing scored under the exit alone). Mapping each tier's scores to the
probability that a detection is a true positive (IoU >= 0.5), fitted on held-out images, makes
them comparable; the map is increasing, so each tier's own ranking (and AP) is unchanged.
"""
from typing import Tuple

import numpy as np
from pycocotools.cocoeval import COCOeval

from ecc_edge.exits import SCORE_TIE_WEIGHT, calibrated

__all__ = ['SCORE_TIE_WEIGHT', 'ScoreMap', 'true_positive_pairs']


def true_positive_pairs(ev: COCOeval) -> Tuple[np.ndarray, np.ndarray]:
    """(scores, is true positive at IoU 0.5) of every non-ignored detection of an evaluated
    COCOeval (``evaluate()`` done)."""
    scores, tp = [], []
    for e in ev.evalImgs:
        if e is None:
            continue
        for s, m, ign in zip(e['dtScores'], e['dtMatches'][0], e['dtIgnore'][0]):
            if not ign:
                scores.append(s)
                tp.append(m > 0)
    return np.asarray(scores, float), np.asarray(tp, float)


def _isotonic(y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Non-decreasing least-squares fit of y (pool-adjacent-violators)."""
    vals, wts, sizes = [], [], []
    for v, wt in zip(y, w):
        vals.append(v)
        wts.append(wt)
        sizes.append(1)
        while len(vals) > 1 and vals[-2] > vals[-1]:
            tw = wts[-2] + wts[-1]
            vals[-2] = (vals[-2] * wts[-2] + vals[-1] * wts[-1]) / tw
            wts[-2] = tw
            sizes[-2] += sizes[-1]
            del vals[-1], wts[-1], sizes[-1]
    return np.repeat(vals, sizes)


class ScoreMap:
    """Increasing map score -> P(true positive), fitted by isotonic regression.

    The fit is blended with the raw score (``SCORE_TIE_WEIGHT``, 1e-3) so the map is strictly
    increasing: detections keep their order inside the tier (its AP is unchanged) even on the
    fit's plateaus, after float32 storage and the served JSON's rounding too. The light edge
    applies the same formula (``ecc_edge.exits.apply_score_map``).
    """

    def __init__(self, knots_x: np.ndarray, knots_y: np.ndarray):
        self.x = np.asarray(knots_x, float)
        self.y = np.asarray(knots_y, float)

    @classmethod
    def identity(cls) -> 'ScoreMap':
        return cls(np.array([0.0, 1.0]), np.array([0.0, 1.0]))

    @classmethod
    def fit(cls, scores: np.ndarray, tp: np.ndarray) -> 'ScoreMap':
        """Fit on (score, true positive) pairs; fewer than 2 detections (an untrained tier)
        give the identity map."""
        scores, tp = np.asarray(scores, float), np.asarray(tp, float)
        if scores.size < 2:
            return cls.identity()
        order = np.argsort(scores, kind='stable')
        x, y = scores[order], tp[order]
        ux, inv = np.unique(x, return_inverse=True)  # one knot per distinct score
        w = np.bincount(inv).astype(float)
        fitted = _isotonic(np.bincount(inv, weights=y) / w, w)
        return cls(ux, fitted)

    def __call__(self, scores) -> np.ndarray:
        return calibrated(self.x, self.y, scores)

    def inverse(self, mapped) -> np.ndarray:
        """The raw scores that map to ``mapped`` (the map is strictly increasing)."""
        v, w = np.asarray(mapped, float), SCORE_TIE_WEIGHT
        knots = self(self.x)  # linear between knots; outside them (1 - w) * y_end + w * s
        return np.where(v < knots[0], (v - (1.0 - w) * self.y[0]) / w,
                        np.where(v > knots[-1], (v - (1.0 - w) * self.y[-1]) / w,
                                 np.interp(v, knots, self.x)))

    def window(self, mapped, raw_tol: float) -> Tuple[np.ndarray, np.ndarray]:
        """(lowest, highest) mapped scores of raw scores within ``raw_tol`` of those that gave
        ``mapped``. The isotonic fit has a knot at every calibration score, so between two close
        knots the map is steep: a raw difference of 1e-6 between two runtimes can move a mapped
        score by 1e-3. Comparing mapped scores of two runtimes needs this window."""
        raw = self.inverse(mapped)
        return self(raw - raw_tol), self(raw + raw_tol)

    def to_dict(self) -> dict:
        return dict(x=self.x.tolist(), y=self.y.tolist())
