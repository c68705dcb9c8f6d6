"""The light edge's sidecar is checked field by field before use (ecc_edge.sidecar): wrong
types, ranges and inconsistencies (between fields, and with the graph's inputs, outputs and a
probe run) are refused naming the field; HMAC signing makes an edge run only its operator's
exports; the forged-sidecar fuzz of the fault benchmark raises no traceback."""
import copy
import json
import math
import os.path as osp

import numpy as np
import pytest
import torch

from conftest import REPO
from test_light_exits import EXIT

KEY = b'operator-key-0123456789abcdef'


@pytest.fixture(scope='module')
def exports(served_model, served_detector, tmp_path_factory):
    """The served model's light edge (static) and a dynamic one (ATSS exit, entropy router,
    score maps, edge report), exported in-process -> {kind: directory}."""
    from ecc_mmdet.apis import build_detector, load_config
    from ecc_mmdet.deployment.edge_export import export_edge_onnx
    from ecc_mmdet.evaluation.score_calibration import ScoreMap
    from ecc_mmdet.serving.runtime import class_names_of
    cfg = load_config(served_model['config'])
    out = dict(static=str(tmp_path_factory.mktemp('static')),
               dynamic=str(tmp_path_factory.mktemp('dynamic')))
    export_edge_onnx(served_detector, cfg, out['static'], class_names_of(cfg))
    cfg.model.update(edge_exit=copy.deepcopy(EXIT),
                     router=dict(type='EntropyRouter', top_k=10, threshold=0.5),
                     edge_report=dict(score_thr=0.1, max_boxes=10), calibrate_scores=True)
    torch.manual_seed(3)
    model = build_detector(cfg.model, served_model['checkpoint'], partial='split')
    model.score_maps = dict(edge=ScoreMap(np.array([0.0, 0.3, 1.0]), np.array([0.0, .2, .9])),
                            cloud=ScoreMap.identity())
    export_edge_onnx(model, cfg, out['dynamic'], class_names_of(cfg))
    return out


def _side(exports, kind):
    return json.load(open(osp.join(exports[kind], 'edge.json')))


def _walk(node, path=()):
    """(path, value) of every value below ``node``."""
    items = node.items() if isinstance(node, dict) else \
        enumerate(node) if isinstance(node, list) else ()
    for k, v in items:
        yield path + (k, ), v
        yield from _walk(v, path + (k, ))


def _name(path):
    return ''.join(f'[{p}]' if isinstance(p, int) else (f'.{p}' if i else p)
                   for i, p in enumerate(path))


def _edited(side, path, value=None, delete=False):
    side = copy.deepcopy(side)
    node = side
    for p in path[:-1]:
        node = node[p]
    if delete:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return side


def _one_per_field(side):
    """The first instance of every field (``codec.pmf_table[0][0]`` for the whole table)."""
    seen = {}
    for path, _ in _walk(side):
        seen.setdefault(tuple(p if isinstance(p, str) else 0 for p in path), path)
    return list(seen.values())


@pytest.mark.parametrize('kind', ['static', 'dynamic'])
def test_every_field_is_checked_by_type_and_presence(exports, kind):
    from ecc_edge.sidecar import SidecarError, validate_sidecar
    side = _side(exports, kind)
    validate_sidecar(side)
    paths = _one_per_field(side)
    assert len(paths) > (60 if kind == 'dynamic' else 25)
    for path in paths:
        name = _name(path)
        with pytest.raises(SidecarError) as e:
            validate_sidecar(_edited(side, path, {'not': 'this'}))
        assert name in str(e.value), (name, str(e.value))
        if isinstance(path[-1], str):
            with pytest.raises(SidecarError, match=f'^{name.replace(".", r"[.]")}: missing'):
                validate_sidecar(_edited(side, path, delete=True))
    with pytest.raises(SidecarError, match=r'^codec\.extra: unknown field'):
        validate_sidecar(_edited(side, ('codec', 'extra'), 1))


def _learned(**edit):
    """A LearnedRouter entry (top_k 2: 7 features, 3 hidden units) with ``edit`` applied."""
    side = dict(kind='LearnedRouter', threshold=0.0, top_k=2, count_thresholds=[0.3, 0.5, 0.7],
                count_scale=10.0, feat_mean=[0.0] * 7, feat_std=[1.0] * 7,
                layers=[dict(weight=[[0.1] * 7] * 3, bias=[0.0] * 3),
                        dict(weight=[[1.0] * 3], bias=[0.0])])
    side.update(edit)
    return side


CASES = [  # (export, field, value, message)
    ('static', 'preprocess.std[1]', 0.0, r'preprocess\.std\[1\]: must be in \[0\.001'),
    ('static', 'preprocess.mean', [1.0, 2.0], r'preprocess\.mean: must have 3 entries'),
    ('static', 'preprocess.mean[0]', math.nan, r'preprocess\.mean\[0\]: must be a number'),
    ('static', 'preprocess.pad_value', math.inf, r'preprocess\.pad_value: must be a finite'),
    ('static', 'preprocess.pad_size_divisor', 0, r'pad_size_divisor: must be in \[1, 1024\]'),
    ('static', 'preprocess.resize.scale[0]', 10**6, r'resize\.scale\[0\]: must be in'),
    ('static', 'preprocess.resize.keep_ratio', 1, r'keep_ratio: must be true or false'),
    ('static', 'codec.codec_id', 2, r'codec\.codec_id: must be one of \[1, 5'),
    ('static', 'codec.rate_point', 3, r'^codec\.rate_point: .*null'),
    ('static', 'codec.latent_channels', 33, r'codec\.medians: has 32 rows, codec\.latent_'),
    ('static', 'codec.lengths[0]', 10**4, r'codec\.lengths\[0\]: is 10000; codec\.pmf_table'),
    ('static', 'codec.pmf_table[0][0]', 0, r'codec\.pmf_table\[0\]: has a zero frequency'),
    ('static', 'codec.offsets[0]', 2**40, r'codec\.offsets\[0\]: must be in'),
    ('static', 'codec.tables_fingerprint', 1.5, r'tables_fingerprint: must be an integer'),
    ('static', 'feature_strides', [64, 64], r'feature_strides: multiply to 4096'),
    ('static', 'model_fingerprint', 'XYZ', r'model_fingerprint: must be 16 lower-case hex'),
    ('static', 'graph_sha256', 'ab' * 31, r'graph_sha256: must be 64 lower-case hex'),
    ('static', 'class_names', [], r'class_names: must have 1\.\.10000 entries'),
    ('static', 'version', 2, r'version: must be in \[1, 1\]'),
    ('dynamic', 'exit.cls_out_channels', 7, r'must equal exit\.num_classes \(6\)'),
    ('dynamic', 'exit.num_anchors', 3, r'exit\.num_anchors: is 3; exit\.anchors\.ratios'),
    ('dynamic', 'exit.anchors.strides[0]', [8.5, 8.5], r'strides\[0\]: must be whole'),
    ('dynamic', 'exit.anchors.base_anchors[0]', [[0.0, 0, 1, 1]], r'has 1 anchors'),
    ('dynamic', 'exit.anchors.center_offset', 2.0, r'center_offset: must be in'),
    ('dynamic', 'exit.bbox_coder.max_ratio', 1.0, r'max_ratio: must be \|ln\('),
    ('dynamic', 'exit.bbox_coder.stds[2]', 0.0, r'bbox_coder\.stds\[2\]: must be in'),
    ('dynamic', 'exit.test_cfg.iou_threshold', 1.5, r'iou_threshold: must be in \[0\.0, 1'),
    ('dynamic', 'exit.test_cfg.max_per_img', 0, r'max_per_img: must be in \[1, '),
    ('dynamic', 'class_names', ['a'] * 5, r'class_names: has 5 names, exit\.num_classes'),
    ('dynamic', 'router.kind', 'MagicRouter', r'router\.kind: must be one of EmptyExitRouter, EntropyRouter'),
    ('dynamic', 'router', _learned(feat_std=[1.0] * 6), r'router\.feat_std: has 6 entries; 2 x'),
    ('dynamic', 'router', _learned(feat_std=[0.0] * 7), r'router\.feat_std\[0\]: must be in'),
    ('dynamic', 'router', _learned(layers=[dict(weight=[[0.1] * 6], bias=[0.0])]),
     r'router\.layers\[0\]\.weight: rows must hold 7 inputs'),
    ('dynamic', 'router', _learned(layers=[dict(weight=[[0.1] * 7] * 2, bias=[0.0])]),
     r'router\.layers\[0\]\.bias: has 1 entries, the weight 2 rows'),
    ('dynamic', 'router', _learned(layers=[dict(weight=[[0.1] * 7] * 2, bias=[0.0] * 2)]),
     r'router\.layers\[0\]\.weight: gives 2 outputs'),
    ('dynamic', 'router', dict(kind='RandomRouter', threshold=0.5, seed=1.5),
     r'router\.seed: must be an integer'),
    ('dynamic', 'router.threshold', math.nan, r'router\.threshold: must be a number, got NaN'),
    ('dynamic', 'router.top_k', 0, r'router\.top_k: must be in \[1, '),
    ('dynamic', 'router', dict(kind='ScoreBandRouter', threshold=1.0, low=0.6, high=0.2),
     r'router\.low: must be below router\.high'),
    ('dynamic', 'router', dict(kind='ScoreBandRouter', threshold=1.0, top_k=3),
     r'router\.top_k: unknown field'),
    ('dynamic', 'score_maps.edge.x', [0.5, 0.2, 0.9], r'score_maps\.edge\.x: must be strictly'),
    ('dynamic', 'score_maps.edge.y', [0.0, 0.2], r'score_maps\.edge\.y: has 2 knots'),
    ('dynamic', 'score_maps.cloud.y[1]', 1.5, r'score_maps\.cloud\.y\[1\]: must be in'),
    ('dynamic', 'edge_report.max_boxes', 0, r'edge_report\.max_boxes: must be in \[1, 1000\]'),
]


def _path(name):
    out = []
    for part in name.replace('[', '.[').split('.'):
        out.append(int(part[1:-1]) if part.startswith('[') else part)
    return tuple(out)


@pytest.mark.parametrize('kind,field,value,message', CASES, ids=[c[1] for c in CASES])
def test_ranges_and_consistency_are_refused_by_field(exports, kind, field, value, message):
    from ecc_edge.sidecar import SidecarError, validate_sidecar
    with pytest.raises(SidecarError, match=message):
        validate_sidecar(_edited(_side(exports, kind), _path(field), value))


def _write(tmp_path, side, key=None):
    """``side`` as an edited sidecar would be: checksum recomputed (re-signed with ``key``)."""
    from ecc_edge.sidecar import SIGNATURE_FIELD, sidecar_digest, sign_sidecar
    side = sign_sidecar(side, key) if key else \
        {k: v for k, v in side.items() if k != SIGNATURE_FIELD}
    side['sidecar_sha256'] = sidecar_digest(side)
    path = tmp_path / f'edge_{len(list(tmp_path.iterdir()))}.json'
    path.write_text(json.dumps(side))
    return str(path)


def _drop_channel(side):
    c = side['codec']
    c['latent_channels'] -= 1
    for k in ('medians', 'offsets', 'lengths', 'pmf_table'):
        c[k] = c[k][:-1]
    return side


def _one_level_less(side):
    a = side['exit']['anchors']
    a['strides'], a['base_anchors'] = a['strides'][:-1], a['base_anchors'][:-1]
    return side


def _twice_the_anchors(side):
    a = side['exit']['anchors']
    a['scales'], a['base_anchors'] = [1.0, 2.0], [b * 2 for b in a['base_anchors']]
    side['exit']['num_anchors'] *= 2
    return side


def _set(*path_value):
    return lambda side: _edited(side, *path_value)


GRAPH_CASES = {  # edits consistent with the schema, not with the graph: id -> (export, edit, msg)
    'latent_channels': ('static', _drop_channel,
                        r"^codec\.latent_channels: is 31, the graph's latent has 32"),
    'feature_strides': ('static', _set(('feature_strides', ), [2, 2, 2]),
                        r'^feature_strides: \[2, 2, 2\] with codec\.downsample 2 give a 4x4'),
    'downsample': ('static', _set(('codec', 'downsample'), 1),
                   r'^feature_strides: .*codec\.downsample 1 give a 16x16 latent for a 64x64 '
                   r'input; the graph gives \(8, 8\)'),
    'graph_sha256': ('static', _set(('graph_sha256', ), '0' * 64),
                     r'^graph_sha256: .*another graph'),
    'score_factors': ('dynamic', _set(('exit', 'score_factors'), False),
                      r'^exit\.score_factors: the graph outputs'),
    'levels': ('dynamic', _one_level_less, r'^exit\.anchors\.strides: the graph outputs'),
    'level_stride': ('dynamic', _set(('exit', 'anchors', 'strides', 0), [16.0, 16.0]),
                     r"^exit\.anchors\.strides\[0\]: give a \(4, 4\) map for a 64x64 input; "
                     r"the graph's cls_0 is \(8, 8\)"),
    'num_anchors': ('dynamic', _twice_the_anchors,
                    r"^exit\.num_anchors: 4 x 6 \(exit\.cls_out_channels\) != the 12 channels "
                    r"of the graph's cls_0"),
}


@pytest.mark.parametrize('case', list(GRAPH_CASES))
def test_fields_must_fit_the_graph(exports, tmp_path, case):
    from ecc_edge.runtime import LightEdge, SidecarError
    kind, edit, message = GRAPH_CASES[case]
    side = edit(_side(exports, kind))
    with pytest.raises(SidecarError, match=message):
        LightEdge(osp.join(exports[kind], 'edge.onnx'), _write(tmp_path, side))


def test_graph_inputs_are_checked():
    from ecc_edge.sidecar import EdgeRuntimeError, check_graph_io
    with pytest.raises(EdgeRuntimeError, match='not one \\(N, 3, H, W\\) "input"'):
        check_graph_io({}, [('image', [1, 3, 'h', 'w'])], [])
    with pytest.raises(EdgeRuntimeError, match='not one'):
        check_graph_io({}, [('input', [1, 4, 'h', 'w'])], [])


def test_signed_sidecars(exports, tmp_path):
    """With the operator's key, an edge runs only sidecars signed with it; the signature covers
    every field; the exporter signs with --sidecar-key-file."""
    from ecc_edge.runtime import LightEdge, SidecarError, read_key_file
    graph, side = osp.join(exports['dynamic'], 'edge.onnx'), _side(exports, 'dynamic')
    image = np.random.default_rng(0).integers(0, 256, (80, 96, 3), dtype=np.uint8)
    plain = LightEdge(graph, _write(tmp_path, side)).process(image)
    signed = _write(tmp_path, side, KEY)
    assert LightEdge(graph, signed, key=KEY).process(image).payload == plain.payload
    LightEdge(graph, signed)  # an edge without a key ignores the signature
    with pytest.raises(SidecarError, match='^sidecar_hmac_sha256: missing'):
        LightEdge(graph, _write(tmp_path, side), key=KEY)
    with pytest.raises(SidecarError, match='^sidecar_hmac_sha256: does not match'):
        LightEdge(graph, signed, key=KEY[::-1])
    forged = json.loads(open(signed).read())
    forged['router']['threshold'] = 0.25  # in range: only the signature tells
    forged.pop('sidecar_sha256')
    from ecc_edge.sidecar import sidecar_digest
    forged['sidecar_sha256'] = sidecar_digest(forged)
    (tmp_path / 'forged.json').write_text(json.dumps(forged))
    with pytest.raises(SidecarError, match='^sidecar_hmac_sha256: does not match'):
        LightEdge(graph, str(tmp_path / 'forged.json'), key=KEY)
    (tmp_path / 'short.key').write_bytes(b'short\n')
    with pytest.raises(ValueError, match='at least 16 random bytes'):
        read_key_file(str(tmp_path / 'short.key'))
    (tmp_path / 'op.key').write_bytes(KEY + b'\n')
    assert read_key_file(str(tmp_path / 'op.key')) == KEY


def test_export_tool_signs_and_names_a_missing_calibration_split(served_model, tmp_path,
                                                                 capsys):
    import export_edge_onnx  # tools/ (conftest puts it on the path): main() in-process
    from ecc_edge.runtime import LightEdge
    from ecc_mmdet.apis import load_config
    (tmp_path / 'op.key').write_bytes(KEY)
    out = tmp_path / 'signed'
    assert export_edge_onnx.main([served_model['config'], served_model['checkpoint'],
                                  '--out-dir', str(out), '--sidecar-key-file',
                                  str(tmp_path / 'op.key')]) == 0
    assert '(signed)' in capsys.readouterr().out
    LightEdge(str(out / 'edge.onnx'), key=KEY)
    cfg = load_config(osp.join(REPO, 'configs', 'ecc_faster_rcnn_r18_synthetic_dynamic.py'),
                      served_model['data_root'])  # the tiny set has no calib split
    cfg.dump(str(tmp_path / 'dynamic.py'))
    assert export_edge_onnx.main([str(tmp_path / 'dynamic.py'), served_model['checkpoint'],
                                  '--out-dir', str(tmp_path / 'd'), '--data-root',
                                  served_model['data_root']]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --data-root {served_model['data_root']} has no calibration "
                          'split') and '--num-calib' in err and err.count('\n') == 1


def test_forged_sidecar_fuzz_raises_no_traceback(exports, tmp_path):
    """The fault benchmark's fuzz, small: every edit is refused naming its field, or runs
    (identical outputs, or a value inside the schema that only a signature can catch)."""
    import shutil

    from ecc_edge.sidecar import sign_sidecar
    from ecc_tools.fault_cases import sidecar_fuzz
    res = sidecar_fuzz(exports['dynamic'], n_edits=60, seed=1)
    assert res['tracebacks'] == 0, res['examples']['traceback']
    assert res['refused'] == res['refused_naming_field'] > 30, res['examples']
    assert res['refused'] + res['identical'] + res['changed'] == 60
    signed = tmp_path / 'signed'
    signed.mkdir()
    shutil.copy(osp.join(exports['static'], 'edge.onnx'), signed / 'edge.onnx')
    (signed / 'edge.json').write_text(json.dumps(sign_sidecar(_side(exports, 'static'), KEY)))
    res = sidecar_fuzz(str(signed), n_edits=30, seed=2, key=KEY)
    assert res['tracebacks'] == res['changed'] == 0
    assert res['refused'] == res['refused_naming_field'] and res['refused'] > 15
