"""What every edge/cloud split detector shares: the split, its losses, its deployment steps.

A split detector is an ordinary mmdet detector whose features come from ``edge half ->
compressor -> cloud half -> neck``. Training and tensor mode use the compressor's differentiable
path; ``predict`` runs the deployment path (:func:`ecc_mmdet.deployment.run_deployment`), real
bytes included, so what is evaluated is what would be deployed. Two components the detector holds
do the steps around the split: :class:`~.edge_tiers.EdgeTiers` (exits, router, score calibration)
and :class:`~.payload_codec.PayloadCodec` (payload framing, validation, fingerprint). The order of
the steps and their accounting (a meter the pipeline holds) live in :mod:`ecc_mmdet.deployment`.
"""
from abc import abstractmethod
from typing import List, Optional, Sequence

import torch
from mmdet.structures import DetDataSample
from torch import Tensor

from ecc_edge.codecs.bitstream import Payload
from ...deployment import sides
from ...deployment.pipeline import run_cloud, run_deployment, run_edge
from ...errors import ConfigError
from ...structures import object_mask
from ...utils.modules import count_parameters
from ..exits import ExitOutput
from ..split import BackboneSplitter
from .edge_tiers import (EdgeTiers, build_exit, build_router, check_hard_classes,
                         exit_training_mode)
from .payload_codec import PayloadCodec, build_compressor, check_report


def _forget_exit_after_load(module, incompatible_keys):
    module.tiers.forget_exit()  # new exit weights: the learned router's check runs again


class EdgeCloudDetectorMixin:
    """Mixed in *before* an mmdet detector class; subclasses implement ``predict_from_features``
    and ``loss_from_features`` (the cloud's heads).

    Args (besides the detector's own):
        split_after: residual stages on the edge (0 = stem only); see ``BackboneSplitter``.
        compressor: config of a feature-compression neck (``EntropyBottleneckNeck``,
            ``QuantizeNeck``, ``Float16Neck``, ``Float32Neck``); ``in_channels`` defaults to the
            channels at the split point.
        measure_flops, estimate_rate: settings of the meter the deployment pipeline holds for
            this model (:func:`ecc_mmdet.deployment.pipeline.meter_for`): count each step's FLOPs
            once per input shape; report the entropy model's bit estimate per image. Benchmarks
            of inference speed turn both off.
        edge_exit, router, extension_exit, hard_classes, train_exits_only, calibrate_scores: the
            edge tiers (an exit on F_k, the router that sends an image on to the cloud or not,
            MEANet's extension exit for the hard classes, exit-only training, per-tier score
            calibration); see :mod:`.edge_tiers`. Without a router (or an exit) every image
            goes to the cloud.
        edge_report: ``dict(score_thr=0.3, max_boxes=100)``: images finished on the edge send
            their detections as a compact report; see :mod:`.payload_codec`.
    """

    # the keys a split config adds to an ordinary detector's (see the class docstring)
    EDGE_CLOUD_KEYS = ('split_after', 'compressor', 'measure_flops', 'estimate_rate', 'edge_exit',
                       'router', 'train_exits_only', 'edge_report', 'calibrate_scores',
                       'extension_exit', 'hard_classes')
    #: the registered mmdet type the split class was made from (what ``unsplit_model_cfg`` gives):
    #: the name of its mmdet base class, set when a split class is defined
    unsplit_type = None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        mmdet_bases = [b for b in cls.__bases__ if not issubclass(b, EdgeCloudDetectorMixin)]
        if mmdet_bases:
            cls.unsplit_type = mmdet_bases[0].__name__

    def __init__(self, split_after: int = 1, compressor: dict = None,
                 measure_flops: bool = True, estimate_rate: bool = True,
                 edge_exit: dict = None, router: dict = None, train_exits_only: bool = False,
                 edge_report: dict = None, calibrate_scores: bool = False,
                 extension_exit: dict = None, hard_classes: list = None, **kwargs):
        self._check_detector_kwargs(kwargs)
        super().__init__(**kwargs)
        self.splitter = BackboneSplitter(self.backbone, split_after)
        channels = self.splitter.split_channels()
        self.compressor = build_compressor(compressor, channels, split_after)
        self.edge_exit = build_exit(edge_exit, channels)
        self.router = build_router(router, channels)
        self.extension_exit = build_exit(extension_exit, channels, 'extension_exit')
        self.hard_classes = check_hard_classes(hard_classes, self.edge_exit, self.extension_exit)
        self.train_exits_only = exit_training_mode(train_exits_only, self.edge_exit,
                                                   self.extension_exit)
        self.edge_report = check_report(edge_report)
        self.calibrate_scores = bool(calibrate_scores)
        self.score_maps = None  # {'edge', 'cloud'} -> ScoreMap, fitted on a calibration split
        self.measure_flops, self.estimate_rate = bool(measure_flops), bool(estimate_rate)
        # plain objects, not submodules: no state_dict keys (see their modules)
        self.tiers, self.payload_codec = EdgeTiers(self), PayloadCodec(self)
        self.tiers.freeze_all_but_trained_exit()
        self.attach_distiller(None)
        self.register_load_state_dict_post_hook(_forget_exit_after_load)

    @classmethod
    def _check_detector_kwargs(cls, kwargs: dict) -> None:
        """Refuse the keys of another detector family with the type to use instead."""

    @classmethod
    def _refuse_two_stage_keys(cls, kwargs: dict) -> None:
        """For the single-stage and DETR families: a two-stage config needs the two-stage type."""
        if 'rpn_head' in kwargs or 'roi_head' in kwargs:
            raise ConfigError(f'{cls.__name__} got a two-stage config (rpn_head / roi_head); '
                              "use type='EdgeCloudTwoStageDetector' for it")

    def train(self, mode: bool = True):
        problem = getattr(getattr(self, 'splitter', None), 'frozen_stages_problem', None)
        tiers = getattr(self, 'tiers', None)  # None while the detector's __init__ runs
        if mode and problem and not (tiers and tiers.trained_exit()):
            raise ConfigError(problem)  # before anything trains; evaluation is unaffected
        super().train(mode)
        if tiers is not None:
            tiers.after_train_mode(mode)
        return self

    def attach_distiller(self, distiller):
        """Install ``distiller(model, inputs, samples, losses, intermediates) -> losses``
        (:class:`KnowledgeAdaptationHook` does); ``None`` removes it."""
        # in a 1-tuple: nn.Module.__setattr__ would register a distiller that is an nn.Module as
        # a submodule, and whatever it holds (the frozen teacher) must stay out of this model's
        # parameters, state_dict and optimizer
        self._distiller = (distiller, )

    @property
    def distiller(self):
        return self._distiller[0]

    # ---- differentiable path (training, tensor mode, FLOP counting of the whole graph) ----
    def _split_forward(self, batch_inputs: Tensor, batch_data_samples=None) -> dict:
        """edge -> compressor (differentiable) -> cloud -> neck, with what the losses read.
        With training samples, a compressor whose rate term weighs objects apart
        (``object_rate_weight`` < 1) also gets where their objects are."""
        f = self.splitter.forward_edge(batch_inputs)
        mask = None
        if batch_data_samples is not None \
                and getattr(self.compressor, 'object_rate_weight', 1.0) != 1.0:
            mask = object_mask(batch_data_samples, f.shape, batch_inputs.shape[-2:]).to(f)
        f_hat, losses = self.compressor(f, num_pixels=batch_inputs.shape[-2] *
                                        batch_inputs.shape[-1], object_mask=mask)
        outs = self.splitter.forward_cloud(f_hat)
        return dict(edge_feats=f, compressor_losses=losses, backbone_outs=outs,
                    neck_outs=self.neck(outs) if self.with_neck else outs)

    def extract_feat(self, batch_inputs: Tensor):
        return self._split_forward(batch_inputs)['neck_outs']

    def cloud_features(self, f_hat: Tensor):
        """Cloud: the backbone stages after the split and the neck on (decoded) F_k."""
        x = self.splitter.forward_cloud(f_hat)
        return self.neck(x) if self.with_neck else x

    def loss(self, batch_inputs: Tensor, batch_data_samples) -> dict:
        """One forward: the heads' losses, the compressor's (``loss_rate``), the distiller's on
        the intermediates (its argument, with the compressor's losses under
        ``compressor_losses``), the exits' on detached F_k. Nothing is kept between calls."""
        if self.train_exits_only:
            return self.tiers.exit_only_losses(batch_inputs, batch_data_samples)
        inter = self._split_forward(batch_inputs, batch_data_samples)
        losses = self.loss_from_features(inter['neck_outs'], batch_data_samples)
        losses.update(inter['compressor_losses'])
        if self.distiller is not None:
            losses = self.distiller(self, batch_inputs, batch_data_samples, losses, inter)
        teacher = None  # jointly trained exits distil from the distiller's teacher, if any
        exit_targets = getattr(self.distiller, 'exit_targets', None)
        if exit_targets is not None and self.tiers.distils():
            teacher = exit_targets(batch_inputs, batch_data_samples)
        losses.update(self.tiers.joint_losses(inter['edge_feats'].detach(), batch_data_samples,
                                              teacher))
        return losses

    @abstractmethod
    def loss_from_features(self, x, batch_data_samples) -> dict:
        """The heads' mmdet losses on neck features; implemented by each family."""

    @abstractmethod
    def predict_from_features(self, x, batch_data_samples, rescale: bool = True):
        """Cloud heads on neck features -> samples with detections; implemented by each family."""

    # ---- deployment steps (ordered and accounted by ecc_mmdet.deployment; the tier and payload
    # steps of the components are delegated here where callers outside the pipeline use them) ----
    def edge_features(self, batch_inputs: Tensor) -> Tensor:
        """Edge: stem + stages[:k] -> F_k (computed once per image)."""
        return self.splitter.forward_edge(batch_inputs)

    def run_exits(self, f: Tensor, batch_data_samples, rescale: bool = True) -> ExitOutput:
        return self.tiers.run_exits(f, batch_data_samples, rescale)

    def check_router(self) -> None:
        self.tiers.check_router()

    def finish_on_edge(self, sample: DetDataSample, instances) -> DetDataSample:
        return self.tiers.finish_on_edge(sample, instances)

    def model_fingerprint(self) -> bytes:
        return self.payload_codec.fingerprint()

    def unpack_payloads(self, payloads: Sequence[bytes], batch_data_samples) -> List[Payload]:
        return self.payload_codec.unpack(payloads, batch_data_samples)

    def cloud_predict(self, f_hat: Tensor, batch_data_samples, rescale: bool = True):
        """Cloud: rest of the backbone, neck, heads -> (calibrated) detections."""
        results = self.predict_from_features(self.cloud_features(f_hat), batch_data_samples,
                                             rescale)
        return self.tiers.calibrate_cloud(results)

    # ---- the deployed round trip ----
    @torch.no_grad()
    def encode(self, batch_inputs: Tensor, batch_data_samples: Sequence[DetDataSample]
               ) -> List[bytes]:
        """Edge side without routing: preprocessed image batch -> one payload per image."""
        return self.payload_codec.encode(self.edge_features(batch_inputs), batch_data_samples)

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

    def predict(self, batch_inputs: Tensor, batch_data_samples, rescale: bool = True):
        """The deployed round trip: edge, exits + router, encode, decode, cloud, merge."""
        with torch.no_grad():
            return run_deployment(self, batch_inputs, batch_data_samples, rescale)

    # ---- one side only (shipping each device just the weights it runs) ----
    def build_edge(self):
        """A copy holding only the edge's modules; see :func:`ecc_mmdet.deployment.build_edge`.
        Cloud steps on it raise an error naming the missing module."""
        return sides.build_edge(self)

    def build_cloud(self):
        """A copy holding only the cloud's modules; see
        :func:`ecc_mmdet.deployment.build_cloud`."""
        return sides.build_cloud(self)

    def edge_param_count(self) -> int:
        """Parameters that run on the edge (counted once; the architecture does not change)."""
        if '_edge_params' not in self.__dict__:
            mods = self.splitter.edge_modules() + list(self.compressor.edge_modules())
            mods += [m for m in (self.edge_exit, self.router, self.extension_exit)
                     if m is not None]
            self._edge_params = count_parameters(mods)
        return self._edge_params
