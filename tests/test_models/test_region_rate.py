"""A region-aware rate term: ``object_rate_weight`` < 1 makes bits inside ground-truth boxes
cheaper in training; the detector hands the compressor where the objects are."""
import pytest
import torch
from mmdet.structures import DetDataSample
from mmengine.structures import InstanceData

import ecc_mmdet  # noqa: F401
from ecc_mmdet.models.compressors import ChannelContextHyperpriorNeck, EntropyBottleneckNeck
from ecc_mmdet.structures import object_mask

from conftest import fake_batch, split_cfg, tiny_model_cfg, top_half_features


def _sample(boxes):
    s = DetDataSample()
    if boxes is not None:
        s.gt_instances = InstanceData(bboxes=torch.tensor(boxes, dtype=torch.float32),
                                      labels=torch.zeros(len(boxes), dtype=torch.long))
    return s


def test_object_mask_covers_every_cell_a_box_touches():
    samples = [_sample([[5.0, 9.0, 17.0, 12.0]]), _sample([]), _sample(None)]
    mask = object_mask(samples, (3, 7, 8, 10), (32, 40))  # stride 4
    want = torch.zeros(3, 1, 8, 10)
    want[0, 0, 2:3, 1:5] = 1  # rows 9//4=2 .. ceil(12/4)=3, columns 5//4=1 .. ceil(17/4)=5
    assert torch.equal(mask, want)


def _loss_rate(neck, x, mask=None):
    with torch.no_grad():
        return neck(x, object_mask=mask)[1]['loss_rate'].item()


def test_bits_inside_objects_count_at_the_weight():
    torch.manual_seed(0)
    neck = EntropyBottleneckNeck(8, latent_channels=6, downsample=2, beta=1.0,
                                 rate_unit='bits', object_rate_weight=0.25).eval()
    x = top_half_features(1, 2, 24, 20) * 4
    plain = _loss_rate(neck, x)
    ones, zeros = torch.ones(2, 1, 24, 20), torch.zeros(2, 1, 24, 20)
    assert plain > 100
    assert _loss_rate(neck, x, zeros) == pytest.approx(plain, rel=1e-6)
    assert _loss_rate(neck, x, ones) == pytest.approx(0.25 * plain, rel=1e-5)
    half = zeros.clone()
    half[..., :12, :] = 1  # the top half: its share of the bits at a quarter
    assert 0.3 * plain < _loss_rate(neck, x, half) < 0.95 * plain
    neck.object_rate_weight = 1.0  # the default ignores the mask
    assert _loss_rate(neck, x, ones) == pytest.approx(plain, rel=1e-6)
    with pytest.raises(ValueError, match=r'object_rate_weight must be in \(0, 1\]'):
        EntropyBottleneckNeck(8, object_rate_weight=0.0)


def test_the_hyperprior_weights_y_and_leaves_z():
    torch.manual_seed(0)
    neck = ChannelContextHyperpriorNeck(8, latent_channels=6, hyper_channels=4,
                                        hyper_downsample=2, beta=1.0, rate_unit='bits',
                                        num_slices=2, context_channels=4,
                                        object_rate_weight=0.5).eval()
    x = top_half_features(1, 2, 24, 20) * 4
    plain, ones = _loss_rate(neck, x), _loss_rate(neck, x, torch.ones(2, 1, 24, 20))
    y_bits = neck.gaussian.bits(neck._coded(x, ())[1]).mean().item()
    assert y_bits > 50
    assert plain - ones == pytest.approx(0.5 * y_bits, rel=1e-4)


@pytest.mark.parametrize('weight', [1.0, 0.5])
def test_the_detector_hands_the_object_mask_to_the_compressor(weight):
    comp = dict(type='EntropyBottleneckNeck', latent_channels=8, beta=0.01,
                object_rate_weight=weight)
    torch.manual_seed(0)
    from mmdet.registry import MODELS
    model = MODELS.build(split_cfg(tiny_model_cfg(), split_after=0, compressor=comp)).eval()
    inputs, samples = fake_batch(model, n=2, size=64, with_gt=True, training=True)
    seen = []
    forward = model.compressor.forward
    model.compressor.forward = lambda f, **kw: seen.append(kw['object_mask']) or forward(f, **kw)
    model.loss(inputs, samples)
    if weight == 1.0:  # nothing weighs objects apart: no mask is computed
        assert seen == [None]
        return
    f_shape = model.splitter.forward_edge(inputs).shape
    assert torch.equal(seen[0], object_mask(samples, f_shape, inputs.shape[-2:]))
    assert 0 < seen[0].mean() < 1
