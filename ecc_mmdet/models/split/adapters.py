"""How each backbone family is cut: one small adapter per family, no copies of their ``forward``.

A backbone is seen as ``stem -> stage 0 -> stage 1 -> ...``; cutting after ``k`` stages sends
F_k, the output of stage ``k - 1`` (the stem's output for ``k = 0``), and the cloud returns the
backbone's usual outputs at ``out_indices``. An adapter says, for its family:

* which modules are the stem and the stages, and how ``out_indices`` name stage outputs
  (:meth:`BackboneAdapter.out_stage`: CSP backbones count the stem as layer 0);
* how to run the stem and one stage, and how an output leaves the backbone (Swin normalises its
  token sequence and reshapes it into a map);
* the stride of each downsampling step, so the cloud can check a payload's latent against the
  image it claims by shape arithmetic alone (:meth:`BackboneAdapter.edge_strides`).

Adding a family: subclass :class:`BackboneAdapter` (or :class:`LayerListAdapter` when the
backbone runs ``getattr(self, name)`` over a ``layers`` list), give ``families`` and ``forwards``,
and decorate it with :func:`register_adapter`. The equivalence test in
``tests/test_models/test_backbone_adapters.py`` then checks that its halves reproduce the
unsplit ``forward`` exactly and that ``edge_strides`` predicts the feature size at odd sizes.
"""
from abc import ABC, abstractmethod
from typing import List, Optional, Sequence, Tuple, Type

from mmdet.models.backbones import (CSPDarknet, CSPNeXt, MobileNetV2, RegNet, ResNet,
                                    SwinTransformer)
from torch import Tensor, nn

__all__ = ['BackboneAdapter', 'ADAPTERS', 'register_adapter', 'adapter_for',
           'supported_backbones']

ADAPTERS: List[Type['BackboneAdapter']] = []


def register_adapter(cls):
    ADAPTERS.append(cls)
    return cls


def supported_backbones() -> Tuple[str, ...]:
    return tuple(name for a in ADAPTERS for name in a.families)


def adapter_for(backbone: nn.Module) -> Optional['BackboneAdapter']:
    for cls in ADAPTERS:
        if cls.matches(backbone):
            return cls(backbone)
    return None


class BackboneAdapter(ABC):
    """Stem + sequential stages. Subclasses give the modules; the cut itself lives in
    :class:`~ecc_mmdet.models.split.BackboneSplitter`.

    The subclass sets ``stem_names`` and ``stage_names`` in ``__init__``: submodule paths in the
    backbone, resolved on every use, so a module replaced after construction (e.g. SyncBN
    reverted to BN by the Runner) is the one cut, frozen and fingerprinted.
    """
    families: Tuple[str, ...] = ()

    def __init__(self, backbone: nn.Module):
        self.backbone = backbone
        self.stem_names: List[str] = []
        self.stage_names: List[str] = []

    @property
    def stem_modules(self) -> List[nn.Module]:
        return [self.backbone.get_submodule(n) for n in self.stem_names]

    @property
    def stage_modules(self) -> List[nn.Module]:
        return [self.backbone.get_submodule(n) for n in self.stage_names]

    #: the ``forward`` functions of the family (a user subclass that keeps one still matches)
    forwards: Tuple[object, ...] = ()

    @classmethod
    def matches(cls, backbone: nn.Module) -> bool:
        """Whether ``backbone`` belongs to this family (by its ``forward``)."""
        return type(backbone).forward in cls.forwards

    @property
    def num_stages(self) -> int:
        return len(self.stage_names)

    def out_stage(self, index: int) -> int:
        """The stage whose output ``out_indices`` entry ``index`` names (-1 = the stem)."""
        return index

    def stem(self, x: Tensor) -> Tensor:
        for m in self.stem_modules:
            x = m(x)
        return x

    def _stage(self, i: int) -> nn.Module:
        return self.backbone.get_submodule(self.stage_names[i])

    def stage(self, i: int, x: Tensor) -> Tensor:
        return self._stage(i)(x)

    def output(self, i: int, x: Tensor) -> Tensor:
        """Stage ``i``'s running state as the tensor the backbone returns for it."""
        return x

    def forward_edge(self, x: Tensor, k: int) -> Tensor:
        x = self.stem(x)
        for i in range(k):
            x = self.stage(i, x)
        return x

    def forward_cloud(self, f: Tensor, k: int, out_stages: Sequence[int]) -> Tuple[Tensor, ...]:
        outs = [self.output(k - 1, f)] if k - 1 in out_stages else []
        x = f
        for i in range(k, self.num_stages):
            x = self.stage(i, x)
            if i in out_stages:
                outs.append(self.output(i, x))
        return tuple(outs)

    def edge_modules(self, k: int) -> List[nn.Module]:
        return list(self.stem_modules) + list(self.stage_modules[:k])

    def cloud_modules(self, k: int) -> List[nn.Module]:
        return list(self.stage_modules[k:])

    @abstractmethod
    def stem_strides(self) -> List[int]:
        """Strides of the stem's downsampling steps."""

    @abstractmethod
    def stage_strides(self) -> List[int]:
        """Stride of each stage (1 for a stage that keeps the resolution)."""

    def edge_strides(self, k: int) -> List[int]:
        """Strides of the downsampling steps on the edge; each maps a side n to ceil(n / s)."""
        return self.stem_strides() + self.stage_strides()[:k]

    def frozen_modules(self, n: int) -> List[nn.Module]:
        """What ``frozen_stages=n`` freezes: the stem and the first ``n`` stages (the
        convention of every family here)."""
        return [] if n < 0 else list(self.stem_modules) + list(self.stage_modules[:n])

    def input_channels(self) -> int:
        """Channels of the images the backbone takes (its first convolution's input)."""
        return next(m for m in self.backbone.modules() if isinstance(m, nn.Conv2d)).in_channels

    def check(self) -> Optional[str]:
        """A reason this backbone's configuration cannot be cut, or None."""
        return None


@register_adapter
class ResNetAdapter(BackboneAdapter):
    """ResNet, ResNetV1d, ResNeXt, Res2Net (ResNet.forward: stem, max-pool, res_layers) and
    RegNet (RegNet.forward: stem without max-pool)."""
    families = ('ResNet', 'ResNetV1d', 'ResNeXt', 'Res2Net', 'RegNet')
    forwards = (ResNet.forward, RegNet.forward)

    def __init__(self, backbone):
        super().__init__(backbone)
        bb = backbone
        self.has_maxpool = type(bb).forward is ResNet.forward
        self.deep_stem = getattr(bb, 'deep_stem', False)
        # the parameterised stem modules (relu and max-pool hold no state)
        self.stem_names = ['stem'] if self.deep_stem else ['conv1', bb.norm1_name]
        self.stage_names = list(bb.res_layers)

    def stem(self, x):
        bb = self.backbone
        x = bb.stem(x) if self.deep_stem else bb.relu(bb.norm1(bb.conv1(x)))
        return bb.maxpool(x) if self.has_maxpool else x

    def stem_strides(self):
        return [2] + [2] * self.has_maxpool  # 7x7/2 conv (or deep stem), 3x3/2 max-pool

    def stage_strides(self):
        return list(self.backbone.strides)


class LayerListAdapter(BackboneAdapter):
    """Backbones whose forward runs ``getattr(self, name)`` over ``self.layers``."""

    def _set_layers(self, stem: Sequence[str], names: Sequence[str]):
        self.stem_names, self.stage_names = list(stem), list(names)


@register_adapter
class CSPAdapter(LayerListAdapter):
    """CSPDarknet (YOLOX, YOLOv5) and CSPNeXt (RTMDet): ``layers = [stem, stage1, ...]`` and
    ``out_indices`` count the stem as layer 0, so out index i is stage i - 1's output."""
    families = ('CSPDarknet', 'CSPNeXt')
    forwards = (CSPDarknet.forward, CSPNeXt.forward)

    def __init__(self, backbone):
        super().__init__(backbone)
        names = list(backbone.layers)
        self._set_layers(names[:1], names[1:])

    def out_stage(self, index):
        return index - 1

    def input_channels(self):
        stem = self.stem_modules[0]  # a Focus stem convolves the 4 stacked pixel phases
        return stem.conv.conv.in_channels // 4 if type(stem).__name__ == 'Focus' \
            else super().input_channels()

    def stem_strides(self):
        return [2]  # Focus (space-to-depth) or a 3x3/2 conv

    def stage_strides(self):
        return [2] * self.num_stages  # every stage opens with a 3x3/2 conv


@register_adapter
class MobileNetV2Adapter(LayerListAdapter):
    """MobileNetV2: ``conv1`` is the stem, ``layers = [layer1..layer7, conv2]`` the stages."""
    families = ('MobileNetV2', )
    forwards = (MobileNetV2.forward, )

    def __init__(self, backbone):
        super().__init__(backbone)
        self._set_layers(['conv1'], backbone.layers)

    def stem_strides(self):
        return [2]

    def stage_strides(self):
        return [s for *_, s in self.backbone.arch_settings] + [1]  # + conv2 (1x1)


def _tokens_to_map(x: Tensor, hw: Tuple[int, int]) -> Tensor:
    return x.view(x.shape[0], hw[0], hw[1], x.shape[-1]).permute(0, 3, 1, 2).contiguous()


def _map_to_tokens(f: Tensor) -> Tuple[Tensor, Tuple[int, int]]:
    return f.flatten(2).transpose(1, 2).contiguous(), (f.shape[-2], f.shape[-1])


@register_adapter
class SwinAdapter(BackboneAdapter):
    """Swin Transformer: patch embedding + stages of window-attention blocks, each stage ending
    in a patch-merging downsample. The cut after ``k`` stages falls *before* stage ``k - 1``'s
    downsample, so F_k is that stage's output at its own resolution (as with a ResNet) and the
    cloud can still return it (normalised) when ``k - 1`` is in ``out_indices``. The token
    sequence travels as a ``(N, C, H, W)`` map: ``hw_shape`` is the map's size."""
    families = ('SwinTransformer', )
    forwards = (SwinTransformer.forward, )

    def __init__(self, backbone):
        super().__init__(backbone)
        self.stem_names = ['patch_embed', 'drop_after_pos']
        self.stage_names = [f'stages.{i}' for i in range(len(backbone.stages))]

    def check(self):
        if self.backbone.use_abs_pos_embed:
            return ('SwinTransformer with use_abs_pos_embed=True cannot be split (the position '
                    'embedding is a bare parameter of the backbone, outside any edge module); '
                    'use use_abs_pos_embed=False, as the mmdet Swin configs do')
        return None

    def _run_blocks(self, i: int, x: Tensor, hw) -> Tensor:
        for block in self._stage(i).blocks:
            x = block(x, hw)
        return x

    def _downsample(self, i: int, x: Tensor, hw):
        down = self._stage(i).downsample
        return down(x, hw) if down else (x, hw)

    def forward_edge(self, x, k):
        x, hw = self.backbone.patch_embed(x)
        x = self.backbone.drop_after_pos(x)
        for i in range(k):
            x = self._run_blocks(i, x, hw)
            if i < k - 1:
                x, hw = self._downsample(i, x, hw)
        return _tokens_to_map(x, hw)

    def _output(self, i: int, x: Tensor, hw) -> Tensor:
        return _tokens_to_map(getattr(self.backbone, f'norm{i}')(x), hw)

    def forward_cloud(self, f, k, out_stages):
        x, hw = _map_to_tokens(f)
        outs = []
        if k > 0:
            if k - 1 in out_stages:
                outs.append(self._output(k - 1, x, hw))
            x, hw = self._downsample(k - 1, x, hw)
        for i in range(k, self.num_stages):
            x = self._run_blocks(i, x, hw)
            if i in out_stages:
                outs.append(self._output(i, x, hw))
            x, hw = self._downsample(i, x, hw)
        return tuple(outs)

    def _norms(self, stages) -> List[nn.Module]:
        return [getattr(self.backbone, f'norm{i}') for i in stages
                if hasattr(self.backbone, f'norm{i}')]

    def edge_modules(self, k):
        mods = list(self.stem_modules) + list(self.stage_modules[:max(k - 1, 0)])
        return mods + ([self._stage(k - 1).blocks] if k > 0 else [])

    def cloud_modules(self, k):
        mods = []
        if k > 0:
            down = self._stage(k - 1).downsample
            mods += ([down] if down else []) + self._norms([k - 1])
        return mods + list(self.stage_modules[k:]) + self._norms(range(k, self.num_stages))

    def stem_strides(self):
        return [int(self.backbone.patch_embed.projection.stride[0])]

    def stage_strides(self):
        return [int(s.downsample.sampler.stride[0]) if s.downsample else 1
                for s in self.stage_modules]

    def edge_strides(self, k):
        # the cut is before stage k-1's downsample: only stages 0..k-2 downsample on the edge
        return self.stem_strides() + self.stage_strides()[:max(k - 1, 0)]

    def frozen_modules(self, n):
        if n < 0:  # patch_embed, stages[:n] and their norms
            return []
        return list(self.stem_modules) + list(self.stage_modules[:n]) + self._norms(range(n))
