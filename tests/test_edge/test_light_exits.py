"""The light edge runtime with an edge exit and a router (ecc_edge.exits): on a tiny seeded
dynamic model, for every router of the library, its router decisions, edge detections (decoded,
NMS'd, rescaled, score-mapped), detections reports and offloaded payloads match the PyTorch edge
(``run_edge``); what it does not port is refused at export, with the reason."""
import copy
import os.path as osp

import numpy as np
import pytest
import torch

EXIT = dict(  # a small exit; its classifier is spread at random so scores are not all tied
    type='EdgeExit', neck=dict(type='EdgeExitPyramid', out_channels=8, num_levels=3),
    head=dict(type='ATSSHead', num_classes=6, in_channels=8, feat_channels=8, stacked_convs=1,
              norm_cfg=dict(type='GN', num_groups=4, requires_grad=True),
              anchor_generator=dict(type='AnchorGenerator', ratios=[0.5, 1.0], octave_base_scale=2,
                                    scales_per_octave=1, strides=[8, 16, 32]),
              bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[.0, .0, .0, .0],
                              target_stds=[0.1, 0.1, 0.2, 0.2])),
    test_cfg=dict(nms_pre=50, min_bbox_size=0, score_thr=0.05,
                  nms=dict(type='nms', iou_threshold=0.6), max_per_img=20))


def _datasets(cfg):
    """The tiny set's val and train images through the test pipeline (12 images)."""
    from ecc_mmdet.apis import build_test_dataset
    val = build_test_dataset(cfg)
    tcfg = copy.deepcopy(cfg)
    ds = tcfg.test_dataloader.dataset
    ds.ann_file, ds.data_prefix = 'annotations/instances_train.json', dict(img='train/')
    return [val, build_test_dataset(tcfg)]


def _build(served_model, router, exit_=EXIT, spread=0.3, cls_bias=-1.0, **model_keys):
    """The model with its exit head's last convolutions drawn with std ``spread``: scores far
    from saturation, so that no two are exactly equal in float32 (the order of tied scores
    follows torch's unstable sort in mmdet, which numpy does not reproduce); ``cls_bias``
    shifts the class scores."""
    from ecc_mmdet.apis import build_detector, load_config
    cfg = load_config(served_model['config'])
    cfg.model.update(edge_exit=copy.deepcopy(exit_), router=router, **model_keys)
    torch.manual_seed(3)
    model = build_detector(cfg.model, served_model['checkpoint'],
                           partial='split')  # the exit stays random
    g = torch.Generator().manual_seed(5)
    head = model.edge_exit.head
    prefix = 'atss' if hasattr(head, 'atss_cls') else 'retina'
    with torch.no_grad():
        for name in ('cls', 'reg', 'centerness'):
            conv = getattr(head, f'{prefix}_{name}', None)
            if conv is not None:
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * spread)
        getattr(head, f'{prefix}_cls').bias.fill_(cls_bias)
    return cfg, model.eval()


def _reference(model, datasets):
    """Per image: (path, img_id, router score, EdgeOutcome of the PyTorch edge, symbols)."""
    from ecc_mmdet.apis import iter_batches
    from ecc_mmdet.deployment.pipeline import run_edge
    out = []
    with torch.no_grad():
        for ds in datasets:
            for inputs, samples in iter_batches(model, ds, batch_size=1):
                f = model.edge_features(inputs)
                score = float(model.router.scores(model.run_exits(f, samples))[0])
                y = model.compressor._latent(f)
                med = model.compressor.entropy_model._medians().view(1, -1, 1, 1)
                sym = torch.round(y - med).to(torch.int32)[0].numpy()
                edge = run_edge(model, inputs, samples)
                out.append((samples[0].img_path, samples[0].img_id, score, edge, sym))
    return out


def _set_mid_threshold(model, scores):
    """A threshold between the two middle scores: half the images offloaded, none near it."""
    s = np.sort(scores)
    k = len(s) // 2
    assert s[k] - s[k - 1] > 1e-6, 'router scores tie: the test images do not separate'
    model.router.threshold.fill_(float((s[k - 1] + s[k]) / 2))


def _compare(model, cfg, datasets, tmp_path):
    from edge_client import LightRunner

    from ecc_edge.codecs.detections import unpack_detections
    from ecc_edge.runtime import LightEdge
    from ecc_mmdet.serving.client import detections_to_json
    from ecc_mmdet.deployment.edge_export import check_graph, export_edge_onnx
    ref = _reference(model, datasets)
    _set_mid_threshold(model, [r[2] for r in ref])
    ref = _reference(model, datasets)
    graph, _ = export_edge_onnx(model, cfg, str(tmp_path))
    assert check_graph(graph, model) < 1e-3
    edge = LightEdge(graph)
    runner = LightRunner(str(tmp_path))  # tools/edge_client.py --light
    agree = total = n_edge = n_boxes = 0
    for path, img_id, score, out, sym in ref:
        res = edge.process(path, img_id)
        er = runner.process(path, img_id)
        assert (er.tier, er.payload) == (res.tier, res.payload)
        assert res.router_score == pytest.approx(score, abs=1e-5)
        assert res.tier == out.tiers[0], path
        if res.tier == 'cloud':
            assert res.detections is None and res.payload is not None
            agree += int((res.symbols == sym).sum())
            total += sym.size
            if np.array_equal(res.symbols, sym):
                assert res.payload == out.payloads[0]
            continue
        n_edge += 1
        inst = out.results[0].pred_instances
        d = res.detections
        assert len(d.labels) == len(inst) and len(inst) > 0, path
        np.testing.assert_array_equal(d.labels, inst.labels.numpy())
        np.testing.assert_allclose(d.bboxes, inst.bboxes.numpy(), atol=1e-3, rtol=0)
        np.testing.assert_allclose(d.scores, inst.scores.numpy(), atol=1e-5, rtol=0)
        n_boxes += len(inst)
        want = detections_to_json(out.results[0])
        assert er.detections['image_size'] == want['image_size']
        for a, b in zip(er.detections['detections'], want['detections'], strict=True):
            assert (a['label'], a['class_name']) == (b['label'], b['class_name'])
            assert a['bbox'] == pytest.approx(b['bbox'], abs=2e-3)
            assert a['score'] == pytest.approx(b['score'], abs=2e-6)
        if model.edge_report is None:
            assert res.payload is None and out.payloads[0] is None
        else:
            got, want = unpack_detections(res.payload), unpack_detections(out.payloads[0])
            assert got.img_id == want.img_id == img_id
            np.testing.assert_array_equal(got.labels, want.labels)
            np.testing.assert_allclose(got.bboxes, want.bboxes, atol=1)
    assert 0 < n_edge < len(ref) and n_boxes > 0
    assert agree / total >= 0.999
    return edge


def test_entropy_router_exit_and_reports_match_the_pytorch_edge(served_model, tmp_path):
    cfg, model = _build(served_model, dict(type='EntropyRouter', top_k=10, threshold=0.5),
                        edge_report=dict(score_thr=0.1, max_boxes=10))
    edge = _compare(model, cfg, _datasets(cfg), tmp_path)
    assert edge.sidecar['exit']['kind'] == 'ATSSHead' and edge.score_maps is None
    assert edge.sidecar['router']['threshold'] == float(model.router.threshold)


def test_empty_exit_router_matches_the_pytorch_edge(served_model, tmp_path):
    """EmptyExitRouter on the light edge: empty_below at the images' median top exit score, so
    half of them count as "nothing found" (score 1 + entropy) and the routing splits both kinds."""
    from ecc_mmdet.apis import iter_batches
    cfg, model = _build(served_model, dict(type='EmptyExitRouter', top_k=10, empty_below=0.5,
                                           threshold=1.0))
    datasets = _datasets(cfg)
    with torch.no_grad():
        tops = [float(r.scores.max()) if len(r.scores) else 0.0 for ds in datasets
                for inputs, samples in iter_batches(model, ds, batch_size=1)
                for r in model.run_exits(model.edge_features(inputs), samples).results]
    model.router.empty_below = float(np.median(tops))
    edge = _compare(model, cfg, datasets, tmp_path)
    assert edge.sidecar['router']['empty_below'] == model.router.empty_below
    scores = [float(edge.process(p, i).router_score) for p, i, *_ in _reference(model, datasets)]
    assert min(scores) < 1.0 <= max(scores)


def test_shift_router_reads_the_graphs_feature_statistics(served_model, tmp_path):
    """ShiftRouter on the light edge: F_k's channel statistics come out of the graph
    (``feature_stats``), and its out-of-distribution flag (fitted on these images at their
    median distance) and empty-exit flag route every image as the PyTorch edge does."""
    from ecc_mmdet.apis import iter_batches
    cfg, model = _build(served_model, dict(type='ShiftRouter', top_k=10, ood_quantile=0.5,
                                           target_offload_ratio=0.5))
    datasets = _datasets(cfg)
    with torch.no_grad():
        parts = torch.cat([model.router.calibration_parts(model.run_exits(
            model.edge_features(x), s)) for ds in datasets
            for x, s in iter_batches(model, ds, batch_size=1)])
    model.router.calibrate(model.router.fit_calibration(parts))
    flagged = model.router._distance(parts) > model.router.ood_above
    assert 0 < int(flagged.sum()) < len(flagged)
    edge = _compare(model, cfg, datasets, tmp_path)
    assert edge.output_names[-1] == 'feature_stats'
    assert edge.sidecar['router']['ood_above'] == model.router.ood_above
    scores = [float(edge.process(p, i).router_score) for p, i, *_ in _reference(model, datasets)]
    assert min(scores) < 1.0 <= max(scores)  # both kinds of image, as scored by PyTorch


def test_score_band_router_with_a_score_map_matches_the_pytorch_edge(served_model, tmp_path):
    from ecc_mmdet.evaluation.score_calibration import ScoreMap
    cfg, model = _build(served_model, dict(type='ScoreBandRouter', low=0.2, high=0.6,
                                           threshold=1.0), calibrate_scores=True)
    model.score_maps = dict(edge=ScoreMap(np.array([0.0, 0.1, 0.3, 0.5, 1.0]),
                                          np.array([0.0, 0.05, 0.05, 0.6, 0.9])),
                            cloud=ScoreMap.identity())
    edge = _compare(model, cfg, _datasets(cfg), tmp_path)
    assert edge.score_maps['edge']['x'] == [0.0, 0.1, 0.3, 0.5, 1.0]


def test_retina_exit_with_several_anchors_per_location(served_model, tmp_path):
    """No score factor; 2 scales x 2 ratios per location (the anchors' (h, w, a) order)."""
    retina = copy.deepcopy(EXIT)
    retina['head'] = dict(
        type='RetinaHead', num_classes=6, in_channels=8, feat_channels=8, stacked_convs=1,
        anchor_generator=dict(type='AnchorGenerator', ratios=[0.5, 1.0], octave_base_scale=2,
                              scales_per_octave=2, strides=[8, 16, 32]),
        bbox_coder=EXIT['head']['bbox_coder'])
    cfg, model = _build(served_model, dict(type='EntropyRouter', top_k=5, threshold=0.5),
                        retina, spread=0.05)
    edge = _compare(model, cfg, _datasets(cfg), tmp_path)
    assert edge.exit['kind'] == 'RetinaHead' and not edge.exit['score_factors']
    assert edge.exit['num_anchors'] == 4


def _train_learned_router(model, datasets):
    """Fit the model's LearnedRouter on its own features of the test images (a gain that is a
    function of them, so that its scores spread) for the model's exits."""
    from ecc_mmdet.apis import iter_batches
    from ecc_mmdet.models.routers import exit_fingerprint
    with torch.no_grad():
        feats = torch.cat([model.router.features(model.run_exits(model.edge_features(x), s))
                           for ds in datasets for x, s in iter_batches(model, ds)])
    k = model.router.top_k
    gains = feats[:, :k].mean(1) - feats[:, k:2 * k].mean(1) + feats[:, 2 * k:].sum(1)
    model.router.fit(feats, gains, exit_fingerprint(model.edge_exit), max_epochs=50)
    return model


def test_random_router_routes_like_the_pytorch_edge(served_model, tmp_path):
    """The light edge draws from the image id it is given, as PyTorch from the sample's."""
    from ecc_edge.runtime import EdgeRuntimeError
    cfg, model = _build(served_model, dict(type='RandomRouter', seed=7, threshold=0.5))
    datasets = _datasets(cfg)
    edge = _compare(model, cfg, datasets, tmp_path)
    assert edge.router == dict(kind='RandomRouter', seed=7,
                               threshold=float(model.router.threshold))
    with pytest.raises(EdgeRuntimeError, match='draws from the image id'):
        edge.process(datasets[0][0]['data_samples'].img_path)  # no image id: no draw


def test_learned_router_routes_like_the_pytorch_edge(served_model, tmp_path):
    """Its features (top-k scores and entropies, detection counts) in float32 numpy and its MLP
    from the sidecar's weights give the PyTorch score (the comparison: within 1e-5, and the
    same tier for every image)."""
    cfg, model = _build(served_model, dict(type='LearnedRouter', threshold=0.0, top_k=8),
                        cls_bias=-5.0)  # scores around the count thresholds 0.3 / 0.5 / 0.7
    datasets = _datasets(cfg)
    _train_learned_router(model, datasets)
    edge = _compare(model, cfg, datasets, tmp_path)
    side = edge.router
    assert side['kind'] == 'LearnedRouter' and len(side['feat_mean']) == 2 * 8 + 3
    assert [len(layer['bias']) for layer in side['layers']] == [16, 1]
    assert min(side['feat_std']) > 0.05  # every feature varies over the images: all compared


def test_learned_router_with_gain_features_routes_like_the_pytorch_edge(served_model, tmp_path):
    """The gain features (the maps' soft object count, anchor counts, score bands) in numpy
    from the sidecar's bands give the PyTorch score, for a ranking router."""
    cfg, model = _build(served_model, dict(type='LearnedRouter', threshold=0.0, top_k=4,
                                           gain_features=True, objective='rank'), cls_bias=-5.0)
    datasets = _datasets(cfg)
    _train_learned_router(model, datasets)
    edge = _compare(model, cfg, datasets, tmp_path)
    side = edge.router
    assert side['gain']['score_bands'][0] == 0.05 and len(side['feat_mean']) == 2 * 4 + 3 + 10
    assert min(side['feat_std'][2 * 4 + 3:2 * 4 + 3 + 5]) > 1e-3  # soft count, best, anchors


def test_exits_and_routers_the_runtime_does_not_port_are_refused(served_model, tmp_path):
    from ecc_mmdet.deployment.edge_export import export_edge_onnx
    from ecc_mmdet.utils import ConfigError
    cases = [
        (dict(type='LearnedRouter', threshold=0.0), {}, 'untrained'),
        (dict(type='EntropyRouter', target_offload_ratio=0.3), {}, 'no calibrated threshold'),
        (dict(type='EntropyRouter', threshold=0.5),
         dict(extension_exit=copy.deepcopy(EXIT), hard_classes=[1]), 'extension exits'),
    ]
    for router, keys, msg in cases:
        cfg, model = _build(served_model, router, **keys)
        with pytest.raises(ConfigError, match=msg):
            export_edge_onnx(model, cfg, str(tmp_path))
        assert not osp.exists(tmp_path / 'edge.onnx')
    cfg, model = _build(served_model, dict(type='EntropyRouter', threshold=0.5),
                        calibrate_scores=True)  # no score maps fitted
    with pytest.raises(ConfigError, match='no score maps'):
        export_edge_onnx(model, cfg, str(tmp_path))
    # a learned router: on pooled F_k (not a graph output), or trained for other exits
    cfg, model = _build(served_model, dict(type='LearnedRouter', threshold=0.0,
                                           pool_features=True))
    _train_learned_router(model, _datasets(cfg))
    with pytest.raises(ConfigError, match=r'pool_features=True\): its features include F_k'):
        export_edge_onnx(model, cfg, str(tmp_path))
    cfg, model = _build(served_model, dict(type='LearnedRouter', threshold=0.0))
    _train_learned_router(model, _datasets(cfg))
    with torch.no_grad():
        next(model.edge_exit.parameters()).add_(0.01)  # the exits were retrained since
    model.tiers.forget_exit()
    with pytest.raises(ConfigError, match='trained for other edge exits'):
        export_edge_onnx(model, cfg, str(tmp_path))
    assert not osp.exists(tmp_path / 'edge.onnx')


def test_each_router_says_how_it_exports():
    """The router gives its sidecar entry (or its refusal); a subclass of a ported router that
    does not port itself is refused (it may score differently). Every router of the library is
    ported (the runtime's sidecar schema reads each) or says in its own class why not."""
    from mmdet.registry import MODELS

    from ecc_edge.sidecar import _ROUTERS
    from ecc_mmdet.models import routers
    from ecc_mmdet.models.routers import EntropyRouter, RandomRouter, ScoreBandRouter
    from ecc_mmdet.models.routers.base import _light_edge_kinds
    from ecc_mmdet.utils import ConfigError
    assert EntropyRouter(top_k=5, threshold=0.5).light_edge_spec() == dict(
        kind='EntropyRouter', threshold=0.5, top_k=5)
    assert ScoreBandRouter(low=0.1, high=0.7, threshold=2.0).light_edge_spec() == dict(
        kind='ScoreBandRouter', threshold=2.0, low=0.1, high=0.7)
    assert RandomRouter(seed=3, threshold=0.2).light_edge_spec() == dict(
        kind='RandomRouter', threshold=0.2, seed=3)
    assert _light_edge_kinds() == sorted(_ROUTERS)  # the exporter's and the runtime's lists
    assert {'EntropyRouter', 'LearnedRouter', 'RandomRouter', 'ScoreBandRouter'} <= set(_ROUTERS)
    for name in routers.__all__:  # a router not ported says why in its own class
        cls = MODELS.get(name)
        if cls is getattr(routers, name) and name not in _ROUTERS:
            assert 'light_edge_refusal' in vars(cls), name

    class SharperEntropy(EntropyRouter):
        def scores(self, exits):
            return super().scores(exits) ** 2

    with pytest.raises(ConfigError, match='ports EmptyExitRouter, EntropyRouter, .*ScoreBandRouter.*, not '
                                          'SharperEntropy: it is not ported'):
        SharperEntropy(threshold=0.5).light_edge_spec()
