"""Training-time components: hooks that drive the edge/cloud training schedules.

Importing it registers ``KnowledgeAdaptationHook`` into ``mmdet.registry.HOOKS``.
"""
from .hooks import KnowledgeAdaptationHook

__all__ = ['KnowledgeAdaptationHook']
