"""Runner components: the distillation schedule, the accounting of cloud-only baselines and the
router's calibration.

Importing it registers ``KnowledgeAdaptationHook``, ``CloudOnlyAccountingHook`` and
``RouterCalibrationHook`` into
``mmdet.registry.HOOKS``.
"""
from .hooks import CloudOnlyAccountingHook, KnowledgeAdaptationHook, RouterCalibrationHook

__all__ = ['CloudOnlyAccountingHook', 'KnowledgeAdaptationHook', 'RouterCalibrationHook']
