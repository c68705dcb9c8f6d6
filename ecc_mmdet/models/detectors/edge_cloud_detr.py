"""DETR-style detectors (DETR, Conditional/DAB/Deformable DETR, DINO) split into edge and
cloud: the backbone is cut as for any detector; the transformer encoder, decoder and query
head all run on the cloud, on the decoded features.

One split class per mmdet 3.3 ``DetectionTransformer`` subclass that keeps the base
``extract_feat -> forward_transformer -> bbox_head`` flow (``type='EdgeCloudDINO'`` for
``type='DINO'``), so a DETR config becomes a split one by prefixing its type and adding
``split_after`` and ``compressor``. The others are listed in ``NOT_SPLIT`` with the reason;
DDQ-DETR is refused by name. ``tests/test_models/test_split_families.py`` fails when mmdet gains
a ``DetectionTransformer`` subclass that is in neither list.
"""
from mmdet.models.detectors import (DABDETR, DETR, DINO, ConditionalDETR, DeformableDETR)
from mmdet.registry import MODELS

from ...errors import ConfigError
from .edge_cloud_base import EdgeCloudDetectorMixin

__all__ = ['EdgeCloudDETRMixin', 'DETR_SPLIT_TYPES', 'NOT_SPLIT', 'EdgeCloudDETR',
           'EdgeCloudConditionalDETR', 'EdgeCloudDABDETR', 'EdgeCloudDeformableDETR',
           'EdgeCloudDINO']


class EdgeCloudDETRMixin(EdgeCloudDetectorMixin):
    """The DETR cloud step: transformer on the neck's features, then the query head."""

    @classmethod
    def _check_detector_kwargs(cls, kwargs):
        cls._refuse_two_stage_keys(kwargs)

    def loss_from_features(self, x, batch_data_samples) -> dict:
        head_inputs = self.forward_transformer(x, batch_data_samples)
        return self.bbox_head.loss(**head_inputs, batch_data_samples=batch_data_samples)

    def predict_from_features(self, x, batch_data_samples, rescale: bool = True):
        # the masks of padded pixels come from batch_input_shape / img_shape: on the cloud these
        # are the payload's image meta
        head_inputs = self.forward_transformer(x, batch_data_samples)
        results_list = self.bbox_head.predict(**head_inputs, rescale=rescale,
                                              batch_data_samples=batch_data_samples)
        return self.add_pred_to_datasample(batch_data_samples, results_list)


# one class per mmdet DETR type (``type='DINO'`` -> ``type='EdgeCloudDINO'``), each split into edge
# and cloud as :class:`EdgeCloudDETRMixin` says
class EdgeCloudDETR(EdgeCloudDETRMixin, DETR): pass  # noqa: E701
class EdgeCloudConditionalDETR(EdgeCloudDETRMixin, ConditionalDETR): pass  # noqa: E701
class EdgeCloudDABDETR(EdgeCloudDETRMixin, DABDETR): pass  # noqa: E701
class EdgeCloudDeformableDETR(EdgeCloudDETRMixin, DeformableDETR): pass  # noqa: E701
class EdgeCloudDINO(EdgeCloudDETRMixin, DINO): pass  # noqa: E701


#: split type -> the mmdet type it splits
DETR_SPLIT_TYPES = {}
for _cls in (EdgeCloudDETR, EdgeCloudConditionalDETR, EdgeCloudDABDETR, EdgeCloudDeformableDETR,
             EdgeCloudDINO):
    _cls.__doc__ = f"``type='{_cls.unsplit_type}'`` split into edge and cloud."
    MODELS.register_module(module=_cls)
    DETR_SPLIT_TYPES[_cls.__name__] = _cls.unsplit_type

#: mmdet DETR types that are not split, and why
NOT_SPLIT = {
    # DDQ-DETR hands every submodule (the backbone's too) a dict holding the head's classifier
    # branches, so an edge-only build would carry cloud weights
    'DDQDETR': 'refused by name until that is handled',
    # Grounding DINO has its own flow (text prompts through a language model), not the base one
    'GroundingDINO': 'its own extract_feat / loss / predict (text prompts)',
}


def _refuse_ddq_detr(**kwargs):
    raise ConfigError(
        "DDQDETR cannot be split yet: mmdet's DDQDETR gives every submodule (the backbone "
        "included) a dict holding the head's classifier branches, so an edge-only build "
        'would carry cloud weights. Split DINO or Deformable DETR instead '
        "(type='EdgeCloudDINO' / 'EdgeCloudDeformableDETR').")


MODELS.register_module(name='EdgeCloudDDQDETR', module=_refuse_ddq_detr)
