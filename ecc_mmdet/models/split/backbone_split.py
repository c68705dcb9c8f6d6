"""Run a backbone in two halves: edge (stem + stages[:k]) and cloud (stages[k:]).

This is the only place that decides where a backbone is cut; how each backbone family runs its
stem and stages lives in a small adapter (:mod:`.adapters`). Every split detector uses it, so
two-stage, single-stage and DETR-style detectors cut identically. The halves reproduce
``backbone.forward`` exactly (tested against the unsplit backbone for every family), so a
lossless codec changes no detection.
"""
from typing import List, Tuple

import torch
from torch import Tensor, nn

from ...errors import ConfigError
from .adapters import adapter_for, supported_backbones

# Families with an adapter; subclasses that keep their family's forward() work too.
SUPPORTED_BACKBONES = supported_backbones()


class BackboneSplitter(nn.Module):
    """Split view of an mmdet backbone (it does not own a copy of the weights).

    Args:
        backbone: the detector's backbone module (weights stay under ``detector.backbone``, so
            checkpoints of the unsplit detector load unchanged).
        split_after: number of stages run on the edge; 0 = stem only (for Swin: the patch
            embedding only).
    """

    def __init__(self, backbone: nn.Module, split_after: int):
        super().__init__()
        adapter = adapter_for(backbone)
        if adapter is None:
            raise ConfigError(
                f'Cannot split backbone {type(backbone).__name__}: the edge/cloud split supports '
                f'{", ".join(SUPPORTED_BACKBONES)} (and subclasses that keep their forward()). '
                'To add a backbone family, write a BackboneAdapter in '
                'ecc_mmdet/models/split/adapters.py (stem, stages, strides) and decorate it with '
                '@register_adapter.')
        problem = adapter.check()
        if problem:
            raise ConfigError(problem)
        num_stages = adapter.num_stages
        if isinstance(split_after, bool) or not isinstance(split_after, int) or \
                not 0 <= split_after <= num_stages:
            raise ConfigError(f'split_after must be an int in [0, {num_stages}] for this '
                              f'{type(backbone).__name__} ({num_stages} stages), got '
                              f'{split_after!r}')
        out_indices = tuple(backbone.out_indices)
        out_stages = [adapter.out_stage(i) for i in out_indices]
        early = [i for i, s in zip(out_indices, out_stages) if s < split_after - 1]
        if early:
            last_ok = min(out_stages) + 1
            raise ConfigError(
                f'backbone.out_indices={out_indices} asks for output(s) {early}, computed on the '
                f'edge before the split (split_after={split_after}) and never sent to the cloud, '
                f'so the neck could not use them. Use split_after <= {max(last_ok, 0)}, or drop '
                'those indices from backbone.out_indices (and the neck\'s in_channels).')
        def freezes_cloud(n):
            cloud = {id(m) for c in adapter.cloud_modules(split_after) for m in c.modules()}
            return any(id(m) in cloud for f in adapter.frozen_modules(n) for m in f.modules())

        frozen_stages = getattr(backbone, 'frozen_stages', -1)
        self.frozen_stages_problem = None
        if freezes_cloud(frozen_stages):
            # refused when training starts (the detector's train()), not here: evaluating a
            # split of a config with frozen stages (e.g. QuantizeNeck on mmdet's R50) is fine
            ok = max(n for n in range(-1, num_stages + 1) if not freezes_cloud(n))
            self.frozen_stages_problem = (
                f'backbone.frozen_stages={frozen_stages} freezes stage(s) that run on the cloud '
                f'(split_after={split_after}): they follow the codec and must adapt to decoded '
                f'features. Use frozen_stages <= {ok} with this split, or split later.')
        # plain attributes, not submodules: avoid registering the backbone twice
        self.__dict__['_backbone'] = backbone
        self.__dict__['adapter'] = adapter
        self.split_after = split_after
        self.out_indices = out_indices
        self.out_stages = tuple(out_stages)
        # fixed by the architecture; kept so the cloud-only build (no edge modules) has them
        self.strides = tuple(adapter.edge_strides(split_after))

    @property
    def backbone(self) -> nn.Module:
        return self.__dict__['_backbone']

    def edge_modules(self) -> List[nn.Module]:
        """Modules that run on the edge (for parameter counts, freezing and the fingerprint)."""
        return self.adapter.edge_modules(self.split_after)

    def cloud_modules(self) -> List[nn.Module]:
        """Backbone modules that run on the cloud (the cloud-only build keeps just these)."""
        return self.adapter.cloud_modules(self.split_after)

    def forward_edge(self, x: Tensor) -> Tensor:
        """Image batch -> the feature map that is compressed and sent (F_k), (N, C, H, W)."""
        return self.adapter.forward_edge(x, self.split_after)

    def forward_cloud(self, f: Tensor) -> Tuple[Tensor, ...]:
        """Decoded F_k -> the backbone's usual tuple of outputs at ``out_indices``."""
        return self.adapter.forward_cloud(f, self.split_after, self.out_stages)

    def feature_size(self, h: int, w: int) -> Tuple[int, int]:
        """(H, W) of F_k for an (h, w) network input, by shape arithmetic only (the cloud build,
        which lacks the edge modules, checks payloads against it): each stride-s step of the
        stem and the edge stages maps a side n to ceil(n / s) (the padding every supported
        family uses)."""
        for s in self.edge_strides():
            h, w = -(-h // s), -(-w // s)
        return h, w

    def edge_strides(self) -> List[int]:
        """The strides of the stem's and the edge stages' downsampling steps, in order."""
        return list(self.strides)

    @torch.no_grad()
    def split_channels(self) -> int:
        """Channels of F_k, found by running the edge half on a tiny input."""
        was_training = self.backbone.training
        self.backbone.eval()
        try:
            p = next(self.backbone.parameters())
            x = p.new_zeros(1, self.adapter.input_channels(), 64, 64)
            return self.forward_edge(x).shape[1]
        finally:
            self.backbone.train(was_training)
