"""Evaluation metrics of ecc_mmdet (registered into ``mmdet.registry.METRICS``)."""
from .communication_metric import CommunicationMetric, MissingCommRecordError, bandwidth_key

__all__ = ['CommunicationMetric', 'MissingCommRecordError', 'bandwidth_key']
