"""Online adaptation of the edge model under distribution shift (CEMA for detection): which
images to upload (:mod:`.selection`) and who learns what from them (:mod:`.learners`). The loop
that orders predicting, scoring and adapting is ``ecc_mmdet.engine.runner.OnlineAdaptationLoop``.
"""
from .learners import CloudAdapter, NormStats, ReplayBuffer, Tent
from .selection import EntropySelector, RandomUpload, UploadAll, UploadNone, UploadSelector

__all__ = ['CloudAdapter', 'EntropySelector', 'NormStats', 'RandomUpload', 'ReplayBuffer',
           'Tent', 'UploadAll', 'UploadNone', 'UploadSelector']
