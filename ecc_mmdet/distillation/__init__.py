"""Teacher-student distillation for detectors: the frozen teacher and the losses.

``KnowledgeAdaptationHook`` (``ecc_mmdet.engine``) runs the two-stage schedule; the pieces it
uses live here so that other training loops (e.g. online adaptation with the teacher's pseudo
labels) build the same teacher and losses from config. Importing it registers
``DetectionDistiller``, ``FeatureKDLoss`` and ``ResponseKDLoss`` into ``mmdet.registry.MODELS``.
"""
from .distiller import DetectionDistiller
from .losses import FeatureKDLoss, ResponseKDLoss, sigmoid_kd, softmax_kd
from .teacher import build_teacher, resolve_path

__all__ = ['DetectionDistiller', 'FeatureKDLoss', 'ResponseKDLoss', 'build_teacher',
           'resolve_path', 'sigmoid_kd', 'softmax_kd']
