"""What every edge/cloud split detector shares: the split, the exits, the deployment steps.

A split detector is an ordinary mmdet detector whose ``extract_feat`` runs
``edge half -> compressor -> cloud half -> neck``. Training and tensor mode use the compressor's
differentiable path; ``predict`` goes through the deployment path
(:func:`ecc_mmdet.deployment.run_deployment`), real bytes included:

    edge_features -> [run_exits -> route] -> encode_features (offloaded images only)
    -> [network] -> unpack_payloads -> decompress_payloads -> cloud_predict -> merge

so what is evaluated is what would be deployed. The steps are methods here; their order and their
accounting (time, FLOPs, bytes: one :class:`~ecc_mmdet.structures.CommRecord` per image) live in
:mod:`ecc_mmdet.deployment`, outside the model.
"""
from abc import abstractmethod
from typing import Dict, List, Optional, Sequence

import torch
from mmdet.registry import MODELS
from mmdet.structures import DetDataSample
from torch import Tensor

from ecc_edge.codecs.bitstream import CorruptedBitstreamError, ImageMeta, Payload, pack, unpack
from ecc_edge.codecs.detections import pack_detections
from ...deployment.fingerprint import model_fingerprint
from ...deployment.meter import DeploymentMeter
from ...deployment import sides
from ...deployment.pipeline import run_cloud, run_deployment, run_edge
from ...errors import ConfigError
from ...utils.modules import count_parameters
from ..exits import ExitOutput
from ..routers import LearnedRouter, exit_fingerprint
from ..split import BackboneSplitter


def _forget_exit_after_load(module, incompatible_keys):
    module._forget_exit()  # new exit weights: the learned router's check runs again


class EdgeCloudDetectorMixin:
    """Mixed in *before* an mmdet detector class; subclasses implement ``predict_from_features``.

    Args (besides the detector's own):
        split_after: residual stages on the edge (0 = stem only); see ``BackboneSplitter``.
        compressor: config of a feature-compression neck (``EntropyBottleneckNeck``,
            ``QuantizeNeck``, ``Float16Neck``, ``Float32Neck``); ``in_channels`` defaults to the
            channels at the split point.
        measure_flops: count edge/cloud FLOPs (torch.utils.flop_counter) once per deployment
            step and input shape during ``predict`` (the last 16 shapes are cached); custom mmcv
            ops (RoIAlign, NMS) are not counted.
        estimate_rate: also report the entropy model's bit estimate per image (an extra
            likelihood pass on the edge; accounting only, not part of deployment). Benchmarks of
            inference speed turn it and ``measure_flops`` off.
        edge_exit: an :class:`~ecc_mmdet.models.exits.EdgeExit` config (edge neck + mmdet dense
            head on F_k): images the router keeps on the edge finish with its detections.
        router: a router config (``RandomRouter``, ``ScoreBandRouter``, ``EntropyRouter``,
            ``LearnedRouter``) with ``threshold`` or ``target_offload_ratio``. Without a router
            (or without an exit) every image goes to the cloud.
        edge_report: ``dict(score_thr=0.3, max_boxes=100)`` makes every image finished on the
            edge send its detections (scores >= score_thr, the top max_boxes) as a compact report
            (:mod:`ecc_edge.codecs.detections`, ~10 bytes a box) whose real bytes are counted,
            for applications that need every result centrally; None (default) sends nothing.
        calibrate_scores: map each tier's scores to P(true positive) before merging (the maps are
            fitted on the calibration split by ``RouterCalibrationHook`` / the benchmark); the
            exit's and the cloud's detections then rank correctly in one list.
        extension_exit: MEANet's extension exit, an ``EdgeExit`` with more compute trained only on
            the ``hard_classes`` (label indices: the classes the main exit does worst on, from its
            per-class AP on a validation split). Kept images whose main-exit top detection is of a
            hard class run it; its hard-class detections replace the main exit's (tier
            ``edge_extension``).
        hard_classes: see ``extension_exit``.
        train_exits_only: True / 'main' trains the main exit alone, 'extension' the extension
            exit alone (everything else frozen, in eval mode), from the
            labels and, with ``edge_exit.distill_weight > 0``, from the cloud's detections.
    """

    # the keys a split config adds to an ordinary detector's (see the class docstring)
    EDGE_CLOUD_KEYS = ('split_after', 'compressor', 'measure_flops', 'estimate_rate', 'edge_exit',
                       'router', 'train_exits_only', 'edge_report', 'calibrate_scores',
                       'extension_exit', 'hard_classes')
    #: the registered mmdet type the split class was made from (what ``unsplit_model_cfg`` gives)
    unsplit_type = None

    def __init__(self, split_after: int = 1, compressor: dict = None,
                 measure_flops: bool = True, estimate_rate: bool = True,
                 edge_exit: dict = None, router: dict = None, train_exits_only: bool = False,
                 edge_report: dict = None, calibrate_scores: bool = False,
                 extension_exit: dict = None, hard_classes: list = None, **kwargs):
        self._check_detector_kwargs(kwargs)
        super().__init__(**kwargs)
        self._init_edge_cloud(split_after, compressor, measure_flops, estimate_rate, edge_exit,
                              router, train_exits_only, edge_report, calibrate_scores,
                              extension_exit, hard_classes)

    @classmethod
    def _check_detector_kwargs(cls, kwargs: dict) -> None:
        """Refuse the keys of another detector family with the type to use instead."""

    @classmethod
    def _refuse_two_stage_keys(cls, kwargs: dict) -> None:
        """For the single-stage and DETR families: a two-stage config needs the two-stage type."""
        if 'rpn_head' in kwargs or 'roi_head' in kwargs:
            raise ConfigError(f'{cls.__name__} got a two-stage config (rpn_head / roi_head); '
                              "use type='EdgeCloudTwoStageDetector' for it")

    def _init_edge_cloud(self, split_after: int, compressor: dict, measure_flops: bool = True,
                         estimate_rate: bool = True, edge_exit: Optional[dict] = None,
                         router: Optional[dict] = None, train_exits_only: bool = False,
                         edge_report: Optional[dict] = None, calibrate_scores: bool = False,
                         extension_exit: Optional[dict] = None,
                         hard_classes: Optional[Sequence[int]] = None):
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
        self.edge_exit = self._build_exit(edge_exit, channels)
        self.router = self._build_router(router, channels)
        self.extension_exit = self._build_exit(extension_exit, channels, 'extension_exit')
        if (self.extension_exit is None) != (hard_classes is None):
            raise ConfigError('extension_exit and hard_classes go together: the extension exit '
                              'serves the hard classes (label indices), e.g. hard_classes=[2, 3]')
        if self.extension_exit is not None and self.edge_exit is None:
            raise ConfigError('extension_exit needs the main edge_exit it extends')
        if hard_classes is not None:
            n_cls = self.extension_exit.num_classes
            hard = sorted({int(c) for c in hard_classes})
            if not hard or hard[0] < 0 or hard[-1] >= n_cls:
                raise ConfigError(f'hard_classes must be label indices in [0, {n_cls}), got '
                                  f'{list(hard_classes)}')
            hard_classes = hard
        self.hard_classes = hard_classes
        mode = {True: 'main', False: None, 'main': 'main', 'extension': 'extension'}.get(
            train_exits_only, '?')
        if mode == '?':
            raise ConfigError(f"train_exits_only must be True/'main', 'extension' or False, got "
                              f'{train_exits_only!r}')
        trained = {'main': self.edge_exit, 'extension': self.extension_exit}.get(mode)
        if mode is not None and trained is None:
            raise ConfigError(f"train_exits_only={train_exits_only!r} needs "
                              f"{'an edge_exit' if mode == 'main' else 'an extension_exit'}"
                              "=dict(type='EdgeExit', ...) to train")
        self.train_exits_only = mode
        self.edge_report = self._check_report(edge_report)
        self.calibrate_scores = bool(calibrate_scores)
        object.__setattr__(self, 'score_maps', None)  # {'edge', 'cloud'} -> ScoreMap, fitted
        if self.train_exits_only:
            prefix = 'edge_exit.' if mode == 'main' else 'extension_exit.'
            for name, p in self.named_parameters():
                if not name.startswith(prefix):
                    p.requires_grad_(False)
        object.__setattr__(self, 'meter', DeploymentMeter(measure_flops, estimate_rate))
        self._pending_losses: Dict[str, Tensor] = {}
        self._train_intermediates: Dict[str, object] = {}
        self.attach_distiller(None)
        self.register_load_state_dict_post_hook(_forget_exit_after_load)

    @staticmethod
    def _build_exit(cfg: Optional[dict], channels: int, key: str = 'edge_exit'):
        if cfg is None:
            return None
        if not isinstance(cfg, dict) or 'type' not in cfg:
            raise ConfigError(f"{key} must be dict(type='EdgeExit', neck=..., head=...)")
        cfg = dict(cfg)
        cfg.setdefault('in_channels', channels)
        module = MODELS.build(cfg)
        module.check_runs_on(channels)
        return module

    @staticmethod
    def _check_report(cfg: Optional[dict]):
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

    @staticmethod
    def _build_router(cfg: Optional[dict], channels: int):
        if cfg is None:
            return None
        if not isinstance(cfg, dict) or 'type' not in cfg:
            raise ConfigError("router must be a dict with a type, e.g. dict(type='EntropyRouter', "
                              'target_offload_ratio=0.5)')
        cfg = dict(cfg)
        cls = MODELS.get(cfg['type'])
        if cls is not None and isinstance(cls, type) and issubclass(cls, LearnedRouter):
            cfg.setdefault('feature_channels', channels)
        return MODELS.build(cfg)

    # measurement settings live in the meter (outside the model's forward logic)
    @property
    def measure_flops(self) -> bool:
        return self.meter.measure_flops

    @measure_flops.setter
    def measure_flops(self, value: bool):
        self.meter.measure_flops = bool(value)

    @property
    def estimate_rate(self) -> bool:
        return self.meter.estimate_rate

    @estimate_rate.setter
    def estimate_rate(self, value: bool):
        self.meter.estimate_rate = bool(value)

    def train(self, mode: bool = True):
        problem = getattr(getattr(self, 'splitter', None), 'frozen_stages_problem', None)
        if mode and problem and not getattr(self, 'train_exits_only', None):
            raise ConfigError(problem)  # before anything trains; evaluation is unaffected
        super().train(mode)
        self._forget_exit()
        trained = getattr(self, 'train_exits_only', None)
        if mode and trained:
            keep = 'edge_exit' if trained == 'main' else 'extension_exit'
            for name, child in self.named_children():
                if name != keep:
                    child.eval()  # frozen as deployed: BN statistics, rounding in the codec
        return self

    def _forget_exit(self):
        self.__dict__.pop('_exit_fingerprint', None)

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
            self._train_intermediates = dict(backbone_outs=backbone_outs, neck_outs=x,
                                             edge_feats=f)
        return x

    def _cloud_features(self, f_hat: Tensor):
        x = self.splitter.forward_cloud(f_hat)
        return self.neck(x) if self.with_neck else x

    def loss(self, batch_inputs: Tensor, batch_data_samples):
        if self.train_exits_only:
            return self._exit_losses(batch_inputs, batch_data_samples)
        losses = super().loss(batch_inputs, batch_data_samples)
        losses.update(self._pending_losses)  # the compressor's loss_rate (x beta)
        if self.distiller is not None:
            losses = self.distiller(self, batch_inputs, batch_data_samples, losses,
                                    self._train_intermediates)
        if self.edge_exit is not None:  # joint training: the exit reads F_k, never changes it
            losses.update(self.edge_exit.loss(self._train_intermediates['edge_feats'].detach(),
                                              batch_data_samples))
        if self.extension_exit is not None:
            losses.update({f'ext_{k}': v for k, v in self.extension_exit.loss(
                self._train_intermediates['edge_feats'].detach(),
                self._hard_only(batch_data_samples)).items()})
        self._pending_losses, self._train_intermediates = {}, {}
        return losses

    def _hard_only(self, samples):
        """Samples whose ground truth keeps only the hard classes (the extension's task)."""
        out = []
        hard = torch.as_tensor(self.hard_classes)
        for s in samples:
            t = DetDataSample(metainfo=s.metainfo)
            gt = s.gt_instances
            t.gt_instances = gt[torch.isin(gt.labels, hard.to(gt.labels.device))]
            out.append(t)
        return out

    def _exit_losses(self, batch_inputs: Tensor, batch_data_samples):
        """Exit-only training: F_k and the cloud's detections from the frozen model."""
        exit_ = self.edge_exit if self.train_exits_only == 'main' else self.extension_exit
        if self.train_exits_only == 'extension':
            batch_data_samples = self._hard_only(batch_data_samples)
        with torch.no_grad():
            f = self.splitter.forward_edge(batch_inputs)
            pseudo = None
            if exit_.distill_weight > 0:
                fresh = [DetDataSample(metainfo=s.metainfo) for s in batch_data_samples]
                f_hat, _ = self.compressor(f)  # eval mode: exactly what decoding gives
                cloud = self.predict_from_features(self._cloud_features(f_hat), fresh,
                                                   rescale=False)
                pseudo = exit_.pseudo_labels([c.pred_instances for c in cloud],
                                             batch_data_samples)
                if self.train_exits_only == 'extension':
                    pseudo = self._hard_only(pseudo)
        return exit_.loss(f, batch_data_samples, pseudo)

    # ---- deployment steps (ordered and accounted by ecc_mmdet.deployment) ----
    def edge_features(self, batch_inputs: Tensor) -> Tensor:
        """Edge: stem + stages[:k] -> F_k (computed once per image)."""
        return self.splitter.forward_edge(batch_inputs)

    def run_exits(self, f: Tensor, batch_data_samples, rescale: bool = True) -> ExitOutput:
        """Edge: the exit's detections and raw scores for the router."""
        results, cls_scores = self.edge_exit.predict(f, batch_data_samples, rescale)
        return ExitOutput(results=results, cls_scores=cls_scores, features=f,
                          samples=list(batch_data_samples), num_classes=self.edge_exit.num_classes,
                          tiers=['edge_main'] * len(results))

    def needs_extension(self, exits: ExitOutput, kept: Sequence[int]) -> List[int]:
        """Of the ``kept`` images, those whose main-exit top detection is of a hard class."""
        out = []
        for i in kept:
            res = exits.results[i]
            if len(res) and int(res.labels[res.scores.argmax()]) in self.hard_classes:
                out.append(i)
        return out

    def run_extension(self, f: Tensor, batch_data_samples, main_results, rescale: bool = True):
        """Edge: the extension exit's hard-class detections replace the main exit's."""
        ext, _ = self.extension_exit.predict(f, batch_data_samples, rescale)
        merged = []
        for m, e in zip(main_results, ext):
            hard = torch.as_tensor(self.hard_classes, device=m.labels.device)
            merged.append(type(m).cat([m[~torch.isin(m.labels, hard)],
                                       e[torch.isin(e.labels, hard)]]))
        return merged

    def route(self, exits: ExitOutput) -> Tensor:
        """Edge: (N,) bool, True = offload."""
        self.check_router()
        return self.router.decide(exits)

    def check_router(self) -> None:
        """Refuse a learned router fitted for other exits (checked once per weights)."""
        if isinstance(self.router, LearnedRouter):
            if '_exit_fingerprint' not in self.__dict__:
                self.__dict__['_exit_fingerprint'] = exit_fingerprint(self.edge_exit)
            self.router.check_exits(self.__dict__['_exit_fingerprint'])

    def finish_on_edge(self, sample: DetDataSample, instances) -> DetDataSample:
        return self.add_pred_to_datasample([sample], [self._calibrated(instances, 'edge')])[0]

    def _calibrated(self, instances, tier: str):
        """``instances`` with the tier's scores mapped to P(true positive), when configured."""
        if not self.calibrate_scores or self.edge_exit is None or self.router is None:
            return instances
        maps = self.score_maps
        if maps is None:
            raise RuntimeError(
                'calibrate_scores=True but no score maps were fitted: they come from the '
                'calibration split (RouterCalibrationHook in the Runner, or '
                'ecc_mmdet.deployment.calibration.fit_score_maps)')
        out = instances.clone()
        s = instances.scores
        out.scores = torch.as_tensor(maps[tier](s.detach().cpu().numpy()), dtype=s.dtype,
                                     device=s.device)
        return out

    def report_detections(self, result: DetDataSample) -> bytes:
        """Edge: the compact detections report of an image finished on the edge."""
        inst = result.pred_instances
        keep = (inst.scores >= self.edge_report['score_thr']).nonzero().flatten()
        keep = keep[inst.scores[keep].argsort(descending=True)][:self.edge_report['max_boxes']]
        return pack_detections(int(result.metainfo.get('img_id', 0)),
                               inst.bboxes[keep].cpu().numpy(), inst.scores[keep].cpu().numpy(),
                               inst.labels[keep].cpu().numpy(),
                               fingerprint=self.model_fingerprint())

    def encode_features(self, f: Tensor, batch_data_samples) -> List[bytes]:
        """Edge: F_k -> one self-contained payload per image (encoder, entropy coder, framing)."""
        parts = self.compressor.compress(f)
        fingerprint = self.model_fingerprint()
        return [pack(Payload(self.compressor.codec_id, tuple(shape),
                             ImageMeta.from_metainfo(ds.metainfo), params, body,
                             rate_point=self.compressor.header_rate_point,
                             fingerprint=fingerprint))
                for (params, body, shape), ds in zip(parts, batch_data_samples)]

    def model_fingerprint(self) -> bytes:
        """The fingerprint of the edge weights and coding tables this model codes with
        (:mod:`ecc_mmdet.deployment.fingerprint`)."""
        return model_fingerprint(self)

    def unpack_payloads(self, payloads: Sequence[bytes], batch_data_samples) -> List[Payload]:
        """Cloud: validate and parse; the samples take the image meta the payloads carry."""
        if len(batch_data_samples) != len(payloads):
            raise ValueError(f'{len(payloads)} payloads but {len(batch_data_samples)} samples')
        parsed = []
        fingerprint = self.model_fingerprint()
        for data, sample in zip(payloads, batch_data_samples):
            p = unpack(data, expected_codec=self.compressor.codec_id,
                       expected_fingerprint=fingerprint, check_meta=True)
            # a forged header's latent must still fit the image it claims, before any decoding
            feat = self.splitter.feature_size(*p.meta.batch_input_shape)
            if len(p.latent_shape) >= 2 and any(
                    d > f for d, f in zip(p.latent_shape[-2:], feat)):
                raise CorruptedBitstreamError(
                    f'latent {p.latent_shape} is larger than the {feat[0]}x{feat[1]} feature '
                    f'map of a {p.meta.batch_input_shape} input')
            sample.set_metainfo(p.meta.to_metainfo())
            parsed.append(p)
        return parsed

    def decompress_payloads(self, parsed: Sequence[Payload]) -> Tensor:
        """Cloud: entropy decoder + g_s -> F_hat (N, C, H, W)."""
        device = next(self.parameters()).device
        feats = []
        for p in parsed:
            f = self.compressor.decompress(p.codec_params, p.body, p.latent_shape,
                                           rate_point=p.rate_point).to(device)
            expected = self.splitter.feature_size(*p.meta.batch_input_shape)
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

    def cloud_predict(self, f_hat: Tensor, batch_data_samples, rescale: bool = True):
        """Cloud: rest of the backbone, neck, heads -> detections."""
        results = self.predict_from_features(self._cloud_features(f_hat), batch_data_samples,
                                             rescale)
        if self.calibrate_scores and self.edge_exit is not None and self.router is not None:
            for r in results:
                r.pred_instances = self._calibrated(r.pred_instances, 'cloud')
        return results

    # ---- the deployed round trip ----
    @torch.no_grad()
    def encode(self, batch_inputs: Tensor, batch_data_samples: Sequence[DetDataSample]
               ) -> List[bytes]:
        """Edge side without routing: preprocessed image batch -> one payload per image."""
        return self.encode_features(self.edge_features(batch_inputs), batch_data_samples)

    @torch.no_grad()
    def run_edge(self, batch_inputs: Tensor, batch_data_samples, rescale: bool = True):
        """Edge side with exits and router -> :class:`~ecc_mmdet.deployment.EdgeOutcome`."""
        return run_edge(self, batch_inputs, batch_data_samples, rescale)

    @torch.no_grad()
    def decode_and_predict(self, payloads: Sequence[bytes],
                           batch_data_samples: Optional[Sequence[DetDataSample]] = None,
                           rescale: bool = True) -> List[DetDataSample]:
        """Cloud side: payloads -> detections in original-image coordinates.

        Raises a :class:`~ecc_edge.codecs.bitstream.BitstreamError` subclass for a truncated,
        corrupted, wrong-version or wrong-codec payload. ``batch_data_samples`` (optional) are
        the samples to fill (evaluation keeps ids and ground truth on them); their image meta is
        replaced by what the payload carries, as in deployment.
        """
        if batch_data_samples is None:
            batch_data_samples = [DetDataSample() for _ in payloads]
        if len(batch_data_samples) != len(payloads):
            raise ValueError(f'{len(payloads)} payloads but {len(batch_data_samples)} samples')
        return run_cloud(self, payloads, list(batch_data_samples), rescale)

    # ---- one side only (shipping each device just the weights it runs) ----
    def build_edge(self):
        """A copy holding only the edge's modules; see :func:`ecc_mmdet.deployment.build_edge`.
        Cloud steps on it raise an error naming the missing module."""
        return sides.build_edge(self)

    def build_cloud(self):
        """A copy holding only the cloud's modules; see
        :func:`ecc_mmdet.deployment.build_cloud`."""
        return sides.build_cloud(self)

    @abstractmethod
    def predict_from_features(self, x, batch_data_samples, rescale: bool = True):
        """Cloud heads on neck features; implemented by the two- and single-stage subclasses."""

    def predict(self, batch_inputs: Tensor, batch_data_samples, rescale: bool = True):
        """The deployed round trip: edge, exits + router, encode, decode, cloud, merge."""
        with torch.no_grad():
            return run_deployment(self, batch_inputs, batch_data_samples, rescale)

    # ---- compute accounting ----
    def edge_param_count(self) -> int:
        """Parameters that run on the edge (counted once; the architecture does not change)."""
        if '_edge_params' not in self.__dict__:
            mods = self.splitter.edge_modules() + list(self.compressor.edge_modules())
            mods += [m for m in (self.edge_exit, self.router, self.extension_exit)
                     if m is not None]
            self.__dict__['_edge_params'] = count_parameters(mods)
        return self.__dict__['_edge_params']
