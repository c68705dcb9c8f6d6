"""Runner components: the distillation schedule and the accounting of cloud-only baselines.

Importing it registers ``KnowledgeAdaptationHook`` and ``CloudOnlyAccountingHook`` into
``mmdet.registry.HOOKS``.
"""
from .hooks import CloudOnlyAccountingHook, KnowledgeAdaptationHook

__all__ = ['CloudOnlyAccountingHook', 'KnowledgeAdaptationHook']
