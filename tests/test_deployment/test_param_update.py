"""PARAM_UPDATE downlink: the edge gets exactly the cloud copy's normalisation parameters, nothing
else changes, and a bad update (other model, replay, corrupted or forged) changes nothing."""
import copy
import struct
import zlib

import numpy as np
import pytest
import torch
from mmdet.registry import MODELS

import ecc_mmdet  # noqa: F401
from ecc_edge.codecs.bitstream import BitstreamError, ModelMismatchError
from ecc_edge.codecs.param_update import pack_params, unpack_params
from ecc_mmdet.deployment.fingerprint import compute_fingerprint
from ecc_mmdet.deployment.param_update import (StaleUpdateError, apply_param_update,
                                               edge_norm_parameters, make_param_update)

from conftest import TINY_FRCNN, split_cfg, tiny_model_cfg


@pytest.fixture()
def edge_and_cloud():
    torch.manual_seed(0)
    edge = MODELS.build(split_cfg(tiny_model_cfg(TINY_FRCNN, width=8), 1,
                                  dict(type='QuantizeNeck', n_bits=8), measure_flops=False))
    edge.eval()
    cloud = copy.deepcopy(edge)  # the cloud's copy of the edge model, adapted below
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for t in cloud.parameters():  # adaptation moved everything in the copy...
            t.add_(0.01 * torch.randn(t.shape, generator=g))
        for name, t in edge_norm_parameters(cloud).items():
            t.add_(0.5 * torch.rand(t.shape, generator=g))
    return edge, cloud


def _state(m):
    return {k: v.clone() for k, v in m.state_dict().items()}


def test_round_trip_gives_the_edge_exactly_the_cloud_norm_parameters(edge_and_cloud):
    edge, cloud = edge_and_cloud
    norms = edge_norm_parameters(edge)
    assert norms and all('bn' in k or 'norm' in k for k in norms)
    assert all(k.startswith('backbone.') for k in norms)  # the edge's stages, nothing cloud
    before = _state(edge)
    fp_before = edge.model_fingerprint()
    msg = make_param_update(cloud, 7, base_fingerprint=fp_before)
    assert apply_param_update(edge, msg) == 7
    after = _state(edge)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == set(norms)  # ... but only the normalisation tensors travel
    cloud_norms = edge_norm_parameters(cloud)
    for k in norms:
        assert torch.equal(after[k], cloud_norms[k]), k
    assert edge.model_fingerprint() == fp_before  # its identity: adapted norms leave it out
    # float16: 2 bytes less per value (names and framing stay), values within half precision
    half = make_param_update(cloud, 8, base_fingerprint=edge.model_fingerprint(), half=True)
    assert len(msg) - len(half) == 2 * sum(t.numel() for t in norms.values())
    upd = unpack_params(half)
    for k, v in upd.tensors.items():
        np.testing.assert_allclose(v, cloud_norms[k].detach().numpy(), rtol=1e-3, atol=1e-3)


def test_bad_updates_change_nothing(edge_and_cloud):
    edge, cloud = edge_and_cloud
    fp = edge.model_fingerprint()
    before = _state(edge)

    def unchanged():
        after = _state(edge)
        return all(torch.equal(before[k], after[k]) for k in before)

    with pytest.raises(ModelMismatchError):  # made for another edge model
        apply_param_update(edge, make_param_update(cloud, 1, base_fingerprint=b'\x01' * 8))
    good = make_param_update(cloud, 5, base_fingerprint=fp)
    with pytest.raises(StaleUpdateError):  # a replay of an older update
        apply_param_update(edge, good, last_seq=5)
    flipped = bytearray(good)
    flipped[len(flipped) // 2] ^= 0x04
    with pytest.raises(BitstreamError):
        apply_param_update(edge, bytes(flipped))
    with pytest.raises(BitstreamError):
        apply_param_update(edge, good[:-9])
    # forged with a valid CRC: a cloud-side tensor, a wrong shape, NaN values
    name = next(iter(edge_norm_parameters(edge)))
    shape = tuple(edge_norm_parameters(edge)[name].shape)
    for tensors in ({'roi_head.bbox_head.fc_cls.weight': np.zeros((7, 16), np.float32)},
                    {name: np.zeros((shape[0] + 1, ), np.float32)}):
        with pytest.raises(BitstreamError):
            apply_param_update(edge, pack_params(9, tensors, fingerprint=fp))
    nan_msg = bytearray(pack_params(9, {name: np.ones(shape, np.float32)}, fingerprint=fp))
    body_end = len(nan_msg) - 4
    nan_msg[body_end - 4:body_end] = struct.pack('<f', float('nan'))
    nan_msg[-4:] = struct.pack('<I', zlib.crc32(bytes(nan_msg[:-4])))
    with pytest.raises(BitstreamError, match='non-finite'):
        apply_param_update(edge, bytes(nan_msg))
    assert unchanged()
    assert edge.model_fingerprint() == fp


def test_hostile_sizes_are_refused_before_allocation():
    fp = b'\x00' * 8
    msg = bytearray(pack_params(1, {'a.weight': np.ones(4, np.float32)}, fingerprint=fp))
    # claim 2**31 values in the dims field: refused as truncated, nothing that large allocated
    i = msg.index(b'a.weight') + len(b'a.weight') + 2
    msg[i:i + 4] = struct.pack('<I', 2**31)
    msg[-4:] = struct.pack('<I', zlib.crc32(bytes(msg[:-4])))
    with pytest.raises(BitstreamError, match='more values than the message holds'):
        unpack_params(bytes(msg))
    with pytest.raises(ValueError, match='non-finite'):
        pack_params(1, {'a.weight': np.array([np.inf], np.float32)})


def test_every_shape_survives_the_wire_zero_dims_and_strided_included():
    """A 0-d tensor (a head's learned scale) stays 0-d, a transposed view keeps its values."""
    tensors = {'head.scale': np.float32(1.5), 'w.t': np.arange(6, dtype=np.float32)
               .reshape(2, 3).T, 'empty': np.zeros((0, 3), np.float32)}
    for half in (False, True):
        got = unpack_params(pack_params(3, tensors, half=half)).tensors
        for name, value in tensors.items():
            assert got[name].shape == np.shape(value) and np.array_equal(got[name], value)


def test_updates_keep_the_identity_of_full_and_side_builds(edge_and_cloud):
    edge, cloud = edge_and_cloud
    side = edge.build_edge()
    fp = edge.model_fingerprint()
    msg = make_param_update(cloud, 1, base_fingerprint=side.model_fingerprint())
    apply_param_update(side, msg)
    apply_param_update(edge, msg)
    assert side.model_fingerprint() == edge.model_fingerprint() == fp
    # a second update for the same base applies on top (the edge's identity did not move)
    assert apply_param_update(edge, make_param_update(cloud, 2, base_fingerprint=fp), 1) == 2


def test_fingerprint_leaves_out_adaptable_norms_only(edge_and_cloud):
    """Re-estimated BN statistics (the edge's own adaptation) keep the identity; any other edge
    or coding tensor changes it."""
    edge, _ = edge_and_cloud
    fp = edge.model_fingerprint()
    with torch.no_grad():
        for t in edge_norm_parameters(edge).values():
            t.mul_(1.5).add_(0.1)
        for name, buf in edge.named_buffers():
            if name.endswith('num_batches_tracked') and name.startswith('backbone.'):
                buf.add_(3)
    assert edge.model_fingerprint() == fp
    original = edge.backbone.conv1.weight.detach().clone()
    with torch.no_grad():
        edge.backbone.conv1.weight.add_(1e-3)  # the edge stem's convolution: another model
    assert edge.model_fingerprint() != fp
    # the digest is cached per weight values: a swap through .data (mmengine's EMA; no version
    # bump) is seen, and the cached value is the one computed from scratch
    edge.backbone.conv1.weight.data.copy_(original)
    assert edge.model_fingerprint() == fp == compute_fingerprint(edge)
