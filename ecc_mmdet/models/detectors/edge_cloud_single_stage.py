"""Single-stage (RetinaNet, FCOS, ATSS, RTMDet, YOLOX, ...) detectors split into edge and cloud."""
from mmdet.models.detectors import RTMDet, SingleStageDetector, YOLOX
from mmdet.registry import MODELS

from .edge_cloud_base import EdgeCloudDetectorMixin


class EdgeCloudSingleStageMixin(EdgeCloudDetectorMixin):
    """The single-stage cloud step: dense head on the neck's features."""

    @classmethod
    def _check_detector_kwargs(cls, kwargs):
        cls._refuse_two_stage_keys(kwargs)

    def loss_from_features(self, x, batch_data_samples) -> dict:
        return self.bbox_head.loss(x, batch_data_samples)

    def predict_from_features(self, x, batch_data_samples, rescale: bool = True):
        results_list = self.bbox_head.predict(x, batch_data_samples, rescale=rescale)
        return self.add_pred_to_datasample(batch_data_samples, results_list)


@MODELS.register_module()
class EdgeCloudSingleStageDetector(EdgeCloudSingleStageMixin, SingleStageDetector):
    """Any ``SingleStageDetector`` config becomes a split one by changing ``type`` and adding
    ``split_after`` and ``compressor``; ``edge_exit`` + ``router`` make it dynamic (see
    :class:`EdgeCloudDetectorMixin`)."""


@MODELS.register_module()
class EdgeCloudRTMDet(EdgeCloudSingleStageMixin, RTMDet):
    """``type='RTMDet'`` made split (keeps RTMDet's own arguments, e.g. ``use_syncbn``)."""


@MODELS.register_module()
class EdgeCloudYOLOX(EdgeCloudSingleStageMixin, YOLOX):
    """``type='YOLOX'`` made split."""
