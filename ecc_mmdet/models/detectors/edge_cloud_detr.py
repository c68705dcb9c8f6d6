"""DETR-style detectors (DETR, Conditional/DAB/Deformable DETR, DINO) split into edge and
cloud: the backbone is cut as for any detector; the transformer encoder, decoder and query
head all run on the cloud, on the decoded features.

One split class per mmdet DETR class (``type='EdgeCloudDINO'`` for ``type='DINO'``; DDQ-DETR
excepted, see ``_NOT_SPLIT``), made from
:class:`EdgeCloudDETRMixin` for every ``DetectionTransformer`` subclass that keeps the base
``extract_feat -> forward_transformer -> bbox_head`` flow, so a DETR config becomes a split one
by prefixing its type and adding ``split_after`` and ``compressor``.
"""
import mmdet.models.detectors as mmdet_detectors
from mmdet.models.detectors.base_detr import DetectionTransformer
from mmdet.registry import MODELS

from ...errors import ConfigError
from .edge_cloud_base import EdgeCloudDetectorMixin

__all__ = ['EdgeCloudDETRMixin', 'DETR_SPLIT_TYPES']


class EdgeCloudDETRMixin(EdgeCloudDetectorMixin):
    """The DETR cloud step: transformer on the neck's features, then the query head."""

    @classmethod
    def _check_detector_kwargs(cls, kwargs):
        cls._refuse_two_stage_keys(kwargs)

    def predict_from_features(self, x, batch_data_samples, rescale: bool = True):
        # the masks of padded pixels come from batch_input_shape / img_shape: on the cloud these
        # are the payload's image meta
        head_inputs = self.forward_transformer(x, batch_data_samples)
        results_list = self.bbox_head.predict(**head_inputs, rescale=rescale,
                                              batch_data_samples=batch_data_samples)
        return self.add_pred_to_datasample(batch_data_samples, results_list)


# DDQ-DETR hands every submodule (the backbone's too) a dict holding the head's classifier
# branches, so an edge-only build would carry cloud weights: not split until that is handled
_NOT_SPLIT = ('DDQDETR', )


def _keeps_base_flow(cls) -> bool:
    return cls.__name__ not in _NOT_SPLIT and all(getattr(cls, m) is getattr(DetectionTransformer, m)
               for m in ('extract_feat', 'loss', 'predict', '_forward'))


DETR_SPLIT_TYPES = {}
for _name in sorted(dir(mmdet_detectors)):
    _cls = getattr(mmdet_detectors, _name)
    if isinstance(_cls, type) and issubclass(_cls, DetectionTransformer) and \
            _cls is not DetectionTransformer and _keeps_base_flow(_cls):
        _split = type(f'EdgeCloud{_name}', (EdgeCloudDETRMixin, _cls),
                      dict(__module__=__name__, unsplit_type=_name,
                           __doc__=f"``type='{_name}'`` split into edge and cloud (see "
                                   ':class:`EdgeCloudDETRMixin`).'))
        MODELS.register_module(module=_split)
        globals()[_split.__name__] = _split
        DETR_SPLIT_TYPES[_split.__name__] = _name
        __all__.append(_split.__name__)


def _refuse(name):
    def build(**kwargs):
        raise ConfigError(
            f'{name} cannot be split yet: mmdet\'s {name} gives every submodule (the backbone '
            "included) a dict holding the head's classifier branches, so an edge-only build "
            'would carry cloud weights. Split DINO or Deformable DETR instead '
            "(type='EdgeCloudDINO' / 'EdgeCloudDeformableDETR').")
    build.__name__ = f'EdgeCloud{name}'
    return build


for _name in _NOT_SPLIT:
    MODELS.register_module(name=f'EdgeCloud{_name}', module=_refuse(_name))
