from .edge_cloud_base import EdgeCloudDetectorMixin
from .edge_cloud_single_stage import EdgeCloudSingleStageDetector
from .edge_cloud_two_stage import EdgeCloudTwoStageDetector

__all__ = ['EdgeCloudDetectorMixin', 'EdgeCloudTwoStageDetector', 'EdgeCloudSingleStageDetector']
