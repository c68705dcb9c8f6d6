"""Deployment accounting: wall time, FLOPs and bytes of every deployment step, per image.

The deployment path (:mod:`ecc_mmdet.deployment.pipeline`) runs named steps -- ``edge`` (stem +
stages[:k]), ``exit`` (edge exit heads), ``route``, ``encode`` (encoder + entropy coder +
framing), ``report`` (the optional detections report of edge-finished images), ``decode``
(validation + entropy decoder + g_s), ``cloud`` (rest of the backbone, neck, heads) -- each over
the images of the batch that take it. The pipeline only names the steps; this module is the one
place that measures them, for the Runner path (``tools/test.py``), the out-of-Runner evaluation
and the cloud-only baselines (:mod:`.cloud_only_accounting`) alike, and turns the measurements
into one :class:`~ecc_mmdet.structures.CommRecord` per image. A meter belongs to whoever
measures (the pipeline holds one per model, a server or benchmark its own), never to the model.

* time: each step's wall time is shared equally among the images that ran it;
* FLOPs: counted with torch's ``FlopCounterMode`` the first time a step meets an input shape
  (an LRU cache of ``max_shapes`` shapes per step), divided by the images of that batch (the batch
  that is counted also pays the counter's overhead in its time);
* edge = edge + exit + route + encode (+ report), cloud = decode + cloud,
  codec = encode + decode.
"""
import contextlib
import time
from typing import Dict, Hashable, List, Optional, Sequence

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..structures.comm_record import CommRecord
from ..utils.flops import FlopCache

__all__ = ['DeploymentMeter', 'BatchTrace', 'EDGE_STEPS', 'CLOUD_STEPS', 'CODEC_STEPS']

EDGE_STEPS = ('edge', 'exit', 'route', 'extension', 'encode', 'report')
CLOUD_STEPS = ('decode', 'cloud')
CODEC_STEPS = ('encode', 'decode')
EXIT_STEPS = ('exit', 'route', 'extension')


class DeploymentMeter:
    """Measures deployment steps. ``batch(n)`` starts the trace of one batch of ``n`` images.

    Args:
        measure_flops: count FLOPs (once per step and input shape).
        estimate_rate: ask the pipeline for the entropy model's bit estimate of each payload (an
            extra likelihood pass on the edge, outside every timed step).
        max_shapes: input shapes whose FLOP counts are kept per step.
    """

    def __init__(self, measure_flops: bool = True, estimate_rate: bool = True,
                 max_shapes: int = 16):
        self.measure_flops = bool(measure_flops)
        self.estimate_rate = bool(estimate_rate)
        self.max_shapes = max_shapes
        self.flops: Dict[str, FlopCache] = {}  # step -> (shape -> FLOPs per image)

    def cache(self, step: str) -> FlopCache:
        if step not in self.flops:
            self.flops[step] = FlopCache(max_entries=self.max_shapes)
        return self.flops[step]

    def batch(self, n: int) -> 'BatchTrace':
        return BatchTrace(self, n)


class BatchTrace:
    """What one batch spent, per image and step; ``records(...)`` makes the CommRecords."""

    def __init__(self, meter: DeploymentMeter, n: int):
        self.meter = meter
        self.n = n
        self.time: List[Dict[str, float]] = [{} for _ in range(n)]
        self.flops: List[Dict[str, float]] = [{} for _ in range(n)]

    @contextlib.contextmanager
    def step(self, name: str, indices: Sequence[int], shape: Hashable):
        """Time (and on a new ``shape``, count the FLOPs of) the step run on ``indices``.

        ``shape=None``: time only (steps without torch operators, e.g. parsing payloads)."""
        indices = list(indices)
        if not indices:
            yield
            return
        cache = self.meter.cache(name)
        measure = self.meter.measure_flops and shape is not None
        count = measure and shape not in cache
        t0 = time.perf_counter()
        if count:
            with torch.no_grad(), FlopCounterMode(display=False) as counter:
                yield
            total = float(counter.get_total_flops())
            per_image = cache.get(shape, lambda: total / len(indices))
        else:
            yield
            per_image = cache.get(shape, lambda: None) if measure else None
        dt = (time.perf_counter() - t0) / len(indices)
        for i in indices:
            self.time[i][name] = self.time[i].get(name, 0.0) + dt
            if per_image is not None:
                self.flops[i][name] = self.flops[i].get(name, 0.0) + per_image

    def _sum(self, table, i, steps) -> Optional[float]:
        vals = [table[i][s] for s in steps if s in table[i]]
        return float(sum(vals)) if vals else None

    def records(self, tiers: Sequence[str], payload_bytes: Sequence[int],
                header_bytes: Sequence[int], codec,
                estimated_bits: Optional[Sequence[Optional[float]]] = None,
                edge_params: Optional[int] = None) -> List[CommRecord]:
        """One record per image; ``tiers[i]`` is where image i finished ('cloud' = offloaded);
        ``codec``: one name for every image, or one per image."""
        out = []
        codecs = [codec] * self.n if isinstance(codec, str) else list(codec)
        for i in range(self.n):
            offloaded = tiers[i] == 'cloud'
            flops = self.meter.measure_flops
            out.append(CommRecord(
                payload_bytes=int(payload_bytes[i]), header_bytes=int(header_bytes[i]),
                estimated_bits=None if estimated_bits is None else estimated_bits[i],
                codec=codecs[i], offloaded=offloaded, tier=tiers[i],
                edge_flops=self._sum(self.flops, i, EDGE_STEPS) if flops else None,
                cloud_flops=(self._sum(self.flops, i, CLOUD_STEPS) or 0.0) if flops else None,
                exit_flops=(self._sum(self.flops, i, EXIT_STEPS) or 0.0) if flops else None,
                edge_params=edge_params,
                edge_time_s=self._sum(self.time, i, EDGE_STEPS),
                cloud_time_s=self._sum(self.time, i, CLOUD_STEPS) if offloaded else 0.0,
                codec_time_s=self._sum(self.time, i, CODEC_STEPS)))
        return out
