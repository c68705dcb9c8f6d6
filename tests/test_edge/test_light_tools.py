"""The light runtime's tools as a user runs them: tools/export_edge_onnx.py (static and
calibrated dynamic models, refusals) and tools/benchmark_light_edge.py, on tiny models."""
import json
import os
import os.path as osp

import numpy as np
import pytest
import torch
from mmengine.runner import save_checkpoint

from conftest import REPO, own_predictions_root, run_tool

DYNAMIC_CFG = osp.join(REPO, 'configs', 'ecc_faster_rcnn_r18_synthetic_dynamic.py')


def test_export_cli_writes_a_runtime_that_matches_the_model(served_model, served_detector,
                                                            tmp_path):
    from ecc_edge.codecs import unpack
    from ecc_edge.runtime import LightEdge
    out = tmp_path / 'edge'
    proc = run_tool('export_edge_onnx', served_model['config'], served_model['checkpoint'],
                    '--out-dir', out)
    graph, sidecar = out / 'edge.onnx', out / 'edge.json'
    assert f'wrote {graph}' in proc.stdout and f'and {sidecar}' in proc.stdout
    diff = float(proc.stdout.rsplit('max |diff| ', 1)[1].split()[0])
    assert diff < 1e-3
    side = json.loads(sidecar.read_text())
    assert side['model_fingerprint'] == served_detector.model_fingerprint().hex()
    edge = LightEdge(str(graph), str(sidecar))
    val = osp.join(served_model['data_root'], 'val')
    image = osp.join(val, sorted(os.listdir(val))[0])
    payload = edge.process(image).payload
    assert unpack(payload).fingerprint == served_detector.model_fingerprint()
    assert len(served_detector.decode_and_predict([payload])[0].pred_instances) > 0


def test_export_cli_refusals(served_model, tmp_path, capsys):
    import export_edge_onnx  # tools/ (conftest puts it on the path): main() in-process
    base = osp.join(REPO, 'configs', 'faster_rcnn_r18_fpn_synthetic.py')
    assert export_edge_onnx.main([base, served_model['checkpoint'], '--out-dir',
                                  str(tmp_path / 'a')]) == 2
    assert 'not a split detector' in capsys.readouterr().err
    assert export_edge_onnx.main([served_model['config'], str(tmp_path / 'missing.pth'),
                                  '--out-dir', str(tmp_path / 'b')]) == 2
    assert 'Checkpoint not found' in capsys.readouterr().err
    assert not (tmp_path / 'a').exists() and not (tmp_path / 'b').exists()


def test_export_cli_calibrates_a_dynamic_model(tiny_coco_calib, tmp_path):
    """A dynamic model is calibrated on the calibration split before export: the sidecar holds
    the threshold that offloads its target ratio of those images, and the score maps."""
    from ecc_edge.runtime import LightEdge
    from ecc_mmdet.apis import build_detector, load_config
    cfg = load_config(DYNAMIC_CFG)
    cfg.model.backbone.base_channels = 16
    cfg.model.neck.in_channels = [16 * 2**i for i in range(4)]
    config, ckpt = tmp_path / 'dynamic.py', tmp_path / 'dynamic.pth'
    cfg.dump(str(config))
    torch.manual_seed(0)
    save_checkpoint({'state_dict': build_detector(cfg.model).state_dict(), 'meta': {}},
                    str(ckpt))
    out = tmp_path / 'edge'
    run_tool('export_edge_onnx', config, ckpt, '--out-dir', out, '--data-root', tiny_coco_calib)
    side = json.loads((out / 'edge.json').read_text())
    assert side['router']['kind'] == 'EntropyRouter' and np.isfinite(side['router']['threshold'])
    assert side['score_maps'] is not None
    # the threshold offloads half of the 16 calibration images through the light runtime too
    edge = LightEdge(str(out / 'edge.onnx'), str(out / 'edge.json'))
    calib = osp.join(tiny_coco_calib, 'calib')
    tiers = [edge.process(osp.join(calib, f), i).tier
             for i, f in enumerate(sorted(os.listdir(calib)))]
    assert len(tiers) == 16 and tiers.count('cloud') == 8


def test_benchmark_light_edge_cli(served_model, tmp_path):
    # ground truth = the model's own predictions: the PyTorch edge scores 100, and the light
    # edge the same as far as its payloads are the same
    root = own_predictions_root(served_model['config'], served_model['checkpoint'],
                                served_model['data_root'], tmp_path / 'own')
    out = tmp_path / 'light.json'
    proc = run_tool('benchmark_light_edge', served_model['config'], served_model['checkpoint'],
                    '--data-root', root, '--num-images', 4, '--repeats', 1, '--out', out)
    r = json.loads(out.read_text())
    assert r['num_images'] == 4 and r['equal_inputs'] == 4 and r['dynamic'] is None
    assert r['symbols']['rate'] >= 0.999 and r['symbols']['total'] > 0
    assert r['mAP']['pytorch'] == pytest.approx(100.0)
    # ONNX Runtime may round a rare latent value the other way on another CPU (a symbol in
    # 1000, as test_light_runtime allows): one image of four may then differ, no more
    assert r['equal_payloads'] >= 3 and r['mAP']['light'] >= 95
    assert r['bytes_per_image']['light'] == pytest.approx(r['bytes_per_image']['pytorch'],
                                                          rel=0.01)
    assert all(v > 0 for v in r['latency_ms'].values())
    assert 0 < r['peak_memory_mb']['light'] < r['peak_memory_mb']['pytorch']
    assert 0 < r['installed_mb']['light'] < r['installed_mb']['pytorch']
    text = (tmp_path / 'light.txt').read_text()
    assert 'Targets:' in text and 'symbols agree on >= 99.9 %' in text
    assert f'wrote {out}' in proc.stdout
