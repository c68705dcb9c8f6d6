"""The light edge (ecc_edge) on the hyperprior: its numpy integer hyper-synthesis equals
``ExactHyperSynthesis.exact`` bit for bit in any summation order, its coding step equals
``HyperpriorBottleneckNeck.compress`` byte for byte, and the exported edge frames the PyTorch
edge's very payloads (odd image sizes, every rate point, with an edge exit)."""
import copy

import numpy as np
import pytest
import torch

import ecc_mmdet  # noqa: F401
from ecc_edge.codecs.bitstream import CodecId

from conftest import fit_neck

SIZES = [(61, 83), (128, 96), (45, 77)]  # latents 8x11, 16x12, 6x10: z's synthesis cropped


def _neck(kind='HyperpriorBottleneckNeck', **kw):
    from mmdet.registry import MODELS
    cfg = dict(type=kind, in_channels=8, latent_channels=6, hyper_channels=4, beta=0.002)
    cfg.update(kw)
    torch.manual_seed(0)
    return MODELS.build(cfg)


def _spread(neck, seed=0):
    """Hidden weights drawn large (they reach the weight and activation clamps), the output
    conv's so that the log-scales spread over the whole scale table."""
    g = torch.Generator().manual_seed(seed)
    hs = neck.h_s
    with torch.no_grad():
        for conv in hs.convs:
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * 40)
            conv.bias.copy_(torch.randn(conv.bias.shape, generator=g) * 30)
        hs.out.weight.copy_(torch.randn(hs.out.weight.shape, generator=g) * 0.004)
        hs.out.bias.copy_(torch.randn(hs.out.bias.shape, generator=g) * 2)
    return neck


def _permuted(spec, rng):
    """The same network with its input and hidden channels in another order -> (spec, the
    permutation of z's channels): every sum over channels runs in another order."""
    spec = copy.deepcopy(spec)
    layers = spec['synthesis']['layers']
    w = [np.asarray(l['weight']).reshape(l['out_channels'], l['in_channels'], 9) for l in layers]
    p_z = rng.permutation(layers[0]['in_channels'])
    w[0] = w[0][:, p_z]
    for i in range(len(layers) - 1):  # hidden channels: outputs of i, inputs of i + 1
        p = rng.permutation(layers[i]['out_channels'])
        w[i], w[i + 1] = w[i][p], w[i + 1][:, p]
        layers[i]['bias'] = [layers[i]['bias'][j] for j in p]
    for layer, wi in zip(layers, w):
        layer['weight'] = [int(v) for v in wi.reshape(-1)]
    return spec, p_z


@pytest.mark.parametrize('downsample,predict_means', [(4, True), (2, False)])
def test_integer_synthesis_equals_torch_exact_in_any_summation_order(downsample, predict_means):
    from ecc_edge.codecs.hyperprior import IntegerHyperSynthesis, scale_indexes
    from ecc_mmdet.deployment.edge_export import hyperprior_spec
    neck = _spread(_neck(hyper_downsample=downsample, predict_means=predict_means)).eval()
    spec = hyperprior_spec(neck)
    hs = neck.h_s
    assert max(abs(v) for v in spec['synthesis']['layers'][0]['weight']) == \
        hs.weight_max * 2**hs.frac_bits  # the weight clamp is reached
    g = torch.Generator().manual_seed(1)
    z_hat = torch.randn(1, 4, 5, 7, generator=g) * 150  # some beyond +-act_max
    means, log_acc = hs.exact(z_hat)
    idx = neck.gaussian.index_from_fixed_point(log_acc, 2 * hs.frac_bits)[0].numpy()
    thresholds = np.asarray(spec['index_thresholds'], np.float64)
    assert len(np.unique(idx)) > 20  # the accumulators span the scale table
    rng = np.random.default_rng(0)
    for p_spec, p_z in [(spec, np.arange(4))] + [_permuted(spec, rng) for _ in range(3)]:
        m, acc = IntegerHyperSynthesis(**p_spec['synthesis'])(z_hat[0].numpy()[p_z])
        assert m.dtype == np.float32 and acc.dtype == np.float64
        np.testing.assert_array_equal(m, means[0].numpy())
        np.testing.assert_array_equal(acc, log_acc[0].numpy())
        np.testing.assert_array_equal(scale_indexes(acc, thresholds), idx)


def _encoder(neck):
    """The light edge's coder of ``neck``, built from what the sidecar holds."""
    from types import SimpleNamespace

    from ecc_edge.codecs.hyperprior import HyperpriorEncoder
    from ecc_mmdet.deployment.edge_export import _codec_spec, hyperprior_spec
    return HyperpriorEncoder.from_sidecar(_codec_spec(SimpleNamespace(compressor=neck)),
                                          hyperprior_spec(neck))


def _context_spread(neck, seed=3):
    """Slice transforms whose corrections matter (means moved by several units, scales across
    the table), so that every slice's symbols depend on the ones before."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in neck.slice_transforms:
            for conv in t.convs:
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * 0.5)
            t.out.weight.copy_(torch.randn(t.out.weight.shape, generator=g) * 0.05)
            t.out.bias.copy_(torch.randn(t.out.bias.shape, generator=g))
    return neck


KINDS = {'HyperpriorBottleneckNeck': {}, 'VariableRateHyperpriorNeck': dict(num_rates=3),
         'ChannelContextHyperpriorNeck': dict(num_slices=3, context_channels=5)}


@pytest.mark.parametrize('kind', sorted(KINDS))
def test_numpy_coding_equals_the_necks_compress(kind):
    """Same float32 y and z -> the same symbols and bytes, for every rate point and sizes
    whose latent is not a multiple of z's stride."""
    import struct
    g = torch.Generator().manual_seed(2)
    # a few steps only: tables fitted, symbols of y and z still far from all zero
    neck = fit_neck(_neck(kind, hyper_downsample=4, **KINDS[kind]),
                    torch.relu(torch.randn(2, 8, 24, 20, generator=g) * 20), steps=3)
    if kind.startswith('Channel'):
        _context_spread(neck)
    for r in range(getattr(neck, 'num_rates', 1)):
        if 'num_rates' in KINDS[kind]:
            neck.set_rate_point(r)
        enc = _encoder(neck)
        for h, w in SIZES:
            x = torch.relu(torch.randn(1, 8, h // 4, w // 4, generator=g) * 20)
            with torch.no_grad():
                (params, body, shape), = neck.compress(x)
                y = neck._latent(x, *neck._rate_point(False))
                z = neck.h_a(y)
            zb, yb, y_sym, z_sym = enc.compress(y[0].numpy(), z[0].numpy())
            assert params == struct.pack('<3I', h // 4, w // 4, len(zb))
            assert zb + yb == body and y_sym.shape == shape
            assert np.abs(y_sym).max() > 2 and np.abs(z_sym).max() > 0


HYPERPRIOR = dict(type='HyperpriorBottleneckNeck', latent_channels=16, downsample=2,
                  hyper_channels=8, hyper_downsample=4)


def _detector(served_model, compressor, resize=False, **model_keys):
    """The served tiny detector with ``compressor``, seeded and untrained; its test pipeline
    padded to 8 px only and, unless ``resize``, without the Resize, so that the images keep
    their odd sizes (mmdet's exit heads need the Resize's scale factor)."""
    from ecc_mmdet.apis import build_detector, load_config
    cfg = load_config(served_model['config'])
    cfg.model.compressor = copy.deepcopy(compressor)
    cfg.model.update(copy.deepcopy(model_keys))
    cfg.model.data_preprocessor.pad_size_divisor = 8
    ds = cfg.test_dataloader.dataset
    ds.pipeline = [t for t in ds.pipeline if resize or t['type'] != 'Resize']
    torch.manual_seed(0)
    model = build_detector(cfg.model).eval()
    with torch.no_grad():  # untrained, the latent rounds to zeros and the means are ~0
        model.compressor.g_a[-1].weight.mul_(30)
        model.compressor.h_s.out.weight.mul_(30)
    return cfg, model


def _images(n=len(SIZES), seed=0):
    """Smooth random BGR images of the odd SIZES (latents far from all-zero symbols)."""
    import cv2
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        h, w = SIZES[i % len(SIZES)]
        small = rng.integers(0, 256, (h // 6 + 2, w // 6 + 2, 3)).astype(np.uint8)
        out.append(cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC))
    return out


def _export(model, cfg, tmp_path, name):
    from ecc_edge.runtime import LightEdge
    from ecc_mmdet.deployment.edge_export import check_graph, export_edge_onnx
    out = tmp_path / name
    out.mkdir()
    graph, _ = export_edge_onnx(model, cfg, str(out))
    assert check_graph(graph, model, sizes=((64, 88), (48, 80))) < 1e-3
    return LightEdge(graph)


def _same_payloads(edge, model, cfg, images):
    """The light edge against the PyTorch edge (EdgeRunner) image by image: identical tiers
    and payloads; the cloud decodes the light payloads. -> the light results."""
    from ecc_edge.codecs import unpack
    from ecc_mmdet.serving.client import EdgeRunner
    runner = EdgeRunner(cfg, None, model=model)
    results = []
    for i, img in enumerate(images):
        res, ref = edge.process(img, i), runner.process(img, i)
        assert (res.tier, res.payload) == (ref.tier, ref.payload), (i, img.shape)
        results.append(res)
        if res.tier != 'cloud':
            continue
        p = unpack(res.payload)
        assert p.latent_shape == res.symbols.shape and p.codec_id == model.compressor.codec_id
        got = model.decode_and_predict([res.payload])[0].pred_instances
        assert torch.isfinite(got.bboxes).all()
    return results


def test_light_hyperprior_payloads_equal_the_pytorch_edge(served_model, tmp_path):
    cfg, model = _detector(served_model, HYPERPRIOR)
    edge = _export(model, cfg, tmp_path, 'single')
    assert edge.sidecar['codec']['rate_point'] is None
    results = _same_payloads(edge, model, cfg, _images())
    assert {r.symbols.shape[1:] for r in results} == {(8, 11), (16, 12), (6, 10)}
    assert all(np.abs(r.symbols).max() > 3 and np.abs(r.side_symbols).max() > 0
               for r in results)
    means, idx = edge.hyper.params(results[0].side_symbols, results[0].symbols.shape[1:])
    assert np.unique(idx).size > 5 and np.abs(means).max() > 0
    _bad_sidecars_are_refused(edge.sidecar)


def test_light_channel_context_payloads_equal_the_pytorch_edge(served_model, tmp_path):
    """The channel-context model on the light edge: the same payloads image by image (odd
    sizes), a context that changes the bytes, and a sidecar whose transforms do not chain is
    refused."""
    from ecc_edge.sidecar import SidecarError, validate_sidecar
    cfg, model = _detector(served_model, dict(HYPERPRIOR, type='ChannelContextHyperpriorNeck',
                                              num_slices=4, context_channels=8))
    _context_spread(model.compressor)
    edge = _export(model, cfg, tmp_path, 'context')
    assert edge.sidecar['codec']['codec_id'] == CodecId.CHANNEL_CONTEXT_HYPERPRIOR
    images = _images()
    results = _same_payloads(edge, model, cfg, images)
    assert all(np.abs(r.symbols).max() > 3 for r in results)
    from benchmark_light_edge import _torch_symbols  # the benchmark's symbol check agrees
    for img, r in zip(images, results):
        x, _ = edge.preprocess(img)
        with torch.no_grad():
            ref = _torch_symbols(model, torch.from_numpy(x))
        np.testing.assert_array_equal(ref, np.concatenate([r.symbols.ravel(),
                                                           r.side_symbols.ravel()]))
    plain = copy.copy(edge.hyper)
    plain.context = None  # the same hyperprior without the context: other bytes
    y = np.asarray(results[0].symbols, np.float32)
    z = np.asarray(results[0].side_symbols, np.float32) + plain.z_medians
    assert plain.compress(y, z)[1] != edge.hyper.compress(y, z)[1]
    ctx = edge.sidecar['hyperprior']['channel_context']
    for path, value, msg in [(['num_slices'], 3, 'must divide'),
                             (['transforms', 1, 'layers', 0, 'in_channels'], 33,
                              r'transforms\[1\]\.layers\[0\]\.in_channels: must be 36')]:
        bad = copy.deepcopy(edge.sidecar)
        obj = bad['hyperprior']['channel_context']
        for k in path[:-1]:
            obj = obj[k]
        obj[path[-1]] = value
        with pytest.raises(SidecarError, match=msg):
            validate_sidecar(bad)
    assert ctx['num_slices'] == 4


def test_light_context_with_a_stride_4_gdn_encoder_equals_the_pytorch_edge(served_model,
                                                                        tmp_path):
    """downsample=4 (two stride-2 convs in g_a, in the exported graph) with GDN: the light
    edge's payloads equal PyTorch's on odd sizes, whose latents are ceil(feature / 4)."""
    cfg, model = _detector(served_model, dict(HYPERPRIOR, type='ChannelContextHyperpriorNeck',
                                              num_slices=2, context_channels=8, downsample=4,
                                              gdn=True, hyper_downsample=2))
    _context_spread(model.compressor)
    edge = _export(model, cfg, tmp_path, 'stride4')
    assert edge.sidecar['codec']['downsample'] == 4
    results = _same_payloads(edge, model, cfg, _images())
    assert {r.symbols.shape[1:] for r in results} == {(4, 6), (8, 6), (3, 5)}
    assert all(np.abs(r.symbols).max() > 3 for r in results)


def _bad_sidecars_are_refused(side):
    """A hyperprior sidecar whose synthesis would not be exact, or that does not chain, is
    refused naming the field."""
    from ecc_edge.sidecar import SidecarError, validate_sidecar
    syn = 'hyperprior.synthesis.layers'

    def edit(path, value):
        bad = copy.deepcopy(side)
        obj = bad
        for k in path[:-1]:
            obj = obj[k]
        if value is None:
            del obj[path[-1]]
        else:
            obj[path[-1]] = value
        return bad

    w0 = side['hyperprior']['synthesis']['layers'][0]['weight']
    thr = side['hyperprior']['index_thresholds']
    cases = [
        (edit(['hyperprior'], None), r'^hyperprior: missing'),
        (edit(['hyperprior', 'synthesis', 'layers', 0, 'weight'], [2**39] + w0[1:]),
         rf'^{syn}\[0\]\.weight: allows integer sums beyond 2\*\*53'),
        (edit(['hyperprior', 'synthesis', 'layers', 0, 'weight'], [0.5] + w0[1:]),
         rf'^{syn}\[0\]\.weight\[0\]: must be an integer'),
        (edit(['hyperprior', 'synthesis', 'layers', 1, 'in_channels'], 3),
         rf'^{syn}\[1\]\.in_channels: must be'),
        (edit(['hyperprior', 'synthesis', 'act_max'], 255.3),
         r'^hyperprior\.synthesis\.act_max: times 2\*\*frac_bits must be an integer'),
        (edit(['hyperprior', 'index_thresholds'], thr[::-1]), 'must be non-decreasing'),
        (edit(['hyperprior', 'gaussian', 'offsets'], side['hyperprior']['gaussian']['offsets'][1:]),
         'index thresholds need'),
    ]
    for bad, msg in cases:
        with pytest.raises(SidecarError, match=msg):
            validate_sidecar(bad)


@pytest.mark.parametrize('kind', ['VariableRateHyperpriorNeck', 'VariableRateChannelContextNeck'])
def test_every_rate_point_of_the_variable_rate_hyperprior(served_model, tmp_path, kind):
    from ecc_edge.codecs import unpack
    extra = dict(num_slices=4, context_channels=8) if 'Context' in kind else {}
    cfg, model = _detector(served_model, dict(HYPERPRIOR, type=kind, num_rates=3, **extra))
    if extra:
        _context_spread(model.compressor)
    sizes = []
    for r in range(3):
        model.compressor.set_rate_point(r)
        edge = _export(model, cfg, tmp_path, f'point{r}')
        assert edge.sidecar['codec']['rate_point'] == r
        results = _same_payloads(edge, model, cfg, _images())
        assert {unpack(x.payload).rate_point for x in results} == {r}
        sizes.append(sum(len(x.payload) for x in results))
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1]  # point 0: the lowest rate


def test_hyperprior_with_an_edge_exit(served_model, tmp_path):
    """Router decisions as the PyTorch edge's; the offloaded images' payloads identical."""
    from test_light_exits import EXIT
    cfg, model = _detector(served_model, HYPERPRIOR, resize=True, edge_exit=EXIT,
                           router=dict(type='EntropyRouter', top_k=10, threshold=0.5))
    head = model.edge_exit.head
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():  # scores far from ties (see test_light_exits._build)
        for conv in (head.atss_cls, head.atss_reg, head.atss_centerness):
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * 0.3)
        head.atss_cls.bias.fill_(-1.0)
    images = _images(6)
    edge = _export(model, cfg, tmp_path, 'probe')
    scores = np.sort([edge.process(img).router_score for img in images])
    assert scores[3] - scores[2] > 1e-4, 'router scores tie: the test images do not separate'
    model.router.threshold.fill_(float(scores[2] + scores[3]) / 2)
    results = _same_payloads(_export(model, cfg, tmp_path, 'exit'), model, cfg, images)
    assert sorted(r.tier for r in results) == ['cloud'] * 3 + ['edge_main'] * 3


def test_light_edge_runs_a_gdn_encoder(served_model, tmp_path):
    """GDN in g_a exports to the light edge's graph: the same payloads as the PyTorch edge."""
    from ecc_mmdet.models.compressors.gdn import GDN
    cfg, model = _detector(served_model, dict(HYPERPRIOR, gdn=True))
    gdns = [m for m in model.compressor.g_a if isinstance(m, GDN)]
    with torch.no_grad():  # a normalisation that matters: strong, uneven cross-channel terms
        for m in gdns:
            m.gamma.add_(torch.rand(m.gamma.shape, generator=torch.Generator().manual_seed(1)))
    edge = _export(model, cfg, tmp_path, 'gdn')
    results = _same_payloads(edge, model, cfg, _images())
    assert all(np.abs(r.symbols).max() > 3 for r in results)
