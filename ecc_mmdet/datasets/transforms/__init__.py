"""Data transforms of ecc_mmdet (registered into ``mmdet.registry.TRANSFORMS``).

Unlike :mod:`ecc_mmdet.datasets`, this subpackage imports mmcv / mmdet.
"""
from .corruptions import CORRUPTIONS, CorruptImage, RandomCorruption, add_corruption
from .image_codec import (IMAGE_CODECS, CompressImage, JPEGCompressImage,
                          add_image_codec_baseline, add_jpeg_baseline)

__all__ = ['CORRUPTIONS', 'CorruptImage', 'RandomCorruption', 'add_corruption', 'IMAGE_CODECS',
           'CompressImage', 'JPEGCompressImage', 'add_image_codec_baseline', 'add_jpeg_baseline']
