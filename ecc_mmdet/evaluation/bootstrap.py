"""Confidence intervals for COCO bbox mAP by bootstrap over images, paired across methods.

100 validation images make a point of mAP noise, so a claim such as "the student is 0.8 points
below the teacher" needs its interval. Images are resampled with replacement; every method is
evaluated on the *same* resamples, so differences between methods get paired intervals (much
tighter than two independent ones). COCO matching is done once per method with pycocotools
(``evaluate``); each resample only re-accumulates the per-image matches, restricted to what
``bbox_mAP`` uses (all areas, the largest max-detections setting: mmdet's CocoMetric uses 1000).
"""
import contextlib
import copy
import io
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

__all__ = ['ImageBootstrap']


class ImageBootstrap:
    """Bootstrap mAP samples of detection results on one COCO annotation file.

    Args:
        ann_file: the ground truth (COCO json).
        img_ids: the evaluated images, in a fixed order (all images of the file when None).
        num_samples: bootstrap resamples.
        seed: seed of the resamples (the same for every method: paired comparisons).
        max_dets: detections per image that count (mmdet's CocoMetric: 1000).
    """

    def __init__(self, ann_file: str, img_ids: Optional[Sequence[int]] = None,
                 num_samples: int = 1000, seed: int = 0, max_dets: int = 1000):
        with contextlib.redirect_stdout(io.StringIO()):
            self.coco = COCO(ann_file)
        self.img_ids = list(img_ids) if img_ids is not None else sorted(self.coco.getImgIds())
        if not self.img_ids:
            raise ValueError('ImageBootstrap: no images to resample')
        self.cat_ids = sorted(self.coco.getCatIds())
        self.max_dets = int(max_dets)
        n = len(self.img_ids)
        self.samples = np.random.default_rng(seed).integers(0, n, size=(int(num_samples), n))

    def evaluate(self, predictions: Sequence[dict], cat_ids: Sequence[int]) -> COCOeval:
        """Match ``predictions`` (dicts with img_id and xyxy ``bboxes``, ``scores``, ``labels``
        indexing ``cat_ids``) against the ground truth once."""
        dets = []
        for p in predictions:
            for box, score, label in zip(np.asarray(p['bboxes'], float).reshape(-1, 4),
                                         np.asarray(p['scores'], float).reshape(-1),
                                         np.asarray(p['labels']).reshape(-1)):
                x1, y1, x2, y2 = box.tolist()
                dets.append(dict(image_id=int(p['img_id']), category_id=int(cat_ids[int(label)]),
                                 bbox=[x1, y1, x2 - x1, y2 - y1], score=float(score)))
        with contextlib.redirect_stdout(io.StringIO()):
            dt = self.coco.loadRes(dets) if dets else COCO()
            if not dets:  # loadRes refuses an empty list; an empty result set scores 0
                dt.dataset = dict(images=self.coco.dataset['images'], annotations=[],
                                  categories=self.coco.dataset['categories'])
                dt.createIndex()
            ev = COCOeval(self.coco, dt, 'bbox')
            ev.params.imgIds = self.img_ids
            ev.params.catIds = self.cat_ids
            ev.params.areaRng, ev.params.areaRngLbl = [ev.params.areaRng[0]], ['all']
            ev.params.maxDets = [self.max_dets]
            ev.evaluate()
        return ev

    @staticmethod
    def _map(ev: COCOeval) -> float:
        with contextlib.redirect_stdout(io.StringIO()):
            ev.accumulate()
        prec = ev.eval['precision'][..., 0, -1]
        valid = prec[prec > -1]
        return float(valid.mean()) if valid.size else -1.0

    def mAP(self, ev: COCOeval) -> float:
        """mAP (0-1) on all the images (what CocoMetric reports as bbox_mAP)."""
        return self._map(copy.copy(ev))

    def sample_maps(self, ev: COCOeval) -> np.ndarray:
        """mAP (0-1) on every resample, shape (num_samples,)."""
        n = len(self.img_ids)
        blocks = len(ev.evalImgs) // n  # one block of n images per category (area/maxDet fixed)
        out = np.empty(len(self.samples))
        for s, idx in enumerate(self.samples):
            rs = copy.copy(ev)
            rs.evalImgs = [ev.evalImgs[b * n + i] for b in range(blocks) for i in idx]
            pe = copy.copy(ev._paramsEval)
            pe.imgIds = list(range(n))  # resampled images are distinct entries
            rs._paramsEval, rs.params = pe, pe
            out[s] = self._map(rs)
        return out

    @staticmethod
    def interval(samples: np.ndarray, level: float = 0.95) -> Tuple[float, float]:
        """Percentile interval of bootstrap samples."""
        a = (1.0 - level) / 2
        return float(np.quantile(samples, a)), float(np.quantile(samples, 1 - a))

    def compare(self, evals: Dict[str, COCOeval], level: float = 0.95) -> Dict[str, dict]:
        """Per method: mAP, its interval and its samples (for paired differences)."""
        out = {}
        for name, ev in evals.items():
            samples = self.sample_maps(ev)
            out[name] = dict(mAP=self.mAP(ev), ci=self.interval(samples, level), samples=samples)
        return out
