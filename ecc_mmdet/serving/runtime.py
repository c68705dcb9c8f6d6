"""The cloud runtime behind every server front end: payload bytes -> detections as JSON-ready
dicts.

It knows nothing of HTTP (the FastAPI app and the Ray Serve deployment both wrap it): ``parse``
validates one payload before it is queued (so a bad one is refused at once with a specific
error), ``predict`` decodes and finishes a batch through the same deployment path as
``tools/test.py`` (:func:`ecc_mmdet.deployment.run_cloud`), so the detections are the same ones.
"""
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch
from mmdet.structures import DetDataSample

from ecc_edge.codecs.bitstream import BitstreamError, Payload
from ..apis.inference import build_detector, load_config, load_weights
from ..deployment import run_cloud
from ..evaluation.meter import DeploymentMeter
from ..structures import comm_record
from ..errors import ConfigError
from ..utils.checkpoint_check import read_checkpoint

__all__ = ['CloudRuntime', 'LimitExceededError', 'ParsedPayload', 'class_names_of']


class LimitExceededError(BitstreamError):
    """A well-formed payload asking for more than this server accepts (image size)."""


class ParsedPayload(NamedTuple):
    data: bytes
    payload: Payload
    #: payloads with equal keys decode to equal feature shapes and can share a batch
    key: Tuple[int, ...]


def class_names_of(cfg) -> Optional[Sequence[str]]:
    """The class names of a config's test dataset (None when it names none)."""
    for path in (('test_dataloader', 'dataset', 'metainfo'), ('metainfo', )):
        node = cfg
        for k in path:
            node = node.get(k, None) if node is not None else None
        if node is not None and node.get('classes'):
            return tuple(node['classes'])
    return None


class CloudRuntime:
    """A split detector's cloud side, serving payloads.

    Args:
        model: a split (EdgeCloud*) detector or its cloud-only build, in eval mode.
        class_names: names of the labels (for the responses); None gives the label numbers.
        max_input_side: largest padded network input side (batch_input_shape) accepted; bounds
            the memory one payload can make the decoder allocate.
    """

    def __init__(self, model, class_names: Optional[Sequence[str]] = None,
                 max_input_side: int = 2048):
        if not hasattr(model, 'decode_and_predict'):
            raise ConfigError(f'{type(model).__name__} is not a split (EdgeCloud*) detector: '
                              'it has no cloud side to serve')
        if getattr(model, 'calibrate_scores', False) and model.edge_exit is not None \
                and model.router is not None and model.score_maps is None:
            raise ConfigError(
                'this dynamic model maps the cloud\'s scores with a score map fitted on the '
                'calibration split, and none is fitted: calibrate it first '
                '(tools/serve_cloud.py --data-root DIR does; in code '
                'ecc_mmdet.deployment.calibration.calibrate_dynamic)')
        self.model = model.eval()
        self.class_names = tuple(class_names) if class_names else None
        self.max_input_side = int(max_input_side)
        self.meter = DeploymentMeter(measure_flops=False, estimate_rate=False)

    @classmethod
    def from_files(cls, config, checkpoint: str, device: str = 'cpu',
                   partial_checkpoint: bool = False, **kwargs) -> 'CloudRuntime':
        """Build from a config and either a full checkpoint or an exported ``cloud.pth``
        (``tools/export_edge_cloud.py``); a checkpoint that does not fit the config is refused
        (``CheckpointError``) unless ``partial_checkpoint``."""
        cfg = load_config(config)
        ckpt = read_checkpoint(checkpoint)
        meta = ckpt.get('meta', {})
        side = meta.get('side') if isinstance(meta, dict) else None
        if side == 'edge':
            raise ConfigError(f'{checkpoint} is an edge-only export: the cloud server needs the '
                              'full checkpoint or cloud.pth')
        model = build_detector(cfg.model)
        if side == 'cloud':
            model = model.build_cloud()
        load_weights(model, ckpt, partial_checkpoint, path=checkpoint)
        del ckpt
        return cls(model.to(device).eval(), class_names=class_names_of(cfg), **kwargs)

    @property
    def fingerprint(self) -> bytes:
        return self.model.model_fingerprint()

    def parse(self, data: bytes) -> ParsedPayload:
        """Validate one payload (framing, type, codec, fingerprint, meta, sizes); raises a
        :class:`BitstreamError` subclass naming what is wrong."""
        p = self.model.unpack_payloads([data], [DetDataSample()])[0]
        side = max(p.meta.batch_input_shape)
        if side > self.max_input_side:
            raise LimitExceededError(f'a {p.meta.batch_input_shape} network input: this server '
                                     f'accepts sides up to {self.max_input_side}')
        return ParsedPayload(bytes(data), p,
                             (*p.latent_shape, *p.meta.batch_input_shape, p.rate_point or 0))

    @torch.no_grad()
    def predict(self, items: Sequence[ParsedPayload]) -> List[Dict]:
        """Decode + cloud on a batch of parsed payloads -> one response dict per payload:
        ``detections`` (original-image coordinates) and ``timings_ms``: ``decode`` and ``cloud``
        are the batch's wall times (what each of its requests waited), ``*_share`` this image's
        share of them (its compute cost)."""
        samples = [DetDataSample() for _ in items]
        results = run_cloud(self.model, [it.data for it in items], samples, meter=self.meter)
        return [self._response(r, len(items)) for r in results]

    def detections_json(self, bboxes, scores, labels, clip_to=None) -> List[Dict]:
        """Boxes, scores and labels -> the server's JSON detections (with class names)."""
        boxes = torch.as_tensor(bboxes).float().cpu().reshape(-1, 4)
        if clip_to is not None:  # rescaled boxes may overshoot by rounding (the meta is checked)
            h, w = clip_to
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
        dets = []
        for box, score, label in zip(boxes.tolist(), torch.as_tensor(scores).tolist(),
                                     torch.as_tensor(labels).tolist()):
            name = (self.class_names[label] if self.class_names and label < len(self.class_names)
                    else str(label))
            dets.append(dict(bbox=[round(v, 3) for v in box], score=round(float(score), 9),
                             label=int(label), class_name=name))
        return dets

    def _response(self, result, batch_size: int) -> Dict:
        inst = result.pred_instances
        rec = comm_record.read(result)
        h, w = result.metainfo['ori_shape']
        dets = self.detections_json(inst.bboxes, inst.scores, inst.labels, (h, w))
        # the meter shares a batch's time among its images; a request waits for all of it
        decode = (rec.codec_time_s or 0.0) * 1e3
        cloud = max(0.0, (rec.cloud_time_s or 0.0) * 1e3 - decode)
        return dict(detections=dets, image_size=[int(h), int(w)],
                    timings_ms=dict(decode=decode * batch_size, cloud=cloud * batch_size,
                                    decode_share=decode, cloud_share=cloud))
