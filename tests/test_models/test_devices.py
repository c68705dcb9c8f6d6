"""The codecs, the split detector and the KD hook on every available device.

Users train on CUDA. What crosses to the host (the range coder, hashes, detections reports) goes
through ``ecc_mmdet.utils.device``; payloads encoded on a device decode on a CPU cloud. Without a
CUDA device only the CPU runs, and the CUDA cases are skipped with a line that says so (``-rs``).
"""
import copy
import types

import pytest
import torch
from mmdet.registry import MODELS
from mmengine.logging import MMLogger
from mmengine.runner import save_checkpoint

import ecc_mmdet  # noqa: F401
import ecc_mmdet.engine  # noqa: F401  (registers KnowledgeAdaptationHook)
from ecc_mmdet.engine import KnowledgeAdaptationHook
from ecc_mmdet.utils.device import (compress_per_image, deterministic_cuda, tensor_bytes,
                                    to_numpy)

from conftest import fake_batch, split_cfg, tiny_model_cfg

DEVICES = ['cpu', pytest.param('cuda', marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason='no CUDA device here: the codecs, the split detector '
    'and the KD hook ran on the CPU only'))]
C = 16
NECKS = {
    'factorized': dict(type='EntropyBottleneckNeck', latent_channels=8, beta=0.01),
    'hyperprior': dict(type='HyperpriorBottleneckNeck', latent_channels=8, hyper_channels=4,
                       hyper_downsample=2, beta=0.01),
    'variable_rate': dict(type='VariableRateBottleneckNeck', latent_channels=8, num_rates=3),
    'variable_rate_hyperprior': dict(type='VariableRateHyperpriorNeck', latent_channels=8,
                                     hyper_channels=4, hyper_downsample=2, num_rates=3),
    'quantize': dict(type='QuantizeNeck', n_bits=6),
    'float16': dict(type='Float16Neck'),
}
BOTTLENECK = NECKS['factorized']


def _features(device, n=3, h=20, w=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.relu(torch.randn(n, C, h, w, generator=g) * 2).to(device)


def _neck(name, device):
    torch.manual_seed(0)
    return MODELS.build(dict(NECKS[name], in_channels=C)).to(device).eval()


def _on_cpu(module):
    """A CPU copy of ``module`` loaded from its state dict: what a CPU cloud builds."""
    return copy.deepcopy(module).cpu().eval()


def _tolerance(device):
    return 0.0 if device == 'cpu' else 1e-5  # float kernels of the device vs the CPU's


def test_to_numpy_and_tensor_bytes():
    t = torch.arange(6, dtype=torch.float32, requires_grad=True).view(2, 3)
    assert to_numpy(t).tolist() == [[0, 1, 2], [3, 4, 5]]
    assert to_numpy(t, 'int32').dtype.name == 'int32'
    assert tensor_bytes(t.t()) == to_numpy(t.t()).tobytes()  # row-major even when transposed
    assert tensor_bytes(torch.ones(2, dtype=torch.bfloat16)) == b'\x80\x3f' * 2
    assert tensor_bytes(torch.zeros(0)) == b''


def test_deterministic_cuda_restores_the_settings():
    cudnn = torch.backends.cudnn
    saved = (cudnn.deterministic, cudnn.benchmark, cudnn.allow_tf32)
    cudnn.benchmark = True
    try:
        with deterministic_cuda():
            assert cudnn.deterministic and not cudnn.benchmark and not cudnn.allow_tf32
        assert cudnn.benchmark and (cudnn.deterministic, cudnn.allow_tf32) == saved[::2]
    finally:
        cudnn.deterministic, cudnn.benchmark, cudnn.allow_tf32 = saved


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('name', list(NECKS))
def test_codec_round_trip_on_device_decodes_on_a_cpu_cloud(name, device):
    neck = _neck(name, device)
    x = _features(device)
    items = compress_per_image(neck.compress, x)
    assert items == compress_per_image(neck.compress, x)  # the same bytes every run
    # one image at a time (what CUDA does) = the whole batch (on the CPU)
    assert items == compress_per_image(neck.compress, x, per_image=True)
    rate = neck.header_rate_point
    mine = torch.cat([neck.decompress(*it, rate_point=rate) for it in items])
    assert mine.device.type == device and mine.shape == x.shape
    with torch.no_grad(), deterministic_cuda():  # eval forward, image by image as coded
        x_hat = torch.cat([neck(x[i:i + 1])[0] for i in range(x.shape[0])])
    assert torch.allclose(mine, x_hat, rtol=0, atol=_tolerance(device))
    cloud = _on_cpu(neck)
    theirs = torch.cat([cloud.decompress(*it, rate_point=rate) for it in items])
    assert theirs.device.type == 'cpu'
    assert torch.allclose(theirs, mine.cpu(), rtol=0, atol=_tolerance(device))


def _split_model(device):
    torch.manual_seed(0)
    cfg = split_cfg(tiny_model_cfg(width=8), 1, BOTTLENECK, measure_flops=False)
    return MODELS.build(cfg).to(device).eval()


@pytest.mark.parametrize('device', DEVICES)
def test_split_detector_on_device_and_its_cpu_cloud(device):
    model = _split_model(device)
    inputs, samples = fake_batch(model, n=2, size=64)
    assert inputs.device.type == device
    results = model.predict(inputs, copy.deepcopy(samples))  # the deployed path, on the device
    assert len(results) == 2 and results[0].pred_instances.bboxes.device.type == device
    payloads = model.encode(inputs, samples)
    assert payloads == model.encode(inputs, samples)  # the same bytes every run
    cloud = _on_cpu(model).build_cloud()
    codecs = (model.payload_codec, cloud.payload_codec)
    f_mine, f_cloud = (c.decompress(c.unpack(payloads, copy.deepcopy(samples))) for c in codecs)
    assert f_mine.device.type == device and f_cloud.device.type == 'cpu'
    assert torch.allclose(f_cloud, f_mine.cpu(), rtol=0, atol=_tolerance(device))
    theirs = cloud.decode_and_predict(payloads)
    assert all(len(r.pred_instances) > 0 for r in theirs)
    if device == 'cpu':  # elsewhere, float differences in the heads may reorder near-ties
        for mine, other in zip(results, theirs):
            assert torch.equal(mine.pred_instances.bboxes, other.pred_instances.bboxes)
            assert torch.equal(mine.pred_instances.labels, other.pred_instances.labels)


@pytest.mark.parametrize('device', DEVICES)
def test_kd_hook_on_device(device, tmp_path):
    torch.manual_seed(0)
    teacher_cfg = tiny_model_cfg(width=8, norm_eval=False)
    teacher_ckpt = str(tmp_path / 'teacher.pth')
    save_checkpoint({'state_dict': MODELS.build(teacher_cfg).state_dict(), 'meta': {}},
                    teacher_ckpt)
    student = MODELS.build(split_cfg(teacher_cfg, 1, BOTTLENECK, measure_flops=False))
    student = student.to(device)
    hook = KnowledgeAdaptationHook(teacher_config=teacher_cfg, teacher_checkpoint=teacher_ckpt,
                                   bottleneck_epochs=1, init_student_from_teacher=True)
    runner = types.SimpleNamespace(
        model=student, cfg={}, epoch=0, iter=0, _has_loaded=False,
        logger=MMLogger.get_instance('test_devices', log_level='WARNING'),
        train_loop=types.SimpleNamespace(max_epochs=2))
    hook.before_train(runner)
    assert {p.device.type for p in hook.teacher.parameters()} == {device}
    inputs, samples = fake_batch(student, n=2, size=64, with_gt=True, training=True)
    student.train()
    hook.before_train_iter(runner, 0)
    losses = student.loss(inputs, samples)
    loss, log = student.parse_losses(losses)
    loss.backward()
    # stage 1: the compressor learns the teacher's features (on the device)
    assert 'loss_kd_feat' in log and all(torch.isfinite(v) for v in log.values())
    assert student.compressor.g_a[0].weight.grad is not None
