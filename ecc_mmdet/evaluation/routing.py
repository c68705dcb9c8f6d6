"""Scoring routed systems from two sets of per-image results without re-running COCO matching.

COCO matching (``COCOeval.evaluate``) is per image: an image's matches depend only on its own
detections. So the edge exit's and the cloud's results are each matched once, and any routing
(which image takes which result) is scored by picking each image's matches from one set and
accumulating -- exactly the mAP of the merged result list. Per-image AP (the mean over the
categories present in the image) gives the per-image gain of offloading, used to train the
learned router and to build the oracle.
"""
import copy
from typing import Sequence

import numpy as np
from pycocotools.cocoeval import COCOeval

from .bootstrap import ImageBootstrap

__all__ = ['compose', 'found_objects', 'missed_objects', 'per_image_ap', 'routed_map']


def _blocks(ev: COCOeval, n: int) -> int:
    return len(ev.evalImgs) // n


def compose(boot: ImageBootstrap, sources: Sequence[COCOeval], choice: Sequence[int]) -> COCOeval:
    """A COCOeval whose image i has the matches of ``sources[choice[i]]`` (same ground truth and
    image order, from ``boot.evaluate``). ``boot.mAP`` / ``boot.sample_maps`` score it."""
    n = len(boot.img_ids)
    choice = np.asarray(choice, dtype=int)
    if choice.shape != (n, ):
        raise ValueError(f'choice must have one entry per image ({n}), got {choice.shape}')
    blocks = {_blocks(ev, n) for ev in sources}
    if len(blocks) != 1:
        raise ValueError('the result sets were not matched against the same ground truth')
    b = blocks.pop()
    out = copy.copy(sources[0])
    out.evalImgs = [sources[choice[i]].evalImgs[k * n + i] for k in range(b) for i in range(n)]
    return out


def routed_map(boot: ImageBootstrap, edge: COCOeval, cloud: COCOeval,
               offload: Sequence[bool]) -> float:
    """mAP (0-1) of the system that takes the cloud's results for ``offload``-ed images."""
    return boot.mAP(compose(boot, [edge, cloud], np.asarray(offload, dtype=bool).astype(int)))


def per_image_ap(boot: ImageBootstrap, ev: COCOeval) -> np.ndarray:
    """(n,) AP of every image over the categories present in it (NaN for images without
    ground truth: their detections only add false positives to other images' rankings)."""
    n = len(boot.img_ids)
    b = _blocks(ev, n)
    out = np.full(n, np.nan)
    for i in range(n):
        one = copy.copy(ev)
        one.evalImgs = [ev.evalImgs[k * n + i] for k in range(b)]
        pe = copy.copy(ev._paramsEval)
        pe.imgIds = [0]
        one._paramsEval, one.params = pe, pe
        ap = boot._map(one)
        out[i] = ap if ap >= 0 else np.nan
    return out


def _found(e, score_thr: float):
    """(ground-truth objects, of them found by a detection scoring >= score_thr at IoU 0.5) of
    one image's matches (crowd / ignored objects excluded)."""
    gt = [g for g, ign in zip(e['gtIds'], e['gtIgnore']) if not ign]
    hit = {int(m) for m, s in zip(e['dtMatches'][0], e['dtScores']) if m > 0 and s >= score_thr}
    return len(gt), sum(1 for g in gt if g in hit)


def found_objects(boot: ImageBootstrap, ev: COCOeval, score_thr: float = 0.3) -> np.ndarray:
    """(n,) per image: the ground-truth objects a detection scoring >= ``score_thr`` matches at
    IoU 0.5. "The cloud finds more objects here" (a count, unlike per-image AP, not swayed by
    the ranking of a few scores) is the learned router's classification target."""
    n = len(boot.img_ids)
    areas = len(ev.params.areaRng)
    out = np.zeros(n)
    for k in range(0, _blocks(ev, n), areas):  # each category's first area range: 'all'
        for i in range(n):
            e = ev.evalImgs[k * n + i]
            if e is not None:
                out[i] += _found(e, score_thr)[1]
    return out


def missed_objects(ev: COCOeval, score_thr: float = 0.3) -> float:
    """Share of ground-truth objects that no detection with score >= ``score_thr`` matches at
    IoU 0.5 (crowd/ignored objects excluded): the objects a system silently drops."""
    total = found = 0
    for e in ev.evalImgs:
        if e is not None:
            g, f = _found(e, score_thr)
            total, found = total + g, found + f
    return (total - found) / total if total else 0.0
