"""Payload framing (:mod:`.bitstream`) and lossless range coding (:mod:`.range_coding`).

Detection-agnostic: nothing here knows about detectors or torch.
"""
from .bitstream import (FORMAT_VERSION, MAGIC, BitstreamError, CodecId, CodecMismatchError,
                        CorruptedBitstreamError, ImageMeta, Payload, TruncatedBitstreamError,
                        UnsupportedVersionError, framing_overhead, pack, unpack)
from .range_coding import (decode_with_cdf_tables, decode_with_histogram,
                           encode_with_cdf_tables, encode_with_histogram)

__all__ = [
    'FORMAT_VERSION', 'MAGIC', 'BitstreamError', 'CodecId', 'CodecMismatchError',
    'CorruptedBitstreamError', 'ImageMeta', 'Payload', 'TruncatedBitstreamError',
    'UnsupportedVersionError', 'framing_overhead', 'pack', 'unpack', 'encode_with_cdf_tables',
    'decode_with_cdf_tables', 'encode_with_histogram', 'decode_with_histogram'
]
