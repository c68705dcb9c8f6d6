"""VariableRateBottleneckNeck: one model, several rate points chosen at run time."""
import copy

import pytest
import torch
import torch.nn.functional as F
from mmdet.registry import MODELS

import ecc_mmdet  # noqa: F401
from ecc_edge.codecs.bitstream import CodecId, CorruptedBitstreamError, pack, unpack
from ecc_edge.codecs.bitstream import ImageMeta, Payload
from ecc_mmdet.models.compressors import VariableRateBottleneckNeck

from conftest import fake_batch, fit_neck, split_cfg, tiny_model_cfg

C = 8


def _features(seed=1, h=24, w=20):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(2, C, h // 4 + 2, w // 4 + 2, generator=g)
    return torch.relu(F.interpolate(z, size=(h, w), mode='bilinear', align_corners=False) * 2)


@pytest.fixture(scope='module')
def neck():
    """A few Adam steps on MSE + rate, every rate point visited (random per step)."""
    torch.manual_seed(0)
    neck = VariableRateBottleneckNeck(C, latent_channels=6, num_rates=4, beta=0.002,
                                      rate_unit='bits_per_element')
    return fit_neck(neck, _features(), steps=400, lr=2e-2, seed=0)


def test_each_rate_point_round_trips_and_rate_falls_with_the_point(neck):
    x = _features(seed=1)  # what it was fitted to
    sizes, errors = [], []
    for r in range(4):
        neck.set_rate_point(r)
        items = neck.compress(x)
        assert neck.header_rate_point == r  # the point travels in the payload header
        decoded = torch.cat([neck.decompress(*it, rate_point=r) for it in items])
        with torch.no_grad():
            x_hat, _ = neck(x)  # eval forward == what the cloud decodes, bit for bit
        assert torch.equal(decoded, x_hat)
        sizes.append(sum(len(body) for _, body, _ in items))
        errors.append(float(F.mse_loss(decoded, x)))
    assert sizes[0] < sizes[1] < sizes[2] < sizes[3], sizes
    # the distortion of neighbouring points depends on the summation order (thread count, the
    # CPU's vector width) after 400 noisy steps, and the latent (6 of 8 channels) bounds how far
    # it can fall: the lowest point is the worst, the highest better, on any machine measured
    assert errors[0] == max(errors) and errors[3] < errors[0], errors


def test_the_decoder_follows_the_payload_not_its_own_setting(neck):
    x = _features(seed=3)
    enc = copy.deepcopy(neck)
    enc.set_rate_point(1)
    items = enc.compress(x)
    dec = copy.deepcopy(neck)
    dec.set_rate_point(3)
    for (params, body, shape), ref in zip(items, enc.roundtrip(x)):
        torch.testing.assert_close(dec.decompress(params, body, shape, rate_point=enc.header_rate_point)[0], ref,
                                   rtol=0, atol=0)


def test_unknown_rate_point_and_bad_params_are_refused(neck):
    neck.set_rate_point(0)
    params, body, shape = neck.compress(_features())[0]
    for bad in (4, None):  # a point this model lacks, or a header without one
        with pytest.raises(CorruptedBitstreamError, match=f'rate point {bad}, this model has '
                                                          r'rate points 0\.\.3'):
            neck.decompress(params, body, shape, rate_point=bad)
    with pytest.raises(CorruptedBitstreamError, match='8 bytes'):
        neck.decompress(params[:-1], body, shape, rate_point=0)
    # framed as a payload, the codec id tells it apart from the single-rate bottleneck, and the
    # rate point travels in the header
    data = pack(Payload(neck.codec_id, shape, ImageMeta((24, 20), (24, 20), (32, 32)),
                        params, body, rate_point=neck.header_rate_point))
    assert unpack(data).rate_point == 0
    assert unpack(data).codec_id == CodecId.VARIABLE_RATE_BOTTLENECK
    with pytest.raises(ValueError, match='rate_point must be an int in 0..3'):
        neck.set_rate_point(4)
    with pytest.raises(ValueError, match='betas must be 3 positive'):
        VariableRateBottleneckNeck(C, num_rates=3, betas=[0.1, 0.2])


def test_checkpoint_reload_codes_the_same_bytes_at_every_point(neck):
    state = copy.deepcopy(neck.state_dict())
    torch.manual_seed(5)
    fresh = VariableRateBottleneckNeck(C, latent_channels=6, num_rates=4, beta=0.002,
                                       rate_unit='bits_per_element')
    fresh.load_state_dict(state)
    fresh.eval()
    x = _features(seed=4)
    for r in range(4):
        neck.set_rate_point(r)
        fresh.set_rate_point(r)
        assert [b for _, b, _ in fresh.compress(x)] == [b for _, b, _ in neck.compress(x)]


def test_training_weights_the_rate_of_the_sampled_point():
    torch.manual_seed(0)
    neck = VariableRateBottleneckNeck(C, latent_channels=6, num_rates=4, beta=0.05,
                                      rate_unit='bits_per_element').train()
    assert neck.betas == [0.4, 0.2, 0.1, 0.05]
    seen = set()
    for _ in range(40):
        _, losses = neck(_features())
        r = neck._last_rate_point
        seen.add(r)
        assert neck.rate_weight == neck.betas[r]
        assert float(losses['loss_rate']) > 0
    assert seen == {0, 1, 2, 3}


def test_in_a_split_detector_and_the_kd_stage_split():
    from ecc_mmdet.engine import KnowledgeAdaptationHook
    from ecc_mmdet.structures import read
    torch.manual_seed(0)
    cfg = split_cfg(tiny_model_cfg(), 1, dict(type='VariableRateBottleneckNeck',
                                              latent_channels=8, num_rates=3))
    model = MODELS.build(cfg).eval()
    inputs, samples = fake_batch(model, n=1, size=64)
    for r in range(3):
        model.compressor.set_rate_point(r)
        payload = model.encode(inputs, samples)[0]
        assert unpack(payload).rate_point == r
        res = model.decode_and_predict([payload], copy.deepcopy(samples))[0]
        assert read(res).codec == 'variable_rate_bottleneck'
        assert read(res).payload_bytes == len(payload)
    # stage 2 freezes the edge (encoder, gains, every rate's entropy model) and trains the cloud
    # side of the codec (inverse gains, decoder)
    hook = KnowledgeAdaptationHook()
    train_ids, _ = hook._stage_split(model, 2)
    comp = model.compressor
    frozen = [comp.g_a, comp.gain, *comp.rate_entropy_models]
    assert not any(id(p) in train_ids for m in frozen for p in m.parameters())
    assert all(id(p) in train_ids for m in (comp.inv_gain, comp.g_s) for p in m.parameters())
