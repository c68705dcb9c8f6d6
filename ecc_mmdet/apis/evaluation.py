"""Evaluate a detector on a dataset with CocoMetric (+ CommunicationMetric) outside the Runner.

Used by the rate-accuracy benchmark and the demo, which evaluate many (model, pipeline) pairs in
one process. The metrics are the same registered classes the Runner uses, fed the same way.
"""
from typing import Optional, Sequence

import torch
from mmengine.evaluator import Evaluator
from mmengine.utils import ProgressBar

from ..evaluation.cloud_only_accounting import CloudOnlyAccounting
from ..structures import comm_record
from ..utils.device import to_numpy
from .inference import iter_batches


def score_only_seen_images(evaluator, img_ids) -> None:
    """Make the evaluator's COCO metrics score only ``img_ids``.

    mmdet's ``CocoMetric`` scores every image of its annotation file, so evaluating the first N
    images of a larger set would count the others as images whose objects were all missed.
    """
    for metric in getattr(evaluator, 'metrics', [evaluator]):
        if type(metric).__name__ == 'CocoMetric' or hasattr(metric, '_coco_api'):
            metric.img_ids = list(img_ids)


def evaluate_detector(model, dataset, ann_file: str, comm: bool = True,
                      bandwidth_mbps: Sequence[float] = (10.0, ), num_images: Optional[int] = None,
                      batch_size: int = 1, progress: bool = True,
                      predictions_out: Optional[list] = None) -> dict:
    """COCO bbox metrics (``coco/...``) and, with ``comm``, communication figures (``comm/...``).

    ``predictions_out``: a list that receives one dict per image (``img_id`` and numpy
    ``bboxes`` (xyxy, original image), ``scores``, ``labels``, and ``comm``: its
    communication record as a dict, or None), e.g. for
    :class:`~ecc_mmdet.evaluation.bootstrap.ImageBootstrap`.

    Unsplit models evaluated with ``comm`` need a pipeline that produces a communication record
    (the JPEG baseline); their cloud time and FLOPs are added to it by the same
    :class:`~ecc_mmdet.evaluation.cloud_only_accounting.CloudOnlyAccounting` that
    :class:`~ecc_mmdet.engine.CloudOnlyAccountingHook` uses in the Runner.
    """
    metrics = [dict(type='CocoMetric', ann_file=ann_file, metric='bbox', format_only=False)]
    if comm:
        metrics.append(dict(type='CommunicationMetric', bandwidth_mbps=list(bandwidth_mbps)))
    evaluator = Evaluator(metrics)
    evaluator.dataset_meta = dataset.metainfo
    n = len(dataset) if num_images is None else min(num_images, len(dataset))
    bar = ProgressBar(n) if progress else None
    cloud_only = CloudOnlyAccounting() if comm and not hasattr(model, 'compressor') else None
    seen = []
    with torch.no_grad():
        for inputs, samples in iter_batches(model, dataset, n, batch_size):
            seen += [s.metainfo['img_id'] for s in samples]
            if cloud_only is not None:
                results = cloud_only.run(lambda: model.predict(inputs, samples), len(samples),
                                         tuple(samples[0].metainfo.get('img_shape', ())))
            else:
                results = model.predict(inputs, samples)
            evaluator.process(data_samples=results)
            if predictions_out is not None:
                for r in results:
                    inst = r.pred_instances
                    rec = comm_record.read(r)
                    predictions_out.append(dict(img_id=r.img_id,
                                                bboxes=to_numpy(inst.bboxes),
                                                scores=to_numpy(inst.scores),
                                                labels=to_numpy(inst.labels),
                                                comm=None if rec is None else rec.to_dict()))
            if bar is not None:
                for _ in results:
                    bar.update()
    if bar is not None:
        print(flush=True)
    if n < len(dataset):
        score_only_seen_images(evaluator, seen)
    return evaluator.evaluate(n)
