"""Datasets and dataset generators of ecc_mmdet.

``synthetic_coco`` depends on numpy and OpenCV only, so importing this subpackage never pulls in
torch or mmdet.
"""
from .synthetic_coco import (GENERATOR_VERSION, SYNTHETIC_CLASSES, ensure_synthetic_coco,
                             generate_synthetic_coco, render_synthetic_image)

__all__ = [
    'SYNTHETIC_CLASSES', 'GENERATOR_VERSION', 'generate_synthetic_coco', 'ensure_synthetic_coco',
    'render_synthetic_image'
]
