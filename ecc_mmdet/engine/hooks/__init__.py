"""Training hooks of ecc_mmdet (registered into ``mmdet.registry.HOOKS``)."""
from .knowledge_adaptation_hook import KnowledgeAdaptationHook

__all__ = ['KnowledgeAdaptationHook']
