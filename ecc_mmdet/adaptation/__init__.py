"""Online adaptation of the edge model under distribution shift (CEMA for detection): which
images to upload (:mod:`.selection`), who learns what from them (:mod:`.learners`) and the
cloud's per-edge state between requests (:mod:`.cloud_state`). The loop that orders predicting,
scoring and adapting is ``ecc_mmdet.engine.runner.OnlineAdaptationLoop``.
"""
from .cloud_state import AdaptationHub, EdgeAdaptation, UpdateAheadError
from .learners import CloudAdapter, NormStats, ReplayBuffer, Tent
from .selection import EntropySelector, RandomUpload, UploadAll, UploadNone, UploadSelector

__all__ = ['AdaptationHub', 'CloudAdapter', 'EdgeAdaptation', 'EntropySelector', 'NormStats',
           'RandomUpload', 'ReplayBuffer', 'Tent', 'UpdateAheadError', 'UploadAll', 'UploadNone',
           'UploadSelector']
