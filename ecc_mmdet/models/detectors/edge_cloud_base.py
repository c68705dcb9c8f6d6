"""What every edge/cloud split detector shares: the split, the codec round trip, the accounting.

A split detector is an ordinary mmdet detector whose ``extract_feat`` runs
``edge half -> compressor -> cloud half -> neck``. Training and tensor mode use the compressor's
differentiable path; ``predict`` goes through the deployment path, real bytes included:

    encode(images, samples)           -> [payload bytes]      (edge: stem + stages[:k] + encoder
                                                                + entropy coder + framing)
    decode_and_predict(payloads, ...) -> [DetDataSample]      (cloud: validate + decode + rest)

so what is evaluated is what would be deployed. Each predicted sample carries a
:class:`~ecc_mmdet.structures.CommRecord` for :class:`CommunicationMetric`.
"""
import time
from abc import abstractmethod
from typing import Dict, List, Optional, Sequence

import torch
from mmdet.registry import MODELS
from mmdet.structures import DetDataSample
from torch import Tensor

from ...structures import comm_record as accounting
from ...structures.comm_record import CommRecord
from ...codecs.bitstream import CorruptedBitstreamError, ImageMeta, Payload, pack, unpack
from ...utils.config_checks import ConfigError
from ...utils.flops import FlopCache, count_flops
from ...utils.modules import count_parameters
from ..split import BackboneSplitter


class EdgeCloudDetectorMixin:
    """Mixed in *before* an mmdet detector class; subclasses implement ``predict_from_features``.

    Args (besides the detector's own):
        split_after: residual stages on the edge (0 = stem only); see ``BackboneSplitter``.
        compressor: config of a feature-compression neck (``EntropyBottleneckNeck``,
            ``QuantizeNeck``, ``Float16Neck``, ``Float32Neck``); ``in_channels`` defaults to the
            channels at the split point.
        measure_flops: count edge/cloud FLOPs (torch.utils.flop_counter) once per input shape
            during ``predict`` (the last 16 shapes are cached); custom mmcv ops (RoIAlign, NMS)
            are not counted.
        estimate_rate: also report the entropy model's bit estimate per image (an extra
            likelihood pass on the edge; accounting only, not part of deployment). Benchmarks of
            inference speed turn it and ``measure_flops`` off.
    """

    def _init_edge_cloud(self, split_after: int, compressor: dict, measure_flops: bool = True,
                         estimate_rate: bool = True):
        if compressor is None or 'type' not in compressor:
            raise ConfigError('An edge/cloud detector needs compressor=dict(type=...), e.g. '
                              "dict(type='EntropyBottleneckNeck') or dict(type='QuantizeNeck', "
                              'n_bits=8)')
        self.splitter = BackboneSplitter(self.backbone, split_after)
        channels = self.splitter.split_channels()
        compressor = dict(compressor)
        if compressor.setdefault('in_channels', channels) != channels:
            raise ConfigError(f'compressor.in_channels={compressor["in_channels"]} but the '
                              f'backbone has {channels} channels after stage {split_after}; '
                              'remove in_channels from the compressor config to infer it')
        self.compressor = MODELS.build(compressor)
        self.measure_flops = measure_flops
        self.estimate_rate = estimate_rate
        self._pending_losses: Dict[str, Tensor] = {}
        self._train_intermediates: Dict[str, object] = {}
        self._flops_cache = FlopCache(max_entries=16)
        self.attach_distiller(None)

    def attach_distiller(self, distiller):
        """Install ``distiller(model, inputs, samples, losses, intermediates) -> losses``.

        Called by :class:`KnowledgeAdaptationHook`. Stored outside ``nn.Module``'s registries so
        whatever it holds (the frozen teacher) never enters this model's parameters, state_dict
        or optimizer. ``None`` removes it.
        """
        object.__setattr__(self, 'distiller', distiller)

    # ---- differentiable path (training, tensor mode, FLOP counting of the whole graph) ----
    def extract_feat(self, batch_inputs: Tensor):
        f = self.splitter.forward_edge(batch_inputs)
        num_pixels = batch_inputs.shape[-2] * batch_inputs.shape[-1]
        f_hat, losses = self.compressor(f, num_pixels=num_pixels)
        backbone_outs = self.splitter.forward_cloud(f_hat)
        x = self.neck(backbone_outs) if self.with_neck else backbone_outs
        if self.training:  # kept for loss(): compressor losses and distillation inputs
            self._pending_losses = losses
            self._train_intermediates = dict(backbone_outs=backbone_outs, neck_outs=x)
        return x

    def _cloud_features(self, f_hat: Tensor):
        x = self.splitter.forward_cloud(f_hat)
        return self.neck(x) if self.with_neck else x

    def loss(self, batch_inputs: Tensor, batch_data_samples):
        losses = super().loss(batch_inputs, batch_data_samples)
        losses.update(self._pending_losses)  # the compressor's loss_rate (x beta)
        if self.distiller is not None:
            losses = self.distiller(self, batch_inputs, batch_data_samples, losses,
                                    self._train_intermediates)
        self._pending_losses, self._train_intermediates = {}, {}
        return losses

    # ---- deployment path ----
    @torch.no_grad()
    def encode(self, batch_inputs: Tensor, batch_data_samples: Sequence[DetDataSample]
               ) -> List[bytes]:
        """Edge side: preprocessed image batch -> one self-contained payload per image."""
        return self._encode(batch_inputs, batch_data_samples)[0]

    def _encode(self, batch_inputs, batch_data_samples):
        n = batch_inputs.shape[0]
        t0 = time.perf_counter()
        f = self.splitter.forward_edge(batch_inputs)
        t1 = time.perf_counter()
        parts = self.compressor.compress(f)
        payloads = [
            pack(Payload(self.compressor.codec_id, tuple(shape),
                         ImageMeta.from_metainfo(ds.metainfo), params, body))
            for (params, body, shape), ds in zip(parts, batch_data_samples)
        ]
        t2 = time.perf_counter()
        est_bits = (self.compressor.estimate_bits(f).tolist() if self.estimate_rate
                    else [None] * n)
        # edge time includes encoding and framing; codec time is reported on its own as well
        stats = [dict(edge_time_s=(t2 - t0) / n, codec_time_s=(t2 - t1) / n,
                      estimated_bits=None if b is None else float(b), body_bytes=len(body))
                 for b, (_, body, _) in zip(est_bits, parts)]
        return payloads, stats

    @torch.no_grad()
    def decode_and_predict(self, payloads: Sequence[bytes],
                           batch_data_samples: Optional[Sequence[DetDataSample]] = None,
                           rescale: bool = True) -> List[DetDataSample]:
        """Cloud side: payloads -> detections in original-image coordinates.

        Raises a :class:`~ecc_mmdet.codecs.bitstream.BitstreamError` subclass for a truncated,
        corrupted, wrong-version or wrong-codec payload. ``batch_data_samples`` (optional) are
        the samples to fill (evaluation keeps ids and ground truth on them); their image meta is
        replaced by what the payload carries, as in deployment.
        """
        if batch_data_samples is None:
            batch_data_samples = [DetDataSample() for _ in payloads]
        if len(batch_data_samples) != len(payloads):
            raise ValueError(f'{len(payloads)} payloads but {len(batch_data_samples)} samples')
        device = next(self.parameters()).device
        t0 = time.perf_counter()
        feats, body_sizes = [], []
        for data, sample in zip(payloads, batch_data_samples):
            p = unpack(data, expected_codec=self.compressor.codec_id)
            body_sizes.append(len(p.body))
            sample.set_metainfo(p.meta.to_metainfo())
            feats.append(self.compressor.decompress(p.codec_params, p.body, p.latent_shape)
                         .to(device))
        shapes = {tuple(f.shape) for f in feats}
        if len(shapes) != 1:
            raise CorruptedBitstreamError(
                f'payloads of one batch decode to different feature shapes {sorted(shapes)}; '
                'send images padded to the same batch_input_shape together, or one at a time')
        f_hat = torch.cat(feats)
        t1 = time.perf_counter()
        x = self._cloud_features(f_hat)
        results = self.predict_from_features(x, list(batch_data_samples), rescale)
        t2 = time.perf_counter()
        n = len(payloads)
        for data, body, sample in zip(payloads, body_sizes, results):
            accounting.attach(sample, CommRecord(
                payload_bytes=len(data), header_bytes=len(data) - body,
                codec=self.compressor.codec_name, offloaded=True,
                cloud_time_s=(t2 - t0) / n, codec_time_s=(t1 - t0) / n))
        return results

    @abstractmethod
    def predict_from_features(self, x, batch_data_samples, rescale: bool = True):
        """Cloud heads on neck features; implemented by the two- and single-stage subclasses."""

    def predict(self, batch_inputs: Tensor, batch_data_samples, rescale: bool = True):
        """The deployed round trip: encode on the edge, decode and detect on the cloud."""
        flops = self._flops(batch_inputs, batch_data_samples)
        payloads, edge_stats = self._encode(batch_inputs, batch_data_samples)
        results = self.decode_and_predict(payloads, batch_data_samples, rescale)
        edge_params = self.edge_param_count()
        for sample, st in zip(results, edge_stats):
            rec = accounting.read(sample)
            rec.edge_time_s = st['edge_time_s']
            rec.codec_time_s = (rec.codec_time_s or 0.0) + st['codec_time_s']
            rec.estimated_bits = st['estimated_bits']
            rec.edge_params = edge_params
            if flops is not None:
                rec.edge_flops, rec.cloud_flops = flops
            accounting.attach(sample, rec)
        return results

    # ---- compute accounting ----
    def edge_param_count(self) -> int:
        """Parameters that run on the edge (counted once; the architecture does not change)."""
        if '_edge_params' not in self.__dict__:
            self.__dict__['_edge_params'] = count_parameters(
                self.splitter.edge_modules() + list(self.compressor.edge_modules()))
        return self.__dict__['_edge_params']

    def _flops(self, batch_inputs, batch_data_samples):
        """(edge, cloud) FLOPs per image, measured once per input shape on the deployment path."""
        if not self.measure_flops:
            return None
        x, sample = batch_inputs[:1], batch_data_samples[0]

        def measure():
            edge, parts = count_flops(
                lambda: self.compressor.compress(self.splitter.forward_edge(x)))

            def cloud_side():
                f_hat = self.compressor.decompress(*parts[0]).to(x.device)
                return self.predict_from_features(self._cloud_features(f_hat), [sample.clone()])

            return edge, count_flops(cloud_side)[0]

        return self._flops_cache.get(tuple(batch_inputs.shape[1:]), measure)
