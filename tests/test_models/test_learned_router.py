"""The learned router's objectives (regress / rank / classify), its gain features and its
out-of-distribution distance of F_k."""
import pytest
import torch
from mmengine.structures import InstanceData

import ecc_mmdet  # noqa: F401
from ecc_mmdet.models.exits import ExitOutput
from ecc_mmdet.models.routers import LearnedRouter
from ecc_mmdet.models.routers.features import (ANCHOR_THRESHOLDS, SCORE_BANDS,
                                               channel_statistics, gain_features)
from ecc_mmdet.utils import ConfigError


def _exits(logits, scores, channels=3, hw=4):
    """An ExitOutput with one (N, C, 2, 2) class map from ``logits`` and per-image detection
    ``scores``."""
    n, c = logits.shape[0], logits.shape[1]
    res = []
    for s in scores:
        r = InstanceData()
        r.scores = torch.tensor(s, dtype=torch.float32)
        r.bboxes = torch.zeros(len(s), 4)
        r.labels = torch.zeros(len(s), dtype=torch.long)
        res.append(r)
    return ExitOutput(results=res, cls_scores=[logits], samples=[None] * n, num_classes=c,
                      features=torch.randn(n, channels, hw, hw,
                                           generator=torch.Generator().manual_seed(0)))


def _spearman(a, b):
    ra, rb = a.argsort().argsort().float(), b.argsort().argsort().float()
    return float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])


def test_gain_features_count_expected_objects_against_reported_ones():
    logit = lambda p: float(torch.logit(torch.tensor(p)))  # noqa: E731
    # image 0: four anchors whose top class scores are 0.9, 0.15, 0.07, 0.01
    # image 1: nothing above 0.01 anywhere
    maps = torch.full((2, 2, 2, 2), logit(0.001))
    maps[0, 1, 0, 0], maps[0, 0, 0, 1], maps[0, 1, 1, 0], maps[0, 0, 1, 1] = (
        logit(0.9), logit(0.15), logit(0.07), logit(0.01))
    f = gain_features(_exits(maps, [[0.9, 0.15, 0.07, 0.06], []])).double()
    assert f.shape == (2, 2 + len(ANCHOR_THRESHOLDS) + len(SCORE_BANDS) - 1)
    soft0 = 0.9 + 0.15 + 0.07 + 0.01
    assert float(f[0, 0]) == pytest.approx(torch.log1p(torch.tensor(soft0)).item(), rel=1e-6)
    assert float(f[1, 0]) == pytest.approx(torch.log1p(torch.tensor(0.004)).item(), rel=1e-4)
    assert f[:, 1].tolist() == pytest.approx([0.9, 0.0])  # best detection, 0 without any
    anchors = torch.expm1(f[:, 2:5]).round().tolist()  # >= 0.05, 0.1, 0.2
    assert anchors == [[3, 2, 1], [0, 0, 0]]
    bands = (f[:, 5:] * 10).round().tolist()  # [.05,.1) [.1,.2) [.2,.3) [.3,.5) [.5,1]
    assert bands == [[2, 1, 0, 0, 1], [0, 0, 0, 0, 0]]


def _router(**kw):
    return LearnedRouter(feature_channels=3, top_k=2, threshold=0.0, **kw)


def test_rank_and_classify_learn_the_order_of_a_noisy_gain():
    g = torch.Generator().manual_seed(0)
    dim = 2 * 2 + 3
    x = torch.randn(600, dim, generator=g)
    latent = torch.tanh(2 * x[:, 0]) + 0.5 * x[:, 1]  # a monotone, nonlinear truth
    noisy = latent + 0.3 * torch.randn(600, generator=g)
    for objective in ('rank', 'classify', 'regress'):
        r = _router(objective=objective)
        fit = r.fit(x[:400], noisy[:400] - float(noisy[:400].median()), fingerprint=5)
        assert fit['objective'] == objective and 1 <= fit['epochs'] <= 500
        with torch.no_grad():
            held_out = r(x[400:])
        assert _spearman(held_out, latent[400:]) > 0.8, objective
    # the classifier's score separates the classes of the held-out images
    assert float(((held_out > 0) == (latent[400:] > 0)).float().mean()) > 0.75
    with pytest.raises(ValueError, match='nothing to rank'):
        _router(objective='rank').fit(x[:20], torch.ones(20), fingerprint=5)
    with pytest.raises(ConfigError, match='objective must be one of'):
        _router(objective='ndcg')


def test_ood_distance_grows_with_the_shift_of_f_k_statistics():
    r = _router(ood_features=True)
    g = torch.Generator().manual_seed(1)
    base = torch.randn(300, 2 * 2 + 3, generator=g)
    stats = torch.cat([0.1 * torch.randn(300, 3, generator=g) + 1.0,
                       0.05 * torch.randn(300, 3, generator=g) + 0.5], 1)
    r.fit(torch.cat([base, stats], 1), torch.randn(300, generator=g), fingerprint=7)
    assert torch.allclose(r.ood_mean, stats.mean(0)) and r.ood_std.shape == (6, )
    probe = torch.cat([base[:3], stats[:1].repeat(3, 1)], 1)
    probe[1, -6:-3] += 1.0   # channel means 10 standard deviations off
    probe[2, -3:] *= 0.2     # a flat, washed-out map: deviations collapse
    dist = r._inputs(probe)[:, -2:]
    assert float(dist[1, 0]) > float(dist[0, 0]) + 3 and float(dist[2, 1]) > float(dist[0, 1]) + 3
    # the raw statistics are F_k's channel means and spatial deviations
    f = torch.arange(12.0).reshape(1, 2, 3, 2).expand(2, -1, -1, -1)
    s = channel_statistics(f)
    assert s[0, :2].tolist() == pytest.approx([2.5, 8.5])
    assert s[0, 2:].tolist() == pytest.approx([f[0, 0].std(unbiased=False).item()] * 2)


def test_router_features_widths_and_export_refusals():
    maps = torch.zeros(2, 2, 2, 2)
    exits = _exits(maps, [[0.5], []])
    for kw, extra in ((dict(), 0), (dict(gain_features=True), 10),
                      (dict(gain_features=True, ood_features=True), 10 + 6)):
        r = _router(**kw)
        assert r.features(exits).shape == (2, 2 * 2 + 3 + extra)
        assert r.mlp[0].in_features == 2 * 2 + 3 + (10 if kw else 0) + (
            2 if kw.get('ood_features') else 0)
    r = _router(ood_features=True)
    r.trained_for.fill_(3)
    with pytest.raises(ConfigError, match='channel statistics of F_k'):
        r.light_edge_spec()
    r = _router(gain_features=True)  # exported with its bands (the light edge computes them)
    r.trained_for.fill_(3)
    assert r.light_edge_spec()['gain']['score_bands'] == list(SCORE_BANDS)
    # a checkpoint of a router with other inputs does not load into this one
    with pytest.raises(ConfigError, match='other settings'):
        _router().load_state_dict(_router(gain_features=True).state_dict())
