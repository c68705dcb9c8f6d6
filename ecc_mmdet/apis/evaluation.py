"""Evaluate a detector on a dataset with CocoMetric (+ CommunicationMetric) outside the Runner.

Used by the rate-accuracy benchmark and the demo, which evaluate many (model, pipeline) pairs in
one process. The metrics are the same registered classes the Runner uses, fed the same way.
"""
import time
from typing import Optional, Sequence

import torch
from mmengine.evaluator import Evaluator
from mmengine.utils import ProgressBar
from torch.utils.flop_counter import FlopCounterMode

from ..codecs import accounting
from .inference import iter_batches


def _fill_cloud_only_record(sample, cloud_time_s: float, cloud_flops: Optional[float]):
    """A JPEG (cloud-only) record has the image bytes; add what the cloud spent on it."""
    rec = accounting.read(sample)
    if rec is None or rec.cloud_time_s is not None:
        return
    rec.cloud_time_s = cloud_time_s
    if rec.edge_time_s is None:
        rec.edge_time_s = rec.codec_time_s or 0.0  # JPEG encode (+ decode) time
    if rec.cloud_flops is None:
        rec.cloud_flops = cloud_flops
    accounting.attach(sample, rec)


def _whole_model_flops(model, inputs, samples) -> float:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.predict(inputs[:1], [samples[0].clone()])
    return float(counter.get_total_flops())


def evaluate_detector(model, dataset, ann_file: str, comm: bool = True,
                      bandwidth_mbps: Sequence[float] = (10.0, ), num_images: Optional[int] = None,
                      batch_size: int = 1, progress: bool = True) -> dict:
    """COCO bbox metrics (``coco/...``) and, with ``comm``, communication figures (``comm/...``).

    Unsplit models evaluated with ``comm`` need a pipeline that produces a communication record
    (the JPEG baseline); their cloud time and FLOPs are measured here and added to it.
    """
    metrics = [dict(type='CocoMetric', ann_file=ann_file, metric='bbox', format_only=False)]
    if comm:
        metrics.append(dict(type='CommunicationMetric', bandwidth_mbps=list(bandwidth_mbps)))
    evaluator = Evaluator(metrics)
    evaluator.dataset_meta = dataset.metainfo
    n = len(dataset) if num_images is None else min(num_images, len(dataset))
    bar = ProgressBar(n) if progress else None
    split = hasattr(model, 'compressor')
    flops = None
    with torch.no_grad():
        for inputs, samples in iter_batches(model, dataset, n, batch_size):
            if comm and not split and flops is None:
                flops = _whole_model_flops(model, inputs, samples)
            t0 = time.perf_counter()
            results = model.predict(inputs, samples)
            dt = (time.perf_counter() - t0) / len(results)
            if comm and not split:
                for s in results:
                    _fill_cloud_only_record(s, dt, flops)
            evaluator.process(data_samples=results)
            if bar is not None:
                for _ in results:
                    bar.update()
    if bar is not None:
        print(flush=True)
    return evaluator.evaluate(n)
