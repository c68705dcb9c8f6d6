"""The bitstream codecs now live in the torch-free :mod:`ecc_edge.codecs` (an edge device
imports them without PyTorch or MMDetection); ``ecc_mmdet.codecs`` and its submodules stay
importable as the very same modules."""
import sys

from ecc_edge import codecs as _codecs
from ecc_edge.codecs import bitstream, detections, param_update, range_coding
from ecc_edge.codecs import *  # noqa: F401,F403

for _name, _module in (('bitstream', bitstream), ('detections', detections),
                       ('param_update', param_update), ('range_coding', range_coding)):
    sys.modules[f'{__name__}.{_name}'] = _module

__all__ = list(_codecs.__all__)
