"""The payload steps of a split detector: F_k -> bytes on the edge, bytes -> F_hat on the cloud.

The compressor (a neck of :mod:`ecc_mmdet.models.compressors`, built here from the detector's
``compressor`` config) turns F_k into symbols and back; what crosses the network is framed by
:mod:`ecc_edge.codecs.bitstream` (codec id, latent shape, image meta, rate point, model
fingerprint). :class:`PayloadCodec` packs the compressor's output into that frame and, on the
cloud, refuses before any decoding what this model cannot have sent: a wrong codec or fingerprint
(the bitstream's checks), a latent larger than the feature map of the image it claims, payloads
of one batch that decode to different shapes.

With the detector's ``edge_report=dict(score_thr=0.3, max_boxes=100)`` every image finished on
the edge sends its detections (scores >= score_thr, the top max_boxes) as a compact report
(:mod:`ecc_edge.codecs.detections`, ~10 bytes a box) whose real bytes are counted, for
applications that need every result centrally; None (the default) sends nothing.

It is a plain object held by the detector, not a submodule: it has no weights of its own and adds
no ``state_dict`` keys. It reads the detector's ``compressor``, ``splitter`` and ``edge_report`` at
every call, so a side build (:mod:`ecc_mmdet.deployment.sides`) or a swapped module is seen as it
is.
"""
from typing import List, Optional, Sequence

import torch
from mmdet.registry import MODELS
from torch import Tensor

from ecc_edge.codecs.bitstream import CorruptedBitstreamError, ImageMeta, Payload, pack, unpack
from ecc_edge.codecs.detections import pack_detections
from ...deployment.fingerprint import model_fingerprint
from ...errors import ConfigError
from ...utils.device import compress_per_image, to_numpy

__all__ = ['PayloadCodec', 'build_compressor', 'check_report']


def build_compressor(cfg: Optional[dict], channels: int, split_after: int):
    """The compressor on F_k (``channels`` channels after stage ``split_after``)."""
    if cfg is None or 'type' not in cfg:
        raise ConfigError('An edge/cloud detector needs compressor=dict(type=...), e.g. '
                          "dict(type='EntropyBottleneckNeck') or dict(type='QuantizeNeck', "
                          'n_bits=8)')
    cfg = dict(cfg)
    if cfg.setdefault('in_channels', channels) != channels:
        raise ConfigError(f'compressor.in_channels={cfg["in_channels"]} but the backbone has '
                          f'{channels} channels after stage {split_after}; remove in_channels '
                          'from the compressor config to infer it')
    return MODELS.build(cfg)


def check_report(cfg: Optional[dict]) -> Optional[dict]:
    """``edge_report`` with its defaults (``score_thr=0.3``, ``max_boxes=100``), or None."""
    if cfg is None:
        return None
    cfg = dict(cfg)
    unknown = set(cfg) - {'score_thr', 'max_boxes'}
    if unknown:
        raise ConfigError(f'edge_report: unknown keys {sorted(unknown)}; it takes score_thr '
                          'and max_boxes')
    cfg.setdefault('score_thr', 0.3)
    cfg.setdefault('max_boxes', 100)
    if not 0.0 <= float(cfg['score_thr']) <= 1.0 or not 1 <= int(cfg['max_boxes']) <= 1000:
        raise ConfigError(f'edge_report needs 0 <= score_thr <= 1 and 1 <= max_boxes <= '
                          f'1000, got {cfg}')
    return cfg


class PayloadCodec:
    """Encode, unpack, validate and decompress the payloads of ``model`` (a split detector)."""

    def __init__(self, model):
        self.model = model

    def fingerprint(self) -> bytes:
        """The fingerprint of the edge weights and coding tables this model codes with
        (:mod:`ecc_mmdet.deployment.fingerprint`)."""
        return model_fingerprint(self.model)

    def encode(self, f: Tensor, batch_data_samples) -> List[bytes]:
        """Edge: F_k -> one self-contained payload per image (encoder, entropy coder, framing)."""
        comp = self.model.compressor
        parts = compress_per_image(comp.compress, f)  # on CUDA: one by one, deterministic
        fingerprint = self.fingerprint()
        return [pack(Payload(comp.codec_id, tuple(shape), ImageMeta.from_metainfo(ds.metainfo),
                             params, body, rate_point=comp.header_rate_point,
                             fingerprint=fingerprint))
                for (params, body, shape), ds in zip(parts, batch_data_samples)]

    def unpack(self, payloads: Sequence[bytes], batch_data_samples) -> List[Payload]:
        """Cloud: validate and parse; the samples take the image meta the payloads carry."""
        if len(batch_data_samples) != len(payloads):
            raise ValueError(f'{len(payloads)} payloads but {len(batch_data_samples)} samples')
        parsed = []
        fingerprint = self.fingerprint()
        for data, sample in zip(payloads, batch_data_samples):
            p = unpack(data, expected_codec=self.model.compressor.codec_id,
                       expected_fingerprint=fingerprint, check_meta=True)
            # a forged header's latent must still fit the image it claims, before any decoding
            feat = self.model.splitter.feature_size(*p.meta.batch_input_shape)
            if len(p.latent_shape) >= 2 and any(
                    d > f for d, f in zip(p.latent_shape[-2:], feat)):
                raise CorruptedBitstreamError(
                    f'latent {p.latent_shape} is larger than the {feat[0]}x{feat[1]} feature '
                    f'map of a {p.meta.batch_input_shape} input')
            sample.set_metainfo(p.meta.to_metainfo())
            parsed.append(p)
        return parsed

    def decompress(self, parsed: Sequence[Payload]) -> Tensor:
        """Cloud: entropy decoder + g_s -> F_hat (N, C, H, W)."""
        device = next(self.model.parameters()).device
        feats = []
        for p in parsed:
            f = self.model.compressor.decompress(p.codec_params, p.body, p.latent_shape,
                                                 rate_point=p.rate_point).to(device)
            expected = self.model.splitter.feature_size(*p.meta.batch_input_shape)
            if tuple(f.shape[-2:]) != expected:
                raise CorruptedBitstreamError(
                    f'payload decodes to a {tuple(f.shape[-2:])} feature map; a '
                    f'{p.meta.batch_input_shape} input gives {expected}')
            feats.append(f)
        shapes = {tuple(f.shape) for f in feats}
        if len(shapes) != 1:
            raise CorruptedBitstreamError(
                f'payloads of one batch decode to different feature shapes {sorted(shapes)}; '
                'send images padded to the same batch_input_shape together, or one at a time')
        return torch.cat(feats)

    def reports(self, results) -> List[bytes]:
        """Edge: the compact detections report of each image finished on the edge (its scores
        >= ``edge_report['score_thr']``, the best ``max_boxes``); one fingerprint per batch, as
        :meth:`encode` does."""
        cfg, fingerprint, out = self.model.edge_report, self.fingerprint(), []
        for result in results:
            inst = result.pred_instances
            keep = (inst.scores >= cfg['score_thr']).nonzero().flatten()
            keep = keep[inst.scores[keep].argsort(descending=True)][:cfg['max_boxes']]
            out.append(pack_detections(int(result.metainfo.get('img_id', 0)),
                                       to_numpy(inst.bboxes[keep]), to_numpy(inst.scores[keep]),
                                       to_numpy(inst.labels[keep]), fingerprint=fingerprint))
        return out
