"""Backbone adapters: for every supported family and every split point, edge + cloud halves
reproduce the unsplit ``forward`` exactly, the shape arithmetic predicts F_k's size, and the
edge/cloud module lists partition the backbone's parameters."""
import re

import pytest
import torch
from mmdet.registry import MODELS

import ecc_mmdet  # noqa: F401
from ecc_mmdet.models.split import SUPPORTED_BACKBONES, BackboneSplitter
from ecc_mmdet.utils import ConfigError

TINY_BACKBONES = {
    'ResNet': dict(type='ResNet', depth=18, base_channels=8, out_indices=(0, 1, 2, 3)),
    'ResNetV1d': dict(type='ResNetV1d', depth=18, base_channels=8, out_indices=(0, 1, 2, 3)),
    'ResNeXt': dict(type='ResNeXt', depth=50, groups=4, base_width=4, base_channels=8,
                    out_indices=(0, 1, 2, 3)),
    'RegNet': dict(type='RegNet', arch='regnetx_400mf', out_indices=(0, 1, 2, 3)),
    'Res2Net': dict(type='Res2Net', depth=50, base_channels=8, scales=2, base_width=4,
                    out_indices=(0, 1, 2, 3)),
    # layer 0 is the stem for the CSP backbones
    'CSPDarknet': dict(type='CSPDarknet', deepen_factor=0.33, widen_factor=0.125,
                       out_indices=(1, 2, 3, 4)),
    'CSPNeXt': dict(type='CSPNeXt', deepen_factor=0.167, widen_factor=0.125,
                    out_indices=(1, 2, 3, 4)),
    'MobileNetV2': dict(type='MobileNetV2', widen_factor=0.25, out_indices=tuple(range(8))),
    'SwinTransformer': dict(type='SwinTransformer', embed_dims=16, depths=(1, 1, 2, 1),
                            num_heads=(1, 2, 2, 4), window_size=4, out_indices=(0, 1, 2, 3),
                            init_cfg=None),
}
# CSPDarknet's Focus stem slices even/odd pixels: it needs even sides (its configs pad to 32)
SIZES = {'CSPDarknet': ((64, 64), (46, 38), (34, 66))}
ODD_SIZES = ((64, 64), (45, 37), (33, 70), (19, 51))


def _build(name):
    torch.manual_seed(0)
    bb = MODELS.build(TINY_BACKBONES[name])
    bb.eval()
    return bb


def test_every_supported_family_is_tested():
    assert set(SUPPORTED_BACKBONES) == set(TINY_BACKBONES)


@pytest.mark.parametrize('name', sorted(TINY_BACKBONES))
def test_halves_reproduce_backbone_at_every_split(name):
    bb = _build(name)
    all_out = tuple(bb.out_indices)
    adapter = BackboneSplitter(bb, 0).adapter
    for k in range(adapter.num_stages + 1):
        # keep the outputs the cloud can give at this split (the splitter refuses the others)
        bb.out_indices = tuple(i for i in all_out if adapter.out_stage(i) >= k - 1)
        if not bb.out_indices:
            continue
        sp = BackboneSplitter(bb, k)
        for h, w in SIZES.get(name, ODD_SIZES)[1:3]:
            x = torch.randn(1, 3, h, w)
            with torch.no_grad():
                ref = bb(x)
                f = sp.forward_edge(x)
                got = sp.forward_cloud(f)
            assert f.dim() == 4 and sp.feature_size(h, w) == tuple(f.shape[-2:]), (k, h, w)
            assert len(got) == len(ref), k
            for a, b in zip(ref, got):
                assert torch.equal(a, b), (name, k, h, w)
        assert sp.split_channels() == f.shape[1]


@pytest.mark.parametrize('name', sorted(TINY_BACKBONES))
def test_feature_size_matches_edge_half_at_odd_sizes(name):
    bb = _build(name)
    last = max(bb.out_indices)
    bb.out_indices = (last, )
    adapter = BackboneSplitter(bb, 0).adapter
    for k in range(adapter.out_stage(last) + 2):
        sp = BackboneSplitter(bb, k)
        for h, w in SIZES.get(name, ODD_SIZES):
            with torch.no_grad():
                f = sp.forward_edge(torch.randn(1, 3, h, w))
            assert sp.feature_size(h, w) == tuple(f.shape[-2:]), (name, k, h, w)


@pytest.mark.parametrize('name', sorted(TINY_BACKBONES))
def test_edge_and_cloud_modules_partition_the_backbone(name):
    """Side builds, freezing and the fingerprint rely on these lists: every parameter is on
    exactly one side."""
    bb = _build(name)
    last = max(bb.out_indices)
    bb.out_indices = (last, )
    everything = {id(p) for p in bb.parameters()}
    adapter = BackboneSplitter(bb, 0).adapter
    for k in range(adapter.out_stage(last) + 2):
        sp = BackboneSplitter(bb, k)
        edge = {id(p) for m in sp.edge_modules() for p in m.parameters()}
        cloud = {id(p) for m in sp.cloud_modules() for p in m.parameters()}
        assert not edge & cloud, k
        if name == 'SwinTransformer':  # norms of outputs not returned are unused, on no side
            unused = {id(p) for i in range(4) if i not in bb.out_indices
                      for p in getattr(bb, f'norm{i}').parameters()}
            everything_used = everything - unused
        else:
            everything_used = everything
        assert edge | cloud >= everything_used, k
        assert edge, k


def test_swin_cut_sends_the_stage_output_before_its_downsample():
    bb = _build('SwinTransformer')
    bb.out_indices = (1, 2, 3)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = bb(x)
        f = BackboneSplitter(bb, 2).forward_edge(x)
    # stage 1 runs at stride 8 with 2 * embed_dims channels; out index 1 is its normalised map
    assert f.shape == (1, 32, 8, 8) and ref[0].shape == f.shape
    assert not torch.equal(f, ref[0])  # F_k is before norm1; the cloud applies it


def test_unsupported_backbone_names_every_supported_one():
    bb = MODELS.build(dict(type='Darknet', depth=53, out_indices=(3, 4, 5)))
    with pytest.raises(ConfigError) as err:
        BackboneSplitter(bb, 1)
    msg = str(err.value)
    assert all(name in msg for name in SUPPORTED_BACKBONES) and 'register_adapter' in msg


@pytest.mark.parametrize('name,frozen,split,ok', [
    ('ResNet', 1, 1, True), ('ResNet', 2, 1, False), ('ResNet', 1, 0, False),
    ('CSPNeXt', 1, 1, True), ('CSPNeXt', 2, 1, False),
    ('MobileNetV2', 2, 2, True), ('MobileNetV2', 3, 2, False),
    # Swin's cut falls before stage k-1's downsample, which frozen_stages=k would freeze
    ('SwinTransformer', 1, 2, True), ('SwinTransformer', 2, 2, False),
])
def test_frozen_stages_on_the_cloud_are_refused(name, frozen, split, ok):
    bb = _build(name)
    bb.frozen_stages = frozen
    bb.out_indices = (max(bb.out_indices), )
    problem = BackboneSplitter(bb, split).frozen_stages_problem
    if ok:
        assert problem is None
    else:
        assert re.match(r'backbone.frozen_stages=\d+ freezes stage\(s\) that run on the cloud'
                        r'.*Use frozen_stages <= \d', problem)


def test_modules_are_looked_up_when_used():
    """The Runner reverts SyncBN to BN (a new module) after the model is built: the edge list,
    hence freezing and the fingerprint, must follow the module that actually runs."""
    bb = _build('ResNet')
    sp = BackboneSplitter(bb, 1)
    new_norm = torch.nn.BatchNorm2d(bb.norm1.num_features)
    setattr(bb, bb.norm1_name, new_norm)
    assert sp.edge_modules()[1] is new_norm
    assert any(m is new_norm for m in sp.adapter.frozen_modules(0))


@pytest.mark.parametrize('name,split,match', [
    ('CSPNeXt', 5, r'split_after must be an int in \[0, 4\]'),
    ('MobileNetV2', 9, r'split_after must be an int in \[0, 8\]'),
    ('SwinTransformer', True, r'split_after must be an int'),
])
def test_split_point_past_the_last_stage(name, split, match):
    with pytest.raises(ConfigError, match=match):
        BackboneSplitter(_build(name), split)


def test_neck_input_from_before_the_split_is_refused():
    bb = _build('CSPNeXt')
    bb.out_indices = (2, 3, 4)  # stage outputs 1, 2, 3
    BackboneSplitter(bb, 2)  # F_2 is out index 2 itself
    with pytest.raises(ConfigError, match=r'out_indices=\(2, 3, 4\).*Use split_after <= 2'):
        BackboneSplitter(bb, 3)


def test_swin_with_absolute_position_embedding_is_refused():
    cfg = dict(TINY_BACKBONES['SwinTransformer'], use_abs_pos_embed=True,
               pretrain_img_size=64)
    with pytest.raises(ConfigError, match='use_abs_pos_embed=False'):
        BackboneSplitter(MODELS.build(cfg), 1)
