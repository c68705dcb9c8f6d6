"""Hooks of ecc_mmdet (registered into ``mmdet.registry.HOOKS``)."""
from .cloud_only_accounting_hook import CloudOnlyAccountingHook
from .ema_coding_tables_hook import EMACodingTablesHook
from .knowledge_adaptation_hook import KnowledgeAdaptationHook
from .router_calibration_hook import RouterCalibrationHook

__all__ = ['CloudOnlyAccountingHook', 'EMACodingTablesHook', 'KnowledgeAdaptationHook',
           'RouterCalibrationHook']
