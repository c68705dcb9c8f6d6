"""The deterministic synthetic COCO-format detection dataset ("shapes on clutter").

:mod:`.spec` holds what a set is made of (classes, splits, limits, normalised arguments),
:mod:`.render` draws one image and its annotations from ``(seed, split, index)``, and
:mod:`.writer` writes or reuses a set on disk. The command line is
``python -m ecc_mmdet.datasets.synthetic_coco``. numpy and OpenCV only: no torch, no mmdet.
"""
from .render import render_synthetic_image
from .spec import (DEFAULT_MIN_OBJECT_SIZE, GENERATOR_VERSION, MIN_BOX_SIZE, MIN_VISIBLE_FRACTION,
                   SPLITS, STYLES, SYNTHETIC_CLASSES)
from .writer import ensure_synthetic_coco, generate_synthetic_coco

__all__ = [
    'SYNTHETIC_CLASSES', 'GENERATOR_VERSION', 'SPLITS', 'STYLES', 'MIN_VISIBLE_FRACTION',
    'MIN_BOX_SIZE', 'DEFAULT_MIN_OBJECT_SIZE', 'render_synthetic_image', 'generate_synthetic_coco',
    'ensure_synthetic_coco'
]
