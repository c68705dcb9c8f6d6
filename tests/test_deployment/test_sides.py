"""Edge-only and cloud-only builds: each holds only its side's weights, and together they give
the full model's payloads and detections exactly."""
import copy

import pytest
import torch
from mmengine.runner import load_checkpoint
from mmdet.registry import MODELS

import ecc_mmdet  # noqa: F401
from ecc_mmdet.deployment import build_edge

from conftest import TINY_FRCNN, TINY_RETINA, fake_batch, split_cfg, tiny_model_cfg

BOTTLENECK = dict(type='EntropyBottleneckNeck', latent_channels=8)
HEADS = ('neck.', 'rpn_head.', 'roi_head.', 'bbox_head.')
CLOUD_STAGES = ('backbone.layer2.', 'backbone.layer3.', 'backbone.layer4.')
EDGE_ONLY = ('backbone.conv1.', 'backbone.bn1.', 'backbone.layer1.', 'compressor.g_a.',
             'edge_exit.', 'router.')


def tiny_split(path, two_stage, **extra):
    torch.manual_seed(0)
    cfg = split_cfg(tiny_model_cfg(path), 1, compressor=BOTTLENECK, two_stage=two_stage,
                    measure_flops=False)
    cfg.update(extra)
    return MODELS.build(cfg).eval()  # eval() builds the untrained bottleneck's coding tables


@pytest.fixture(scope='module', params=['two_stage', 'single_stage'])
def sides(request):
    two_stage = request.param == 'two_stage'
    model = tiny_split(TINY_FRCNN if two_stage else TINY_RETINA, two_stage)
    return model, model.build_edge(), model.build_cloud()


def assert_same_instances(a, b):
    for key in ('bboxes', 'scores', 'labels'):
        assert torch.equal(getattr(a, key), getattr(b, key)), key


def test_each_side_holds_only_its_weights(sides):
    model, edge, cloud = sides
    full, e_keys, c_keys = (set(m.state_dict()) for m in (model, edge, cloud))
    assert not [k for k in e_keys if k.startswith(HEADS + CLOUD_STAGES + ('compressor.g_s.', ))]
    assert not [k for k in c_keys if k.startswith(EDGE_ONLY)]
    assert e_keys | c_keys >= full
    # the entropy model's tables are the only weights both sides need, besides the pinned
    # fingerprint of the pair
    shared = {k for k in e_keys & c_keys if not k.startswith('data_preprocessor.')}
    assert 'pairing_fingerprint' in shared and 'pairing_fingerprint' not in full
    assert all(k.startswith('compressor.entropy_model.') for k in shared - {'pairing_fingerprint'})
    assert edge.model_fingerprint() == cloud.model_fingerprint() == model.model_fingerprint()
    n = {name: sum(p.numel() for p in m.parameters()) for name, m in
         (('full', model), ('edge', edge), ('cloud', cloud))}
    n_shared = sum(p.numel() for p in model.compressor.entropy_model.parameters())
    assert n['edge'] + n['cloud'] - n_shared == n['full']
    # deep copies: the splitter follows the copied backbone, nothing aliases the full model
    for side in (edge, cloud):
        assert side.splitter.backbone is side.backbone and not side.training
    full_ptrs = {p.data_ptr() for p in model.parameters()}
    assert not full_ptrs & {p.data_ptr() for p in edge.parameters()}
    edge.to(torch.float64).to(torch.float32)  # .to() walks the placeholders fine


def test_edge_and_cloud_builds_reproduce_the_full_model(sides):
    model, edge, cloud = sides
    inputs, samples = fake_batch(model, n=2, seed=3)
    payloads = model.encode(inputs, copy.deepcopy(samples))
    assert edge.encode(inputs, copy.deepcopy(samples)) == payloads
    outcome = edge.run_edge(inputs, copy.deepcopy(samples))
    assert outcome.payloads == payloads and outcome.tiers == ['cloud', 'cloud']
    ref = model.decode_and_predict(payloads)
    got = cloud.decode_and_predict(payloads)
    assert sum(len(r.pred_instances) for r in ref) > 0
    for r, g in zip(ref, got):
        assert_same_instances(r.pred_instances, g.pred_instances)


def test_other_side_steps_fail_clearly(sides):
    model, edge, cloud = sides
    inputs, samples = fake_batch(model, n=1)
    payloads = model.encode(inputs, samples)
    with pytest.raises(RuntimeError, match='not part of this edge-only build'):
        edge.decode_and_predict(payloads)
    with pytest.raises(RuntimeError, match='not part of this cloud-only build'):
        cloud.encode(inputs, samples)
    with pytest.raises(TypeError, match='split'):
        build_edge(torch.nn.Linear(2, 2))


def test_export_tool_writes_side_checkpoints_that_load_strictly(tmp_path, capsys):
    import export_edge_cloud
    from mmengine.config import Config
    from mmengine.runner import save_checkpoint
    model = tiny_split(TINY_FRCNN, True)
    cfg_path, ckpt, out = (str(tmp_path / n) for n in ('model.py', 'full.pth', 'out'))
    Config(dict(model=split_cfg(tiny_model_cfg(TINY_FRCNN), 1, compressor=BOTTLENECK,
                                measure_flops=False))).dump(cfg_path)
    save_checkpoint({'state_dict': model.state_dict(), 'meta': {}}, ckpt)
    assert export_edge_cloud.main([cfg_path, ckpt, '--out-dir', out]) == 0
    printed = capsys.readouterr().out
    assert 'edge' in printed and 'cloud' in printed and 'parameters' in printed
    # a differently seeded model gets the exported weights back, side by side
    torch.manual_seed(1)
    fresh = MODELS.build(Config.fromfile(cfg_path).model).eval()
    edge, cloud = fresh.build_edge(), fresh.build_cloud()
    meta = load_checkpoint(edge, f'{out}/edge.pth', logger='silent', strict=True)['meta']
    assert meta['side'] == 'edge' and 'EdgeCloudTwoStageDetector' in meta['config']
    load_checkpoint(cloud, f'{out}/cloud.pth', logger='silent', strict=True)
    inputs, samples = fake_batch(model, n=1, seed=5)
    payloads = model.encode(inputs, samples)
    assert edge.encode(inputs, samples) == payloads
    assert_same_instances(cloud.decode_and_predict(payloads)[0].pred_instances,
                          model.decode_and_predict(payloads)[0].pred_instances)
    # an ordinary detector has no sides to export
    Config(dict(model=tiny_model_cfg(TINY_FRCNN))).dump(cfg_path)
    assert export_edge_cloud.main([cfg_path, ckpt, '--out-dir', out]) == 2
    assert 'not a split' in capsys.readouterr().err


def test_edge_build_plus_cloud_build_equal_the_full_model_with_exit_and_router():
    exit_cfg = dict(
        type='EdgeExit',
        neck=dict(type='EdgeExitPyramid', out_channels=8, num_levels=3),
        head=dict(type='ATSSHead', num_classes=6, in_channels=8, feat_channels=8,
                  stacked_convs=1,
                  norm_cfg=dict(type='GN', num_groups=4, requires_grad=True),
                  anchor_generator=dict(type='AnchorGenerator', ratios=[1.0],
                                        octave_base_scale=2, scales_per_octave=1,
                                        strides=[8, 16, 32]),
                  bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[.0, .0, .0, .0],
                                  target_stds=[0.1, 0.1, 0.2, 0.2])),
        test_cfg=dict(nms_pre=1000, min_bbox_size=0, score_thr=0.0,
                      nms=dict(type='nms', iou_threshold=0.6), max_per_img=20))
    model = tiny_split(TINY_FRCNN, True, edge_exit=exit_cfg,
                       router=dict(type='RandomRouter', threshold=0.5))
    edge, cloud = model.build_edge(), model.build_cloud()
    assert not [k for k in cloud.state_dict() if k.startswith(EDGE_ONLY)]
    assert any(k.startswith('edge_exit.') for k in edge.state_dict())
    inputs, samples = fake_batch(model, n=6, seed=7)
    ref = model.predict(inputs, copy.deepcopy(samples))
    outcome = edge.run_edge(inputs, copy.deepcopy(samples))
    off = [i for i, t in enumerate(outcome.tiers) if t == 'cloud']
    assert 0 < len(off) < 6, outcome.tiers  # both paths are exercised
    got = list(outcome.results)
    for i, res in zip(off, cloud.decode_and_predict([outcome.payloads[i] for i in off])):
        got[i] = res
    assert all(len(r.pred_instances) > 0 for r in got)  # from the exit and from the cloud
    for r, g in zip(ref, got):
        assert_same_instances(r.pred_instances, g.pred_instances)


def test_a_cloud_refuses_payloads_of_another_checkpoint(sides):
    """The fingerprint survives export and reload of a side, and tells checkpoints apart."""
    from ecc_edge.codecs import ModelMismatchError
    model, edge, _ = sides
    inputs, samples = fake_batch(model, n=1, seed=4)
    payload = edge.encode(inputs, copy.deepcopy(samples))
    # a cloud build loaded from the exported state dict accepts them ...
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.backbone.conv1.weight.add_(0.01)  # another checkpoint: other edge weights
    assert other.model_fingerprint() != model.model_fingerprint()  # recomputed after the change
    reloaded = other.build_cloud()
    reloaded.load_state_dict(model.build_cloud().state_dict())
    assert reloaded.model_fingerprint() == model.model_fingerprint()
    assert len(reloaded.decode_and_predict(payload)) == 1
    # ... and the other checkpoint's cloud refuses them, naming both fingerprints
    with pytest.raises(ModelMismatchError, match=model.model_fingerprint().hex()):
        other.build_cloud().decode_and_predict(payload)
    with pytest.raises(ModelMismatchError):
        other.decode_and_predict(payload)
