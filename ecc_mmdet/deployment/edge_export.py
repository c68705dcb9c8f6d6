"""Export the edge of a split detector for the light runtime (:mod:`ecc_edge.runtime`): an ONNX
graph (image batch -> the latent the entropy coder quantises) and a JSON sidecar with what the
graph cannot hold.

The sidecar carries: the preprocessing of the config's test pipeline and data preprocessor
(resize rule, BGR->RGB, mean/std, padding), the codec (id, rate point, per-channel medians and
the entropy model's integer coding tables with their fingerprint), the backbone strides that
give the feature map's size (the codec params), the model fingerprint the cloud checks, the
class names, and the SHA-256 of the graph file it belongs to. The sidecar is itself checksummed
(``sidecar_sha256`` over its canonical JSON), so a corrupted one is refused, and optionally
signed (HMAC-SHA256 with the operator's key), so an edge holding the key runs only its own
exports. Its schema is :mod:`ecc_edge.sidecar`; what is written here is checked against it.

A dynamic model (``edge_exit`` + ``router``) exports its exit too: the graph then also outputs
the exit head's raw per-level maps (``cls_<l>``, ``bbox_<l>``, and ``ctr_<l>`` for a head with
score factors such as ATSS's centerness) computed from the same F_k, and the sidecar gains
``exit`` (head kind, classes, anchors, box coder, test_cfg), ``router`` (kind, parameters and the
CALIBRATED threshold: calibrate the model before export), ``score_maps`` (per tier, the isotonic
map's knots for ``np.interp``; None without ``calibrate_scores``) and ``edge_report``; the light
runtime (:mod:`ecc_edge.exits`) decodes, routes and maps scores like the PyTorch edge.

A hyperprior (single or variable rate) exports its side information too: the graph also
outputs ``hyper_latent`` (z = h_a(y)), the codec's tables are z's factorized ones, and the
sidecar gains ``hyperprior``: the integer hyper-synthesis (weights and biases exactly as
``ExactHyperSynthesis.integer_layers`` gives them), the integer scale-index thresholds and the
Gaussian tables; the runtime codes like ``HyperpriorBottleneckNeck.compress``
(:mod:`ecc_edge.codecs.hyperprior`). A channel-context hyperprior adds
``hyperprior.channel_context``: its slice transforms' integer layers.

What the light runtime cannot express yet is refused here with the reason: codecs other than
the learned bottlenecks and hyperpriors, test pipelines other than load + Resize (+
annotations, packing), extension exits, a learned router that feeds on pooled F_k (or one
trained for other exits), and exit heads other than the AnchorHead family (AnchorGenerator,
DeltaXYWHBBoxCoder, sigmoid classification, mmdet's own post-processing). The router says itself
how it exports, or why it cannot (``BaseRouter.light_edge_spec``): every router of
:mod:`ecc_mmdet.models.routers` exports (the learned one with its MLP's weights, the random one
with its seed: the light edge draws from the image id, as PyTorch does).
"""
import hashlib
import json
import math
import os.path as osp
from typing import Dict, List, Optional, Tuple

import torch
from mmdet.models.dense_heads import AnchorHead, ATSSHead
from mmdet.models.dense_heads.base_dense_head import BaseDenseHead
from mmdet.models.task_modules.coders import DeltaXYWHBBoxCoder
from mmdet.models.task_modules.prior_generators import AnchorGenerator
from torch import nn

from ecc_edge.codecs.bitstream import CodecId
from ecc_edge.sidecar import (SIDECAR_FORMAT, SIDECAR_VERSION, sidecar_digest, sign_sidecar,
                              validate_sidecar)

from ..errors import ConfigError
from .fingerprint import model_fingerprint

__all__ = ['EdgeGraph', 'SIDECAR_FORMAT', 'build_sidecar', 'check_graph', 'export_edge_onnx',
           'hyperprior_spec', 'sidecar_digest']

_PIPELINE_OK = ('LoadImageFromFile', 'LoadAnnotations', 'PackDetInputs')
_FACTORIZED = (CodecId.ENTROPY_BOTTLENECK, CodecId.VARIABLE_RATE_BOTTLENECK)
_HYPERPRIOR = (CodecId.HYPERPRIOR_BOTTLENECK, CodecId.VARIABLE_RATE_HYPERPRIOR,
               CodecId.CHANNEL_CONTEXT_HYPERPRIOR, CodecId.VARIABLE_RATE_CHANNEL_CONTEXT)


def _is_hyperprior(comp) -> bool:
    return int(getattr(comp, 'codec_id', 0) or 0) in _HYPERPRIOR


class EdgeGraph(nn.Module):
    """What the ONNX graph computes: normalised, padded image batch -> the compressor's latent
    (before the median shift and rounding, which the runtime does in numpy exactly like the
    entropy model's ``compress``; a hyperprior's z = h_a(latent) too)."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.point = model.compressor._rate_point(False)
        self.with_exit = getattr(model, 'edge_exit', None) is not None and \
            getattr(model, 'router', None) is not None
        self.hyper = _is_hyperprior(model.compressor)
        self.stats = self.with_exit and model.router.needs_feature_stats

    def forward(self, x):
        f = self.model.splitter.forward_edge(x)
        latent = self.model.compressor._latent(f, *self.point)
        latents = (latent, self.model.compressor.h_a(latent)) if self.hyper else (latent, )
        if not self.with_exit:
            return latents if self.hyper else latent
        outs = self.model.edge_exit(f)  # (cls_scores, bbox_preds[, centernesses]) per level
        stats = (self.model.router.feature_stats(f), ) if self.stats else ()  # it reads F_k
        return latents + tuple(t for part in outs for t in part) + stats

    def output_names(self) -> List[str]:
        latents = ['latent', 'hyper_latent'] if self.hyper else ['latent']
        if not self.with_exit:
            return latents
        n_lv = len(self.model.edge_exit.head.prior_generator.strides)
        parts = ['cls', 'bbox'] + (['ctr'] if _has_score_factors(self.model.edge_exit) else [])
        return latents + [f'{p}_{i}' for p in parts for i in range(n_lv)] + \
            (['feature_stats'] if self.stats else [])


def _has_score_factors(edge_exit) -> bool:
    """ATSS's centerness is the one score factor ported (the head's third output)."""
    return isinstance(edge_exit.head, ATSSHead)


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
    """The codec: id, rate point, and the factorized tables (of y, or of a hyperprior's z)."""
    comp = model.compressor
    if int(getattr(comp, 'codec_id', 0) or 0) not in _FACTORIZED + _HYPERPRIOR:
        raise ConfigError(f'the light edge runtime codes with the learned bottlenecks '
                          f'(EntropyBottleneckNeck, VariableRateBottleneckNeck) and hyperpriors '
                          f'(HyperpriorBottleneckNeck, VariableRateHyperpriorNeck, '
                          f'ChannelContextHyperpriorNeck, VariableRateChannelContextNeck), not '
                          f'{type(comp).__name__}')
    point = comp._rate_point(False)
    em = comp.hyper_entropy_model if _is_hyperprior(comp) else comp._coder(*point)
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


def _integer_layers(net) -> List[Dict]:
    """An ExactHyperSynthesis' convs as the sidecar holds them (integer weights and biases)."""
    return [dict(in_channels=int(w.shape[1]), out_channels=int(w.shape[0]),
                 weight=[int(v) for v in w.reshape(-1).tolist()],
                 bias=[int(v) for v in b.tolist()]) for w, b in net.integer_layers()]


def hyperprior_spec(comp) -> Dict:
    """The sidecar's ``hyperprior`` of a hyperprior compressor: the integer hyper-synthesis,
    the integer thresholds of ``index_from_fixed_point`` and the Gaussian tables (rows cut
    to their support + escape bin); a channel-context model adds its slice transforms."""
    hs, g = comp.h_s, comp.gaussian
    layers = _integer_layers(hs)
    thresholds = torch.ceil(g.log_scale_bounds.double() * 2.0**(2 * hs.frac_bits))
    lengths = [int(v) + 1 for v in g._pmf_length.tolist()]
    return dict(hyper_channels=int(comp.hyper_channels),
                hyper_downsample=int(comp.hyper_downsample),
                synthesis=dict(layers=layers, frac_bits=int(hs.frac_bits),
                               act_max=float(hs.act_max), mean_max=float(hs.mean_max),
                               predict_means=bool(hs.predict_means)),
                index_thresholds=[int(v) for v in thresholds.tolist()],
                gaussian=dict(offsets=[int(v) for v in g._offset.tolist()], lengths=lengths,
                              pmf_table=[[int(v) for v in row[:n]] for row, n in
                                         zip(g._pmf_table.tolist(), lengths)]),
                **_context_spec(comp))


def _context_spec(comp) -> Dict:
    transforms = getattr(comp, 'slice_transforms', None)
    if transforms is None:
        return {}
    return dict(channel_context=dict(
        num_slices=len(transforms), transforms=[dict(layers=_integer_layers(t))
                                                for t in transforms]))


def _check_exits(model) -> None:
    """Refuse (ConfigError) a dynamic model whose exit/router the light runtime cannot run."""
    edge_exit, router = getattr(model, 'edge_exit', None), getattr(model, 'router', None)
    if edge_exit is None and router is None:
        return
    if edge_exit is None or router is None:
        return  # an exit without a router (or the reverse) offloads every image: latent only
    if getattr(model, 'extension_exit', None) is not None:
        raise ConfigError('the light edge runtime does not run extension exits (MEANet): export '
                          'the model without extension_exit/hard_classes, or run its edge with '
                          'PyTorch (tools/edge_client.py without --light)')
    model.check_router()  # a learned router trained for other exits is refused
    router.light_edge_spec()  # the router says how it exports, or why it cannot
    _exit_spec(edge_exit)


def _exit_spec(edge_exit) -> Dict:
    head = edge_exit.head
    kind = type(head).__name__
    if not isinstance(head, AnchorHead) or any(
            getattr(type(head), m) is not getattr(BaseDenseHead, m)
            for m in ('predict_by_feat', '_predict_by_feat_single', '_bbox_post_process')):
        raise ConfigError(f'the light edge runtime decodes AnchorHead-family exit heads with '
                          f'mmdet\'s own post-processing (ATSSHead, RetinaHead), not {kind}')
    coder, gen = head.bbox_coder, head.prior_generator
    if type(coder) is not DeltaXYWHBBoxCoder or coder.add_ctr_clamp:
        raise ConfigError(f'the light edge runtime decodes DeltaXYWHBBoxCoder boxes (without '
                          f'add_ctr_clamp), not {type(coder).__name__}')
    if type(gen) is not AnchorGenerator:
        raise ConfigError(f'the light edge runtime builds AnchorGenerator anchors, not '
                          f'{type(gen).__name__}')
    if not head.use_sigmoid_cls or getattr(head.loss_cls, 'custom_cls_channels', False):
        raise ConfigError('the light edge runtime decodes sigmoid classification exit heads only')
    cfg = head.test_cfg or {}
    nms = dict(cfg.get('nms') or {})
    if nms.get('type', 'nms') != 'nms' or set(nms) - {'type', 'iou_threshold'}:
        raise ConfigError(f'the light edge runtime runs mmcv\'s plain class-aware nms '
                          f'(iou_threshold only), the exit asks for {nms}')
    if cfg.get('max_per_img') is None or 'iou_threshold' not in nms:
        raise ConfigError('the exit test_cfg needs nms=dict(type=\'nms\', iou_threshold=...) '
                          'and max_per_img')
    return dict(
        kind=kind, num_classes=int(head.num_classes), num_anchors=int(head.num_base_priors),
        cls_out_channels=int(head.cls_out_channels), score_factors=_has_score_factors(edge_exit),
        anchors=dict(strides=[[float(v) for v in st] for st in gen.strides],
                     ratios=[float(r) for r in gen.ratios.tolist()],
                     scales=[float(v) for v in gen.scales.tolist()],
                     octave_base_scale=gen.octave_base_scale,
                     scales_per_octave=gen.scales_per_octave,
                     center_offset=float(gen.center_offset),
                     base_anchors=[[[float(v) for v in row] for row in b.tolist()]
                                   for b in gen.base_anchors]),
        bbox_coder=dict(means=[float(v) for v in coder.means],
                        stds=[float(v) for v in coder.stds], clip_border=bool(coder.clip_border),
                        # decode()'s default, which the dense heads use
                        wh_ratio_clip=16 / 1000, max_ratio=float(abs(math.log(16 / 1000)))),
        test_cfg=dict(nms_pre=int(cfg.get('nms_pre', -1)),
                      score_thr=float(cfg.get('score_thr', 0)),
                      min_bbox_size=float(cfg.get('min_bbox_size', -1)),
                      iou_threshold=float(nms['iou_threshold']),
                      max_per_img=int(cfg['max_per_img'])))


def _dynamic_spec(model) -> Dict:
    """The sidecar keys of a dynamic model (empty for a model without exit + router)."""
    if getattr(model, 'edge_exit', None) is None or getattr(model, 'router', None) is None:
        return {}
    maps = None
    if model.calibrate_scores:
        if model.score_maps is None:
            raise ConfigError('calibrate_scores=True but the model has no score maps: calibrate '
                              'it before export (tools/export_edge_onnx.py --data-root DIR)')
        maps = {tier: dict(x=[float(v) for v in m.x], y=[float(v) for v in m.y])
                for tier, m in model.score_maps.items()}
    report = None if model.edge_report is None else dict(
        score_thr=float(model.edge_report['score_thr']),
        max_boxes=int(model.edge_report['max_boxes']))
    return dict(exit=_exit_spec(model.edge_exit), router=model.router.light_edge_spec(),
                score_maps=maps, edge_report=report)


def build_sidecar(model, cfg, graph_sha256: str, class_names=None,
                  key: Optional[bytes] = None) -> Dict:
    """The sidecar of ``model``'s graph, checksummed (and signed with ``key``), checked against
    the schema the runtime reads (a ConfigError would be a bug of this exporter)."""
    _check_exits(model)
    side = dict(format=SIDECAR_FORMAT, version=SIDECAR_VERSION, graph_sha256=graph_sha256,
                model_fingerprint=model_fingerprint(model).hex(),
                preprocess=_preprocess_spec(cfg), codec=_codec_spec(model),
                feature_strides=model.splitter.edge_strides(),
                class_names=list(class_names) if class_names else None)
    side.update(_dynamic_spec(model))
    if _is_hyperprior(model.compressor):
        side['hyperprior'] = hyperprior_spec(model.compressor)
    side['sidecar_sha256'] = sidecar_digest(side)
    if key is not None:
        side = sign_sidecar(side, key)
    try:
        validate_sidecar(side)
    except ValueError as e:
        raise ConfigError(f'the exported sidecar breaks its own schema: {e}') from e
    return side


def export_edge_onnx(model, cfg, out_dir: str, class_names=None, opset: int = 17,
                     probe_size: Tuple[int, int] = (128, 128), key: Optional[bytes] = None
                     ) -> Tuple[str, str]:
    """Write ``edge.onnx`` and ``edge.json`` (signed with ``key`` when given) into ``out_dir``
    -> their paths."""
    model = model.eval()
    _check_exits(model)  # refuse what the runtime cannot express before exporting anything
    _codec_spec(model)
    _preprocess_spec(cfg)
    _dynamic_spec(model)
    graph = EdgeGraph(model).eval()
    onnx_path, side_path = osp.join(out_dir, 'edge.onnx'), osp.join(out_dir, 'edge.json')
    x = torch.zeros(1, 3, *probe_size)
    names = graph.output_names()
    axes = {'input': {2: 'height', 3: 'width'}}
    axes.update({n: {2: f'{n}_h', 3: f'{n}_w'} for n in names if n != 'feature_stats'})
    try:
        with torch.no_grad():
            torch.onnx.export(graph, (x, ), onnx_path, dynamo=False, input_names=['input'],
                              output_names=names, opset_version=opset, dynamic_axes=axes)
    except Exception as e:  # an op ONNX cannot express: say which model part failed
        raise ConfigError(f'ONNX export of the edge ({type(model.backbone).__name__} stages '
                          f'+ {type(model.compressor).__name__}) failed: '
                          f'{type(e).__name__}: {e}') from e
    with open(onnx_path, 'rb') as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    sidecar = build_sidecar(model, cfg, digest, class_names, key)
    with open(side_path, 'w') as f:
        json.dump(sidecar, f)
    return onnx_path, side_path


def check_graph(onnx_path: str, model, sizes=((128, 128), (96, 160)),
                tolerance: float = 1e-3) -> Optional[float]:
    """Max |ONNX Runtime - PyTorch| on the latent (and a dynamic model's exit maps) for a few
    input sizes (a dynamic shape the runtime cannot take fails here, at export time); None
    without onnxruntime."""
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
            refs = graph(x)
        refs = [t.numpy() for t in (refs if isinstance(refs, tuple) else (refs, ))]
        gots = sess.run(None, {'input': x.numpy()})
        for name, got, ref in zip(graph.output_names(), gots, refs):
            if got.shape != ref.shape:
                raise ConfigError(f'the exported graph gives a {got.shape} {name} for a {h}x{w} '
                                  f'input, PyTorch {ref.shape}: a dynamic shape it cannot take')
            worst = max(worst, float(abs(got - ref).max()))
    if worst > tolerance:
        raise ConfigError(f'the exported graph differs from PyTorch by {worst:.2e} (> '
                          f'{tolerance}): an op is exported wrongly')
    return worst
