"""Payload framing (:mod:`.bitstream`), encoded images in it (:mod:`.image_message`) and lossless
range coding (:mod:`.range_coding`).

Nothing here imports torch or mmdet: the framing carries the image meta a detector needs as
plain numbers. The per-image byte record that evaluators read (a ``DetDataSample`` matter) lives
in :mod:`ecc_mmdet.structures`.
"""
from .bitstream import (FINGERPRINT_BYTES, FORMAT_VERSION, MAGIC, NO_FINGERPRINT, BitstreamError,
                        CodecId, CodecMismatchError, ImageCodecId, MessageType, ModelMismatchError,
                        CorruptedBitstreamError, ImageMeta, Payload, RatePointError,
                        TruncatedBitstreamError,
                        UnsupportedVersionError, as_bytes, framing_overhead, pack, unpack)
from .image_message import MAX_IMAGE_SIDE, ImageMessage, pack_image, unpack_image
from .range_coding import (decode_with_cdf_tables, decode_with_histogram,
                           decode_with_indexed_tables, encode_with_cdf_tables,
                           encode_with_histogram, encode_with_indexed_tables)

__all__ = [
    'FINGERPRINT_BYTES', 'FORMAT_VERSION', 'MAGIC', 'NO_FINGERPRINT', 'BitstreamError', 'CodecId',
    'CodecMismatchError', 'ImageCodecId', 'MessageType', 'ModelMismatchError',
    'CorruptedBitstreamError', 'ImageMeta', 'Payload', 'RatePointError', 'TruncatedBitstreamError',
    'UnsupportedVersionError', 'as_bytes', 'framing_overhead', 'pack', 'unpack',
    'MAX_IMAGE_SIDE', 'ImageMessage', 'pack_image', 'unpack_image',
    'encode_with_cdf_tables', 'decode_with_cdf_tables', 'encode_with_histogram', 'decode_with_histogram',
    'encode_with_indexed_tables', 'decode_with_indexed_tables'
]
