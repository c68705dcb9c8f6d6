"""HyperpriorBottleneckNeck: mean-scale hyperprior with exact (integer) scale indexes."""
import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import ecc_mmdet  # noqa: F401
from ecc_edge.codecs.bitstream import (CodecId, CodecMismatchError, CorruptedBitstreamError,
                                       ModelMismatchError, RatePointError)
from ecc_mmdet.entropy_models import ExactHyperSynthesis, GaussianConditionalEntropyModel
from ecc_mmdet.models.compressors import HyperpriorBottleneckNeck

from conftest import fake_batch, fit_neck, split_cfg, tiny_model_cfg, top_half_features

C = 8


def _features(seed=1, n=3, h=24, w=20):
    return top_half_features(seed, n, h, w, channels=C)


def _neck(**kw):
    cfg = dict(latent_channels=6, hyper_channels=4, hyper_downsample=2, beta=0.002,
               rate_unit='bits_per_element')
    cfg.update(kw)
    return HyperpriorBottleneckNeck(C, **cfg)


@pytest.fixture(scope='module')
def neck():
    torch.manual_seed(0)
    return fit_neck(_neck(), _features(), steps=250, lr=2e-2, seed=0)


def test_round_trip_is_bit_exact_batch_and_single_image(neck):
    x = _features(seed=1)  # what it was fitted to
    items = neck.compress(x)
    with torch.no_grad():
        x_hat, _ = neck(x)  # eval forward == what the cloud decodes
    batch = torch.cat([neck.decompress(*it) for it in items])
    assert torch.equal(batch, x_hat)
    for i in range(x.shape[0]):  # one image at a time: same bytes, same decode
        (params, body, shape), = neck.compress(x[i:i + 1])
        assert (params, body, shape) == items[i]
        assert torch.equal(neck.decompress(params, body, shape)[0], batch[i])
    # the real bytes agree with the model's estimate (z and y together), within a few %
    est = neck.estimate_bits(x) / 8
    real = torch.tensor([float(len(b)) for _, b, _ in items])
    assert torch.all((real - est).abs() < 0.1 * est + 16), (real, est)
    assert F.mse_loss(batch, x) < 0.5 * x.pow(2).mean()  # it learned to reconstruct


def test_reloaded_model_decodes_the_same_symbols(neck):
    x = _features(seed=3)
    items = neck.compress(x)
    torch.manual_seed(123)
    other = _neck()  # other random weights until the checkpoint is loaded
    other.load_state_dict(copy.deepcopy(neck.state_dict()))
    other.eval()
    assert other.compress(x) == items
    for it in items:
        assert torch.equal(other.decompress(*it), neck.decompress(*it))
    # the tables and the integer network's weights are what the decoder needs: a model with
    # other hyper-synthesis weights decodes other symbols (or refuses the body)
    with torch.no_grad():
        other.h_s.out.bias.add_(1.0)
    params, body, shape = items[0]
    try:
        assert not torch.equal(other.decompress(params, body, shape), neck.decompress(*items[0]))
    except CorruptedBitstreamError:
        pass


def test_hyper_synthesis_is_exact_in_any_summation_order():
    torch.manual_seed(0)
    hs = ExactHyperSynthesis(5, 7, 3, up_steps=2)
    with torch.no_grad():
        for p in hs.parameters():
            p.normal_(0, 0.7)
    z = torch.round(torch.randn(2, 5, 3, 4) * 3) + 0.3
    means, acc = hs.exact(z)
    assert means.dtype == torch.float32 and acc.dtype == torch.float64
    assert torch.equal(acc, torch.round(acc))  # integers
    assert torch.equal(means * 256, torch.round(means * 256))  # on the 2**-8 grid
    # another summation order (input channels permuted with the weights): bit-identical
    perm = torch.tensor([3, 0, 4, 2, 1])
    hs2 = copy.deepcopy(hs)
    with torch.no_grad():
        hs2.convs[0].weight.copy_(hs.convs[0].weight[:, perm])
    m2, a2 = hs2.exact(z[:, perm])
    assert torch.equal(m2, means) and torch.equal(a2, acc)
    # per image == batch, float32 input == float64 input
    m1, a1 = hs.exact(z[1:].double())
    assert torch.equal(m1, means[1:]) and torch.equal(a1, acc[1:])
    # the float training path is the fake-quantised version of the same network
    fm, fl = hs(z)
    assert torch.allclose(fm, means, atol=2 / 256) and torch.allclose(fl.double(), acc / 2**16, atol=1e-2)
    # hostile side information is clamped: bounded, finite outputs
    m3, a3 = hs.exact(torch.full((1, 5, 2, 2), 3e9))
    assert torch.isfinite(m3).all() and m3.abs().max() <= hs.mean_max
    assert a3.abs().max() < 2**52
    # a runaway bias is clamped to the products' bound: the sums stay exact
    with torch.no_grad():
        hs.out.bias[0] = 1e30
    (_, b), = [layer for layer in hs.integer_layers()[-1:]]
    assert b[0] == 9 * 7 * hs.act_max * hs.weight_max * 2**16 and b[1:].abs().max() < 2**30
    _, a4 = hs.exact(torch.full((1, 5, 2, 2), 3e9))
    assert a4.abs().max() < 2**53
    with pytest.raises(ValueError, match=r'act_max \* 2\*\*frac_bits must be a positive'):
        ExactHyperSynthesis(5, 7, 3, act_max=255.001)


def test_gaussian_tables_and_indexes():
    gc = GaussianConditionalEntropyModel(num_scales=16, scale_min=0.2, scale_max=20.0)
    lengths, offsets = gc._pmf_length.numpy(), gc._offset.numpy()
    assert np.all(np.diff(lengths) >= 0) and np.all(offsets == -(lengths // 2))
    assert np.all(gc._pmf_table.numpy()[:, :1].sum(1) >= 1)
    # index thresholds: exact integer comparison at the midpoints of the log-scales
    logs = torch.log(gc.scale_table.double())
    acc = torch.round(logs * 2**16)
    assert torch.equal(gc.index_from_fixed_point(acc, 16), torch.arange(16))
    assert int(gc.index_from_fixed_point(torch.tensor([-1e9, 1e9]), 16).max()) == 15
    # coding real Gaussian samples costs about their entropy (and round-trips)
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, 16, (4000, ), generator=g)
    y = torch.randn(4000, generator=g) * gc.scale_table[idx] + 0.3
    means = torch.full_like(y, 0.3)
    body = gc.compress(y, idx, means)
    out = gc.decompress(body, idx, means)
    assert torch.equal(out, torch.round(y - 0.3) + 0.3)
    bits = float(gc.bits(gc.likelihood(out[None], means[None], gc.scales_of(idx)[None])))
    assert abs(len(body) * 8 - bits) < 0.03 * bits + 64


def test_bad_payloads_are_refused(neck):
    x = _features(seed=4, n=1)
    (params, body, shape), = neck.compress(x)
    z_len = int.from_bytes(params[8:12], 'little')
    with pytest.raises(RatePointError, match='single rate'):
        neck.decompress(params, body, shape, rate_point=2)
    with pytest.raises(CorruptedBitstreamError, match='12 bytes'):
        neck.decompress(params[:8], body, shape)
    bad = params[:8] + (len(body) + 1).to_bytes(4, 'little')
    with pytest.raises(CorruptedBitstreamError, match="z's body"):
        neck.decompress(bad, body, shape)
    for cut in (body[:z_len] + body[z_len:-4], body[:-1], body[:z_len]):
        with pytest.raises(CorruptedBitstreamError):
            neck.decompress(params, cut, shape)
    with pytest.raises(CorruptedBitstreamError, match='latent_shape'):
        neck.decompress(params, body, (shape[0], shape[1] + 1, shape[2]))
    # forged bodies of the right structure: refused, or decoded to finite values
    rng = np.random.default_rng(0)
    for _ in range(20):
        forged = rng.integers(0, 256, len(body), dtype=np.uint8).tobytes()
        try:
            out = neck.decompress(params, forged, shape)
        except CorruptedBitstreamError:
            continue
        assert torch.isfinite(out).all()


def test_forged_body_of_huge_latents_is_refused(neck, monkeypatch):
    """A forger who codes huge symbols with the unbounded coder makes a valid body (its CRC and
    canonical re-encoding hold); the cloud refuses it instead of decoding latents of ~1e5."""
    import functools

    from ecc_mmdet.entropy_models import gaussian_conditional as gc
    x = _features(seed=5, n=1)
    honest = neck.compress(x)
    with monkeypatch.context() as m:
        m.setattr(gc, 'encode_with_indexed_tables',
                  functools.partial(gc.encode_with_indexed_tables, max_abs=None))
        m.setattr(neck, '_latent', lambda *a, _f=neck._latent: _f(*a) + 1e5)
        # honest side information (z of the honest latent), so only y carries the forgery
        m.setattr(neck.h_a, 'forward', lambda y, _f=neck.h_a.forward: _f(y - 1e5))
        (params, body, shape), = neck.compress(x)
    assert body != honest[0][1]
    with pytest.raises(CorruptedBitstreamError, match='beyond the bound'):
        neck.decompress(params, body, shape)


def test_config_errors():
    with pytest.raises(ValueError, match='hyper_downsample must be 2 or 4'):
        _neck(hyper_downsample=3)
    with pytest.raises(ValueError, match='hyper_channels must be a positive int'):
        _neck(hyper_channels=0)
    with pytest.raises(ValueError, match='contradicts'):
        _neck(gaussian=dict(quantization='ste'))
    with pytest.raises(ValueError, match='num_scales'):
        _neck(gaussian=dict(num_scales=1))


def test_detector_refuses_another_entropy_model_kind_or_other_tables():
    """Framed by a split detector: a factorized model's payload is refused by a hyperprior
    model (codec id = entropy-model kind), and a payload made with other coding tables by the
    fingerprint."""
    from mmdet.registry import MODELS
    hp = dict(type='HyperpriorBottleneckNeck', latent_channels=8, hyper_channels=4,
              hyper_downsample=2)
    torch.manual_seed(0)
    model = MODELS.build(split_cfg(tiny_model_cfg(), split_after=0, compressor=hp)).eval()
    fact = MODELS.build(split_cfg(tiny_model_cfg(), split_after=0, compressor=dict(
        type='EntropyBottleneckNeck', latent_channels=8))).eval()
    inputs, samples = fake_batch(model, n=1, size=64)
    payloads = model.encode(inputs, samples)
    assert model.decode_and_predict(payloads, samples)[0].pred_instances is not None
    assert int(payloads[0][6]) == CodecId.HYPERPRIOR_BOTTLENECK
    with pytest.raises(CodecMismatchError):
        model.decode_and_predict(fact.encode(inputs, samples), samples)
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.compressor.gaussian._pmf_table[3, 0] += 1  # another table, same shapes
    with pytest.raises(ModelMismatchError):
        model.decode_and_predict(other.encode(inputs, samples), samples)


def test_variable_rate_hyperprior_points_round_trip_and_rate_is_monotone():
    from ecc_mmdet.models.compressors import VariableRateHyperpriorNeck
    torch.manual_seed(0)
    vr = VariableRateHyperpriorNeck(C, latent_channels=6, hyper_channels=4, hyper_downsample=2,
                                    beta=0.002, rate_unit='bits_per_element', num_rates=4)
    x = _features()
    # lr 1e-2: at 2e-2 the two lowest points may end up swapped on some CPUs (228 vs 224 bytes)
    vr = fit_neck(vr, x, steps=250, lr=1e-2, seed=0)
    sizes = []
    for r in range(4):
        vr.set_rate_point(r)
        items = vr.compress(x)
        with torch.no_grad():
            x_hat, _ = vr(x)
        decoded = torch.cat([vr.decompress(*it, rate_point=r) for it in items])
        assert torch.equal(decoded, x_hat)
        sizes.append(sum(len(b) for _, b, _ in items))
    assert sizes[0] < sizes[1] < sizes[2] < sizes[3], sizes
    params, body, shape = items[0]
    for bad in (4, None):
        with pytest.raises(RatePointError, match=f'rate point {bad}, this model has'):
            vr.decompress(params, body, shape, rate_point=bad)
    assert vr.codec_id == CodecId.VARIABLE_RATE_HYPERPRIOR


def test_bit_map_sums_to_the_estimate_and_follows_the_content(neck):
    from ecc_mmdet.models.compressors import EntropyBottleneckNeck
    x = _features(seed=1)
    m = neck.bit_map(x)
    assert m.shape == (3, 12, 10)  # latent of a 24x20 map at downsample 2
    torch.testing.assert_close(m.sum((1, 2)), neck.estimate_bits(x), rtol=1e-4, atol=1e-2)
    # the content is in the top half: the hyperprior spends most of its bits there
    assert m[:, :6].sum() > 2 * m[:, 6:].sum()
    torch.manual_seed(0)
    fact = fit_neck(EntropyBottleneckNeck(C, latent_channels=6, beta=0.002,
                                          rate_unit='bits_per_element'), x, steps=50, seed=0)
    torch.testing.assert_close(fact.bit_map(x).sum((1, 2)), fact.estimate_bits(x), rtol=1e-4,
                               atol=1e-2)


def test_integer_layers_follow_weight_changes_through_data():
    """The integer weights are derived once per weight values: a change through ``.data`` (how
    mmengine's EMA swaps weights, invisible to version counters) must reach the coding path."""
    torch.manual_seed(1)
    hs = ExactHyperSynthesis(4, 6, 3, up_steps=1)
    z = torch.round(torch.randn(1, 4, 3, 3) * 3)
    first = hs.exact(z)
    assert hs._integer_convs() is hs._integer_convs()  # cached while nothing changes
    hs.convs[0].weight.data.mul_(1.5)
    hs.out.bias.data.add_(0.25)
    fresh = ExactHyperSynthesis(4, 6, 3, up_steps=1)
    fresh.load_state_dict(hs.state_dict())
    for got, want in zip(hs.exact(z), fresh.exact(z)):
        assert torch.equal(got, want)
    assert not torch.equal(hs.exact(z)[1], first[1])
