"""Split detectors: equivalence with the unsplit detector, edge/cloud API, checkpoints, errors."""
import copy

import pytest
import torch
from mmengine.runner import load_checkpoint, save_checkpoint
from mmdet.registry import MODELS

import ecc_mmdet  # noqa: F401
from ecc_mmdet.structures import read as read_comm
from ecc_edge.codecs.bitstream import BitstreamError, CodecMismatchError, CorruptedBitstreamError
from ecc_mmdet.utils import ConfigError
from ecc_mmdet.deployment import DeploymentMeter, meter_for, run_deployment
from ecc_mmdet.utils.flops import FlopCache

from conftest import TINY_FRCNN, TINY_RETINA, fake_batch, split_cfg, tiny_model_cfg

def predictions(model, inputs, samples):
    with torch.no_grad():
        return [r.pred_instances for r in model.predict(inputs, copy.deepcopy(samples))]


@pytest.fixture(scope='module')
def frcnn_pair():
    torch.manual_seed(0)
    cfg = tiny_model_cfg(TINY_FRCNN)
    unsplit = MODELS.build(cfg).eval()
    split = MODELS.build(split_cfg(cfg, 1)).eval()
    missing = split.load_state_dict(unsplit.state_dict(), strict=False)
    assert not missing.unexpected_keys
    return unsplit, split


@pytest.mark.parametrize('split_after', [0, 1])
def test_lossless_split_gives_same_detections(split_after):
    torch.manual_seed(0)
    cfg = tiny_model_cfg(TINY_FRCNN)
    unsplit = MODELS.build(cfg).eval()
    split = MODELS.build(split_cfg(cfg, split_after)).eval()
    split.load_state_dict(unsplit.state_dict(), strict=False)
    inputs, samples = fake_batch(unsplit)
    ref, got = predictions(unsplit, inputs, samples), predictions(split, inputs, samples)
    assert sum(len(r) for r in ref) > 0, 'untrained detector should still emit boxes'
    for r, g in zip(ref, got):
        assert torch.equal(r.labels, g.labels)
        torch.testing.assert_close(g.bboxes, r.bboxes, rtol=0, atol=1e-4)
        torch.testing.assert_close(g.scores, r.scores, rtol=0, atol=1e-6)


def test_single_stage_lossless_split_and_comm_record():
    torch.manual_seed(0)
    cfg = tiny_model_cfg(TINY_RETINA)
    unsplit = MODELS.build(cfg).eval()
    split = MODELS.build(split_cfg(cfg, 1, two_stage=False)).eval()
    split.load_state_dict(unsplit.state_dict(), strict=False)
    inputs, samples = fake_batch(unsplit)
    ref, got = predictions(unsplit, inputs, samples), predictions(split, inputs, samples)
    assert sum(len(r) for r in ref) > 0
    for r, g in zip(ref, got):
        assert torch.equal(r.labels, g.labels)
        torch.testing.assert_close(g.bboxes, r.bboxes, rtol=0, atol=1e-4)
    results = split.predict(inputs, copy.deepcopy(samples))
    rec = read_comm(results[0])
    # float32 latent of layer1: 2*width channels at stride 4 -> 32 x 24 x 24 floats + framing
    c, h = 16, 96 // 4
    assert rec.payload_bytes == rec.header_bytes + c * h * h * 4
    assert rec.edge_flops > 0 and rec.cloud_flops > rec.edge_flops
    assert rec.edge_params == split.edge_param_count() > 0


def test_encode_then_decode_and_predict_without_runner(frcnn_pair):
    unsplit, split = frcnn_pair
    inputs, samples = fake_batch(unsplit, seed=3)
    payloads = split.encode(inputs, samples)
    assert all(isinstance(p, bytes) for p in payloads)
    # the cloud sees nothing but the bytes: no data samples passed in
    results = split.decode_and_predict(payloads)
    ref = predictions(unsplit, inputs, samples)
    for r, res in zip(ref, results):
        assert res.ori_shape == (96, 96) and res.img_shape == (96, 96)
        torch.testing.assert_close(res.pred_instances.bboxes, r.bboxes, rtol=0, atol=1e-4)
        assert read_comm(res).payload_bytes == len(payloads[results.index(res)])


def test_decode_rejects_bad_payloads(frcnn_pair):
    unsplit, split = frcnn_pair
    inputs, samples = fake_batch(unsplit, n=1)
    payload = split.encode(inputs, samples)[0]
    with pytest.raises(BitstreamError):
        split.decode_and_predict([payload[:-7]])
    flipped = bytearray(payload)
    flipped[len(flipped) // 2] ^= 0x10
    with pytest.raises(BitstreamError):
        split.decode_and_predict([bytes(flipped)])
    other = MODELS.build(split_cfg(tiny_model_cfg(TINY_FRCNN), 1,
                                   dict(type='QuantizeNeck', n_bits=8))).eval()
    with pytest.raises(CodecMismatchError):
        other.decode_and_predict([payload])


def test_unsplit_checkpoint_loads_into_split_model(tmp_path):
    torch.manual_seed(1)
    cfg = tiny_model_cfg(TINY_FRCNN)
    unsplit = MODELS.build(cfg)
    ckpt = str(tmp_path / 'unsplit.pth')
    save_checkpoint({'state_dict': unsplit.state_dict(), 'meta': {}}, ckpt)
    split = MODELS.build(split_cfg(cfg, 1, dict(type='EntropyBottleneckNeck',
                                                latent_channels=8)))
    load_checkpoint(split, ckpt, map_location='cpu')
    ref = unsplit.state_dict()
    got = split.state_dict()
    for k, v in ref.items():
        assert torch.equal(got[k], v), k
    assert all(k in ref or k.startswith('compressor.') for k in got)


def test_unsupported_backbone_and_bad_split_points():
    cfg = tiny_model_cfg(TINY_FRCNN)
    with pytest.raises(ConfigError, match='Cannot split backbone Darknet.*MobileNetV2'):
        bad = split_cfg(cfg)
        bad.backbone = dict(type='Darknet', depth=53, out_indices=(2, 3, 4, 5))
        bad.neck.in_channels = [128, 256, 512, 1024]
        MODELS.build(bad)
    with pytest.raises(ConfigError, match=r'split_after must be an int in \[0, 4\]'):
        MODELS.build(split_cfg(cfg, 5))
    with pytest.raises(ConfigError, match='computed on the edge before the split'):
        MODELS.build(split_cfg(cfg, 2))  # FPN wants layer1's output, which stays on the edge
    with pytest.raises(ConfigError, match="use type='EdgeCloudSingleStageDetector'"):
        retina = split_cfg(tiny_model_cfg(TINY_RETINA))  # two-stage type on a RetinaNet config
        MODELS.build(retina)
    with pytest.raises(ConfigError, match="use type='EdgeCloudTwoStageDetector'"):
        MODELS.build(split_cfg(cfg, two_stage=False))
    with pytest.raises(ConfigError, match='needs compressor'):
        c = split_cfg(cfg)
        c.compressor = None
        MODELS.build(c)


def test_checkpoint_of_another_compressor_is_refused(tmp_path):
    cfg = tiny_model_cfg(TINY_FRCNN)
    trained = MODELS.build(split_cfg(cfg, 1, dict(type='EntropyBottleneckNeck', latent_channels=8)))
    ckpt = str(tmp_path / 'student.pth')
    save_checkpoint({'state_dict': trained.state_dict(), 'meta': {}}, ckpt)
    other = MODELS.build(split_cfg(cfg, 1, dict(type='EntropyBottleneckNeck', latent_channels=4)))
    with pytest.raises(ValueError, match='does not match this config'):
        load_checkpoint(other, ckpt, map_location='cpu')


def test_decode_refuses_a_batch_of_mixed_feature_shapes(frcnn_pair):
    """Payloads of differently sized images cannot be stacked: a clear error, not a torch one."""
    unsplit, split = frcnn_pair
    small = split.encode(*fake_batch(unsplit, n=1, size=64, seed=1))[0]
    large = split.encode(*fake_batch(unsplit, n=1, size=96, seed=2))[0]
    with pytest.raises(CorruptedBitstreamError, match=r'different feature shapes .*one at a time'):
        split.decode_and_predict([small, large])
    # each alone decodes, and into boxes inside its own image
    for payload, size in ((small, 64), (large, 96)):
        res = split.decode_and_predict([payload])[0]
        assert res.metainfo['ori_shape'] == (size, size)
        assert float(res.pred_instances.bboxes.max()) <= size


def test_flop_counts_are_cached_per_input_shape_and_bounded(frcnn_pair):
    unsplit, split = frcnn_pair
    meter = DeploymentMeter(max_shapes=2)  # the caller's: the model owns no meter
    counts = {}
    for size in (64, 96, 64, 128):
        inputs, samples = fake_batch(unsplit, n=1, size=size)
        rec = read_comm(run_deployment(split, inputs, samples, meter=meter)[0])
        counts.setdefault(size, set()).add((rec.edge_flops, rec.cloud_flops))
    edge = meter.flops['edge']
    # measured once per shape: 64 (reused on its second use), 96, 128
    assert edge.measurements == 3 and meter.flops['cloud'].measurements == 3
    # bounded at 2: 96 went out when 128 came in (64 had been used more recently)
    assert len(edge) == 2
    assert (3, 64, 64) in edge and (3, 96, 96) not in edge
    assert all(len(v) == 1 for v in counts.values())
    (e64, c64), = counts[64]
    (e128, c128), = counts[128]
    assert e128 == pytest.approx(4 * e64, rel=0.05)  # convolutions scale with the pixels
    assert c128 > c64 > 0
    # the record's sides are the sums of the measured steps
    assert rec.edge_flops == pytest.approx(edge.get((3, 128, 128), None)
                                           + meter.flops['encode'].get((3, 128, 128), None))


def test_the_pipeline_holds_the_meter_of_each_model(frcnn_pair):
    """The model creates no meter: ``predict`` measures with the one the pipeline holds for that
    model, which follows the model's ``measure_flops`` setting."""
    unsplit, split = frcnn_pair
    model = copy.deepcopy(split)
    assert 'meter' not in model.__dict__ and not hasattr(model, 'meter')
    inputs, samples = fake_batch(unsplit, n=1, size=64)
    rec = read_comm(model.predict(inputs, copy.deepcopy(samples))[0])
    assert rec.edge_flops > 0 and meter_for(model).flops['edge'].measurements == 1
    assert meter_for(model) is meter_for(model) and meter_for(model) is not meter_for(split)
    model.measure_flops = False
    assert read_comm(model.predict(inputs, copy.deepcopy(samples))[0]).edge_flops is None


def test_loss_is_one_forward_and_keeps_nothing_on_the_model(frcnn_pair):
    """``loss`` = the unsplit detector's mmdet losses on the same weights (a lossless codec) +
    the compressor's; the distiller gets the intermediates as an argument, and the model holds
    no loss or feature between calls."""
    unsplit, split = frcnn_pair
    model = copy.deepcopy(split).train()
    ref_model = copy.deepcopy(unsplit).train()
    inputs, samples = fake_batch(unsplit, n=2, with_gt=True, training=True)
    before = set(model.__dict__)
    seen = {}

    def distiller(m, batch_inputs, batch_samples, losses, intermediates):
        seen.update(intermediates)
        return dict(losses, loss_kd=intermediates['neck_outs'][0].sum() * 0)

    model.attach_distiller(distiller)
    torch.manual_seed(3)  # the RPN's and the RoI sampler's draws
    got = model.loss(inputs, copy.deepcopy(samples))
    torch.manual_seed(3)
    ref = ref_model.loss(inputs, copy.deepcopy(samples))
    assert set(got) == set(ref) | {'loss_kd'}
    for k, v in ref.items():
        for a, b in zip(v if isinstance(v, list) else [v], got[k] if isinstance(v, list)
                        else [got[k]]):
            torch.testing.assert_close(b, a, rtol=0, atol=1e-6)
    assert set(seen) == {'edge_feats', 'compressor_losses', 'backbone_outs', 'neck_outs'}
    assert set(model.__dict__) == before
    assert model.distiller is distiller and 'distiller' not in dict(model.named_children())
    model.attach_distiller(None)
    assert model.distiller is None


def test_flop_cache_is_least_recently_used():
    cache = FlopCache(max_entries=2)
    calls = []
    for key in ('a', 'b', 'a', 'c', 'a', 'b'):
        cache.get(key, lambda: calls.append(key) or len(calls))
    assert calls == ['a', 'b', 'c', 'b']  # 'b' was evicted by 'c' ('a' had just been used)
    assert cache.get('a', lambda: -1) == 1 and len(cache) == 2
    with pytest.raises(ValueError, match='max_entries'):
        FlopCache(0)
