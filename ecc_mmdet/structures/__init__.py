"""Per-image records that travel on a ``DetDataSample`` from producers to evaluators, and
the ground-truth object mask that training losses weight by."""
from .box_masks import object_mask
from .comm_record import COMM_KEY, CommRecord, attach, read

__all__ = ['COMM_KEY', 'CommRecord', 'attach', 'read', 'object_mask']
