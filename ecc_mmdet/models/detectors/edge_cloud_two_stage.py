"""Two-stage (Faster R-CNN family) detector split into an edge and a cloud part."""
from mmdet.models.detectors import TwoStageDetector
from mmdet.registry import MODELS

from ...errors import ConfigError
from .edge_cloud_base import EdgeCloudDetectorMixin


@MODELS.register_module()
class EdgeCloudTwoStageDetector(EdgeCloudDetectorMixin, TwoStageDetector):
    """Any ``TwoStageDetector`` config becomes a split one by changing ``type`` and adding
    ``split_after`` and ``compressor``; ``edge_exit`` + ``router`` make it dynamic (see
    :class:`EdgeCloudDetectorMixin`)."""
    unsplit_type = 'TwoStageDetector'

    @classmethod
    def _check_detector_kwargs(cls, kwargs):
        if 'bbox_head' in kwargs:
            raise ConfigError('EdgeCloudTwoStageDetector got a single-stage config (bbox_head); '
                              "use type='EdgeCloudSingleStageDetector' for it")

    def predict_from_features(self, x, batch_data_samples, rescale: bool = True):
        if batch_data_samples[0].get('proposals', None) is None:
            rpn_results_list = self.rpn_head.predict(x, batch_data_samples, rescale=False)
        else:
            rpn_results_list = [s.proposals for s in batch_data_samples]
        results_list = self.roi_head.predict(x, rpn_results_list, batch_data_samples,
                                             rescale=rescale)
        return self.add_pred_to_datasample(batch_data_samples, results_list)
