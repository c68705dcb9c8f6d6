"""The edge exit, router and score map of a dynamic model in numpy (no torch, mmdet or mmcv).

Each function reproduces, operation for operation and in float32 where the PyTorch path is in
float32, what the PyTorch edge computes after the graph:

* :func:`decode_exit`: mmdet's ``BaseDenseHead.predict_by_feat`` for an AnchorHead-family head
  (anchors of ``AnchorGenerator``, ``DeltaXYWHBBoxCoder.decode`` with clipping to the resized
  image, sigmoid scores, ``filter_scores_and_topk`` per level, ATSS's centerness as score
  factor, rescale to the original image, ``min_bbox_size``, mmcv's class-aware ``batched_nms``
  (coordinate-offset trick + mmcv's CPU nms), ``max_per_img``);
* :func:`router_score`: the ``scores`` of ``EntropyRouter``, ``EmptyExitRouter``,
  ``ShiftRouter`` (its statistics of F_k are a graph output),
  ``ScoreBandRouter``, ``RandomRouter`` (SHA-256 of the seed and the image id) and
  ``LearnedRouter`` (its features in float32 as ``routers.features.router_features`` and
  ``gain_features`` compute them, then its MLP);
* :func:`apply_score_map`: ``ScoreMap.__call__`` (``np.interp`` blended with the raw score at
  :data:`SCORE_TIE_WEIGHT`).

OpenCV's ``cv2.dnn.NMSBoxes`` is not used: it filters by a score threshold, counts box widths
with a different convention and is not the greedy order of mmcv's nms for equal scores.
"""
import hashlib
import math
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

__all__ = ['SCORE_TIE_WEIGHT', 'ExitDetections', 'anchors', 'apply_score_map', 'calibrated',
           'class_entropy', 'decode_exit', 'gain_features', 'learned_features', 'learned_score', 'nms', 'random_score',
           'router_score', 'top_anchor_probs']

_F32 = np.float32
# The share of the raw score in a calibrated one: (1 - w) * isotonic(s) + w * s. The isotonic
# fit is flat between knots; the raw share keeps the tier's own order on those plateaus. It
# must survive float32 storage (spacing 6e-8 below 1) and the served JSON's 1e-9 rounding for
# raw scores 1e-4 apart; with w = 1e-6 most of a plateau tied (319 distinct values among
# 4454 scores of the demo system) and COCO ranked the ties in image order.
SCORE_TIE_WEIGHT = 1e-3


class ExitDetections(NamedTuple):
    bboxes: np.ndarray  # (n, 4) float32, x1 y1 x2 y2 in original image pixels
    scores: np.ndarray  # (n,) float32
    labels: np.ndarray  # (n,) int64


def _sigmoid(x: np.ndarray) -> np.ndarray:
    x = x.astype(_F32, copy=False)
    return (_F32(1) / (_F32(1) + np.exp(-x))).astype(_F32)


def anchors(base: np.ndarray, stride: Sequence[float], feat_hw: Tuple[int, int]) -> np.ndarray:
    """``AnchorGenerator.single_level_grid_priors``: (H*W*A, 4) float32, row-major (h, w, a)."""
    h, w = feat_hw
    sx = np.arange(w, dtype=_F32) * _F32(stride[0])
    sy = np.arange(h, dtype=_F32) * _F32(stride[1])
    xx, yy = np.tile(sx, h), np.repeat(sy, w)
    shifts = np.stack([xx, yy, xx, yy], -1)
    return (base.astype(_F32)[None] + shifts[:, None]).reshape(-1, 4)


def _per_anchor(x: np.ndarray, dim: int) -> np.ndarray:
    """(A*dim, H, W) map -> (H*W*A, dim), like ``permute(1, 2, 0).reshape(-1, dim)``."""
    return np.ascontiguousarray(x.transpose(1, 2, 0)).reshape(-1, dim)


def _filter_topk(scores: np.ndarray, thr: float, topk: int):
    """mmdet's ``filter_scores_and_topk``: (scores, labels, anchor indices)."""
    valid = scores > _F32(thr)
    a_idx, c_idx = np.nonzero(valid)
    vals = scores[valid]
    k = min(topk, len(vals))
    order = np.argsort(-vals, kind='stable')[:k]
    return vals[order], c_idx[order], a_idx[order]


def _delta2bbox(rois: np.ndarray, deltas: np.ndarray, coder: Dict, max_shape) -> np.ndarray:
    means = np.asarray(coder['means'], _F32)
    stds = np.asarray(coder['stds'], _F32)
    d = deltas.astype(_F32) * stds + means
    dxy, dwh = d[:, :2], d[:, 2:]
    pxy = (rois[:, :2] + rois[:, 2:]) * _F32(0.5)
    pwh = rois[:, 2:] - rois[:, :2]
    dxy_wh = pwh * dxy
    max_ratio = _F32(abs(np.log(coder['wh_ratio_clip'])))
    dwh = np.clip(dwh, -max_ratio, max_ratio)
    gxy = pxy + dxy_wh
    gwh = pwh * np.exp(dwh)
    half = gwh * _F32(0.5)
    boxes = np.concatenate([gxy - half, gxy + half], -1).astype(_F32)
    if coder['clip_border'] and max_shape is not None:
        boxes[:, 0::2] = np.clip(boxes[:, 0::2], _F32(0), _F32(max_shape[1]))
        boxes[:, 1::2] = np.clip(boxes[:, 1::2], _F32(0), _F32(max_shape[0]))
    return boxes


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float,
        max_keep: Optional[int] = None) -> np.ndarray:
    """mmcv's CPU nms (offset 0): greedy in stable descending score order, a box suppressed
    when its IoU with a kept one is > the threshold; float32 arithmetic. -> kept indices.

    The candidates left shrink after every kept box, and the loop stops after ``max_keep`` kept
    ones: greedy NMS keeps boxes in score order, so the first ``max_keep`` do not depend on
    the rest (mmdet truncates to ``max_per_img`` afterwards anyway)."""
    boxes = boxes.astype(_F32, copy=False)
    order = np.argsort(-scores, kind='stable')
    x1, y1, x2, y2 = (boxes[:, i] for i in range(4))
    areas = (x2 - x1) * (y2 - y1)
    thr = _F32(iou_threshold)
    keep = []
    while order.size and (max_keep is None or len(keep) < max_keep):
        i, rest = order[0], order[1:]
        keep.append(i)
        w = np.maximum(_F32(0), np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
        h = np.maximum(_F32(0), np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]))
        inter = w * h
        ovr = inter / (areas[i] + areas[rest] - inter)
        order = rest[~(ovr > thr)]  # NaN (0/0) is not > thr: kept, as in mmcv
    return np.asarray(keep, np.int64)


def _batched_nms(boxes, scores, labels, iou_threshold, max_keep=None) -> np.ndarray:
    """mmcv's ``batched_nms`` (class-aware by the coordinate-offset trick) -> kept indices in
    descending score order."""
    max_c = boxes.max()
    offsets = labels.astype(_F32) * (max_c + _F32(1))
    return nms(boxes + offsets[:, None], scores, iou_threshold, max_keep)


def decode_exit(outputs: Dict[str, np.ndarray], spec: Dict, img_shape: Tuple[int, int],
                scale_factor: Tuple[float, float]) -> Tuple[ExitDetections, List[np.ndarray]]:
    """Graph outputs of one image (``cls_<l>``, ``bbox_<l>``, ``ctr_<l>``, batch 1) ->
    (detections in original-image pixels, raw per-level class maps (A*C, H, W))."""
    anc, coder, cfg = spec['anchors'], spec['bbox_coder'], spec['test_cfg']
    n_lv = len(anc['strides'])
    c = spec['cls_out_channels']
    nms_pre = cfg['nms_pre']
    cls_maps, boxes_l, priors_l, scores_l, labels_l, factors_l = [], [], [], [], [], []
    for lv in range(n_lv):
        cls = outputs[f'cls_{lv}'][0]
        cls_maps.append(cls)
        reg = outputs[f'bbox_{lv}'][0]
        pri = anchors(np.asarray(anc['base_anchors'][lv], _F32), anc['strides'][lv],
                      cls.shape[-2:])
        sc = _sigmoid(_per_anchor(cls, c))
        s, lab, idx = _filter_topk(sc, cfg['score_thr'], nms_pre)
        boxes_l.append(_per_anchor(reg, 4)[idx])
        priors_l.append(pri[idx])
        scores_l.append(s)
        labels_l.append(lab)
        if spec['score_factors']:
            factors_l.append(_sigmoid(outputs[f'ctr_{lv}'][0].transpose(1, 2, 0).reshape(-1))[idx])
    deltas = np.concatenate(boxes_l).astype(_F32)
    priors = np.concatenate(priors_l).astype(_F32)
    scores = np.concatenate(scores_l).astype(_F32)
    labels = np.concatenate(labels_l).astype(np.int64)
    boxes = _delta2bbox(priors, deltas, coder, img_shape) if len(deltas) else \
        np.zeros((0, 4), _F32)
    # _bbox_post_process: rescale, score factors, min size, nms, max_per_img
    sf = np.asarray([1 / scale_factor[0], 1 / scale_factor[1]] * 2, _F32)
    boxes = boxes * sf
    if spec['score_factors']:
        scores = scores * np.concatenate(factors_l).astype(_F32)
    if cfg['min_bbox_size'] >= 0:
        w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        ok = (w > _F32(cfg['min_bbox_size'])) & (h > _F32(cfg['min_bbox_size']))
        boxes, scores, labels = boxes[ok], scores[ok], labels[ok]
    if len(boxes):
        keep = _batched_nms(boxes, scores, labels, cfg['iou_threshold'],
                            cfg['max_per_img'])[:cfg['max_per_img']]
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    return ExitDetections(boxes.astype(_F32), scores.astype(_F32), labels), cls_maps


def top_anchor_probs(cls_maps: Sequence[np.ndarray], num_classes: int, k: int) -> np.ndarray:
    """``routers.features.top_anchor_probs`` of one image: (k, C) float64 sigmoid scores of the
    k anchors with the highest max score (zero rows when there are fewer anchors)."""
    flat = _sigmoid(np.concatenate([_per_anchor(m, num_classes) for m in cls_maps], 0))
    k_eff = min(k, len(flat))
    mx = flat.max(-1)
    idx = np.argsort(-mx, kind='stable')[:k_eff]
    top = flat[idx].astype(np.float64)
    if k_eff < k:
        top = np.concatenate([top, np.zeros((k - k_eff, num_classes))], 0)
    return top


def class_entropy(p: np.ndarray, dtype=np.float64) -> np.ndarray:
    """``routers.features.class_entropy`` in ``dtype``: (..., C) -> (...) in [0, 1]."""
    p = p.astype(dtype, copy=False)
    bg = dtype(1) - p.max(-1, keepdims=True)
    q = np.maximum(np.concatenate([p, bg], -1), dtype(1e-12))
    q = q / q.sum(-1, keepdims=True)
    return -(q * np.log(q)).sum(-1) / np.log(dtype(q.shape[-1]))


def learned_features(spec: Dict, dets: ExitDetections, cls_maps: Sequence[np.ndarray],
                     num_classes: int) -> np.ndarray:
    """``router_features`` of one image (float32, as PyTorch): the top-k anchors' max scores and
    class entropies, the counts of detections at least each threshold / the scale."""
    p = top_anchor_probs(cls_maps, num_classes, spec['top_k']).astype(_F32)  # exact: f32 values
    counts = np.asarray([(dets.scores >= _F32(t)).sum() for t in spec['count_thresholds']],
                        _F32) / _F32(spec['count_scale'])
    parts = [p.max(-1), class_entropy(p, _F32), counts]
    if spec.get('gain'):
        parts.append(gain_features(spec['gain'], spec['count_scale'], dets, cls_maps,
                                   num_classes))
    return np.concatenate(parts).astype(_F32)


def gain_features(gain: Dict, count_scale: float, dets: ExitDetections,
                  cls_maps: Sequence[np.ndarray], num_classes: int) -> np.ndarray:
    """``routers.features.gain_features`` of one image: log1p of the maps' soft object count,
    the best detection score, log1p of the anchors at least each anchor threshold, detections
    per score band / the scale (sums in float64, as PyTorch)."""
    logits = np.concatenate([_per_anchor(m, num_classes) for m in cls_maps], 0)
    top = (1.0 / (1.0 + np.exp(-logits.astype(np.float64)))).max(-1)
    best = float(dets.scores.max()) if dets.scores.size else 0.0
    out = [np.log1p(top.sum()), best]
    out += [np.log1p(float((top >= t).sum())) for t in gain['anchor_thresholds']]
    bands = gain['score_bands']
    out += [float(((dets.scores >= _F32(lo)) & (dets.scores < _F32(hi))).sum())
            / count_scale for lo, hi in zip(bands[:-1], bands[1:])]
    return np.asarray(out, np.float64).astype(_F32)


def learned_score(spec: Dict, feats: np.ndarray) -> float:
    """``LearnedRouter.forward``: standardised features through the MLP (ReLU between layers),
    float32."""
    x = (feats - np.asarray(spec['feat_mean'], _F32)) / np.asarray(spec['feat_std'], _F32)
    layers = spec['layers']
    for i, layer in enumerate(layers):
        x = np.asarray(layer['weight'], _F32) @ x + np.asarray(layer['bias'], _F32)
        if i < len(layers) - 1:
            x = np.maximum(x, _F32(0))
    return float(x[0])


def random_score(seed: int, img_id) -> float:
    """``RandomRouter.scores``: a uniform draw from SHA-256 of the seed and the image id."""
    if img_id is None:
        raise ValueError('the RandomRouter draws from the image id: give the image\'s id '
                         '(LightEdge.process(image, img_id), as tools/edge_client.py does)')
    digest = hashlib.sha256(f'{seed}:{img_id}'.encode()).digest()
    return int.from_bytes(digest[:8], 'little') / 2.0**64


def exit_empty(dets: ExitDetections, empty_below: float) -> bool:
    """``EmptyExitRouter``'s "nothing found": the best exit score (0 without any) below
    ``empty_below``, compared in float64 as PyTorch compares it."""
    best = float(dets.scores.max()) if dets.scores.size else 0.0
    return best < empty_below


def shift_flag(spec: Dict, dets: ExitDetections, feature_stats: np.ndarray) -> bool:
    """``ShiftRouter``'s flag: F_k's channel statistics (the graph's ``feature_stats``) farther
    from the calibration images' than ``ood_above`` (mean squared z-score, float64), or, with
    ``flag_empty``, an empty exit."""
    z = (np.asarray(feature_stats, np.float64).reshape(-1) - np.asarray(spec['stats_mean'])) \
        / np.asarray(spec['stats_std'])
    return bool(np.square(z).mean() > spec['ood_above']) or \
        (spec['flag_empty'] and exit_empty(dets, spec['empty_below']))


def router_score(spec: Dict, dets: ExitDetections, cls_maps: Sequence[np.ndarray],
                 num_classes: int, img_id=None, feature_stats=None) -> float:
    """The router's score of one image (higher: needs the cloud more); ``img_id`` is the key of
    the random router's draw, ``feature_stats`` the graph's output of that name (ShiftRouter)."""
    kind = spec['kind']
    if kind in ('EntropyRouter', 'EmptyExitRouter', 'ShiftRouter'):
        p = top_anchor_probs(cls_maps, num_classes, spec['top_k'])
        score = float(np.clip(class_entropy(p).mean(-1), 0, 1))
        if kind == 'EmptyExitRouter' and exit_empty(dets, spec['empty_below']):
            score += 1.0  # nothing found: before every image where something was
        if kind == 'ShiftRouter':
            if feature_stats is None:
                raise ValueError('the ShiftRouter reads the graph\'s feature_stats output')
            score += float(shift_flag(spec, dets, feature_stats))
        return score
    if kind == 'ScoreBandRouter':
        low, high = spec['low'], spec['high']
        mid, half = (low + high) / 2, (high - low) / 2
        s = dets.scores.astype(np.float64)
        count = int(((s >= low) & (s < high)).sum())
        frac = float(np.exp(-((s - mid) / half)**2).mean()) if s.size else 1.0
        return count + 0.999 * frac
    if kind == 'RandomRouter':
        return random_score(spec['seed'], img_id)
    if kind == 'LearnedRouter':
        return learned_score(spec, learned_features(spec, dets, cls_maps, num_classes))
    raise ValueError(f'router {kind!r} is not ported to the light runtime')


def offload(spec: Dict, score: float) -> bool:
    """``BaseRouter.decide``: offload when score > threshold (float64)."""
    t = float(spec['threshold'])
    if math.isnan(t):
        raise ValueError('the router has no calibrated threshold')
    return float(score) > t


def calibrated(x: np.ndarray, y: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """The score map with knots ``x`` -> ``y`` in float64: the isotonic fit blended with the
    raw score (``SCORE_TIE_WEIGHT``). ``ScoreMap.__call__`` and the light edge both use it."""
    s = np.asarray(scores, np.float64)
    iso = np.interp(s, np.asarray(x, np.float64), np.asarray(y, np.float64))
    return (1.0 - SCORE_TIE_WEIGHT) * iso + SCORE_TIE_WEIGHT * s


def apply_score_map(score_map: Dict, scores: np.ndarray) -> np.ndarray:
    """``ScoreMap.__call__`` in float64, cast back to the scores' float32."""
    out = calibrated(score_map['x'], score_map['y'], scores)
    return out.astype(np.asarray(scores).dtype)
