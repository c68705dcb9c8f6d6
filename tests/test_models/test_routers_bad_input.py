"""Bad input to the routers: a calibration split too small for the requested offload ratio's
precision (or whose scores tie), and a learned router checkpoint for other exits, are refused
with an error that names the fix, before any image is routed."""
import copy
import math
import os.path as osp

import pytest
import torch

from ecc_mmdet.models.routers import EntropyRouter, exit_fingerprint
from ecc_mmdet.utils import ConfigError

from conftest import REPO, fake_batch, run_tool
from test_dynamic import build, dynamic_cfg


def _distinct(n, seed=0):
    return torch.rand(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_a_calibration_split_too_small_for_the_ratio_is_refused():
    # 8 images cannot offload 5 %: round(0.4) = 0 of them, the router would never offload
    r = EntropyRouter(target_offload_ratio=0.05)
    with pytest.raises(ConfigError, match=r'on 8 images reaches 0\.000 \(0 of 8\).*at least 11 '
                                          'calibration images'):
        r.calibrate(_distinct(8))
    assert math.isnan(float(r.threshold))  # nothing was set
    # 30 % of 8 images reaches 25 %: within the default precision of 5 points, not within 2
    assert 0 < EntropyRouter(target_offload_ratio=0.3).calibrate(_distinct(8)) < 1
    with pytest.raises(ConfigError, match=r'ratio_precision=0\.02: use at least 25'):
        EntropyRouter(target_offload_ratio=0.3, ratio_precision=0.02).calibrate(_distinct(8))
    # 0 and 1 need no calibration images to speak of; 4 images reach 50 % exactly
    assert EntropyRouter(target_offload_ratio=0.5).calibrate(_distinct(4)) < 1
    assert EntropyRouter(target_offload_ratio=0.5).calibrate(_distinct(1), 0.0) == math.inf
    with pytest.raises(ConfigError, match='ratio_precision must be in'):
        EntropyRouter(target_offload_ratio=0.5, ratio_precision=0)


@pytest.mark.parametrize('precision', [0.05, 0.02, 0.01])
def test_the_size_the_error_asks_for_is_enough(precision):
    """For every ratio, the error names a size above the one refused, and every calibration
    split of at least the largest size named reaches the ratio within the precision."""
    for ratio in (0.01, 0.05, 0.1, 0.25, 0.3, 0.5, 0.7, 0.9, 0.97):
        named, passed = {}, {}
        for n in range(1, 300):
            try:
                EntropyRouter(target_offload_ratio=ratio,
                              ratio_precision=precision).calibrate(_distinct(n))
                passed[n] = True
            except ConfigError as e:
                named[n] = int(str(e).split('use at least ')[1].split()[0])
                passed[n] = False
        assert named and all(m > n for n, m in named.items()), (ratio, named)
        need = max(named.values())
        assert need < 300 and all(passed[n] for n in passed if n >= need), (ratio, need)


def test_tied_calibration_scores_that_miss_the_ratio_are_refused():
    scores = torch.cat([torch.full((30, ), 0.5, dtype=torch.float64), _distinct(10) + 1])
    with pytest.raises(ConfigError, match=r'reaches only 0\.250 \(10 of 40\): 30 of them share '
                                          'the score at the threshold'):
        EntropyRouter(target_offload_ratio=0.5).calibrate(scores)
    # a ratio the ties do not straddle is reached
    assert EntropyRouter(target_offload_ratio=0.25).calibrate(scores) == pytest.approx(0.5 + (
        float(_distinct(10).min()) + 1 - 0.5) / 2)


@pytest.fixture(scope='module')
def learned_checkpoint():
    """A LearnedRouter fitted for the exits of the seed-0 model: its router.* weights."""
    m = build(_learned_cfg(), seed=0)
    g = torch.Generator().manual_seed(0)
    dim = m.router.feat_mean.numel()
    m.router.fit(torch.randn(40, dim, generator=g), torch.randn(40, generator=g),
                 exit_fingerprint(m.edge_exit), max_epochs=5)
    return {f'router.{k}': v for k, v in m.router.state_dict().items()}


def _learned_cfg(**router):
    return dynamic_cfg(dict(type='LearnedRouter', target_offload_ratio=0.5, **router))


def test_a_learned_router_checkpoint_for_other_exits_is_refused(learned_checkpoint):
    from ecc_mmdet.apis import load_weights
    from ecc_mmdet.deployment.calibration import calibrate_router
    other = build(_learned_cfg(), seed=1)  # other exit weights
    load_weights(other, dict(state_dict=learned_checkpoint), partial=True)
    assert int(other.router.trained_for) != exit_fingerprint(other.edge_exit)
    inputs, samples = fake_batch(other, n=4, seed=2)
    with pytest.raises(ConfigError, match='trained for other edge exits.*tools/train_router.py'):
        calibrate_router(other, [(inputs, samples)])  # refused before a threshold is set
    assert math.isnan(float(other.router.threshold))
    with pytest.raises(ConfigError, match='trained for other edge exits'):
        other.predict(inputs, copy.deepcopy(samples))
    # the model it was fitted for takes it, and calibrates
    same = build(_learned_cfg(), seed=0)
    load_weights(same, dict(state_dict=learned_checkpoint), partial=True)
    batches = [fake_batch(same, n=4, seed=s) for s in range(3)]
    t, reached = calibrate_router(same, batches)
    assert reached == pytest.approx(0.5) and math.isfinite(t)
    # a checkpoint of a router built with other settings does not load half-way
    with pytest.raises(ConfigError, match='built with other settings'):
        load_weights(build(_learned_cfg(hidden=8), seed=0),
                     dict(state_dict=learned_checkpoint), partial=True)


def test_train_router_refuses_a_checkpoint_without_trained_exits(tiny_coco_calib, tmp_path):
    """A router fitted on a checkpoint without exit weights would route for random exits."""
    from mmengine.runner import save_checkpoint

    from ecc_mmdet.apis import build_detector, load_config
    config = osp.join(REPO, 'configs', 'ecc_faster_rcnn_r18_synthetic_dynamic.py')
    cfg = load_config(config, tiny_coco_calib)
    state = {k: v for k, v in build_detector(cfg.model).state_dict().items()
             if not k.startswith(('edge_exit.', 'router.'))}
    ckpt = tmp_path / 'student.pth'
    save_checkpoint(dict(state_dict=state, meta={}), str(ckpt))
    proc = run_tool('train_router', config, ckpt, '--out', tmp_path / 'router.pth', '--skip', 0,
                    '--num-images', 8, '--data-root', tiny_coco_calib, check=False)
    assert proc.returncode == 2 and 'holds no edge_exit weights' in proc.stderr
    assert not (tmp_path / 'router.pth').exists()


def test_empty_exit_router_puts_images_where_the_exit_found_nothing_first():
    """EmptyExitRouter = the entropy + 1 where no exit detection reaches empty_below: a
    confidently empty exit (low entropy) still goes to the cloud before any image where the exit
    found something; elsewhere it is the EntropyRouter."""
    from mmengine.structures import InstanceData
    from ecc_mmdet.models.exits import ExitOutput
    from ecc_mmdet.models.routers import EmptyExitRouter
    g = torch.Generator().manual_seed(0)
    cls = [torch.randn(3, 6, 4, 4, generator=g) * 3]
    dets = [InstanceData(scores=torch.tensor(s), bboxes=torch.zeros(len(s), 4),
                         labels=torch.zeros(len(s), dtype=torch.long))
            for s in ([0.9, 0.1], [0.29], [])]
    exits = ExitOutput(results=dets, cls_scores=cls, features=torch.zeros(3, 1, 4, 4),
                       samples=[], num_classes=6)
    entropy = EntropyRouter(top_k=5, threshold=0.5).scores(exits)
    router = EmptyExitRouter(top_k=5, empty_below=0.3, target_offload_ratio=0.5)
    assert torch.equal(router.scores(exits), entropy + torch.tensor([0.0, 1.0, 1.0],
                                                                    dtype=torch.float64))
    assert entropy[0] < router.calibrate(router.scores(exits), 2 / 3) < 1 + entropy[1:].min()
    assert router.decide(exits).tolist() == [False, True, True]
    assert router.light_edge_spec()['empty_below'] == 0.3
    for bad in (0.0, 1.5):
        with pytest.raises(ConfigError, match='empty_below'):
            EmptyExitRouter(empty_below=bad)
    with pytest.raises(ConfigError, match='score range'):
        EmptyExitRouter(threshold=2.5)
    # by default "nothing" is fitted on the calibration images: below the 10 % quantile of their
    # top scores (here 0.058 of 0.9 / 0.29 / none): only the third image is empty
    fitted = EmptyExitRouter(top_k=5, target_offload_ratio=0.5)
    with pytest.raises(RuntimeError, match='not fitted'):
        fitted.scores(exits)
    with pytest.raises(ConfigError, match='calibrate'):
        fitted.light_edge_spec()
    assert torch.equal(fitted.fit_calibration(fitted.calibration_parts(exits)),
                       entropy + torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))
    assert fitted.empty_below == pytest.approx(float(torch.quantile(
        torch.tensor([0.9, 0.29, 0.0], dtype=torch.float64), 0.1)))
    assert torch.equal(fitted.scores(exits), entropy + torch.tensor([0.0, 0.0, 1.0],
                                                                    dtype=torch.float64))
    with pytest.raises(ConfigError, match='fixed threshold'):
        EmptyExitRouter(threshold=1.0)


def test_shift_router_sends_images_with_shifted_features_first():
    """ShiftRouter = EmptyExitRouter + 1 where F_k's channel statistics lie beyond the
    ood_quantile of the calibration images' distances: images whose features are darker and
    flatter (as under fog) go to the cloud first although the exit still finds something; its
    light edge entry holds the fitted statistics."""
    from mmengine.structures import InstanceData
    from ecc_mmdet.models.exits import ExitOutput
    from ecc_mmdet.models.routers import ShiftRouter
    g = torch.Generator().manual_seed(0)

    def exits(n, scale, shift):
        dets = [InstanceData(scores=torch.tensor([0.8]), bboxes=torch.zeros(1, 4),
                             labels=torch.zeros(1, dtype=torch.long)) for _ in range(n)]
        feats = torch.randn(n, 4, 8, 8, generator=g) * scale + shift
        return ExitOutput(results=dets, cls_scores=[torch.randn(n, 6, 4, 4, generator=g)],
                          features=feats, samples=[], num_classes=6)

    clean, foggy = exits(40, 1.0, 0.0), exits(5, 0.2, 2.0)
    router = ShiftRouter(top_k=5, target_offload_ratio=0.5)
    with pytest.raises(RuntimeError, match='not fitted'):
        router.scores(clean)
    fitted = router.fit_calibration(router.calibration_parts(clean))
    entropy = EntropyRouter(top_k=5, threshold=0.5)
    flagged = fitted - entropy.scores(clean)
    assert set(flagged.round().tolist()) == {0.0, 1.0}  # the clean tail above the 0.9 quantile
    assert int(flagged.round().sum()) == 4  # 40 images: 4 beyond the 0.9 quantile
    router.calibrate(fitted)
    shifted = router.scores(foggy) - entropy.scores(foggy)
    assert torch.allclose(shifted, torch.ones(5, dtype=torch.float64))
    assert router.decide(foggy).all()
    spec = router.light_edge_spec()  # what the light edge scores with
    assert spec['kind'] == 'ShiftRouter' and spec['ood_above'] == router.ood_above
    assert len(spec['stats_mean']) == len(spec['stats_std']) == 8  # 4 channels: means, stds
    with pytest.raises(ConfigError, match='calibrate the router before exporting'):
        ShiftRouter(top_k=5, threshold=None, target_offload_ratio=0.5).light_edge_params()
    # an empty exit on the most typical calibration image's features: only the empty-exit
    # term flags it
    typical = int(router._distance(router.calibration_parts(clean)).argmin())
    calm = ExitOutput(results=[clean.results[typical][:0]], cls_scores=[
        c[typical:typical + 1] for c in clean.cls_scores],
        features=clean.features[typical:typical + 1], samples=[], num_classes=6)
    router.empty_below = 0.5
    assert float(router.scores(calm) - entropy.scores(calm)) == pytest.approx(1.0)
    no_empty = ShiftRouter(top_k=5, flag_empty=False, target_offload_ratio=0.5)
    no_empty.fit_calibration(no_empty.calibration_parts(clean))
    assert float(no_empty.scores(calm) - entropy.scores(calm)) == pytest.approx(0.0)
    assert torch.allclose(no_empty.scores(foggy) - entropy.scores(foggy),
                          torch.ones(5, dtype=torch.float64))
    with pytest.raises(ConfigError, match='ood_quantile'):
        ShiftRouter(ood_quantile=1.0, target_offload_ratio=0.5)
    with pytest.raises(ConfigError, match='target_offload_ratio'):
        ShiftRouter(threshold=1.0)
