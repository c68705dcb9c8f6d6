"""ChannelContextHyperpriorNeck: y coded in channel slices, each conditioned on the ones before,
with exact integer parameters and one range-coded stream (the light edge's copy:
tests/test_edge/test_light_hyperprior.py)."""
import copy
import functools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import ecc_mmdet  # noqa: F401
from ecc_edge.codecs.bitstream import CodecId, CorruptedBitstreamError
from ecc_edge.codecs.range_coding import (CodingTables, IndexedSectionDecoder,
                                          encode_indexed_sections, encode_with_indexed_tables)
from ecc_mmdet.models.compressors import ChannelContextHyperpriorNeck

from conftest import fake_batch, fit_neck, split_cfg, tiny_model_cfg, top_half_features

C = 8


def _features(seed=1, n=3, h=24, w=20):
    return top_half_features(seed, n, h, w, channels=C)


def _neck(**kw):
    cfg = dict(latent_channels=6, hyper_channels=4, hyper_downsample=2, beta=0.002,
               rate_unit='bits_per_element', num_slices=3, context_channels=8)
    cfg.update(kw)
    return ChannelContextHyperpriorNeck(C, **cfg)


@pytest.fixture(scope='module')
def neck():
    torch.manual_seed(0)
    return fit_neck(_neck(), _features(), steps=200, lr=2e-2, seed=0)


def test_round_trip_is_bit_exact_batch_single_and_odd_sizes(neck):
    assert any(t.out.weight.abs().sum() > 0 for t in neck.slice_transforms)  # it trained
    for x in (_features(seed=1), _features(seed=2, n=2, h=23, w=17)):
        items = neck.compress(x)
        with torch.no_grad():
            x_hat, _ = neck(x)  # eval forward == what the cloud decodes
        batch = torch.cat([neck.decompress(*it) for it in items])
        assert torch.equal(batch, x_hat)
        for i in range(x.shape[0]):
            (params, body, shape), = neck.compress(x[i:i + 1])
            assert (params, body, shape) == items[i]
        est = neck.estimate_bits(x) / 8
        real = torch.tensor([float(len(b)) for _, b, _ in items])
        assert torch.all((real - est).abs() < 0.1 * est + 16), (real, est)
        if x.shape[-1] == 20:  # what it was fitted to: it learned to reconstruct
            assert F.mse_loss(batch, x) < 0.5 * x.pow(2).mean()


def test_slice_parameters_are_exact_in_any_summation_order(neck):
    """A slice transform on its real inputs, permuted with its weights: the same integers; one
    image gives its row of the batch."""
    x = _features(seed=4, n=2)
    y = neck.g_a(x)
    z_hat = neck.hyper_entropy_model.dequantize_eval(neck.h_a(y))
    means, idx = neck._exact_code(y, z_hat)
    assert torch.equal(means * 256, torch.round(means * 256))  # on the 2**-8 grid
    hyper = neck._hyper_exact(z_hat, y.shape[-2:])
    context = [torch.round(y[:, :4] - means[:, :4]).double() + means[:, :4].double()]
    t = neck.slice_transforms[2]
    inputs = torch.cat([hyper[0].double(), hyper[1] / 2**16, *context], 1)
    perm = torch.randperm(inputs.shape[1], generator=torch.Generator().manual_seed(0))
    other = copy.deepcopy(t)
    with torch.no_grad():
        other.convs[0].weight.copy_(t.convs[0].weight[:, perm])
    for a, b in zip(t.exact(inputs), other.exact(inputs[:, perm])):
        assert torch.equal(a, b)
    m1, i1 = neck._exact_code(y[1:], z_hat[1:])
    assert torch.equal(m1, means[1:]) and torch.equal(i1, idx[1:])


def test_a_predictable_slice_costs_almost_nothing():
    """Slice 1 equal to slice 0: a transform that copies slice 0 into slice 1's mean (and sets a
    small scale) codes slice 1 nearly for free; the zero-initialised transforms (the plain
    hyperprior) pay for it in full."""
    neck = ChannelContextHyperpriorNeck(C, latent_channels=2, hyper_channels=2,
                                        hyper_downsample=2, num_slices=2, context_channels=2,
                                        context_layers=1).eval()
    g = torch.Generator().manual_seed(0)
    y0 = torch.round(torch.randn(1, 1, 8, 8, generator=g) * 6)
    y = torch.cat([y0, y0], 1)
    z_hat = torch.zeros(1, 2, 4, 4)

    def bits(n):
        means, idx = n._exact_code(y, z_hat)
        lik = n.gaussian.likelihood(y, means, n.gaussian.scales_of(idx))
        return -torch.log2(lik[:, 1]).sum()
    with torch.no_grad():  # h_s: zero means, log-scale 2 everywhere
        for p in neck.h_s.parameters():
            p.zero_()
        neck.h_s.out.bias[2:] = 2.0
        t = neck.slice_transforms[1]  # inputs: 2 means, 2 log-scales, slice 0
        t.convs[0].weight.zero_()
        t.convs[0].weight[0, 4, 1, 1], t.convs[0].weight[1, 4, 1, 1] = 1.0, -1.0  # relu(+-y0)
        t.convs[0].bias.zero_()
        t.out.weight.zero_()
        t.out.weight[0, 0, 1, 1], t.out.weight[0, 1, 1, 1] = 1.0, -1.0  # mean = y0
        t.out.bias.zero_()
        t.out.bias[1] = -6.0  # log-scale 2 - 6: the smallest table scale
    zeroed = copy.deepcopy(neck)
    with torch.no_grad():
        zeroed.slice_transforms[1].out.weight.zero_()
        zeroed.slice_transforms[1].out.bias.zero_()
    with_context, without = float(bits(neck)), float(bits(zeroed))
    assert with_context < 0.05 * without and without > 100, (with_context, without)
    # and the stream decodes to the same latent
    means, idx = neck._exact_code(y, z_hat)
    body = neck._encode_latent(y[0], idx[0], means[0])
    assert torch.equal(neck._decode_latent(body, z_hat, (2, 8, 8)), y)


def test_section_stream_round_trip_and_refusals():
    tables = CodingTables([[1000, 6000, 1000, 1], [3000, 3000, 3000, 1]], [-1, -1])
    g = np.random.default_rng(0)
    sections = [(g.integers(-1, 2, n).astype(np.int32), g.integers(0, 2, n)) for n in (7, 0, 13)]
    sections[2][0][3] = 400  # an escape in the last section
    body = encode_indexed_sections(sections, tables)
    dec = IndexedSectionDecoder(body, tables)
    for sym, idx in sections:
        assert np.array_equal(dec.decode(idx), sym)
    dec.finish()
    # one stream costs less than a body per section
    assert len(body) < sum(len(encode_with_indexed_tables(s, i, tables)) for s, i in sections)
    for bad in (body + b'\0\0\0\0', body[:-4]):
        dec = IndexedSectionDecoder(bad, tables)
        with pytest.raises(CorruptedBitstreamError):
            for _, idx in sections:
                dec.decode(idx)
            dec.finish()
    with pytest.raises(CorruptedBitstreamError, match='whole number of words'):
        IndexedSectionDecoder(body[:-1], tables)


def test_forged_bodies_are_refused_or_finite(neck, monkeypatch):
    x = _features(seed=5, n=1)
    (params, body, shape), = neck.compress(x)
    z_len = int.from_bytes(params[8:12], 'little')
    for cut in (body[:-4], body[:z_len], body + b'\0' * 4):
        with pytest.raises(CorruptedBitstreamError):
            neck.decompress(params, cut, shape)
    rng = np.random.default_rng(0)
    for _ in range(20):
        forged = body[:z_len] + rng.integers(0, 256, len(body) - z_len, np.uint8).tobytes()
        try:
            out = neck.decompress(params, forged, shape)
        except CorruptedBitstreamError:
            continue
        assert torch.isfinite(out).all()
    # a validly coded body of huge symbols (the unbounded coder): refused at its first slice
    from ecc_edge.codecs import range_coding as rc
    from ecc_mmdet.entropy_models import gaussian_conditional as gc
    monkeypatch.setattr(gc, 'encode_indexed_sections',
                        functools.partial(rc.encode_indexed_sections, max_abs=None))
    monkeypatch.setattr(neck, '_latent', lambda *a, _f=neck._latent: _f(*a) + 1e5)
    monkeypatch.setattr(neck.h_a, 'forward', lambda y, _f=neck.h_a.forward: _f(y - 1e5))
    (params, forged, shape), = neck.compress(x)
    monkeypatch.undo()
    with pytest.raises(CorruptedBitstreamError, match='beyond the bound'):
        neck.decompress(params, forged, shape)


def test_config_errors_and_starting_point():
    with pytest.raises(ValueError, match='num_slices must be an int in 2..16 that divides'):
        _neck(num_slices=4)
    with pytest.raises(ValueError, match='context_channels'):
        _neck(context_channels=0)
    with pytest.raises(ValueError, match='context_layers must be 1 or 2, got 3'):
        _neck(context_layers=3)
    torch.manual_seed(0)
    n = _neck()
    assert all(float(t.out.weight.abs().sum()) == 0 for t in n.slice_transforms)


def test_detector_round_trip_and_light_edge_spec():
    from mmdet.registry import MODELS

    from ecc_mmdet.deployment.edge_export import hyperprior_spec
    cc = dict(type='ChannelContextHyperpriorNeck', latent_channels=8, hyper_channels=4,
              hyper_downsample=2, num_slices=2, context_channels=4)
    torch.manual_seed(0)
    model = MODELS.build(split_cfg(tiny_model_cfg(), split_after=0, compressor=cc)).eval()
    inputs, samples = fake_batch(model, n=1, size=64)
    payloads = model.encode(inputs, samples)
    assert int(payloads[0][6]) == CodecId.CHANNEL_CONTEXT_HYPERPRIOR
    assert model.decode_and_predict(payloads, samples)[0].pred_instances is not None
    ctx = hyperprior_spec(model.compressor)['channel_context']  # what the light edge runs
    assert ctx['num_slices'] == 2 and [t['layers'][0]['in_channels']
                                       for t in ctx['transforms']] == [16, 20]


def test_variable_rate_context_codes_every_point_exactly():
    """The rate points on the context model: each point's payload decodes bit-exactly (batch ==
    single image), fewer bytes at lower points, and the header's point is what decodes."""
    from ecc_edge.codecs.bitstream import RatePointError
    from ecc_mmdet.models.compressors import VariableRateChannelContextNeck
    torch.manual_seed(0)
    neck = VariableRateChannelContextNeck(
        C, latent_channels=6, hyper_channels=4, hyper_downsample=2, beta=0.002,
        rate_unit='bits_per_element', num_slices=3, context_channels=8, num_rates=3)
    assert neck.codec_id == CodecId.VARIABLE_RATE_CHANNEL_CONTEXT
    x = _features()
    neck = fit_neck(neck, x, steps=150, lr=2e-2)
    sizes = []
    for r in range(3):
        neck.set_rate_point(r)
        items = neck.compress(x)
        with torch.no_grad():
            x_hat, _ = neck(x)
        assert torch.equal(torch.cat([neck.decompress(*it, r) for it in items]), x_hat)
        assert [neck.compress(x[i:i + 1])[0] for i in range(3)] == items
        sizes.append(sum(len(b) for _, b, _ in items))
        other = neck.decompress(*items[0], (r + 1) % 3)  # another point: other symbols' meaning
        assert not torch.equal(other, x_hat[:1])
    assert sizes[0] < sizes[1] < sizes[2], sizes
    with pytest.raises(RatePointError, match='rate point 3'):
        neck.decompress(*items[0], 3)
