"""The integer hyper-synthesis in float32 (digits where needed) equals the float64 one bit for bit.

The float64 path is the reference: exact by construction (sums below 2**53). The inputs here
are chosen so that one float32 pass would round (checked), so a wrong digit bound fails.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ecc_edge.codecs.hyperprior import conv3x3_exact
from ecc_mmdet.entropy_models.exact_float32 import FLOAT32_EXACT, digit_plan
from ecc_mmdet.entropy_models import ExactHyperSynthesis
from ecc_mmdet.entropy_models import hyper_synthesis as hs_module


def test_digit_plan_bounds_every_digit():
    assert digit_plan(1000.0, 16000.0) == (25, 1)  # 1.6e7 <= 2**24: one pass
    assert digit_plan(0.0, 1e12) == (25, 1)
    assert digit_plan(2.0**24 + 1, 1.0) is None  # no digit is small enough
    for l1, amax in [(3e4, 65280.0), (1e6, 2.0**40), (2.0**23, 1e9), (17.0, 2.0**30)]:
        d, num = digit_plan(l1, amax)
        base = 2**d
        assert l1 * (base - 1) <= FLOAT32_EXACT < l1 * (2 * base - 1)  # the largest digits
        assert np.ceil(amax / base**(num - 1)) <= base - 1  # the signed top digit fits
        assert num == 1 or np.ceil(amax / base**(num - 2)) > base - 1  # and no fewer digits


def _reference(hs, z):
    """hs.exact with every convolution in float64 (the float32 path switched off)."""
    original = hs_module._float32_is_ieee
    hs_module._float32_is_ieee = lambda: False
    try:
        return hs.exact(z)
    finally:
        hs_module._float32_is_ieee = original


@pytest.mark.parametrize('weight_std, z_scale', [(0.05, 2.0), (3.0, 40.0), (60.0, 255.0)])
def test_float32_path_equals_float64(weight_std, z_scale):
    torch.manual_seed(1)
    hs = ExactHyperSynthesis(6, 16, 4, up_steps=2, act_max=255.0, weight_max=64.0)
    with torch.no_grad():
        for p in hs.parameters():
            p.normal_(0, weight_std)
    z = torch.round(torch.randn(3, 6, 4, 5) * z_scale)
    z[0, :, 0, 0] = 255.0  # the clamp's extremes
    z[1, :, 1, 1] = -255.0
    for a, b in zip(hs.exact(z), _reference(hs, z)):
        assert torch.equal(a, b)
    plans = [digit_plan(layer.row_l1, 255.0 * 256) for layer in hs._integer_convs()]
    if weight_std >= 3.0:  # these weights need digits: one float32 pass would round
        assert all(p is None or p[1] > 1 for p in plans)


def test_large_sums_round_in_one_float32_pass_but_not_in_digits():
    """The case the digits exist for: one float32 convolution of these integers is wrong."""
    g = torch.Generator().manual_seed(2)
    a = torch.randint(0, 65281, (1, 32, 8, 8), generator=g).double()
    w = torch.randint(-16384, 16385, (8, 32, 3, 3), generator=g).double()
    b = torch.randint(-2**30, 2**30, (8,), generator=g).double()
    exact = F.conv2d(a, w, b, padding=1)
    naive = F.conv2d(a.float(), w.float(), b.float(), padding=1).double()
    assert not torch.equal(naive, exact)
    layer = hs_module._IntegerConv(w, b, w.float(), float(w.abs().flatten(1).sum(1).max()))
    assert torch.equal(hs_module.exact_conv3x3(a, layer), exact)
    # the light edge's numpy path (float64) gives the same integers
    a_np, w_np, b_np = a[0].numpy(), w.reshape(8, -1).numpy(), b.numpy()
    assert np.array_equal(conv3x3_exact(a_np, w_np, b_np), exact[0].numpy())
    # signed activations (the first layer's input) split as well
    a_signed = a - 32640
    assert torch.equal(hs_module.exact_conv3x3(a_signed, layer),
                       F.conv2d(a_signed, w, b, padding=1))


def test_light_edge_layer_sums_in_float32_only_where_one_pass_is_exact(monkeypatch):
    """The light edge's layer: float32 products at and below the bound (row L1 x max |a| =
    2**24, the largest sum float32 holds), float64 beyond it; the same integers as float64 on
    inputs that round in one float32 pass."""
    from ecc_edge.codecs import hyperprior as light
    calls = []
    conv = light.conv3x3_exact
    monkeypatch.setattr(light, 'conv3x3_exact', lambda a, w, b: calls.append(a.dtype) or
                        conv(a, w, b))
    w = np.zeros((2, 4, 3, 3))
    w[0] = 1.0  # row L1 36
    w[1, 0] = -3.0  # row L1 27
    b = np.array([2.0**30 + 1, -7.0])  # beyond float32's integers: added in float64
    layer = light._Layer.of(dict(weight=w.ravel(), bias=b, in_channels=4, out_channels=2))
    assert layer.row_l1 == 36.0
    a_max = 2.0**24 / 36  # not an integer: the largest integer below it
    for top, dtype in [(np.floor(a_max), np.float32), (np.floor(a_max) + 1, np.float64)]:
        a = np.full((4, 3, 5), top)
        a[1, 1, 2] -= 1  # one sum below the others
        calls.clear()
        got = layer(a)
        assert calls == [dtype]
        ref = F.conv2d(torch.from_numpy(a)[None], torch.from_numpy(w),
                       torch.from_numpy(b), padding=1)[0].numpy()
        assert got.dtype == np.float64 and np.array_equal(got, ref)
    big = np.full((4, 3, 5), 2.0**22 + 1)  # one float32 pass would round these sums
    naive = conv(big.astype(np.float32), w.reshape(2, -1).astype(np.float32), None)
    ref = conv(big, w.reshape(2, -1), None)
    assert not np.array_equal(naive.astype(np.float64), ref)
    assert np.array_equal(layer(big) - b[:, None, None], ref)


def test_reduced_float32_precision_falls_back_to_float64():
    """A user who allows TF32/bf16 float32 matmuls gets the float64 path (still exact)."""
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision('medium')
    try:
        assert not hs_module._float32_is_ieee()
    finally:
        torch.set_float32_matmul_precision(previous)
    assert hs_module._float32_is_ieee()
