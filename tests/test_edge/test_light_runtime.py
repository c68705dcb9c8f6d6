"""The light edge runtime (ecc_edge): no torch/mmdet/mmcv in its process, its payloads decode on
the PyTorch cloud, its symbols and preprocessing match the PyTorch edge, bad files are refused."""
import json
import os.path as osp
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import REPO



@pytest.fixture(scope='module')
def exported(served_model, served_detector, tmp_path_factory):
    from ecc_mmdet.apis import load_config
    from ecc_mmdet.deployment.edge_export import check_graph, export_edge_onnx
    from ecc_mmdet.serving.runtime import class_names_of
    out = tmp_path_factory.mktemp('light')
    cfg = load_config(served_model['config'])
    graph, sidecar = export_edge_onnx(served_detector, cfg, str(out), class_names_of(cfg))
    assert check_graph(graph, served_detector) < 1e-3
    return graph, sidecar


def test_the_runtime_imports_without_torch_mmdet_mmcv(exported, served_model):
    graph, _ = exported
    image = sorted(__import__('glob').glob(osp.join(served_model['data_root'], 'val', '*')))[0]
    code = f"""
import sys
from ecc_edge.runtime import LightEdge
from ecc_edge.codecs import unpack
edge = LightEdge({graph!r})
res = edge.process({image!r})
assert unpack(res.payload).latent_shape == res.symbols.shape
heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'mmdet', 'mmcv',
                                                              'mmengine', 'ecc_mmdet'))
assert not heavy, heavy
print('ok', len(res.payload))
"""
    proc = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith('ok'), proc.stderr[-2000:]


def test_payloads_match_the_pytorch_edge_and_decode_on_the_cloud(exported, served_model,
                                                                 served_detector, monkeypatch):
    from ecc_edge.codecs import unpack
    from ecc_edge.runtime import LightEdge
    from ecc_mmdet.apis import build_test_dataset, iter_batches, load_config
    edge = LightEdge(exported[0])
    cfg = load_config(served_model['config'])
    dataset = build_test_dataset(cfg)
    compressor = served_detector.compressor
    real_latent = compressor._latent
    med = compressor.entropy_model._medians().view(1, -1, 1, 1)
    agree = total = 0
    for (inputs, samples), info in zip(iter_batches(served_detector, dataset, batch_size=1),
                                       dataset):
        path = info['data_samples'].img_path
        light = edge.process(path)
        x, meta = edge.preprocess(edge.read(path))
        # preprocessing equals mmdet's pipeline + data preprocessor, element for element
        assert np.array_equal(x, inputs.numpy())
        ref = served_detector.encode(inputs, samples)[0]
        p, q = unpack(light.payload), unpack(ref)
        assert (p.meta, p.latent_shape, p.codec_params, p.fingerprint, p.rate_point) == \
            (q.meta, q.latent_shape, q.codec_params, q.fingerprint, q.rate_point)
        with torch.no_grad():
            y = real_latent(served_detector.edge_features(inputs))
            sym = torch.round(y - med).to(torch.int32)[0].numpy()
        agree += int((sym == light.symbols).sum())
        total += sym.size
        # the ONNX graph may round a rare symbol the other way; for the symbols it did compute,
        # the PyTorch edge frames the very same bytes: its latent replaced by one that rounds
        # to the light symbols (integers + the medians), everything else is its own path
        light_latent = torch.from_numpy(light.symbols).to(med.dtype)[None] + med
        with monkeypatch.context() as m:
            m.setattr(compressor, '_latent', lambda *a, **k: light_latent)
            same_symbols = served_detector.encode(inputs, samples)[0]
        assert light.payload == same_symbols
        assert (light.payload == ref) == np.array_equal(sym, light.symbols)
        # the cloud decodes the light payload into the latent it was made from
        got = served_detector.decode_and_predict([light.payload])[0].pred_instances
        assert len(got) > 0 and torch.isfinite(got.bboxes).all()
        hat = compressor.entropy_model.decompress([p.body], p.latent_shape[1:])
        np.testing.assert_array_equal(torch.round(hat - med).to(torch.int32)[0].numpy(),
                                      light.symbols)
    assert agree / total >= 0.999


def test_bad_sidecars_graphs_and_images_are_refused(exported, tmp_path):
    from ecc_edge.runtime import EdgeRuntimeError, LightEdge
    graph, sidecar = exported
    side = json.load(open(sidecar))
    edited = dict(side, model_fingerprint='00' * 8)  # checksum no longer matches
    bad = tmp_path / 'edited.json'
    bad.write_text(json.dumps(edited))
    with pytest.raises(EdgeRuntimeError, match='corrupted or was edited'):
        LightEdge(graph, str(bad))
    (tmp_path / 'junk.json').write_text('{not json')
    with pytest.raises(EdgeRuntimeError, match='not readable JSON'):
        LightEdge(graph, str(tmp_path / 'junk.json'))
    other = tmp_path / 'other.onnx'
    other.write_bytes(open(graph, 'rb').read() + b'\0')
    with pytest.raises(EdgeRuntimeError, match='another graph'):
        LightEdge(str(other), sidecar)
    edge = LightEdge(graph, sidecar)
    with pytest.raises(EdgeRuntimeError, match='cannot read an image'):
        edge.process(str(tmp_path / 'missing.png'))
    with pytest.raises(EdgeRuntimeError, match='uint8 BGR'):
        edge.process(np.zeros((8, 8), np.uint8))


def test_export_refuses_what_the_runtime_cannot_express(served_model, tmp_path):
    from ecc_mmdet.apis import build_detector, load_config
    from ecc_mmdet.deployment.edge_export import export_edge_onnx
    from ecc_mmdet.utils import ConfigError
    cfg = load_config(served_model['config'])
    cfg.model.compressor = dict(type='QuantizeNeck', n_bits=8)
    with pytest.raises(ConfigError, match='learned bottlenecks'):
        export_edge_onnx(build_detector(cfg.model), cfg, str(tmp_path))
    # (the hyperprior is exported: tests/test_edge/test_light_hyperprior.py)
    cfg = load_config(served_model['config'])
    cfg.test_dataloader.dataset.pipeline.insert(1, dict(type='RandomFlip', prob=1.0))
    with pytest.raises(ConfigError, match="cannot express the test transform 'RandomFlip'"):
        export_edge_onnx(build_detector(cfg.model), cfg, str(tmp_path))


def test_edge_client_light_mode_against_a_real_server(exported, served_model, tmp_path):
    """tools/edge_client.py --light: the whole client run without torch/mmdet/mmcv in its
    process, its payloads answered by the PyTorch cloud server; COCO results written."""
    from serving_utils import TOKEN, cloud_server
    token_file = tmp_path / 'token'
    token_file.write_text(TOKEN)
    root = served_model['data_root']
    out = tmp_path / 'results.json'
    args = ['--light', osp.dirname(exported[0]), '--source', osp.join(root, 'val'),
            '--token-file', str(token_file), '--out', str(out), '--ann-file',
            osp.join(root, 'annotations', 'instances_val.json')]
    code = f"""
import runpy, sys
sys.path.insert(0, {osp.join(REPO, 'tools')!r})
sys.argv = ['edge_client.py', '--server', sys.argv[1]] + {args!r}
try:
    runpy.run_path({osp.join(REPO, 'tools', 'edge_client.py')!r}, run_name='__main__')
except SystemExit as e:
    status = e.code
heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'mmdet', 'mmcv',
                                                              'mmengine', 'ecc_mmdet'))
print('heavy', heavy)
sys.exit(status)
"""
    with cloud_server(served_model, tmp_path) as (url, _):
        proc = subprocess.run([sys.executable, '-c', code, url], cwd=REPO, capture_output=True,
                              text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert 'heavy []' in proc.stdout and '4 images, 4 offloaded' in proc.stdout
    results = json.loads(out.read_text())
    assert results and all(len(r['bbox']) == 4 and np.isfinite(r['score']) for r in results)
    assert TOKEN not in proc.stdout + proc.stderr
