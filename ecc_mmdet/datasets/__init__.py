"""Datasets and dataset generators of ecc_mmdet.

The synthetic generator (:mod:`.synthetic`) depends on numpy and OpenCV only, so importing this
subpackage never pulls in torch or mmdet. Its command line, :mod:`.synthetic_coco`, is not
imported here, so ``python -m ecc_mmdet.datasets.synthetic_coco`` runs it without a runpy warning.
"""
from .synthetic import (GENERATOR_VERSION, SYNTHETIC_CLASSES, ensure_synthetic_coco,
                        generate_synthetic_coco, render_synthetic_image)

__all__ = [
    'SYNTHETIC_CLASSES', 'GENERATOR_VERSION', 'generate_synthetic_coco', 'ensure_synthetic_coco',
    'render_synthetic_image'
]
