from .edge_cloud_base import EdgeCloudDetectorMixin
from .edge_cloud_detr import (DETR_SPLIT_TYPES, NOT_SPLIT, EdgeCloudConditionalDETR,
                              EdgeCloudDABDETR, EdgeCloudDeformableDETR, EdgeCloudDETR,
                              EdgeCloudDETRMixin, EdgeCloudDINO)
from .edge_cloud_single_stage import (EdgeCloudRTMDet, EdgeCloudSingleStageDetector,
                                      EdgeCloudSingleStageMixin, EdgeCloudYOLOX)
from .edge_cloud_two_stage import EdgeCloudTwoStageDetector
from .edge_tiers import EdgeTiers
from .payload_codec import PayloadCodec

__all__ = ['EdgeCloudDetectorMixin', 'EdgeCloudTwoStageDetector', 'EdgeCloudSingleStageDetector',
           'EdgeCloudSingleStageMixin', 'EdgeCloudRTMDet', 'EdgeCloudYOLOX', 'EdgeCloudDETRMixin',
           'EdgeCloudDETR', 'EdgeCloudConditionalDETR', 'EdgeCloudDABDETR',
           'EdgeCloudDeformableDETR', 'EdgeCloudDINO', 'DETR_SPLIT_TYPES', 'NOT_SPLIT',
           'EdgeTiers', 'PayloadCodec']
