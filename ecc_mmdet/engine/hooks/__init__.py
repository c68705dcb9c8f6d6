"""Hooks of ecc_mmdet (registered into ``mmdet.registry.HOOKS``)."""
from .cloud_only_accounting_hook import CloudOnlyAccountingHook
from .knowledge_adaptation_hook import KnowledgeAdaptationHook

__all__ = ['CloudOnlyAccountingHook', 'KnowledgeAdaptationHook']
