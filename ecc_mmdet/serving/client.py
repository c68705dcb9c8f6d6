"""The edge device's side of serving: run the edge half of a split detector on an image and send
the payload to the cloud server (``tools/serve_cloud.py``).

Library code only; the program that reads images or a camera and keeps several requests in
flight is ``tools/edge_client.py``.

* :class:`EdgeRunner` builds the edge model from a full checkpoint or the ``edge.pth`` of
  ``tools/export_edge_cloud.py`` (so a device can hold only the edge weights), applies the
  config's test pipeline to a file or an in-memory frame, and runs
  :func:`ecc_mmdet.deployment.run_edge` -- the same steps ``tools/test.py`` runs, so the payload
  is the one the in-process evaluation would send.
* :class:`CloudClient` (from the torch-free :mod:`ecc_edge.client`, re-exported here) posts
  payloads, retrying an unanswered one with the same request id for a time budget
  (``retry_for``; capped exponential back-off with jitter, ``Retry-After`` honoured). The
  program keeps every answer in a journal (:mod:`ecc_edge.journal`) as it arrives.
"""
import copy
import math
import os.path as osp
import time
from typing import Dict, Optional, Sequence, Union

import numpy as np
import torch
from mmcv.transforms import Compose
from mmengine.dataset import pseudo_collate
from mmdet.utils import register_all_modules

from ecc_edge.client import (CloudClient, CloudRequestError, CloudUnavailableError,  # noqa: F401
                             EdgeResult, check_token, coco_results)
from ..apis.inference import build_detector, load_config, load_weights
from ..deployment import run_edge
from ..errors import ConfigError
from ..evaluation.meter import DeploymentMeter
from ..utils.checkpoint_check import read_checkpoint
from .runtime import class_names_of

__all__ = ['CloudClient', 'CloudRequestError', 'CloudUnavailableError', 'EdgeResult',
           'EdgeRunner', 'check_token', 'coco_results', 'detections_to_json']


def detections_to_json(result, class_names: Optional[Sequence[str]] = None) -> Dict:
    """A ``DetDataSample``'s predictions as the server writes them: ``detections`` (bbox
    [x1, y1, x2, y2] clamped to the image and rounded to 1e-3 px, score to 1e-6, label,
    class_name) and ``image_size`` [h, w], so edge- and cloud-finished images read alike."""
    inst = result.pred_instances
    h, w = result.metainfo['ori_shape']
    boxes = inst.bboxes.float().cpu().clone()
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
    dets = []
    for box, score, label in zip(boxes.tolist(), inst.scores.tolist(), inst.labels.tolist()):
        name = class_names[label] if class_names and label < len(class_names) else str(label)
        dets.append(dict(bbox=[round(v, 3) for v in box], score=round(float(score), 9),
                         label=int(label), class_name=name))
    return dict(detections=dets, image_size=[int(h), int(w)])


class EdgeRunner:
    """The edge side of a split detector, one image at a time.

    Args:
        config: the split detector's config (path or ``Config``); its test pipeline prepares
            the images.
        checkpoint: the full checkpoint, or the ``edge.pth`` of ``tools/export_edge_cloud.py``
            (loaded strictly: a device must not run with weights silently missing). A
            ``cloud.pth`` is refused.
        device: torch device of the edge model.
        model: an already built (e.g. calibrated) full model to take the edge from instead of
            loading ``checkpoint``: a dynamic model's router threshold and score maps come
            from its calibration split and are not in any checkpoint.

    Raises ``ConfigError`` for a missing file, a cloud-only export, a config that is not a
    split detector, or a dynamic model whose router is not calibrated.
    """

    def __init__(self, config, checkpoint: str, device: str = 'cpu', model=None,
                 partial_checkpoint: bool = False):
        self.cfg = cfg = load_config(config)
        if model is not None:
            self._finish(model.build_edge(), cfg, device)
            return
        ckpt = read_checkpoint(checkpoint)  # missing or unreadable: the message of every tool
        meta = ckpt.get('meta')
        side = meta.get('side') if isinstance(meta, dict) else None
        if side == 'cloud':
            raise ConfigError(f'{checkpoint} is a cloud-only export: the edge needs the full '
                              'checkpoint or edge.pth (tools/export_edge_cloud.py)')
        model = build_detector(cfg.model)
        if not hasattr(model, 'build_edge'):
            raise ConfigError(f'{type(model).__name__} is not a split (EdgeCloud*) detector: '
                              'it has no edge side to run')
        if side == 'edge':
            model = model.build_edge()
        load_weights(model, ckpt, partial_checkpoint, path=checkpoint)  # refused if no fit
        self._finish(model if side == 'edge' else model.build_edge(), cfg, device)

    def _finish(self, model, cfg, device):
        router = getattr(model, 'router', None)
        if router is not None and model.edge_exit is not None and \
                math.isnan(float(router.threshold)):
            raise ConfigError(
                f'the router ({type(router).__name__}) has a target offload ratio but no '
                'calibrated threshold: calibrate the model on its calibration split first '
                '(tools/edge_client.py --data-root DIR does)')
        self.model = model.to(device).eval()
        self.class_names = class_names_of(cfg)
        self._file_pipeline, self._array_pipeline = self._pipelines(cfg)

    @staticmethod
    def _pipelines(cfg):
        """(pipeline for files, pipeline for BGR arrays): the test pipeline without
        annotations, its loader swapped for ``LoadImageFromNDArray`` in the second."""
        register_all_modules(init_default_scope=True)
        steps = [copy.deepcopy(t) for t in cfg.test_dataloader.dataset.pipeline
                 if 'LoadAnnotations' not in str(t.get('type', ''))]
        if not steps or 'LoadImage' not in str(steps[0].get('type', '')):
            raise ConfigError('the test pipeline must start by loading the image '
                              f'(LoadImageFromFile), got {steps[:1]}')
        array = [dict(type='mmdet.LoadImageFromNDArray')] + steps[1:]
        return Compose(steps), Compose(array)

    def process(self, image: Union[str, np.ndarray], img_id: int) -> EdgeResult:
        """Run the edge on one image: a file path, or a BGR uint8 array (an OpenCV frame)."""
        t0 = time.perf_counter()
        if isinstance(image, np.ndarray):
            item = self._array_pipeline(dict(img=image, img_id=img_id))
        else:
            item = self._file_pipeline(dict(img_path=str(image), img_id=img_id))
        if item is None:
            raise ValueError(f'the test pipeline dropped image {img_id}')
        t1 = time.perf_counter()
        with torch.no_grad():
            data = self.model.data_preprocessor(pseudo_collate([item]), False)
            t2 = time.perf_counter()
            trace = DeploymentMeter(measure_flops=False, estimate_rate=False).batch(1)
            out = run_edge(self.model, data['inputs'], data['data_samples'], rescale=True,
                           trace=trace)
        timings = dict(load=(t1 - t0) * 1e3, preprocess=(t2 - t1) * 1e3)
        timings.update({k: v * 1e3 for k, v in trace.time[0].items()})
        tier = out.tiers[0]
        if tier == 'cloud':
            return EdgeResult(img_id, tier, out.payloads[0], None, timings)
        # finished on the edge; with ``edge_report`` its detections report is the payload (for
        # the cloud's /v1/report), otherwise nothing goes up
        return EdgeResult(img_id, tier, out.payloads[0], detections_to_json(out.results[0],
                                                                            self.class_names),
                          timings)
