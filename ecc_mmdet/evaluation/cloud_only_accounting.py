"""The cloud's share of a cloud-only ("send the image") record, in one place for both paths.

A cloud-only baseline such as :class:`~ecc_mmdet.datasets.transforms.JPEGCompressImage` writes the
uplink bytes and the image codec's time into the record in the data pipeline; the whole detector
then runs in the cloud. That run is measured as one ``cloud`` step by the same
:class:`~ecc_mmdet.evaluation.meter.DeploymentMeter` that measures the split detectors' steps
(time per image, FLOPs counted once per input shape), by the Runner's
:class:`~ecc_mmdet.engine.CloudOnlyAccountingHook` and by :func:`~ecc_mmdet.apis.evaluate_detector`
alike, so every method reports the same fields (``comm/cloud_gflops``, ``comm/cloud_time_ms``,
``comm/latency_ms_at_*``) in both paths.
"""
from typing import Callable, Hashable, List, Sequence

from .meter import DeploymentMeter
from ..structures import comm_record

__all__ = ['CloudOnlyAccounting']


class CloudOnlyAccounting:
    """Runs a cloud-only prediction as a measured ``cloud`` step and completes its records."""

    def __init__(self, max_shapes: int = 16):
        self.meter = DeploymentMeter(measure_flops=True, estimate_rate=False,
                                     max_shapes=max_shapes)

    def run(self, predict: Callable[[], List], n: int, shape: Hashable) -> List:
        """``predict()`` (the whole detector on ``n`` images of input ``shape``), measured; the
        records it carries that lack the cloud's share get it."""
        trace = self.meter.batch(n)
        with trace.step('cloud', range(n), shape):
            results = predict()
        if self.needs_cloud_share(results):
            for i, s in enumerate(results):
                rec = comm_record.read(s)
                if rec is None or rec.cloud_time_s is not None:
                    continue
                rec.cloud_time_s = trace.time[i].get('cloud', 0.0)
                if rec.edge_time_s is None:
                    rec.edge_time_s = rec.codec_time_s or 0.0  # the image encode (+ decode) time
                if rec.cloud_flops is None:
                    rec.cloud_flops = trace.flops[i].get('cloud')
                comm_record.attach(s, rec)
        return results

    @staticmethod
    def needs_cloud_share(results: Sequence) -> bool:
        """Whether any result carries a cloud-only record still missing the cloud's share."""
        for s in results:
            rec = comm_record.read(s)
            if rec is not None and rec.cloud_time_s is None:
                return True
        return False
