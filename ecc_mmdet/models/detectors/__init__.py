from .edge_cloud_base import EdgeCloudDetectorMixin
from .edge_cloud_detr import *  # noqa: F401,F403  (EdgeCloudDINO, EdgeCloudDeformableDETR, ...)
from .edge_cloud_detr import DETR_SPLIT_TYPES, EdgeCloudDETRMixin
from .edge_cloud_single_stage import (EdgeCloudRTMDet, EdgeCloudSingleStageDetector,
                                      EdgeCloudSingleStageMixin, EdgeCloudYOLOX)
from .edge_cloud_two_stage import EdgeCloudTwoStageDetector

__all__ = ['EdgeCloudDetectorMixin', 'EdgeCloudTwoStageDetector', 'EdgeCloudSingleStageDetector',
           'EdgeCloudSingleStageMixin', 'EdgeCloudRTMDet', 'EdgeCloudYOLOX', 'EdgeCloudDETRMixin',
           'DETR_SPLIT_TYPES', *DETR_SPLIT_TYPES]
