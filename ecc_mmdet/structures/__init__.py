"""Per-image records that travel on a ``DetDataSample`` from producers to evaluators."""
from .comm_record import COMM_KEY, CommRecord, attach, read

__all__ = ['COMM_KEY', 'CommRecord', 'attach', 'read']
