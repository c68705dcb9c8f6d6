"""Scoring routed systems by composing per-image COCO matches equals scoring the merged results."""
import json
import os.path as osp

import numpy as np
import pytest

from ecc_mmdet.evaluation.bootstrap import ImageBootstrap
from ecc_mmdet.evaluation.routing import compose, per_image_ap, routed_map


def _gt(tiny_coco):
    ann = osp.join(tiny_coco, 'annotations', 'instances_train.json')
    coco = json.load(open(ann))
    cat_ids = sorted(c['id'] for c in coco['categories'])
    return ann, coco, cat_ids


def _predictions(coco, cat_ids, rng, jitter, keep):
    """Per image: its ground-truth boxes jittered by ``jitter`` px, each kept with prob ``keep``,
    plus one random false positive; scores random."""
    out = []
    for img in coco['images']:
        anns = [a for a in coco['annotations'] if a['image_id'] == img['id']]
        boxes, labels = [], []
        for a in anns:
            if rng.random() < keep:
                x, y, w, h = a['bbox']
                boxes.append(np.array([x, y, x + w, y + h]) + rng.normal(0, jitter, 4))
                labels.append(cat_ids.index(a['category_id']))
        boxes.append(np.array([1.0, 1.0, 9.0, 9.0]))
        labels.append(0)
        out.append(dict(img_id=img['id'], bboxes=np.array(boxes), labels=np.array(labels),
                        scores=rng.random(len(boxes))))
    return out


def test_composed_map_equals_map_of_merged_results(tiny_coco):
    ann, coco, cat_ids = _gt(tiny_coco)
    rng = np.random.default_rng(0)
    edge = _predictions(coco, cat_ids, rng, jitter=3.0, keep=0.6)
    cloud = _predictions(coco, cat_ids, rng, jitter=0.5, keep=1.0)
    boot = ImageBootstrap(ann, [p['img_id'] for p in edge], num_samples=5)
    ev_e, ev_c = boot.evaluate(edge, cat_ids), boot.evaluate(cloud, cat_ids)
    assert boot.mAP(ev_c) > boot.mAP(ev_e)  # the fixture gives the routing something to do
    for mask in ([0, 1, 0, 1, 1, 0, 0, 1], [1] * 8, [0] * 8, [1, 1, 0, 0, 0, 0, 1, 1]):
        merged = [c if m else e for e, c, m in zip(edge, cloud, mask)]
        ref = boot.mAP(boot.evaluate(merged, cat_ids))
        assert routed_map(boot, ev_e, ev_c, np.array(mask, bool)) == pytest.approx(ref, abs=1e-12)
    with pytest.raises(ValueError, match='one entry per image'):
        compose(boot, [ev_e, ev_c], [0, 1])


def test_per_image_ap(tiny_coco):
    ann, coco, cat_ids = _gt(tiny_coco)
    rng = np.random.default_rng(1)
    perfect = _predictions(coco, cat_ids, rng, jitter=0.0, keep=1.0)
    for p in perfect:  # no false positive, confident true boxes
        p['bboxes'], p['labels'] = p['bboxes'][:-1], p['labels'][:-1]
        p['scores'] = np.ones(len(p['labels']))
    nothing = [dict(p, bboxes=np.zeros((0, 4)), labels=np.zeros(0, int), scores=np.zeros(0))
               for p in perfect]
    boot = ImageBootstrap(ann, [p['img_id'] for p in perfect], num_samples=1)
    ap_perfect = per_image_ap(boot, boot.evaluate(perfect, cat_ids))
    ap_nothing = per_image_ap(boot, boot.evaluate(nothing, cat_ids))
    has_gt = np.array([any(a['image_id'] == i['id'] for a in coco['annotations'])
                       for i in coco['images']])
    assert np.allclose(ap_perfect[has_gt], 1.0) and np.allclose(ap_nothing[has_gt], 0.0)
    assert np.isnan(ap_perfect[~has_gt]).all()


def test_missed_objects(tiny_coco):
    from ecc_mmdet.evaluation.routing import missed_objects
    ann, coco, cat_ids = _gt(tiny_coco)
    rng = np.random.default_rng(2)
    exact = _predictions(coco, cat_ids, rng, jitter=0.0, keep=1.0)
    for p in exact:
        p['scores'] = np.r_[np.full(len(p['labels']) - 1, 0.9), 0.9]
    boot = ImageBootstrap(ann, [p['img_id'] for p in exact], num_samples=1)
    assert missed_objects(boot.evaluate(exact, cat_ids)) == 0.0
    assert missed_objects(boot.evaluate(exact, cat_ids), score_thr=0.95) == 1.0  # too unsure
    half = [dict(p, bboxes=p['bboxes'][::2], labels=p['labels'][::2], scores=p['scores'][::2])
            for p in exact]
    n_gt = len(coco['annotations'])
    kept = sum((len(p['labels']) - 1 + 1) // 2 for p in exact)  # even indices of the true boxes
    assert missed_objects(boot.evaluate(half, cat_ids)) == pytest.approx(1 - kept / n_gt)


def test_found_objects_counts_each_images_matched_objects(tiny_coco):
    from ecc_mmdet.evaluation.routing import found_objects
    ann, coco, cat_ids = _gt(tiny_coco)
    exact = _predictions(coco, cat_ids, np.random.default_rng(3), jitter=0.0, keep=1.0)
    for p in exact:
        p['scores'] = np.full(len(p['labels']), 0.9)
    boot = ImageBootstrap(ann, [p['img_id'] for p in exact], num_samples=1)
    n_gt = np.array([sum(a['image_id'] == i['id'] for a in coco['annotations'])
                     for i in coco['images']])
    assert n_gt.max() > 1  # some image holds several objects
    assert np.array_equal(found_objects(boot, boot.evaluate(exact, cat_ids)), n_gt)
    assert not found_objects(boot, boot.evaluate(exact, cat_ids), score_thr=0.95).any()
    first = [dict(p, bboxes=p['bboxes'][:1], labels=p['labels'][:1], scores=p['scores'][:1])
             for p in exact]  # only each image's first true box (or its false positive)
    assert np.array_equal(found_objects(boot, boot.evaluate(first, cat_ids)),
                          np.minimum(n_gt, 1))


def test_score_map_is_increasing_and_fits_precision():
    from ecc_mmdet.evaluation.score_calibration import ScoreMap
    rng = np.random.default_rng(0)
    s = rng.uniform(0, 1, 4000)
    tp = rng.uniform(0, 1, 4000) < s**2  # true-positive rate s^2
    m = ScoreMap.fit(s, tp)
    grid = np.linspace(0, 1, 101)
    out = m(grid)
    assert np.all(np.diff(out) > 0)  # strictly increasing: a tier's own ranking is kept
    assert np.abs(out[10:-10] - grid[10:-10]**2).max() < 0.12  # identity would be 0.25 off
    assert np.allclose(ScoreMap.fit([0.5], [1])(grid), grid)  # too few: identity


def test_score_map_keeps_the_order_on_a_plateau_in_float32_and_as_served():
    """On the isotonic fit's plateaus only the raw score's share orders detections; that order
    must survive float32 storage and the served JSON's 9-decimal rounding, or COCO ranks the
    ties in image order (a blend of 1e-6 tied most of a plateau)."""
    from ecc_edge.exits import apply_score_map
    from ecc_mmdet.evaluation.score_calibration import ScoreMap
    m = ScoreMap(np.array([0.0, 0.05, 0.9, 1.0]), np.array([0.0, 0.3, 0.3, 1.0]))  # a plateau
    raw = np.arange(0.1, 0.8, 1e-4)
    stored = m(raw).astype(np.float32)
    assert np.all(np.diff(stored) > 0)
    assert np.all(np.diff([round(float(v), 9) for v in stored]) > 0)
    assert np.array_equal(apply_score_map(m.to_dict(), raw.astype(np.float32)),
                          m(raw.astype(np.float32)).astype(np.float32))  # the light edge's
