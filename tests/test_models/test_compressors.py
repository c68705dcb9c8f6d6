"""Feature-compression necks: round trips, eval == decode, error bounds, rate estimate vs bytes.

Single-threaded and tiny (8-channel maps of at most 32x32): the whole file runs in a few seconds.
"""
import io
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from mmdet.registry import MODELS

import ecc_mmdet.models.compressors  # noqa: F401  (registers the necks)
from conftest import fit_neck
from ecc_edge.codecs.bitstream import (CodecId, CorruptedBitstreamError, ImageMeta, Payload,
                                        pack, unpack)
from ecc_mmdet.models.compressors import (BaseFeatureCompressor, EntropyBottleneckNeck,
                                          Float16Neck, Float32Neck, QuantizeNeck)

C = 8
ALL_TYPES = ['EntropyBottleneckNeck', 'QuantizeNeck', 'Float16Neck', 'Float32Neck']


@pytest.fixture(autouse=True, scope='module')
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def smooth_features(n, c, h, w, seed, relu=True):
    """Spatially smooth random maps (bilinearly upsampled noise), ReLU-like by default."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, c, h // 4 + 2, w // 4 + 2, generator=g)
    x = F.interpolate(z, size=(h, w), mode='bilinear', align_corners=False) * 2
    return torch.relu(x) if relu else x


def build(type_, **kwargs):
    torch.manual_seed(0)
    neck = MODELS.build(dict(type=type_, in_channels=C, **kwargs))
    if type_ == 'EntropyBottleneckNeck':  # tiny: keep the test fast
        assert neck.latent_channels == 64
        neck = MODELS.build(dict(type=type_, in_channels=C, latent_channels=8, **kwargs))
    return neck.eval()


_fit_bottleneck = fit_neck


@pytest.fixture(scope='module')
def x_fit():
    return smooth_features(1, C, 32, 32, seed=1)


@pytest.fixture(scope='module')
def trained(x_fit):
    torch.manual_seed(0)
    neck = EntropyBottleneckNeck(C, latent_channels=8, beta=0.1, rate_unit='bits_per_element')
    return _fit_bottleneck(neck, x_fit)


def _neck(type_, trained):
    return trained if type_ == 'EntropyBottleneckNeck' else build(type_)


def _bits_equal(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(
        a.contiguous().view(torch.int32), b.contiguous().view(torch.int32))


# ------------------------------------------------------------------ common interface
@pytest.mark.parametrize('type_', ALL_TYPES)
def test_build_from_registry(type_):
    neck = build(type_)
    assert isinstance(neck, BaseFeatureCompressor)
    assert type(neck).__name__ == type_
    assert isinstance(neck.codec_id, CodecId) and isinstance(neck.codec_name, str)
    assert neck.in_channels == C
    # the device anchor buffer never appears in checkpoints
    assert not any('anchor' in k for k in neck.state_dict())


def test_codec_ids_and_names():
    assert EntropyBottleneckNeck.codec_id == CodecId.ENTROPY_BOTTLENECK
    assert QuantizeNeck.codec_id == CodecId.QUANTIZE
    assert Float16Neck.codec_id == CodecId.FLOAT16
    assert Float32Neck.codec_id == CodecId.FLOAT32
    assert EntropyBottleneckNeck(C, latent_channels=4).codec_name == 'entropy_bottleneck'
    assert QuantizeNeck(C).codec_name == 'quantize_8bit'
    assert QuantizeNeck(C, n_bits=4).codec_name == 'quantize_4bit'
    assert Float16Neck(C).codec_name == 'float16'
    assert Float32Neck(C).codec_name == 'float32'


@pytest.mark.parametrize('type_', ALL_TYPES)
@pytest.mark.parametrize('hw', [(16, 16), (13, 17), (1, 1)])
def test_round_trip_shapes_and_eval_forward_equals_decode(type_, hw, trained):
    neck = _neck(type_, trained)
    x = smooth_features(2, C, *hw, seed=3)
    parts = neck.compress(x)
    assert len(parts) == 2
    decoded = []
    for params, body, latent_shape in parts:
        assert isinstance(params, bytes) and isinstance(body, bytes)
        assert isinstance(latent_shape, tuple) and all(type(d) is int for d in latent_shape)
        y = neck.decompress(params, body, latent_shape)
        assert y.shape == (1, C, *hw) and y.dtype == torch.float32
        decoded.append(y)
    decoded = torch.cat(decoded)
    with torch.no_grad():
        x_hat, losses = neck(x)
    assert x_hat.shape == x.shape
    assert _bits_equal(x_hat, decoded), 'eval forward must equal decompress(compress(x))'
    assert _bits_equal(neck.roundtrip(x), decoded)
    if type_ == 'Float16Neck':
        torch.testing.assert_close(decoded, x.half().float(), rtol=0, atol=0)
    if type_ in ('QuantizeNeck', 'Float16Neck', 'Float32Neck'):
        assert losses == {}
    bits = neck.estimate_bits(x)
    assert bits.shape == (2, ) and torch.isfinite(bits).all() and (bits >= 0).all()


@pytest.mark.parametrize('type_', ALL_TYPES)
def test_payload_pack_unpack_round_trip(type_, trained):
    neck = _neck(type_, trained)
    x = smooth_features(1, C, 13, 17, seed=4)
    params, body, shape = neck.compress(x)[0]
    meta = ImageMeta(ori_shape=(52, 68), img_shape=(52, 68))
    p = unpack(pack(Payload(neck.codec_id, shape, meta, params, body)),
               expected_codec=neck.codec_id)
    y = neck.decompress(p.codec_params, p.body, p.latent_shape)
    assert _bits_equal(y, neck(x)[0])


@pytest.mark.parametrize('type_', ALL_TYPES)
def test_decompress_rejects_bad_headers(type_, trained):
    neck = _neck(type_, trained)
    x = smooth_features(1, C, 13, 17, seed=5)
    params, body, shape = neck.compress(x)[0]
    bad_shapes = [shape[:2], (*shape, 1), (shape[0] + 1, *shape[1:]), (shape[0], 0, shape[2]),
                  (shape[0], -3, shape[2]), (shape[0], 2**20, 2**20), (shape[0], 1.5, 2)]
    for bad in bad_shapes:
        with pytest.raises(CorruptedBitstreamError):
            neck.decompress(params, body, bad)
    for bad_params in (params + b'\x00', params[:-1] if params else b'\x01'):
        with pytest.raises(CorruptedBitstreamError):
            neck.decompress(bad_params, body, shape)
    for bad_body in (body[:-1], body + b'\x00\x00\x00\x00', b''):
        with pytest.raises(CorruptedBitstreamError):
            neck.decompress(params, bad_body, shape)
    with pytest.raises(TypeError):
        neck.decompress(params, 'not bytes', shape)
    with pytest.raises(CorruptedBitstreamError, match='single rate'):  # a header's rate point
        neck.decompress(params, body, shape, rate_point=1)
    # a mismatching spatial size (consistent by itself) is caught by the body check at least
    other = (shape[0], shape[1] + 1, shape[2])
    with pytest.raises(CorruptedBitstreamError):
        neck.decompress(params, body, other)


@pytest.mark.parametrize('type_', ALL_TYPES)
def test_wrong_input_channels_is_a_clear_error(type_, trained):
    neck = _neck(type_, trained)
    with pytest.raises(ValueError, match=f'\\(N, {C}, H, W\\)'):
        neck.compress(torch.zeros(1, C + 1, 4, 4))
    with pytest.raises(ValueError):
        neck(torch.zeros(C, 4, 4))


# ------------------------------------------------------------------ float necks
def test_float32_is_lossless_bitwise():
    neck = build('Float32Neck')
    x = torch.randn(2, C, 13, 17, generator=torch.Generator().manual_seed(6)) * 1e3
    x[0, 0, 0, :5] = torch.tensor([-0.0, 1e-42, -3.4e38, 3.4e38, float('inf')])
    y = neck.roundtrip(x)
    assert _bits_equal(y, x)
    params, body, shape = neck.compress(x)[0]
    assert params == b'' and shape == (C, 13, 17) and len(body) == 4 * C * 13 * 17
    assert body == x[0].numpy().astype('<f4').tobytes()
    assert neck.estimate_bits(x).tolist() == [32.0 * C * 13 * 17] * 2
    x.requires_grad_(True)
    neck.train()
    out, _ = neck(x)
    out.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))


def test_float16_body_and_clamping():
    neck = build('Float16Neck')
    x = torch.randn(1, C, 5, 7, generator=torch.Generator().manual_seed(7))
    x[0, 0, 0, 0], x[0, 0, 0, 1] = 1e6, -1e6
    params, body, shape = neck.compress(x)[0]
    assert params == b'' and len(body) == 2 * C * 5 * 7 and shape == (C, 5, 7)
    y = neck.decompress(params, body, shape)
    assert torch.isfinite(y).all() and y[0, 0, 0, :2].tolist() == [65504.0, -65504.0]
    ref = x.clone()
    ref[0, 0, 0, :2] = 0
    torch.testing.assert_close(y[..., 1:, :], ref.half().float()[..., 1:, :], rtol=0, atol=0)
    assert neck.estimate_bits(x).tolist() == [16.0 * C * 5 * 7]
    assert neck.edge_modules() == [] and neck.cloud_modules() == []
    assert len(neck.state_dict()) == 0


# ------------------------------------------------------------------ quantiser
@pytest.mark.parametrize('n_bits', [1, 2, 4, 8, 16])
def test_quantize_error_bound_per_channel(n_bits):
    neck = build('QuantizeNeck', n_bits=n_bits)
    x = smooth_features(2, C, 13, 17, seed=8, relu=False)
    x = x * torch.logspace(-2, 2, C).view(1, C, 1, 1)  # very different ranges per channel
    y = neck.roundtrip(x)
    lo, hi = x.amin(dim=(2, 3), keepdim=True), x.amax(dim=(2, 3), keepdim=True)
    bound = (hi - lo) / (2**n_bits - 1) / 2
    err = (y - x).abs()
    assert (err <= bound * (1 + 1e-4) + 1e-6 * hi.abs()).all()
    # channel extremes are reproduced (symbols 0 and 2**n - 1 map back to lo and hi exactly)
    assert torch.equal(y.amin(dim=(2, 3), keepdim=True), lo)
    params = neck.compress(x)[0][0]
    assert len(params) == 1 + 8 * C and params[0] == n_bits


def test_quantize_bytes_shrink_with_fewer_bits_and_estimate():
    x = smooth_features(1, C, 32, 32, seed=9)
    sizes = {}
    for n_bits in (8, 4, 2):
        neck = build('QuantizeNeck', n_bits=n_bits)
        params, body, _ = neck.compress(x)[0]
        sizes[n_bits] = len(body)
        # body = histogram (varint counts) + range-coded symbols ~ entropy estimate
        counts = np.bincount(neck._quantize_batch(x)[0].long().reshape(-1).numpy(),
                             minlength=2**n_bits)
        header = sum(max(1, math.ceil(int(c).bit_length() / 7)) for c in counts)
        est = float(neck.estimate_bits(x)[0])
        coded_bits = 8 * (len(body) - header)
        assert est <= coded_bits <= est * 1.03 + 64, (n_bits, est, coded_bits)
    assert sizes[8] > sizes[4] > sizes[2]


def test_quantize_constant_and_single_level_channels():
    neck = build('QuantizeNeck', n_bits=4)
    x = smooth_features(1, C, 6, 5, seed=10)
    x[:, 0] = 3.25  # constant channel: range 0
    x[:, 1] = 0.0
    y = neck.roundtrip(x)
    assert torch.equal(y[:, 0], x[:, 0]) and torch.equal(y[:, 1], x[:, 1])
    z = torch.full((1, C, 4, 4), -1.5)  # every channel constant: one symbol, histogram only
    assert torch.equal(neck.roundtrip(z), z)


def test_quantize_clip_percentile():
    neck = build('QuantizeNeck', n_bits=8, clip_percentile=99.0)
    x = smooth_features(1, C, 20, 20, seed=11, relu=False)
    x[0, :, 0, 0] = 1e3  # one outlier per channel
    y = neck.roundtrip(x)
    assert (y < 100).all(), 'the outlier must be clipped'
    lo, hi = neck._ranges(x)
    assert (hi < 100).all() and (lo > -100).all()
    inside = (x >= lo) & (x <= hi)
    assert inside.float().mean() > 0.97
    assert ((y - x).abs()[inside] <= ((hi - lo) / 255 / 2 * (1 + 1e-4)).expand_as(x)[inside]).all()
    # the outlier no longer stretches the range: typical errors are far smaller than min/max's
    plain = build('QuantizeNeck', n_bits=8)
    err_clip = (y - x)[inside].abs().mean()
    err_plain = (plain.roundtrip(x) - x)[inside].abs().mean()
    assert err_clip < err_plain / 10


def test_quantize_training_is_straight_through():
    neck = build('QuantizeNeck', n_bits=3).train()
    x = smooth_features(1, C, 6, 6, seed=12).requires_grad_(True)
    y, losses = neck(x)
    assert losses == {}
    assert torch.equal(y.detach(), neck.eval()(x)[0])
    (y * 2).sum().backward()
    assert torch.equal(x.grad, torch.full_like(x, 2.0))


@pytest.mark.parametrize('n_bits', [0, 17, 8.0, True, '8', None])
def test_quantize_rejects_bad_n_bits(n_bits):
    with pytest.raises(ValueError, match='n_bits'):
        QuantizeNeck(C, n_bits=n_bits)


@pytest.mark.parametrize('p', [0, 50, 100.5, 'x'])
def test_quantize_rejects_bad_percentile(p):
    with pytest.raises(ValueError, match='clip_percentile'):
        QuantizeNeck(C, clip_percentile=p)


def test_quantize_rejects_bad_ranges_and_non_finite_input():
    neck = build('QuantizeNeck', n_bits=8)
    x = smooth_features(1, C, 5, 5, seed=13)
    params, body, shape = neck.compress(x)[0]
    ranges = np.frombuffer(params[1:], dtype='<f4').reshape(2, C).copy()
    for mutate in ('nan', 'swap', 'nbits0', 'nbits17'):
        r, nb = ranges.copy(), params[0]
        if mutate == 'nan':
            r[0, 3] = np.nan
        elif mutate == 'swap':
            r[0, 0], r[1, 0] = r[1, 0] + 1, r[0, 0]
        else:
            nb = 0 if mutate == 'nbits0' else 17
        with pytest.raises(CorruptedBitstreamError):
            neck.decompress(bytes([nb]) + r.astype('<f4').tobytes(), body, shape)
    bad = x.clone()
    bad[0, 0, 0, 0] = float('nan')
    with pytest.raises(ValueError, match='non-finite'):
        neck.compress(bad)


def test_quantize_stream_is_self_describing():
    x = smooth_features(1, C, 7, 9, seed=14)
    four = build('QuantizeNeck', n_bits=4)
    eight = build('QuantizeNeck', n_bits=8)
    part = four.compress(x)[0]
    assert _bits_equal(eight.decompress(*part), four.decompress(*part))


# ------------------------------------------------------------------ entropy bottleneck
def test_bottleneck_training_forward_gradients():
    neck = EntropyBottleneckNeck(C, latent_channels=4, beta=0.5).train()
    x = smooth_features(2, C, 13, 17, seed=15)
    x_hat, losses = neck(x, num_pixels=13 * 17 * 16)
    assert x_hat.shape == x.shape
    assert set(losses) == {'loss_rate'}
    assert torch.isfinite(losses['loss_rate']) and losses['loss_rate'] > 0
    losses['loss_rate'].backward(retain_graph=True)
    assert neck.g_a[0].weight.grad.abs().sum() > 0
    assert neck.entropy_model.matrices[0].grad.abs().sum() > 0
    assert neck.g_s[0].weight.grad is None  # rate does not depend on the decoder
    neck.zero_grad()
    F.mse_loss(x_hat, x).backward()
    assert neck.g_s[-1].weight.grad.abs().sum() > 0 and neck.g_a[0].weight.grad.abs().sum() > 0


def test_bottleneck_rate_units():
    x = smooth_features(2, C, 8, 8, seed=16)
    kw = dict(latent_channels=4, beta=1.0)
    torch.manual_seed(0)
    bits_neck = EntropyBottleneckNeck(C, rate_unit='bits', **kw).eval()
    bits = bits_neck.estimate_bits(x)
    rate_bits = bits_neck(x)[1]['loss_rate']
    torch.testing.assert_close(rate_bits, bits.mean())
    for unit, denom in (('bpp', 8 * 8 * 16), ('bits_per_element', C * 8 * 8)):
        torch.manual_seed(0)
        neck = EntropyBottleneckNeck(C, rate_unit=unit, **kw).eval()
        torch.testing.assert_close(neck(x)[1]['loss_rate'], bits.mean() / denom)
    torch.manual_seed(0)
    neck = EntropyBottleneckNeck(C, rate_unit='bpp', **kw).eval()
    torch.testing.assert_close(neck(x, num_pixels=1000)[1]['loss_rate'], bits.mean() / 1000)
    per_image = torch.tensor([1000.0, 2000.0])
    torch.testing.assert_close(neck(x, num_pixels=per_image)[1]['loss_rate'],
                               (bits / per_image).mean())


def test_bottleneck_real_bits_match_estimate_after_training(trained, x_fit):
    est = float(trained.estimate_bits(x_fit)[0])
    params, body, shape = trained.compress(x_fit)[0]
    assert params == (32).to_bytes(4, 'little') * 2 and shape == (8, 16, 16)
    real = 8 * len(body)
    assert abs(real / est - 1) < 0.03, (real, est)
    # training did something: rate below the untrained model's and reconstruction better
    torch.manual_seed(0)
    fresh = EntropyBottleneckNeck(C, latent_channels=8).eval()
    assert len(fresh.compress(x_fit)[0][1]) > len(body)
    assert F.mse_loss(trained(x_fit)[0], x_fit) < 0.9 * F.mse_loss(fresh(x_fit)[0], x_fit)


def test_bottleneck_state_dict_reload_gives_identical_bytes(trained, x_fit):
    buf = io.BytesIO()
    torch.save(trained.state_dict(), buf)
    buf.seek(0)
    torch.manual_seed(123)
    fresh = EntropyBottleneckNeck(C, latent_channels=8, beta=0.1, rate_unit='bits_per_element')
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    fresh.eval()
    x = smooth_features(2, C, 13, 17, seed=17)
    a, b = trained.compress(x), fresh.compress(x)
    assert a == b
    for part in a:
        assert _bits_equal(trained.decompress(*part), fresh.decompress(*part))


def test_bottleneck_decompress_checks_latent_against_feature_size(trained):
    x = smooth_features(1, C, 13, 17, seed=18)
    params, body, shape = trained.compress(x)[0]
    assert shape == (8, 7, 9)
    for h, w in ((15, 17), (13, 19), (12, 17), (0, 17), (2**31, 2**31)):
        with pytest.raises(CorruptedBitstreamError):
            trained.decompress(h.to_bytes(4, 'little') + w.to_bytes(4, 'little'), body, shape)
    # (14, 18) has the same latent size: decodes, cropped to 14x18
    y = trained.decompress((14).to_bytes(4, 'little') + (18).to_bytes(4, 'little'), body, shape)
    assert y.shape == (1, C, 14, 18)


@pytest.mark.parametrize('quantization', ['noise', 'ste'])
def test_bottleneck_downsample_1_and_ste(quantization):
    torch.manual_seed(0)
    neck = EntropyBottleneckNeck(C, latent_channels=4, hidden_channels=6, downsample=1,
                                 quantization=quantization)
    assert neck.entropy_model.quantization == quantization
    x = smooth_features(1, C, 9, 11, seed=19)
    x_hat, losses = neck.train()(x)
    assert x_hat.shape == x.shape and torch.isfinite(losses['loss_rate'])
    if quantization == 'ste':  # the decoder sees truly rounded latents in training
        y = neck.g_a(x)
        y_hat, _ = neck.entropy_model(y)
        med = neck.entropy_model.quantiles[:, 0, 1].view(1, -1, 1, 1)
        assert torch.allclose(y_hat - med, torch.round(y_hat - med), atol=1e-5)
    neck.eval()
    params, body, shape = neck.compress(x)[0]
    assert shape == (4, 9, 11)
    assert _bits_equal(neck.decompress(params, body, shape), neck(x)[0])


def test_bottleneck_edge_cloud_modules_and_config_errors():
    neck = EntropyBottleneckNeck(C, latent_channels=4)
    assert neck.edge_modules() == [neck.g_a, neck.entropy_model]
    assert neck.cloud_modules() == [neck.entropy_model, neck.g_s]
    everything = {id(p) for p in neck.parameters()}
    listed = {id(p) for m in neck.edge_modules() + neck.cloud_modules() for p in m.parameters()}
    assert listed == everything
    for bad in (dict(downsample=3), dict(rate_unit='bps'), dict(quantization='round'),
                dict(latent_channels=0), dict(quantization='ste',
                                              entropy_model=dict(quantization='noise'))):
        with pytest.raises(ValueError):
            EntropyBottleneckNeck(C, **bad)


def test_bottleneck_refuses_stale_tables():
    torch.manual_seed(0)
    neck = EntropyBottleneckNeck(C, latent_channels=4).eval()
    x = smooth_features(1, C, 8, 8, seed=20)
    part = neck.compress(x)[0]
    with torch.no_grad():
        neck.entropy_model.matrices[0].add_(0.1)
    with pytest.raises(RuntimeError, match='stale'):
        neck.compress(x)
    neck.train().eval()  # eval() rebuilds the tables
    assert neck.compress(x)[0][2] == part[2]
