"""Export the edge of a split detector for the light runtime (:mod:`ecc_edge.runtime`): an ONNX
graph (image batch -> the latent the entropy coder quantises) and a JSON sidecar with what the
graph cannot hold.

The sidecar carries: the preprocessing of the config's test pipeline and data preprocessor
(resize rule, BGR->RGB, mean/std, padding), the codec (id, rate point, per-channel medians and
the entropy model's integer coding tables with their fingerprint), the backbone strides that
give the feature map's size (the codec params), the model fingerprint the cloud checks, the
class names, and the SHA-256 of the graph file it belongs to. The sidecar is itself checksummed
(``sidecar_sha256`` over its canonical JSON), so a corrupted or edited one is refused.

What the light runtime cannot express yet is refused here with the reason: codecs other than
the learned bottlenecks, test pipelines other than load + Resize (+ annotations, packing), and
models with edge exits or a router (their box decoding, NMS, score maps and routing rule are
not ported to numpy yet: export such a model without ``edge_exit``/``router`` to offload every
image, or run its edge with PyTorch).
"""
import hashlib
import json
import os.path as osp
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from ..utils.config_checks import ConfigError
from .fingerprint import model_fingerprint

__all__ = ['EdgeGraph', 'SIDECAR_FORMAT', 'build_sidecar', 'check_graph', 'export_edge_onnx',
           'sidecar_digest']

SIDECAR_FORMAT = 'ecc_edge_sidecar'
SIDECAR_VERSION = 1
_PIPELINE_OK = ('LoadImageFromFile', 'LoadAnnotations', 'PackDetInputs')


class EdgeGraph(nn.Module):
    """What the ONNX graph computes: normalised, padded image batch -> the compressor's latent
    (before the median shift and rounding, which the runtime does in numpy exactly like the
    entropy model's ``compress``)."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.point = model.compressor._rate_point(False)

    def forward(self, x):
        f = self.model.splitter.forward_edge(x)
        return self.model.compressor._latent(f, *self.point)


def _preprocess_spec(cfg) -> Dict:
    pipeline = cfg.test_dataloader.dataset.pipeline
    resize = None
    for t in pipeline:
        kind = t['type']
        if kind == 'Resize':
            if resize is not None:
                raise ConfigError('the light edge runtime supports one Resize in the test '
                                  'pipeline')
            scale = t.get('scale')
            if not (isinstance(scale, (tuple, list)) and len(scale) == 2) or \
                    t.get('scale_factor') is not None:
                raise ConfigError(f'Resize must give scale=(w, h) for the light runtime, got '
                                  f'{dict(t)}')
            if t.get('interpolation', 'bilinear') != 'bilinear' or \
                    t.get('backend', 'cv2') != 'cv2':
                raise ConfigError('the light runtime resizes with OpenCV bilinear (mmdet\'s '
                                  'default); the config asks for something else')
            resize = dict(scale=[int(scale[0]), int(scale[1])],
                          keep_ratio=bool(t.get('keep_ratio', False)))
        elif kind.split('.')[-1] not in _PIPELINE_OK:
            raise ConfigError(f'the light edge runtime cannot express the test transform '
                              f'{kind!r} (it supports {", ".join(_PIPELINE_OK)} and Resize)')
    dp = cfg.model.data_preprocessor
    mean, std = dp.get('mean'), dp.get('std')
    return dict(resize=resize, bgr_to_rgb=bool(dp.get('bgr_to_rgb', False)),
                mean=[float(v) for v in (mean if mean is not None else (0, 0, 0))],
                std=[float(v) for v in (std if std is not None else (1, 1, 1))],
                pad_size_divisor=int(dp.get('pad_size_divisor', 1)),
                pad_value=float(dp.get('pad_value', 0)))


def _codec_spec(model) -> Dict:
    comp = model.compressor
    if not hasattr(comp, 'g_a') or not hasattr(comp, '_coder'):
        raise ConfigError(f'the light edge runtime codes with the learned bottlenecks '
                          f'(EntropyBottleneckNeck, VariableRateBottleneckNeck), not '
                          f'{type(comp).__name__}')
    point = comp._rate_point(False)
    em = comp._coder(*point)
    em._tables_numpy()  # refuses missing or stale tables with the reason
    # the same arrays the entropy model codes with (CodingTables(pmf, offset, length + 1))
    return dict(codec_id=int(comp.codec_id), name=comp.codec_name,
                rate_point=comp.header_rate_point, latent_channels=int(comp.latent_channels),
                downsample=int(comp.downsample),
                medians=[float(v) for v in em._medians().float().cpu().tolist()],
                offsets=[int(v) for v in em._offset.cpu().tolist()],
                lengths=[int(v) + 1 for v in em._pmf_length.cpu().tolist()],
                pmf_table=[[int(v) for v in row] for row in em._pmf_table.cpu().tolist()],
                tables_fingerprint=int(em._tables_fingerprint.item()))


def _strides(model) -> List[int]:
    sp = model.splitter
    return [2] + [2] * sp.has_maxpool + list(getattr(sp.backbone, 'strides', ()))[
        :sp.split_after]


def sidecar_digest(sidecar: Dict) -> str:
    """SHA-256 of the sidecar's canonical JSON without its own digest field."""
    body = {k: v for k, v in sidecar.items() if k != 'sidecar_sha256'}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(',', ':')).encode()
                          ).hexdigest()


def _check_exits(model) -> None:
    if getattr(model, 'edge_exit', None) is not None or getattr(model, 'router', None) is not None:
        raise ConfigError(
            'this model has edge exits / a router: the light edge runtime does not decode exit '
            'heads or route yet. Export it without edge_exit and router (every image is '
            'offloaded; the cloud checkpoint is unchanged) or run its edge with PyTorch '
            '(tools/edge_client.py without --light)')


def build_sidecar(model, cfg, graph_sha256: str, class_names=None) -> Dict:
    _check_exits(model)
    side = dict(format=SIDECAR_FORMAT, version=SIDECAR_VERSION, graph_sha256=graph_sha256,
                model_fingerprint=model_fingerprint(model).hex(),
                preprocess=_preprocess_spec(cfg), codec=_codec_spec(model),
                feature_strides=_strides(model),
                class_names=list(class_names) if class_names else None)
    side['sidecar_sha256'] = sidecar_digest(side)
    return side


def export_edge_onnx(model, cfg, out_dir: str, class_names=None, opset: int = 17,
                     probe_size: Tuple[int, int] = (128, 128)) -> Tuple[str, str]:
    """Write ``edge.onnx`` and ``edge.json`` into ``out_dir`` -> their paths."""
    model = model.eval()
    _check_exits(model)  # refuse what the runtime cannot express before exporting anything
    _codec_spec(model)
    _preprocess_spec(cfg)
    graph = EdgeGraph(model).eval()
    onnx_path, side_path = osp.join(out_dir, 'edge.onnx'), osp.join(out_dir, 'edge.json')
    x = torch.zeros(1, 3, *probe_size)
    try:
        with torch.no_grad():
            torch.onnx.export(graph, (x, ), onnx_path, dynamo=False, input_names=['input'],
                              output_names=['latent'], opset_version=opset,
                              dynamic_axes={'input': {2: 'height', 3: 'width'},
                                            'latent': {2: 'latent_h', 3: 'latent_w'}})
    except Exception as e:  # an op ONNX cannot express: say which model part failed
        raise ConfigError(f'ONNX export of the edge ({type(model.backbone).__name__} stages '
                          f'+ {type(model.compressor).__name__}) failed: '
                          f'{type(e).__name__}: {e}') from e
    with open(onnx_path, 'rb') as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    sidecar = build_sidecar(model, cfg, digest, class_names)
    with open(side_path, 'w') as f:
        json.dump(sidecar, f)
    return onnx_path, side_path


def check_graph(onnx_path: str, model, sizes=((128, 128), (96, 160)),
                tolerance: float = 1e-3) -> Optional[float]:
    """Max |ONNX Runtime - PyTorch| on the latent for a few input sizes (a dynamic shape the
    runtime cannot take fails here, at export time); None without onnxruntime."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    sess = ort.InferenceSession(onnx_path, providers=['CPUExecutionProvider'])
    graph = EdgeGraph(model).eval()
    worst = 0.0
    g = torch.Generator().manual_seed(0)
    for h, w in sizes:
        x = torch.randn(1, 3, h, w, generator=g)
        with torch.no_grad():
            ref = graph(x).numpy()
        got = sess.run(None, {'input': x.numpy()})[0]
        if got.shape != ref.shape:
            raise ConfigError(f'the exported graph gives a {got.shape} latent for a {h}x{w} '
                              f'input, PyTorch {ref.shape}: a dynamic shape it cannot take')
        worst = max(worst, float(abs(got - ref).max()))
    if worst > tolerance:
        raise ConfigError(f'the exported graph differs from PyTorch by {worst:.2e} (> '
                          f'{tolerance}): an op is exported wrongly')
    return worst
