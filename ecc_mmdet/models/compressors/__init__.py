"""Feature-compression necks at the edge/cloud split point.

Importing this package registers (into ``mmdet.registry.MODELS``, flat names):
``EntropyBottleneckNeck``, ``VariableRateBottleneckNeck``, ``HyperpriorBottleneckNeck``,
``VariableRateHyperpriorNeck``, ``ChannelContextHyperpriorNeck``,
``VariableRateChannelContextNeck``, ``QuantizeNeck``, ``Float16Neck``,
``Float32Neck``. ``GDN`` is the nonlinearity of ``gdn=True``.
"""
from .base import BaseFeatureCompressor
from .channel_context import ChannelContextHyperpriorNeck
from .entropy_bottleneck import EntropyBottleneckNeck
from .gdn import GDN
from .hyperprior import HyperpriorBottleneckNeck
from .passthrough import Float16Neck, Float32Neck
from .quantize import QuantizeNeck
from .variable_rate import (VariableRateBottleneckNeck, VariableRateChannelContextNeck,
                            VariableRateHyperpriorNeck)

__all__ = [
    'BaseFeatureCompressor', 'EntropyBottleneckNeck', 'QuantizeNeck', 'Float16Neck',
    'Float32Neck', 'VariableRateBottleneckNeck', 'HyperpriorBottleneckNeck',
    'VariableRateHyperpriorNeck', 'ChannelContextHyperpriorNeck', 'VariableRateChannelContextNeck',
    'GDN'
]
