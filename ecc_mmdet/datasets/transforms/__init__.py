"""Data transforms of ecc_mmdet (registered into ``mmdet.registry.TRANSFORMS``).

Unlike :mod:`ecc_mmdet.datasets`, this subpackage imports mmcv / mmdet.
"""
from .jpeg_baseline import JPEGCompressImage, add_jpeg_baseline

__all__ = ['JPEGCompressImage', 'add_jpeg_baseline']
