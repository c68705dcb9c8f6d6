"""Run a ResNet-family backbone in two halves: edge (stem + stages[:k]) and cloud (stages[k:]).

This is the only place that knows how a backbone is cut. Both split detectors use it, so the
two-stage and single-stage paths cut identically. The halves reproduce ``backbone.forward``
exactly (tested against the unsplit backbone), so a lossless codec changes no detection.
"""
from typing import List, Tuple

import torch
from mmdet.models.backbones import RegNet, ResNet
from torch import Tensor, nn

from ...utils.config_checks import ConfigError

# Backbones whose forward is ResNet.forward (stem, max-pool, res_layers) or RegNet.forward
# (stem without max-pool, res_layers). Subclasses that keep one of these forwards also work.
SUPPORTED_BACKBONES = ('ResNet', 'ResNetV1d', 'ResNeXt', 'Res2Net', 'RegNet')


class BackboneSplitter(nn.Module):
    """Split view of an mmdet ResNet-family backbone (it does not own a copy of the weights).

    Args:
        backbone: the detector's backbone module (weights stay under ``detector.backbone``, so
            checkpoints of the unsplit detector load unchanged).
        split_after: number of residual stages run on the edge; 0 = stem only.
    """

    def __init__(self, backbone: nn.Module, split_after: int):
        super().__init__()
        forward = type(backbone).forward
        if forward is ResNet.forward:
            self.has_maxpool = True
        elif forward is RegNet.forward:
            self.has_maxpool = False
        else:
            raise ConfigError(
                f'Cannot split backbone {type(backbone).__name__}: the edge/cloud split supports '
                f'the ResNet family ({", ".join(SUPPORTED_BACKBONES)}) and subclasses that keep '
                'their forward().')
        num_stages = len(backbone.res_layers)
        if not isinstance(split_after, int) or not 0 <= split_after <= num_stages:
            raise ConfigError(f'split_after must be an int in [0, {num_stages}] for this '
                              f'backbone ({num_stages} stages), got {split_after!r}')
        out_indices = tuple(backbone.out_indices)
        early = [i for i in out_indices if i < split_after - 1]
        if early:
            raise ConfigError(
                f'backbone.out_indices={out_indices} asks for stage output(s) {early}, which are '
                f'computed on the edge before the split (split_after={split_after}) and never '
                f'reach the cloud. Use split_after <= {min(out_indices) + 1}, or drop those '
                'indices from out_indices (and from neck.in_channels).')
        # a plain attribute list, not submodules: avoid registering the backbone twice
        self.__dict__['_backbone'] = backbone
        self.split_after = split_after
        self.out_indices = out_indices

    @property
    def backbone(self) -> nn.Module:
        return self.__dict__['_backbone']

    def stem(self, x: Tensor) -> Tensor:
        bb = self.backbone
        if getattr(bb, 'deep_stem', False):
            x = bb.stem(x)
        else:
            x = bb.relu(bb.norm1(bb.conv1(x)))
        return bb.maxpool(x) if self.has_maxpool else x

    def stages(self, lo: int, hi: int) -> List[nn.Module]:
        return [getattr(self.backbone, n) for n in self.backbone.res_layers[lo:hi]]

    def edge_modules(self) -> List[nn.Module]:
        """Modules that run on the edge (for parameter counts and freezing)."""
        bb = self.backbone
        stem = [bb.stem] if getattr(bb, 'deep_stem', False) else [bb.conv1, bb.norm1]
        return stem + self.stages(0, self.split_after)

    def forward_edge(self, x: Tensor) -> Tensor:
        """Image batch -> the feature map that is compressed and sent (F_k)."""
        x = self.stem(x)
        for layer in self.stages(0, self.split_after):
            x = layer(x)
        return x

    def forward_cloud(self, f: Tensor) -> Tuple[Tensor, ...]:
        """Decoded F_k -> the backbone's usual tuple of outputs at ``out_indices``."""
        outs = [f] if self.split_after - 1 in self.out_indices else []
        x = f
        for i, layer in enumerate(self.stages(self.split_after, len(self.backbone.res_layers)),
                                  start=self.split_after):
            x = layer(x)
            if i in self.out_indices:
                outs.append(x)
        return tuple(outs)

    def feature_size(self, h: int, w: int) -> Tuple[int, int]:
        """(H, W) of F_k for an (h, w) network input, by shape arithmetic only (the cloud build,
        which lacks the edge modules, checks payloads against it): each stride-s step of the
        stem and the edge stages maps a side n to ceil(n / s) (ResNet's padding: 7x7/3 convs,
        3x3 max-pool)."""
        for s in self.edge_strides():
            h, w = -(-h // s), -(-w // s)
        return h, w

    def edge_strides(self) -> List[int]:
        """The strides of the stem's and the edge stages' downsampling steps, in order."""
        return ([2] + [2] * self.has_maxpool +
                list(getattr(self.backbone, 'strides', ()))[:self.split_after])

    @torch.no_grad()
    def split_channels(self) -> int:
        """Channels of F_k, found by running the edge half on a tiny input."""
        was_training = self.backbone.training
        self.backbone.eval()
        try:
            conv = next(m for m in self.backbone.modules() if isinstance(m, nn.Conv2d))
            x = conv.weight.new_zeros(1, conv.in_channels, 64, 64)
            return self.forward_edge(x).shape[1]
        finally:
            self.backbone.train(was_training)
