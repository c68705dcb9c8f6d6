"""The cloud's share of a cloud-only ("send the image") record, in one place for both paths.

A cloud-only baseline such as :class:`~ecc_mmdet.datasets.transforms.JPEGCompressImage` writes the
uplink bytes and the image codec's time into the record in the data pipeline; the whole detector
then runs in the cloud. Its time and FLOPs are added here, by the Runner's
:class:`~ecc_mmdet.engine.CloudOnlyAccountingHook` and by
:func:`~ecc_mmdet.apis.evaluate_detector` alike, so both report the same fields
(``comm/cloud_gflops``, ``comm/cloud_time_ms``, ``comm/latency_ms_at_*``).
"""
from typing import Callable, Hashable, Optional, Sequence, Tuple

from ..structures import comm_record
from ..utils.flops import FlopCache, count_flops


class CloudOnlyAccounting:
    """Completes cloud-only records; FLOPs are measured once per input shape (bounded cache)."""

    def __init__(self, max_shapes: int = 16):
        self.flops = FlopCache(max_entries=max_shapes)

    def whole_model_flops(self, model, shape: Hashable,
                          batch: Callable[[], Tuple[object, list]]) -> float:
        """FLOPs of ``model.predict`` on one image of ``shape``; ``batch()`` gives the
        preprocessed ``(inputs, data_samples)`` and is only called when ``shape`` is new."""

        def measure():
            inputs, samples = batch()
            return count_flops(lambda: model.predict(inputs[:1], [samples[0].clone()]))[0]

        return self.flops.get(shape, measure)

    @staticmethod
    def needs_cloud_share(results: Sequence) -> bool:
        """Whether any result carries a cloud-only record still missing the cloud's share."""
        for s in results:
            rec = comm_record.read(s)
            if rec is not None and rec.cloud_time_s is None:
                return True
        return False

    @staticmethod
    def fill(results: Sequence, cloud_time_s: float, cloud_flops: Optional[float]) -> None:
        """Add the cloud's time and FLOPs per image to every record that lacks them."""
        for s in results:
            rec = comm_record.read(s)
            if rec is None or rec.cloud_time_s is not None:
                continue
            rec.cloud_time_s = cloud_time_s
            if rec.edge_time_s is None:
                rec.edge_time_s = rec.codec_time_s or 0.0  # the image encode (+ decode) time
            if rec.cloud_flops is None:
                rec.cloud_flops = cloud_flops
            comm_record.attach(s, rec)
