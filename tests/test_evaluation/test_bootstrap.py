"""Bootstrap intervals of COCO mAP: the full-set value is pycocotools' own, resamples are paired."""
import contextlib
import io
import json

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from ecc_mmdet.evaluation.bootstrap import ImageBootstrap


def _gt(tmp_path, n=30, seed=0):
    rng = np.random.default_rng(seed)
    images, anns = [], []
    for i in range(1, n + 1):
        images.append(dict(id=i, width=100, height=100, file_name=f'{i}.png'))
        for _ in range(int(rng.integers(1, 4))):
            x, y = rng.uniform(0, 60, 2)
            w, h = rng.uniform(10, 40, 2)
            anns.append(dict(id=len(anns) + 1, image_id=i, category_id=int(rng.integers(1, 3)),
                             bbox=[x, y, w, h], area=w * h, iscrowd=0))
    path = tmp_path / 'gt.json'
    path.write_text(json.dumps(dict(images=images, annotations=anns, categories=[
        dict(id=1, name='a'), dict(id=2, name='b')])))
    return str(path), anns


def _predictions(anns, n, jitter, seed, cat_ids=(1, 2)):
    """GT boxes moved by up to ``jitter`` px, plus one false positive per image."""
    rng = np.random.default_rng(seed)
    out = {i: dict(img_id=i, bboxes=[], scores=[], labels=[]) for i in range(1, n + 1)}
    for a in anns:
        x, y, w, h = a['bbox']
        d = rng.uniform(-jitter, jitter, 4)
        p = out[a['image_id']]
        p['bboxes'].append([x + d[0], y + d[1], x + w + d[2], y + h + d[3]])
        p['scores'].append(rng.uniform(0.3, 1.0))
        p['labels'].append(cat_ids.index(a['category_id']))
    for i, p in out.items():
        p['bboxes'].append([70, 70, 95, 95])
        p['scores'].append(rng.uniform(0.0, 0.9))
        p['labels'].append(0)
    return [dict(img_id=i, bboxes=np.array(p['bboxes']), scores=np.array(p['scores']),
                 labels=np.array(p['labels'])) for i, p in out.items()]


def test_full_set_map_is_pycocotools_map_as_cocometric_computes_it(tmp_path):
    ann_file, anns = _gt(tmp_path)
    preds = _predictions(anns, 30, jitter=3, seed=1)
    boot = ImageBootstrap(ann_file, num_samples=50, seed=0)
    ev = boot.evaluate(preds, (1, 2))
    # reference: the standard evaluation with mmdet CocoMetric's parameters (stats[0])
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(ann_file)
        dets = [dict(image_id=p['img_id'], category_id=(1, 2)[int(lab)], score=float(s),
                     bbox=[b[0], b[1], b[2] - b[0], b[3] - b[1]])
                for p in preds for b, s, lab in zip(p['bboxes'], p['scores'], p['labels'])]
        ref = COCOeval(coco, coco.loadRes(dets), 'bbox')
        ref.params.maxDets = [100, 300, 1000]
        ref.evaluate()
        ref.accumulate()
        ref.summarize()
    assert 0.1 < ref.stats[0] < 0.95
    assert boot.mAP(ev) == pytest.approx(ref.stats[0], abs=1e-12)


def test_resamples_vary_around_the_full_value_and_pair_exactly(tmp_path):
    ann_file, anns = _gt(tmp_path)
    boot = ImageBootstrap(ann_file, num_samples=60, seed=0)
    good = boot.evaluate(_predictions(anns, 30, jitter=3, seed=1), (1, 2))
    bad = boot.evaluate(_predictions(anns, 30, jitter=9, seed=1), (1, 2))
    res = boot.compare(dict(good=good, bad=bad))
    g, b = res['good'], res['bad']
    assert g['samples'].std() > 0.005  # resampling 30 images moves mAP
    assert g['ci'][0] < g['mAP'] < g['ci'][1]
    assert g['mAP'] > b['mAP']
    diff = g['samples'] - b['samples']
    assert (diff > 0).mean() > 0.9  # paired: the better method wins on nearly every resample
    # the same predictions twice: every paired difference is exactly zero
    same = boot.sample_maps(boot.evaluate(_predictions(anns, 30, jitter=3, seed=1), (1, 2)))
    np.testing.assert_array_equal(same, g['samples'])


def test_perfect_predictions_score_one_on_every_resample(tmp_path):
    ann_file, anns = _gt(tmp_path, n=12)
    boot = ImageBootstrap(ann_file, num_samples=20, seed=3)
    preds = _predictions(anns, 12, jitter=0, seed=0)
    for p in preds:  # drop the false positive
        p['bboxes'], p['scores'], p['labels'] = p['bboxes'][:-1], p['scores'][:-1], p['labels'][:-1]
    ev = boot.evaluate(preds, (1, 2))
    assert boot.mAP(ev) == pytest.approx(1.0)
    np.testing.assert_allclose(boot.sample_maps(ev), 1.0)
    # nothing predicted at all: 0, not an error
    empty = boot.evaluate([dict(img_id=i, bboxes=np.zeros((0, 4)), scores=np.zeros(0),
                                labels=np.zeros(0, int)) for i in range(1, 13)], (1, 2))
    assert boot.mAP(empty) == pytest.approx(0.0)
