"""ecc_mmdet: edge-cloud collaborative object detection for MMDetection 3.x.

Importing the package registers its components into MMDetection's own registries (so configs find
them by bare name under ``default_scope='mmdet'``) and lets torch >= 2.6 load mmengine checkpoints.
Configs load it with ``custom_imports = dict(imports=['ecc_mmdet'], allow_failed_imports=False)``.
It also opens the ``ecc_mmdet::`` config scope (:mod:`ecc_mmdet.registry`).
"""
from .version import __version__
from .utils import allow_mmengine_checkpoints

allow_mmengine_checkpoints()

from . import registry  # noqa: E402,F401  (the ecc_mmdet:: config scope)

from . import models  # noqa: E402,F401  (split detectors, compressors)
from . import adaptation  # noqa: E402,F401  (upload selectors, adapters: TASK_UTILS)
from .datasets.transforms import (CompressImage, JPEGCompressImage,  # noqa: E402,F401
                                  add_image_codec_baseline, add_jpeg_baseline)
from .engine import CloudOnlyAccountingHook, KnowledgeAdaptationHook  # noqa: E402,F401
from .evaluation import CommunicationMetric  # noqa: E402,F401

__all__ = ['__version__', 'CloudOnlyAccountingHook', 'CommunicationMetric', 'CompressImage',
           'JPEGCompressImage', 'KnowledgeAdaptationHook', 'add_image_codec_baseline',
           'add_jpeg_baseline']
