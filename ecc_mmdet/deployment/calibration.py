"""Router calibration: a target offload ratio -> a threshold, on a calibration split.

The threshold is the percentile of the router's scores on calibration images
(:func:`~ecc_mmdet.models.routers.threshold_for_ratio`); the split must not be the one the
system is evaluated on, or the reported offload ratio and mAP would be tuned on the test images.
"""
import os.path as osp
from typing import Iterable, Optional, Tuple

import torch
from torch import Tensor

from ..utils.config_checks import ConfigError

__all__ = ['router_scores', 'calibrate_router', 'check_calibration_split']


@torch.no_grad()
def router_scores(model, batches: Iterable[Tuple[Tensor, list]]) -> Tensor:
    """The router's score of every image of ``batches`` (preprocessed ``(inputs, samples)``)."""
    if model.edge_exit is None or model.router is None:
        raise ConfigError('router calibration needs a model with edge_exit and router')
    out = []
    for inputs, samples in batches:
        exits = model.run_exits(model.edge_features(inputs), samples)
        if hasattr(model.router, 'check_exits'):
            model.route(exits)  # refuses a learned router trained for other exits
        out.append(model.router.scores(exits).double().cpu())
    if not out:
        raise ConfigError('the calibration split has no images')
    return torch.cat(out)


def calibrate_router(model, batches, ratio: Optional[float] = None) -> Tuple[float, float]:
    """Set ``model.router``'s threshold for ``ratio`` (default: its target) on ``batches``;
    returns ``(threshold, offload ratio reached on the calibration images)``."""
    scores = router_scores(model, batches)
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
                'and mAP. Calibrate on another split (e.g. the training annotations)')
