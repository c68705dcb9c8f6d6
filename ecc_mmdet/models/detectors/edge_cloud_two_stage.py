"""Two-stage (Faster R-CNN family) detector split into an edge and a cloud part."""
import copy

import torch
from mmdet.models.detectors import TwoStageDetector
from mmdet.registry import MODELS

from ...errors import ConfigError
from .edge_cloud_base import EdgeCloudDetectorMixin


@MODELS.register_module()
class EdgeCloudTwoStageDetector(EdgeCloudDetectorMixin, TwoStageDetector):
    """Any ``TwoStageDetector`` config becomes a split one by changing ``type`` and adding
    ``split_after`` and ``compressor``; ``edge_exit`` + ``router`` make it dynamic (see
    :class:`EdgeCloudDetectorMixin`)."""

    @classmethod
    def _check_detector_kwargs(cls, kwargs):
        if 'bbox_head' in kwargs:
            raise ConfigError('EdgeCloudTwoStageDetector got a single-stage config (bbox_head); '
                              "use type='EdgeCloudSingleStageDetector' for it")

    def loss_from_features(self, x, batch_data_samples) -> dict:
        """``TwoStageDetector.loss`` after its ``extract_feat``: RPN (class-agnostic, its
        losses prefixed ``rpn_``) or the samples' proposals, then the RoI head."""
        losses = dict()
        if self.with_rpn:
            proposal_cfg = self.train_cfg.get('rpn_proposal', self.test_cfg.rpn)
            rpn_data_samples = copy.deepcopy(batch_data_samples)
            for data_sample in rpn_data_samples:
                data_sample.gt_instances.labels = torch.zeros_like(
                    data_sample.gt_instances.labels)
            rpn_losses, rpn_results_list = self.rpn_head.loss_and_predict(
                x, rpn_data_samples, proposal_cfg=proposal_cfg)
            for key in list(rpn_losses):
                if 'loss' in key and 'rpn' not in key:
                    rpn_losses[f'rpn_{key}'] = rpn_losses.pop(key)
            losses.update(rpn_losses)
        else:
            rpn_results_list = [s.proposals for s in batch_data_samples]
        losses.update(self.roi_head.loss(x, rpn_results_list, batch_data_samples))
        return losses

    def predict_from_features(self, x, batch_data_samples, rescale: bool = True):
        if batch_data_samples[0].get('proposals', None) is None:
            rpn_results_list = self.rpn_head.predict(x, batch_data_samples, rescale=False)
        else:
            rpn_results_list = [s.proposals for s in batch_data_samples]
        results_list = self.roi_head.predict(x, rpn_results_list, batch_data_samples,
                                             rescale=rescale)
        return self.add_pred_to_datasample(batch_data_samples, results_list)
