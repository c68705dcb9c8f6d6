"""Runner components: the distillation schedule, the accounting of cloud-only baselines and the
router's calibration, and the online-adaptation loop.

Importing it registers ``KnowledgeAdaptationHook``, ``CloudOnlyAccountingHook`` and
``RouterCalibrationHook`` into ``mmdet.registry.HOOKS`` and ``OnlineAdaptationLoop`` into
``mmdet.registry.LOOPS``.
"""
from .hooks import CloudOnlyAccountingHook, KnowledgeAdaptationHook, RouterCalibrationHook
from .runner import OnlineAdaptationLoop

__all__ = ['CloudOnlyAccountingHook', 'KnowledgeAdaptationHook', 'OnlineAdaptationLoop',
           'RouterCalibrationHook']
