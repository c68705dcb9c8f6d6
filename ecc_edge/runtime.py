"""The light edge runtime: an image -> the payload the cloud server decodes, with ONNX Runtime,
OpenCV/numpy and constriction only (no torch, mmdet, mmcv or ecc_mmdet).

``tools/export_edge_onnx.py`` writes the two files this reads: ``edge.onnx`` (normalised padded
image -> the compressor's latent) and ``edge.json`` (the sidecar: preprocessing, coding tables,
strides, fingerprints, class names; see :mod:`ecc_mmdet.deployment.edge_export`). The steps
mirror the PyTorch edge exactly:

1. mmdet's test preprocessing: OpenCV bilinear resize with mmcv's rescale rule (keep_ratio) or
   to the fixed scale, BGR->RGB, (x - mean) / std in float32, zero padding to the size divisor;
2. the graph (ONNX Runtime, CPU);
3. the entropy model's ``compress``: symbols = round-half-even(latent - median), range-coded
   with the same integer tables; codec params = the feature map's (H, W) from the strides;
4. framing (:func:`ecc_edge.codecs.pack`) with the image meta, rate point and the model
   fingerprint of the PyTorch model the graph was exported from.

A hyperprior's graph also outputs the side information z: step 3 is then
``HyperpriorBottleneckNeck.compress`` (:mod:`ecc_edge.codecs.hyperprior`): z coded with its
factorized tables, the integer hyper-synthesis of z_hat gives y's means and scale indexes
(exact integers, the PyTorch edge's and the cloud's), y coded with the indexed Gaussian tables.

A dynamic model's graph also outputs its edge exit's raw maps: the runtime then decodes the
exit's detections, scores the image with the router (:mod:`ecc_edge.exits`, the same rules as
the PyTorch edge) and either finishes it on the edge (tier ``edge_main``: its detections, with
the edge tier's score map applied; a detections report as payload when the model has
``edge_report``, else no payload) or offloads it (tier ``cloud``: the payload as above).

Float differences between ONNX Runtime and PyTorch can move a latent value across a rounding
boundary: that symbol then differs by one. The coder codes any int32 value, so the payload
stays decodable (never a desynchronised decoder); the benchmark reports how often it happens.
"""
import hashlib
import os.path as osp
import struct
import time
from typing import Dict, NamedTuple, Optional, Tuple, Union

import numpy as np

from .codecs.bitstream import CodecId, ImageMeta, Payload, pack
from .codecs.detections import pack_detections
from .codecs.hyperprior import HyperpriorEncoder, quantise, tables_from_rows
from .codecs.range_coding import encode_with_cdf_tables
from .exits import ExitDetections, apply_score_map, decode_exit, offload, router_score
from .sidecar import (SIDECAR_FORMAT, SIDECAR_VERSION, EdgeRuntimeError, SidecarError,
                      check_graph_io, check_probe, load_sidecar, probe_side, read_key_file,
                      sidecar_digest)

__all__ = ['EdgeRuntimeError', 'LightEdge', 'LightResult', 'SIDECAR_FORMAT', 'SIDECAR_VERSION',
           'SidecarError', 'load_sidecar', 'read_key_file', 'sidecar_digest']


class LightResult(NamedTuple):
    """``payload``: the features payload (tier 'cloud'), an edge-finished image's detections
    report (models with ``edge_report``) or None; ``symbols``: what was range-coded (None for
    an edge-finished image); ``detections``: the exit's detections of an edge-finished image
    (original-image pixels, scores after the edge score map), else None; ``router_score``:
    None for a model without exits; ``side_symbols``: a hyperprior's z symbols (coded before
    ``symbols``, y's)."""
    payload: Optional[bytes]
    meta: ImageMeta
    symbols: Optional[np.ndarray]  # (C, h, w) int32
    timings_ms: Dict[str, float]  # preprocess, graph[, exit, route], encode / report
    tier: str = 'cloud'
    detections: Optional[ExitDetections] = None
    router_score: Optional[float] = None
    side_symbols: Optional[np.ndarray] = None  # (Cz, zh, zw) int32


class LightEdge:
    """The edge of a split detector on ONNX Runtime.

    Args:
        graph: path of ``edge.onnx``.
        sidecar: path of its sidecar (default: ``edge.json`` beside the graph).
        threads: ONNX Runtime intra-op threads (1: a small device's single core).
        key: the operator's signing key (:func:`read_key_file`): when given, only a sidecar
            signed with it is run (:mod:`ecc_edge.sidecar`).

    The sidecar is checked field by field, and against the graph's inputs and outputs and one
    probe run, before anything else (``SidecarError`` names the field).
    """

    def __init__(self, graph: str, sidecar: Optional[str] = None, threads: int = 1,
                 key: Optional[bytes] = None):
        sidecar = sidecar or osp.join(osp.dirname(graph), 'edge.json')
        self.sidecar = side = load_sidecar(sidecar, key)
        self.session = self._open(graph, sidecar, threads)
        pre, codec = side['preprocess'], side['codec']
        self.pre = pre
        self.mean = np.asarray(pre['mean'], np.float32).reshape(1, 3, 1, 1)
        self.std = np.asarray(pre['std'], np.float32).reshape(1, 3, 1, 1)
        self.codec_id = CodecId(codec['codec_id'])
        self.rate_point = codec['rate_point']
        self.medians = np.asarray(codec['medians'], np.float32).reshape(-1, 1, 1)
        # the factorized tables (a hyperprior's: z's)
        self.tables = tables_from_rows(codec['pmf_table'], codec['offsets'], codec['lengths'])
        self.hyper = HyperpriorEncoder(side['hyperprior'], self.tables, self.medians) \
            if 'hyperprior' in side else None
        self.strides = list(side['feature_strides'])
        self.fingerprint = bytes.fromhex(side['model_fingerprint'])
        self.class_names = side['class_names']
        # a dynamic model: exit + router (+ score maps, edge report)
        self.exit, self.router = side.get('exit'), side.get('router')
        self.score_maps = side.get('score_maps')
        self.edge_report = side.get('edge_report')
        self.output_names = [o.name for o in self.session.get_outputs()]

    def _open(self, graph: str, sidecar: str, threads: int):
        """The ONNX Runtime session of ``graph``, checked against the sidecar: its SHA-256,
        its inputs and outputs, and the output sizes of one probe run (the strides)."""
        import onnxruntime as ort
        try:
            with open(graph, 'rb') as f:
                data = f.read()
        except OSError as e:
            raise EdgeRuntimeError(f'edge graph {graph}: {e}') from None
        if hashlib.sha256(data).hexdigest() != self.sidecar['graph_sha256']:
            raise SidecarError(f'graph_sha256: {sidecar} belongs to another graph than '
                               f'{graph}: use the pair export_edge_onnx wrote')
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
        session = ort.InferenceSession(data, opts, providers=['CPUExecutionProvider'])
        check_graph_io(self.sidecar, [(i.name, i.shape) for i in session.get_inputs()],
                       [(o.name, o.shape) for o in session.get_outputs()])
        size = probe_side(self.sidecar)
        outs = session.run(None, {'input': np.zeros((1, 3, size, size), np.float32)})
        check_probe(self.sidecar, size,
                    {o.name: v.shape for o, v in zip(session.get_outputs(), outs)})
        return session

    # ------------------------------------------------------------------ steps
    def read(self, image: Union[str, np.ndarray]) -> np.ndarray:
        """A path (decoded like mmdet's LoadImageFromFile: colour, BGR) or a BGR uint8 array."""
        import cv2
        if isinstance(image, np.ndarray):
            img = image
        else:
            img = cv2.imread(str(image), cv2.IMREAD_COLOR)
            if img is None:
                raise EdgeRuntimeError(f'cannot read an image from {image}')
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8 or min(img.shape[:2]) < 1:
            raise EdgeRuntimeError(f'expected an (H, W, 3) uint8 BGR image, got {img.dtype} '
                                   f'{img.shape}')
        return img

    def preprocess(self, img: np.ndarray) -> Tuple[np.ndarray, ImageMeta]:
        """BGR uint8 image -> (1, 3, H, W) float32 network input and its image meta."""
        import cv2
        h, w = img.shape[:2]
        resize = self.pre['resize']
        if resize is not None:
            sw, sh = resize['scale']
            if resize['keep_ratio']:  # mmcv.rescale_size
                f = min(max(sw, sh) / max(h, w), min(sw, sh) / min(h, w))
                nw, nh = int(w * f + 0.5), int(h * f + 0.5)
            else:
                nw, nh = sw, sh
            img = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR)
        nh, nw = img.shape[:2]
        x = img[..., ::-1] if self.pre['bgr_to_rgb'] else img
        x = np.ascontiguousarray(x.transpose(2, 0, 1))[None].astype(np.float32)
        x = (x - self.mean) / self.std
        d = self.pre['pad_size_divisor']
        ph, pw = -(-nh // d) * d, -(-nw // d) * d
        if (ph, pw) != (nh, nw):
            x = np.pad(x, ((0, 0), (0, 0), (0, ph - nh), (0, pw - nw)),
                       constant_values=self.pre['pad_value'])
        meta = ImageMeta(ori_shape=(h, w), img_shape=(nh, nw), batch_input_shape=(ph, pw),
                         scale_factor=(nw / w, nh / h))
        return x, meta

    def feature_size(self, h: int, w: int) -> Tuple[int, int]:
        for s in self.strides:
            h, w = -(-h // s), -(-w // s)
        return h, w

    def _symbols(self, y: np.ndarray) -> np.ndarray:
        try:
            return quantise(y[0], self.medians)  # half to even, as torch.round
        except ValueError as e:
            raise EdgeRuntimeError(str(e)) from None

    def symbols(self, x: np.ndarray) -> np.ndarray:
        """Network input -> (C, h, w) int32 symbols of the latent (the entropy model's
        rounding)."""
        if self.hyper is not None:
            return self._hyper_compress(self.run_graph(x))[2]
        return self._symbols(self.session.run(['latent'], {'input': x})[0])

    def run_graph(self, x: np.ndarray) -> Dict[str, np.ndarray]:
        """Network input -> every graph output by name."""
        return dict(zip(self.output_names, self.session.run(None, {'input': x})))

    def _payload(self, sym: np.ndarray, meta: ImageMeta, params: bytes = b'',
                 body: Optional[bytes] = None) -> bytes:
        """Framed payload: codec params = the feature map's (H, W) + ``params``; ``body``
        defaults to ``sym`` coded with the factorized tables."""
        c, lh, lw = sym.shape
        if body is None:
            body = encode_with_cdf_tables(sym.reshape(c, -1), self.tables, None)
        fh, fw = self.feature_size(*meta.batch_input_shape)
        return pack(Payload(self.codec_id, (c, lh, lw), meta, struct.pack('<2I', fh, fw) + params,
                            body, rate_point=self.rate_point, fingerprint=self.fingerprint))

    def _hyper_compress(self, outputs: Dict[str, np.ndarray]):
        try:
            return self.hyper.compress(outputs['latent'][0], outputs['hyper_latent'][0])
        except ValueError as e:
            raise EdgeRuntimeError(str(e)) from None

    def encode(self, outputs: Dict[str, np.ndarray], meta: ImageMeta
               ) -> Tuple[bytes, np.ndarray, Optional[np.ndarray]]:
        """Graph outputs of an offloaded image -> (framed payload, the latent's symbols, a
        hyperprior's z symbols or None)."""
        if self.hyper is None:
            sym = self._symbols(outputs['latent'])
            return self._payload(sym, meta), sym, None
        z_body, y_body, sym, z_sym = self._hyper_compress(outputs)
        # HyperpriorBottleneckNeck's codec params: u32 H, W, length of z's body
        return self._payload(sym, meta, struct.pack('<I', len(z_body)), z_body + y_body), \
            sym, z_sym

    def exit_and_route(self, outputs: Dict[str, np.ndarray], meta: ImageMeta,
                       img_id: Optional[int] = None) -> Tuple[ExitDetections, float, bool]:
        """A dynamic model's graph outputs -> (exit detections with RAW scores, router score,
        offload?). ``img_id``: the random router's key (as the PyTorch edge's ``img_id``)."""
        dets, cls_maps = decode_exit(outputs, self.exit, meta.img_shape, meta.scale_factor)
        try:
            score = router_score(self.router, dets, cls_maps, self.exit['cls_out_channels'],
                                 img_id, outputs.get('feature_stats'))
        except ValueError as e:
            raise EdgeRuntimeError(str(e)) from None
        return dets, score, offload(self.router, score)

    def finish_on_edge(self, dets: ExitDetections) -> ExitDetections:
        """The edge tier's score map (``calibrate_scores``), as the PyTorch edge applies it."""
        if self.score_maps is None:
            return dets
        return dets._replace(scores=apply_score_map(self.score_maps['edge'], dets.scores))

    def report(self, dets: ExitDetections, img_id: int) -> bytes:
        """``PayloadCodec.reports`` (ecc_mmdet): scores >= score_thr, best first, the
        top max_boxes, packed with the model fingerprint."""
        keep = np.nonzero(dets.scores >= self.edge_report['score_thr'])[0]
        keep = keep[np.argsort(-dets.scores[keep], kind='stable')][:self.edge_report['max_boxes']]
        return pack_detections(int(img_id), dets.bboxes[keep], dets.scores[keep],
                               dets.labels[keep], fingerprint=self.fingerprint)

    def process(self, image: Union[str, np.ndarray], img_id: Optional[int] = None
                ) -> LightResult:
        """Image -> the framed payload the cloud server decodes (a dynamic model: or the edge
        exit's detections, when the router keeps the image on the edge). ``img_id`` goes into
        an edge-finished image's detections report (0 when not given) and is the random
        router's key (which needs it)."""
        t0 = time.perf_counter()
        x, meta = self.preprocess(self.read(image))
        t1 = time.perf_counter()
        if self.exit is None:
            outputs = self.run_graph(x)
            t2 = time.perf_counter()
            payload, sym, z_sym = self.encode(outputs, meta)
            t3 = time.perf_counter()
            return LightResult(payload, meta, sym, dict(preprocess=(t1 - t0) * 1e3,
                                                        graph=(t2 - t1) * 1e3,
                                                        encode=(t3 - t2) * 1e3),
                               side_symbols=z_sym)
        outputs = self.run_graph(x)
        t2 = time.perf_counter()
        dets, score, off = self.exit_and_route(outputs, meta, img_id)
        t3 = time.perf_counter()
        times = dict(preprocess=(t1 - t0) * 1e3, graph=(t2 - t1) * 1e3, route=(t3 - t2) * 1e3)
        if off:
            payload, sym, z_sym = self.encode(outputs, meta)
            times['encode'] = (time.perf_counter() - t3) * 1e3
            return LightResult(payload, meta, sym, times, 'cloud', None, score, z_sym)
        dets = self.finish_on_edge(dets)
        payload = None
        if self.edge_report is not None:
            payload = self.report(dets, 0 if img_id is None else img_id)
            times['report'] = (time.perf_counter() - t3) * 1e3
        return LightResult(payload, meta, None, times, 'edge_main', dets, score)
