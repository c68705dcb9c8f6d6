"""Calibration of a dynamic system on a calibration split (never the evaluation split):

* the router's threshold for a target offload ratio: a percentile of its scores on calibration
  images (:func:`~ecc_mmdet.models.routers.threshold_for_ratio`);
* per-tier score maps (``calibrate_scores=True``): each tier's detection scores -> the
  probability of a true positive, so the exit's and the cloud's detections rank correctly in one
  list (:mod:`ecc_mmdet.evaluation.score_calibration`).

Tuning either on the evaluation images would report an optimistic offload ratio and mAP.
"""
import os.path as osp
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from ..errors import ConfigError
from ..evaluation.bootstrap import ImageBootstrap
from ..evaluation.score_calibration import ScoreMap, true_positive_pairs
from ..utils.device import to_numpy
from .pipeline import run_deployment

__all__ = ['router_scores', 'calibrate_router', 'check_calibration_split', 'tier_predictions',
           'score_maps_from_predictions', 'fit_score_maps', 'calibrate_dynamic']


@torch.no_grad()
def router_scores(model, batches: Iterable[Tuple[Tensor, list]], fit: bool = False) -> Tensor:
    """The router's score of every image of ``batches`` (preprocessed ``(inputs, samples)``).
    ``fit``: a router whose score has parameters fitted on these images (``fit_calibration``,
    e.g. ``EmptyExitRouter.empty_below``) fits them from its per-image ``calibration_parts``."""
    if model.edge_exit is None or model.router is None:
        raise ConfigError('router calibration needs a model with edge_exit and router')
    fits = fit and callable(getattr(model.router, 'fit_calibration', None))
    out = []
    for inputs, samples in batches:
        exits = model.run_exits(model.edge_features(inputs), samples)
        model.check_router()  # refuses a learned router fitted for other exits
        out.append(model.router.calibration_parts(exits) if fits else
                   model.router.scores(exits).double().cpu())
    if not out:
        raise ConfigError('the calibration split has no images')
    return model.router.fit_calibration(torch.cat(out)) if fits else torch.cat(out)


def calibrate_router(model, batches, ratio: Optional[float] = None) -> Tuple[float, float]:
    """Set ``model.router``'s threshold for ``ratio`` (default: its target) on ``batches``;
    returns ``(threshold, offload ratio reached on the calibration images)``."""
    scores = router_scores(model, batches, fit=True)
    t = model.router.calibrate(scores, ratio)
    return t, float((scores > t).double().mean())


def _ann_path(ds_cfg) -> Optional[str]:
    ann = ds_cfg.get('ann_file')
    if not ann:
        return None
    return osp.normpath(osp.abspath(osp.join(ds_cfg.get('data_root') or '', ann)))


def check_calibration_split(calib_dataset_cfg, eval_dataset_cfgs) -> None:
    """ConfigError when the calibration split is missing or is an evaluation split."""
    calib = _ann_path(calib_dataset_cfg or {})
    if calib is None:
        raise ConfigError('RouterCalibrationHook: its dataloader has no dataset.ann_file; point it '
                          'at a calibration split (e.g. part of the training annotations)')
    for key, ds in eval_dataset_cfgs:
        if _ann_path(ds) == calib:
            raise ConfigError(
                f'RouterCalibrationHook calibrates on {calib}, which is also {key}\'s split: a '
                'threshold tuned on the evaluation images reports an optimistic offload ratio '
                'and mAP. Calibrate on another split (e.g. held-out training images)')


@torch.no_grad()
def tier_predictions(model, batches: Iterable[Tuple[Tensor, list]], offload_all: bool,
                     progress: str = '') -> List[dict]:
    """Per image: raw-score predictions and record of the real deployment path with every image
    kept on the edge exit (``offload_all=False``) or sent to the cloud (the pipeline's
    ``force_tier``: the router, calibrated or not, is not asked)."""
    saved_cal = model.calibrate_scores
    model.calibrate_scores = False  # raw scores: what the maps are fitted on
    out = []
    try:
        for k, (inputs, samples) in enumerate(batches):
            for r in run_deployment(model, inputs, samples,
                                    force_tier='cloud' if offload_all else 'edge'):
                inst = r.pred_instances
                out.append(dict(img_id=r.img_id, bboxes=to_numpy(inst.bboxes),
                                scores=to_numpy(inst.scores),
                                labels=to_numpy(inst.labels), comm=r.metainfo['ecc_comm']))
            if progress and k % 25 == 0:
                print(f'  {progress}: {len(out)} images', flush=True)
    finally:
        model.calibrate_scores = saved_cal
    return out


def score_maps_from_predictions(ann_file: str, edge: Sequence[dict], cloud: Sequence[dict],
                                cat_ids: Sequence[int]) -> Dict[str, object]:
    """{'edge': ScoreMap, 'cloud': ScoreMap} fitted on both tiers' predictions of the same
    images (matched against ``ann_file`` at IoU 0.5)."""
    boot = ImageBootstrap(ann_file, [p['img_id'] for p in edge], num_samples=1)
    return {tier: ScoreMap.fit(*true_positive_pairs(boot.evaluate(preds, cat_ids)))
            for tier, preds in (('edge', edge), ('cloud', cloud))}


def fit_score_maps(model, batches: Callable[[], Iterable[Tuple[Tensor, list]]], ann_file: str,
                   cat_ids: Sequence[int]) -> Dict[str, object]:
    """Run both tiers on the calibration images (``batches()`` gives a fresh iterator), fit the
    per-tier score maps and install them on ``model``."""
    maps = score_maps_from_predictions(ann_file, tier_predictions(model, batches(), False),
                                       tier_predictions(model, batches(), True), cat_ids)
    model.score_maps = maps
    return maps


def calibrate_dynamic(model, batches: Callable[[], Iterable[Tuple[Tensor, list]]], ann_file: str,
                      cat_ids: Sequence[int]) -> Optional[Tuple[float, float]]:
    """Everything a dynamic model needs from the calibration split, in eval mode: the per-tier
    score maps (``calibrate_scores=True``), then the router's threshold for its target ratio.
    Returns ``(threshold, offload ratio on the calibration images)``, or None when the router
    needs no threshold. Used by RouterCalibrationHook and by the tools alike."""
    router = getattr(model, 'router', None)
    if router is None or getattr(model, 'edge_exit', None) is None:
        return None
    was = model.training
    model.eval()
    try:
        if model.calibrate_scores:
            fit_score_maps(model, batches, ann_file, cat_ids)
        return calibrate_router(model, batches()) if router.needs_calibration else None
    finally:
        model.train(was)
