"""Dynamic inference: edge exits, routers, the routed deployment path and its accounting."""
import copy
import math

import numpy as np
import pytest
import torch
from mmdet.registry import MODELS

import ecc_mmdet  # noqa: F401
from ecc_mmdet.deployment import DeploymentMeter, meter_for, run_deployment
from ecc_mmdet.deployment.calibration import tier_predictions
from ecc_mmdet.models.routers import (BaseRouter, EntropyRouter, LearnedRouter, RandomRouter,
                                      ScoreBandRouter, exit_fingerprint, threshold_for_ratio)
from ecc_mmdet.structures import read as read_comm
from ecc_mmdet.utils import ConfigError, check_config

from conftest import TINY_FRCNN, TINY_RETINA, exit_cfg, fake_batch, split_cfg, tiny_model_cfg


def dynamic_cfg(router=None, two_stage=True, **kw):
    cfg = split_cfg(tiny_model_cfg(TINY_FRCNN if two_stage else TINY_RETINA), 0,
                    dict(type='EntropyBottleneckNeck', latent_channels=8), two_stage)
    cfg.edge_exit = exit_cfg()
    cfg.router = router
    cfg.update(kw)
    return cfg


def build(cfg, seed=0):
    torch.manual_seed(seed)
    return MODELS.build(copy.deepcopy(cfg)).eval()


@pytest.fixture(scope='module')
def model():
    return build(dynamic_cfg(dict(type='RandomRouter', threshold=0.5)))


def detections(samples):
    return [(s.pred_instances.bboxes.clone(), s.pred_instances.scores.clone(),
             s.pred_instances.labels.clone()) for s in samples]


def test_threshold_extremes_route_everything_to_one_side(model):
    inputs, samples = fake_batch(model, n=4, seed=2)
    for t, tier, offloaded in ((-math.inf, 'cloud', True), (math.inf, 'edge_main', False)):
        m = copy.deepcopy(model)
        m.router = RandomRouter(threshold=t)
        recs = [read_comm(r) for r in m.predict(inputs, copy.deepcopy(samples))]
        assert [r.tier for r in recs] == [tier] * 4
        assert [r.offloaded for r in recs] == [offloaded] * 4
    # the same extremes through target ratios (no calibration needed)
    assert RandomRouter(target_offload_ratio=0.0).threshold == math.inf
    assert RandomRouter(target_offload_ratio=1.0).threshold == -math.inf


def test_merged_results_equal_each_branch_in_input_order(model):
    inputs, samples = fake_batch(model, n=6, seed=3)
    res = model.predict(inputs, copy.deepcopy(samples))
    tiers = [read_comm(r).tier for r in res]
    assert 0 < tiers.count('cloud') < 6, tiers  # seeded: a real mix
    assert [r.img_id for r in res] == [s.img_id for s in samples]  # order kept, none dropped
    meter = DeploymentMeter(measure_flops=False, estimate_rate=False)
    only_edge, only_cloud = (detections(run_deployment(model, inputs, copy.deepcopy(samples),
                                                       meter=meter, force_tier=tier))
                             for tier in ('edge', 'cloud'))
    for i, (r, t) in enumerate(zip(detections(res), tiers)):
        ref = only_cloud[i] if t == 'cloud' else only_edge[i]
        for a, b in zip(r, ref):
            assert torch.equal(a, b)


def forced(m, inputs, samples, tier):
    meter = DeploymentMeter(measure_flops=True, estimate_rate=False)
    return [read_comm(r) for r in run_deployment(m, inputs, copy.deepcopy(samples), meter=meter,
                                                 force_tier=tier)]


def test_forcing_a_tier_is_an_argument_of_the_pipeline(model):
    """``force_tier`` sends 100 % / 0 % of the images to the cloud without asking the router
    (here one not calibrated yet: asking it would raise) and without replacing it; the exits
    still run. The calibration passes (``tier_predictions``) use it."""
    inputs, samples = fake_batch(model, n=5, seed=4)
    m = copy.deepcopy(model)
    router = m.router = EntropyRouter(target_offload_ratio=0.3)
    for tier, offloaded, name in (('cloud', True, 'cloud'), ('edge', False, 'edge_main')):
        recs = forced(m, inputs, samples, tier)
        assert [(r.offloaded, r.tier) for r in recs] == [(offloaded, name)] * 5
        assert all(r.exit_flops > 0 for r in recs)
        preds = tier_predictions(m, [(inputs, copy.deepcopy(samples))], offload_all=offloaded)
        assert [p['comm']['offloaded'] for p in preds] == [offloaded] * 5
    assert m.router is router and math.isnan(float(router.threshold))
    with pytest.raises(RuntimeError, match='no calibrated threshold'):
        m.predict(inputs, copy.deepcopy(samples))  # unforced, the router is asked
    # no router (the benchmark's passes): the exits run when a tier is forced
    bare = build(dynamic_cfg(None))
    assert [r.tier for r in forced(bare, inputs, samples, 'edge')] == ['edge_main'] * 5
    with pytest.raises(ValueError, match='force_tier'):
        forced(bare, inputs, samples, 'edge_main')


def test_the_router_owns_its_calibration_rule(monkeypatch):
    """A target ratio other than 0 / 1 needs calibration; a threshold does not; no argument
    means DEFAULT_RATIO. The router's instance, its config, the config check and the tools'
    decision are one rule: changing the router's default changes every one of them."""
    cases = [(dict(threshold=0.3), False), (dict(target_offload_ratio=0.0), False),
             (dict(target_offload_ratio=1), False), (dict(target_offload_ratio=0.5), True),
             (dict(), True)]
    for kw, needs in cases:
        assert BaseRouter.config_needs_calibration(kw) is needs, kw
        assert EntropyRouter(**kw).needs_calibration is needs, kw
    assert BaseRouter.DEFAULT_RATIO == 0.5 and EntropyRouter().target_offload_ratio == 0.5
    from mmengine.config import Config
    cfg = Config(dict(custom_imports=dict(imports=['ecc_mmdet']),
                      model=dict(edge_exit=exit_cfg(), router=dict(type='EntropyRouter'))))
    with pytest.raises(ConfigError, match=r'target_offload_ratio=0.5 needs a calibration split'):
        check_config(cfg, mode='test')  # the check registered by RouterCalibrationHook's module
    from ecc_tools.dynamic import needs_calibration
    assert needs_calibration(cfg)
    monkeypatch.setattr(BaseRouter, 'DEFAULT_RATIO', 0.0)  # the default keeps all on the edge
    check_config(cfg, mode='test')
    assert not needs_calibration(cfg) and not EntropyRouter().needs_calibration
    assert EntropyRouter().threshold == math.inf


def test_accounting_of_edge_finished_images(model):
    inputs, samples = fake_batch(model, n=6, seed=3)
    m = copy.deepcopy(model)  # a fresh model: the pipeline's meter for it counts anew
    recs = [read_comm(r) for r in m.predict(inputs, copy.deepcopy(samples))]
    edge = [r for r in recs if not r.offloaded]
    sent = [r for r in recs if r.offloaded]
    assert edge and sent
    assert all(r.payload_bytes == 0 and r.header_bytes == 0 and r.cloud_flops == 0
               and r.cloud_time_s == 0 and r.estimated_bits is None for r in edge)
    assert all(r.payload_bytes > r.header_bytes > 0 and r.cloud_flops > 0 for r in sent)
    # exit FLOPs are edge FLOPs, spent by every image; encoding only by the offloaded ones
    exit_flops = meter_for(m).flops['exit'].get((3, 96, 96), None)
    assert exit_flops > 0 and all(r.exit_flops >= exit_flops for r in recs)
    assert all(r.edge_flops == pytest.approx(sent[0].edge_flops) for r in sent)
    assert all(r.edge_flops == pytest.approx(edge[0].edge_flops) for r in edge)
    encode = meter_for(m).flops['encode'].get((3, 96, 96), None)
    assert sent[0].edge_flops == pytest.approx(edge[0].edge_flops + encode)
    assert m.edge_param_count() > build(dynamic_cfg(None)).splitter.split_channels()


def test_without_router_every_image_goes_to_the_cloud():
    m = build(dynamic_cfg(None))
    inputs, samples = fake_batch(m, n=3)
    assert all(read_comm(r).offloaded for r in m.predict(inputs, samples))


@pytest.mark.parametrize('two_stage', [True, False])
def test_exit_only_training_trains_the_exit_and_nothing_else(two_stage):
    m = build(dynamic_cfg(dict(type='EntropyRouter', threshold=0.5), two_stage,
                          train_exits_only=True))
    m.edge_exit.distill_weight = 0.5
    m.edge_exit.pseudo_label_score_thr = 0.0  # the untrained cloud's detections as labels
    m.train()
    assert not m.compressor.training and not m.backbone.training and m.edge_exit.training
    before = {k: v.clone() for k, v in m.state_dict().items()}
    inputs, samples = fake_batch(m, n=2, with_gt=True, training=True)
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.1)
    losses = m.loss(inputs, samples)
    assert any(k.startswith('exit_kd_') for k in losses) and all(k.startswith('exit_')
                                                                 for k in losses)
    total = sum(v if torch.is_tensor(v) else sum(v) for v in losses.values())
    total.backward()
    trained = {n for n, p in m.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert trained and all(n.startswith('edge_exit.') for n in trained)
    opt.step()
    after = m.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith('edge_exit.') for k in changed), changed


def test_joint_training_adds_exit_losses_on_detached_edge_features():
    m = build(dynamic_cfg(None))
    m.train()
    inputs, samples = fake_batch(m, n=2, with_gt=True, training=True)
    losses = m.loss(inputs, samples)
    assert 'exit_loss_cls' in losses and 'loss_rate' in losses
    exit_total = sum(v if torch.is_tensor(v) else sum(v)
                     for k, v in losses.items() if k.startswith('exit_'))
    exit_total.backward()
    assert all(p.grad is None for p in m.backbone.parameters())  # F_k is never changed by it


def test_calibration_hits_its_target_on_a_held_split():
    g = torch.Generator().manual_seed(0)
    calib, held = torch.rand(400, generator=g), torch.rand(2000, generator=g)
    for ratio in (0.1, 0.3, 0.5, 0.8):
        t = threshold_for_ratio(calib, ratio)
        assert float((calib > t).double().mean()) == pytest.approx(ratio, abs=1 / 400)
        # same distribution, other images: within 4 standard errors of the calibration estimate
        assert abs(float((held > t).double().mean()) - ratio) < 4 * math.sqrt(ratio * (1 - ratio)
                                                                              / 400)
    # ties (integer counts) are broken by the score band's fractional part
    r = ScoreBandRouter(target_offload_ratio=0.5)
    assert r.calibrate(torch.tensor([0., 0., 1.2, 1.5, 2.1, 3.0])) == pytest.approx(1.35)
    assert threshold_for_ratio(torch.tensor([1., 2.]), 0) == math.inf
    assert threshold_for_ratio(torch.tensor([1., 2.]), 1) == -math.inf


def test_router_scores_are_deterministic_and_in_range(model):
    inputs, samples = fake_batch(model, n=4, seed=5)
    exits = model.run_exits(model.edge_features(inputs), samples)
    for router in (EntropyRouter(threshold=0.5), RandomRouter(threshold=0.5),
                   ScoreBandRouter(threshold=1.0)):
        s1, s2 = router.scores(exits), router.scores(exits)
        assert s1.shape == (4, ) and torch.equal(s1, s2)
        lo, hi = router.score_range
        assert ((s1 >= lo) & (s1 <= hi)).all()
    # the random router's decision depends on the image id only, not on the batch
    one = model.run_exits(model.edge_features(inputs[1:2]), samples[1:2])
    assert RandomRouter(threshold=0.5).scores(one)[0] == RandomRouter(threshold=0.5).scores(
        exits)[1]


def test_uncalibrated_router_and_bad_router_configs_fail_clearly(model):
    m = copy.deepcopy(model)
    m.router = EntropyRouter(target_offload_ratio=0.3)
    inputs, samples = fake_batch(m, n=1)
    with pytest.raises(RuntimeError, match='no calibrated threshold'):
        m.predict(inputs, samples)
    with pytest.raises(ConfigError, match='target_offload_ratio must be in'):
        EntropyRouter(target_offload_ratio=1.5)
    with pytest.raises(ConfigError, match='outside the EntropyRouter score range'):
        EntropyRouter(threshold=2.0)
    with pytest.raises(ConfigError, match='not both'):
        EntropyRouter(threshold=0.5, target_offload_ratio=0.5)
    with pytest.raises(ConfigError, match='low < high'):
        ScoreBandRouter(low=0.7, high=0.2)


def test_exit_that_cannot_run_on_the_edge_features_is_refused():
    cfg = dynamic_cfg(None)
    cfg.edge_exit['head']['in_channels'] = 5  # neck gives 8 channels
    with pytest.raises(ConfigError, match='edge_exit.head cannot run'):
        MODELS.build(cfg)
    cfg = dynamic_cfg(None)
    cfg.edge_exit['head']['anchor_generator']['strides'] = [8, 16]  # 3 neck levels
    with pytest.raises(ConfigError, match='edge_exit.head'):
        MODELS.build(cfg)
    cfg = dynamic_cfg(None, train_exits_only=True)
    cfg.edge_exit = None
    with pytest.raises(ConfigError, match='train_exits_only'):
        MODELS.build(cfg)


def test_learned_router_trains_only_itself_and_refuses_other_exits(model):
    m = copy.deepcopy(model)
    m.router = LearnedRouter(feature_channels=m.splitter.split_channels(), threshold=0.0)
    inputs, samples = fake_batch(m, n=6, seed=7)
    with pytest.raises(ConfigError, match='untrained'):
        m.predict(inputs, copy.deepcopy(samples))
    exits = m.run_exits(m.edge_features(inputs), samples)
    feats = m.router.features(exits)
    # a gain that is a known (noisy, linear) function of the features: learnable
    g = torch.Generator().manual_seed(0)
    train_feats = torch.randn(200, feats.shape[1], generator=g)
    w = torch.randn(feats.shape[1], generator=g) / feats.shape[1]**0.5
    gains = train_feats @ w + 0.05 * torch.randn(200, generator=g)
    model_before = {k: v.clone() for k, v in m.state_dict().items() if not k.startswith('router')}
    fit = m.router.fit(train_feats, gains, exit_fingerprint(m.edge_exit))
    assert 1 <= fit['epochs'] <= 500 and fit['holdout_loss'] < 0.2 * float(gains.var())
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in model_before.items())
    # the deployment path offloads exactly the images the router scores above its threshold
    scores = m.router(feats)
    m.router.threshold.fill_(float(scores.median()))
    res = m.predict(inputs, copy.deepcopy(samples))
    assert [read_comm(r).offloaded for r in res] == (scores.double() > float(
        scores.median())).tolist()
    other = copy.deepcopy(m)
    with torch.no_grad():
        next(other.edge_exit.parameters()).add_(0.01)  # retrained exits
    other.tiers.forget_exit()
    with pytest.raises(ConfigError, match='trained for other edge exits'):
        other.predict(inputs, copy.deepcopy(samples))


def test_edge_finished_images_can_report_their_detections(model):
    from ecc_edge.codecs.detections import FRAMING_BYTES, unpack_detections
    m = copy.deepcopy(model)
    m.edge_report = dict(score_thr=0.0, max_boxes=5)
    inputs, samples = fake_batch(m, n=6, seed=3)
    res = m.predict(inputs, copy.deepcopy(samples))
    outcome = m.run_edge(inputs, copy.deepcopy(samples))
    for r, payload in zip(res, outcome.payloads):
        rec = read_comm(r)
        if rec.offloaded:
            continue
        # the record counts the report's real bytes; the report holds the top boxes
        assert rec.codec == 'detections_report' and rec.payload_bytes == len(payload)
        assert rec.header_bytes == FRAMING_BYTES
        d = unpack_detections(payload)
        top = r.pred_instances.scores.sort(descending=True).values[:5]
        assert len(d.scores) == len(top) <= 5
        assert np.allclose(d.scores, top.numpy(), atol=0.5 / 255 + 1e-6)
    with pytest.raises(ConfigError, match='unknown keys'):
        MODELS.build(dynamic_cfg(None, edge_report=dict(score=0.3)))


def ext_cfg(hard=(0, 1, 2, 3, 4, 5), **kw):
    cfg = dynamic_cfg(dict(type='RandomRouter', threshold=math.inf), **kw)
    cfg.extension_exit = exit_cfg(channels=16)
    cfg.hard_classes = list(hard)
    return cfg


def test_extension_exit_serves_images_whose_top_class_is_hard():
    m = build(ext_cfg(hard=(1, 2)))
    inputs, samples = fake_batch(m, n=6, seed=5)
    exits = m.run_exits(m.edge_features(inputs), samples)
    expect_ext = [i for i, r in enumerate(exits.results)
                  if len(r) and int(r.labels[r.scores.argmax()]) in (1, 2)]
    assert 0 < len(expect_ext) < 6, 'seeded batch should mix hard and easy top classes'
    res = m.predict(inputs, copy.deepcopy(samples))
    tiers = [read_comm(r).tier for r in res]
    assert [i for i, t in enumerate(tiers) if t == 'edge_extension'] == expect_ext
    f = m.edge_features(inputs)
    ext, _ = m.extension_exit.predict(f, samples)
    for i in expect_ext:  # main's easy-class boxes + the extension's hard-class boxes
        main, e = exits.results[i], ext[i]
        want = torch.cat([main.bboxes[~torch.isin(main.labels, torch.tensor([1, 2]))],
                          e.bboxes[torch.isin(e.labels, torch.tensor([1, 2]))]])
        assert torch.equal(res[i].pred_instances.bboxes, want)
    for i in set(range(6)) - set(expect_ext):
        assert torch.equal(res[i].pred_instances.bboxes, exits.results[i].bboxes)
    # the extension's FLOPs are edge (exit) FLOPs of exactly the images that ran it
    recs = [read_comm(r) for r in res]
    ext_flops = {round(recs[i].exit_flops) for i in expect_ext}
    main_flops = {round(r.exit_flops) for i, r in enumerate(recs) if i not in expect_ext}
    assert len(ext_flops) == 1 and len(main_flops) == 1 and ext_flops.pop() > main_flops.pop()


def test_extension_training_trains_only_the_extension_on_hard_classes():
    m = build(ext_cfg(hard=(2, ), train_exits_only='extension'))
    m.train()
    assert m.extension_exit.training and not m.edge_exit.training
    inputs, samples = fake_batch(m, n=2, with_gt=True, training=True)
    hard_only = m.tiers.hard_only(samples)
    assert [s.gt_instances.labels.tolist() for s in hard_only] == [[2] if 2 in s.gt_instances.labels
                                                                  else [] for s in samples]
    losses = m.loss(inputs, samples)
    total = sum(v if torch.is_tensor(v) else sum(v) for v in losses.values())
    total.backward()
    trained = {n for n, p in m.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert trained and all(n.startswith('extension_exit.') for n in trained)
    with pytest.raises(ConfigError, match='go together'):
        MODELS.build(dynamic_cfg(None, extension_exit=exit_cfg()))
    with pytest.raises(ConfigError, match='label indices'):
        MODELS.build(ext_cfg(hard=(6, )))
    with pytest.raises(ConfigError, match='train_exits_only'):
        MODELS.build(ext_cfg(train_exits_only='everything'))
