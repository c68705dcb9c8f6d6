"""Knowledge adaptation: train a split (edge/cloud) student from its unsplit teacher.

Two stages, in the spirit of the Entropic Student (Matsubara et al.):

1. **Bottleneck** (epochs ``[0, bottleneck_epochs)`` or iterations ``[0, bottleneck_iters)``):
   only the compressor learns (edge encoder ``g_a``, cloud decoder ``g_s``, entropy model); the
   rest of the student is frozen (``requires_grad=False``, its norm layers in eval mode). The
   decoded feature is pushed through the (frozen) cloud backbone stages and every stage output
   after the split is matched to the teacher's output of the same stage::

       loss_kd_feat = feature_loss_weight * sum_i MSE(student_stage_i, teacher_stage_i)

   With ``feature_loss_background_weight`` = b < 1 the squared error is weighted by 1 inside
   the ground-truth boxes and b elsewhere (a weighted mean, so b = 1 is the plain MSE): the codec
   is no longer asked to reproduce background texture the detector does not need, which is
   exactly where an image codec spends its bits too. The detection losses
   (``detection_loss_weight_stage1``) still penalise background that decodes into false
   positives.

   plus the compressor's own losses (``loss_rate``). Detection losses are multiplied by
   ``detection_loss_weight_stage1`` (dropped when 0, the default).

2. **Fine-tune** (the rest of training): the edge is frozen as deployed -- the backbone stages
   on the edge, the encoder ``g_a`` and the entropy model, whose coding tables are fixed once
   (``update()``) and which stays in eval mode (rounding quantisation, as in deployment). The
   cloud side learns: decoder ``g_s``, the cloud backbone stages, the neck and the heads, with
   the detection losses plus a response-distillation loss ``loss_kd_resp``:

   * two-stage detectors: ``KL(teacher || student)`` of the RoI classification distributions
     (softmax with temperature ``T``, scaled by ``T**2``) on **shared RoIs**: the teacher's RPN
     proposals on the same batch (its ``test_cfg.rpn``, best ``response_num_rois`` per image)
     plus the ground-truth boxes. Teacher and student classify exactly the same boxes, so the
     loss compares their answers and nothing else; the teacher's proposals are the regions its
     own detections come from, and the GT boxes guarantee foreground RoIs in every image.
   * single-stage detectors: the same KL on the dense class scores of ``bbox_head(x)`` at every
     anchor/point (per-class binary KL for sigmoid heads such as RetinaNet, softmax KL
     otherwise), summed over classes and averaged over positions.

   The compressor's losses would carry no gradient (encoder and entropy model are frozen), so
   they are removed: ``loss_rate`` is logged as ``rate`` instead (``loss_rate / beta``: the
   rate in the compressor's ``rate_unit``, bpp by default), under a name without ``loss``
   because mmengine sums every logged key that contains ``loss``. ``kd_stage`` (1 or 2) is
   logged every iteration.

The teacher is built and loaded in ``before_train``, put in eval mode with ``requires_grad``
off, moved to the student's device and handed to the student through its ``attach_distiller``:
it is never a submodule of the student, so it is absent from the student's parameters,
state_dict, checkpoints and optimizer. On a fresh start (no ``load_from``, no resume,
``iter == 0``) the student is initialised from the teacher's weights wherever key and shape
match (backbone, neck, heads): the cloud side starts from the teacher. Resumed or loaded
weights are never overwritten (``Runner.train`` loads/resumes before ``before_train``).

Frozen parameters get no gradient (``requires_grad=False``; the optimizer wrapper zeroes
gradients to ``None``), and AdamW/SGD skip parameters whose gradient is ``None``, so neither the
update nor weight decay moves them. Parameters the model itself froze (e.g. the backbone's
``frozen_stages``) are never unfrozen.

Distributed training: parameters change their ``requires_grad`` after DDP wrapped the model, so
use ``model_wrapper_cfg=dict(type='MMDistributedDataParallel', find_unused_parameters=True)``.

This module holds the schedule only (stages, freezing, logging, which losses each stage uses).
The teacher (build, load, checks, initialising the student) and the losses live in
:mod:`ecc_mmdet.distillation`: :class:`~ecc_mmdet.distillation.DetectionDistiller` with
``FeatureKDLoss`` and ``ResponseKDLoss``, built from the hook's flat arguments or given whole as
``distiller=dict(type='DetectionDistiller', ...)``, and reusable outside this hook.
"""
from typing import Dict, List, Optional, Set, Union

import torch
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.runner import IterBasedTrainLoop
from mmdet.registry import HOOKS, MODELS
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _NormBase
from torch.nn.parallel import DistributedDataParallel

from ...distillation import DetectionDistiller
from ...errors import ConfigError
from ...utils.modules import unique_parameters

__all__ = ['KnowledgeAdaptationHook']


def runner_has_loaded(runner) -> bool:
    """Whether the Runner loaded or resumed a checkpoint before training started.

    mmengine 0.10 has no public accessor: ``Runner.load_or_resume`` sets the private
    ``_has_loaded``. This is the one place that reads it (a runner without it counts as not
    loaded; ``load_from`` in the config and a resumed iteration are checked besides);
    ``tests/test_engine/test_framework_internals.py`` fails when mmengine changes it.
    """
    return bool(getattr(runner, '_has_loaded', False))


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if is_model_wrapper(model) else model


class _Distiller:
    """What the student calls from ``loss()``; a plain object so the teacher it reaches through
    the hook never becomes part of the student's module tree."""

    def __init__(self, hook: 'KnowledgeAdaptationHook'):
        self.hook = hook

    def __call__(self, model, batch_inputs, batch_data_samples, losses, intermediates):
        return self.hook.distill(model, batch_inputs, batch_data_samples, losses, intermediates)

    def exit_targets(self, batch_inputs, batch_data_samples):
        """The teacher's detections, from which jointly trained edge exits distil."""
        return [r.pred_instances for r in self.hook.distiller.predict(batch_inputs,
                                                                      batch_data_samples)]

    def __deepcopy__(self, memo):  # e.g. an EMA copy of the student: share, never copy a teacher
        return self


@HOOKS.register_module()
class KnowledgeAdaptationHook(Hook):
    """Distil a split student from its unsplit teacher in two stages (see the module docstring).

    Configure it in ``custom_hooks``; the student must be a split (``EdgeCloud*``) detector.

    Args:
        teacher_config: the teacher's mmdet config: a file path (``'configs/x.py'``, also
            ``'mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py'``), a full config (dict with a
            ``model`` key) or a model config dict. ``None`` (default): the training config's
            top-level ``teacher_config`` variable, so ``--cfg-options teacher_config=...`` works.
            Relative paths are read from the working directory.
        teacher_checkpoint: checkpoint of that teacher (path, same lookup as teacher_config, or
            a URL mmengine can load). ``None`` (default): the config's top-level
            ``teacher_checkpoint``.
        bottleneck_epochs: length of stage 1 in epochs (epoch-based loops). ``None`` with
            ``bottleneck_iters`` also ``None``: half of the training (``max_epochs // 2``, or
            ``max_iters // 2`` for iteration-based loops). 0 skips stage 1.
        bottleneck_iters: length of stage 1 in iterations instead (any loop; required instead of
            ``bottleneck_epochs`` for ``IterBasedTrainLoop``). Give at most one of the two.
        feature_loss_weight: weight of ``loss_kd_feat`` (stage 1).
        feature_loss_background_weight: weight in [0, 1] of the feature error outside the
            ground-truth boxes (1: plain MSE everywhere, the default).
        response_loss_weight: weight of ``loss_kd_resp`` (stage 2; 0 disables it).
        temperature: softening temperature ``T`` of the response distillation (loss x ``T**2``).
        detection_loss_weight_stage1: weight of the detection losses in stage 1 (0: dropped).
        response_num_rois: two-stage response distillation: best teacher proposals per image
            used as shared RoIs (plus the GT boxes).
        init_student_from_teacher: on a fresh start, copy every teacher tensor whose key and
            shape match into the student (backbone, neck, heads).
        distiller: a whole ``DetectionDistiller`` config (teacher, ``feature_loss``,
            ``response_loss``, ``response_num_rois``) instead of the flat teacher and loss
            arguments above, e.g. to use another registered loss. Give one or the other.
    """

    priority = 'NORMAL'
    # the flat teacher/loss arguments' defaults: other values conflict with distiller=dict(...)
    _FLAT_DEFAULTS = dict(teacher_config=None, teacher_checkpoint=None, feature_loss_weight=1.0,
                          feature_loss_background_weight=1.0, response_loss_weight=1.0,
                          temperature=1.0, response_num_rois=128)

    def __init__(self,
                 teacher_config: Union[str, dict, None] = None,
                 teacher_checkpoint: Optional[str] = None,
                 bottleneck_epochs: Optional[int] = None,
                 bottleneck_iters: Optional[int] = None,
                 feature_loss_weight: float = 1.0,
                 feature_loss_background_weight: float = 1.0,
                 response_loss_weight: float = 1.0,
                 temperature: float = 1.0,
                 detection_loss_weight_stage1: float = 0.0,
                 response_num_rois: int = 128,
                 init_student_from_teacher: bool = True,
                 distiller: Union[dict, DetectionDistiller, None] = None):
        self._check_schedule(bottleneck_epochs, bottleneck_iters)
        self._check_weights(feature_loss_weight, feature_loss_background_weight,
                            response_loss_weight, temperature, detection_loss_weight_stage1,
                            response_num_rois)
        flat = dict(teacher_config=teacher_config, teacher_checkpoint=teacher_checkpoint,
                    feature_loss_weight=feature_loss_weight,
                    feature_loss_background_weight=feature_loss_background_weight,
                    response_loss_weight=response_loss_weight, temperature=temperature,
                    response_num_rois=response_num_rois)
        # the teacher and the loss weights live in the distiller
        self.distiller = self._flat_distiller(**flat) if distiller is None else \
            self._whole_distiller(distiller, flat)
        self.bottleneck_epochs = bottleneck_epochs
        self.bottleneck_iters = bottleneck_iters
        self.detection_loss_weight_stage1 = float(detection_loss_weight_stage1)
        self.init_student_from_teacher = bool(init_student_from_teacher)

        self.stage: Optional[int] = None
        self._by_iter = bottleneck_iters is not None
        self._stage1_len = bottleneck_iters if self._by_iter else bottleneck_epochs
        self._model_frozen: Set[int] = set()  # params the model froze itself (frozen_stages)
        self._eval_modules: List[nn.Module] = []
        self._logger = None
        self.num_copied = 0  # tensors copied from the teacher by init_student_from_teacher

    @staticmethod
    def _check_schedule(bottleneck_epochs, bottleneck_iters) -> None:
        """At most one stage-1 length, a count: refused here rather than at the first epoch."""
        if bottleneck_epochs is not None and bottleneck_iters is not None:
            raise ConfigError('KnowledgeAdaptationHook: give bottleneck_epochs or '
                              'bottleneck_iters, not both')
        for name, v in (('bottleneck_epochs', bottleneck_epochs),
                        ('bottleneck_iters', bottleneck_iters)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
                raise ConfigError(f'KnowledgeAdaptationHook: {name} must be an int >= 0, '
                                  f'got {v!r}')

    @staticmethod
    def _check_weights(feature_loss_weight, feature_loss_background_weight, response_loss_weight,
                       temperature, detection_loss_weight_stage1, response_num_rois) -> None:
        """Loss weights and KD settings in their ranges, refused before a teacher is built."""
        for name, v in (('feature_loss_weight', feature_loss_weight),
                        ('response_loss_weight', response_loss_weight),
                        ('detection_loss_weight_stage1', detection_loss_weight_stage1)):
            if not v >= 0:
                raise ConfigError(f'KnowledgeAdaptationHook: {name} must be >= 0, got {v!r}')
        if not 0 <= feature_loss_background_weight <= 1:
            raise ConfigError('KnowledgeAdaptationHook: feature_loss_background_weight must be '
                              f'in [0, 1], got {feature_loss_background_weight!r}')
        if not temperature > 0:
            raise ConfigError(f'KnowledgeAdaptationHook: temperature must be > 0, '
                              f'got {temperature!r}')
        if int(response_num_rois) < 1:
            raise ConfigError('KnowledgeAdaptationHook: response_num_rois must be >= 1')

    @staticmethod
    def _flat_distiller(teacher_config, teacher_checkpoint, feature_loss_weight,
                        feature_loss_background_weight, response_loss_weight, temperature,
                        response_num_rois) -> DetectionDistiller:
        """The distiller of the hook's flat teacher and loss arguments."""
        return DetectionDistiller(
            teacher_config, teacher_checkpoint,
            feature_loss=dict(type='FeatureKDLoss',
                              background_weight=feature_loss_background_weight,
                              loss_weight=feature_loss_weight),
            response_loss=dict(type='ResponseKDLoss', temperature=temperature,
                               loss_weight=response_loss_weight),
            response_num_rois=response_num_rois)

    @classmethod
    def _whole_distiller(cls, distiller, flat: dict) -> DetectionDistiller:
        """``distiller`` (a config or a built one), refused next to non-default flat
        arguments ``flat``: one way to say what the teacher and the losses are."""
        given = [k for k, default in cls._FLAT_DEFAULTS.items() if flat[k] != default]
        if given:
            raise ConfigError(
                f'KnowledgeAdaptationHook: give distiller=dict(...) or the flat teacher/loss '
                f'arguments, not both: move {", ".join(given)} into the distiller config '
                '(teacher_config, teacher_checkpoint, feature_loss, response_loss, '
                'response_num_rois)')
        if not isinstance(distiller, DetectionDistiller):
            distiller = MODELS.build(dict(dict(type='DetectionDistiller'), **distiller))
        if not isinstance(distiller, DetectionDistiller):
            raise ConfigError('KnowledgeAdaptationHook: distiller must build a '
                              f'DetectionDistiller, got {type(distiller).__name__}')
        return distiller

    @property
    def teacher(self) -> Optional[nn.Module]:
        """The distiller's frozen teacher (``None`` before ``before_train``)."""
        return self.distiller.teacher

    def _response_on(self) -> bool:
        return float(getattr(self.distiller.response_kd, 'loss_weight', 1.0)) > 0

    # ------------------------------------------------------------------ setup
    def before_train(self, runner) -> None:
        self._logger = runner.logger
        model = _unwrap(runner.model)
        if not callable(getattr(model, 'attach_distiller', None)):
            raise ConfigError(
                'KnowledgeAdaptationHook distils a split edge/cloud student, but the model is '
                f'a {type(model).__name__} (no attach_distiller). Use an '
                'EdgeCloud* detector (EdgeCloudTwoStageDetector, EdgeCloudSingleStageDetector, '
                'EdgeCloudRTMDet, EdgeCloudDINO, ...): set model.type and add split_after and '
                'compressor (docs/splitting.md shows a complete config), '
                'or remove the hook from custom_hooks.')
        if isinstance(runner.model, DistributedDataParallel) and \
                not runner.model.find_unused_parameters:
            raise ConfigError(
                'KnowledgeAdaptationHook freezes a different part of the model in each stage, so '
                'DDP must tolerate parameters without gradients. Add to the config: '
                'find_unused_parameters = True (or model_wrapper_cfg=dict('
                "type='MMDistributedDataParallel', find_unused_parameters=True)).")
        if getattr(model, 'train_exits_only', None):
            raise ConfigError(
                'KnowledgeAdaptationHook trains the split student, but the model has '
                f'train_exits_only={model.train_exits_only!r} (the exits alone, on a frozen '
                'student): set model.train_exits_only=False to train the exits jointly with the '
                'student, or remove the hook to train the exits alone')
        self._resolve_schedule(runner)
        cfg = getattr(runner, 'cfg', None) or {}
        device = next(model.parameters()).device
        self.distiller.build(device=device, cfg=cfg, logger=self._logger)
        self.distiller.check_compatible(model, response=self._response_on())
        self.distiller.check_classes(model)

        loaded = (runner_has_loaded(runner) or bool(cfg.get('load_from'))
                  or getattr(runner, 'iter', 0) > 0)
        if self.init_student_from_teacher and not loaded:
            self.num_copied = self.distiller.copy_into(model)
        elif self.init_student_from_teacher:
            self._log('student weights come from load_from/resume (iter '
                      f'{getattr(runner, "iter", 0)}): not initialised from the teacher')

        self._model_frozen = {id(p) for p in model.parameters() if not p.requires_grad}
        self.stage = None
        self._enter_stage(model, self._wanted_stage(runner), runner)
        model.attach_distiller(_Distiller(self))

    def _resolve_schedule(self, runner) -> None:
        loop = getattr(runner, 'train_loop', None)
        iter_loop = isinstance(loop, IterBasedTrainLoop)
        if iter_loop and self.bottleneck_epochs is not None:
            raise ConfigError('KnowledgeAdaptationHook: the train loop is iteration-based, so '
                              'give the bottleneck stage as bottleneck_iters=N instead of '
                              f'bottleneck_epochs={self.bottleneck_epochs}')
        if self._stage1_len is None:
            self._by_iter = iter_loop
            total = getattr(loop, 'max_iters' if iter_loop else 'max_epochs', None)
            if not isinstance(total, int):
                raise ConfigError('KnowledgeAdaptationHook: set bottleneck_epochs (or '
                                  'bottleneck_iters): the loop length is unknown')
            self._stage1_len = total // 2
            self._log(f'bottleneck stage length not given: using half of training, '
                      f'{self._stage1_len} {"iterations" if iter_loop else "epochs"}')

    # ------------------------------------------------------------------ stages
    def _wanted_stage(self, runner) -> int:
        now = runner.iter if self._by_iter else runner.epoch
        return 1 if now < self._stage1_len else 2

    @staticmethod
    def _coding_models(model) -> List[nn.Module]:
        coding = getattr(model.compressor, 'coding_models', None)
        return list(coding()) if callable(coding) else []

    @staticmethod
    def _exits(model) -> List[nn.Module]:
        """Edge exits trained jointly with the student (``train_exits_only=False``): they read
        the detached F_k of the frozen edge stages, so they learn in both stages and need no
        stage of their own."""
        return [m for m in (getattr(model, 'edge_exit', None),
                            getattr(model, 'extension_exit', None)) if m is not None]

    def _stage_split(self, model, stage: int):
        """-> (ids of the stage's trainable parameters, frozen top-level modules).

        Stage 1: the compressor (and the edge exits of a dynamic student) trains, every other
        child module is frozen. Stage 2: the edge
        (``splitter.edge_modules()``, ``compressor.edge_modules()``, the entropy model) is
        frozen and everything else trains -- decoder g_s (``compressor.cloud_modules()`` minus
        the entropy model), the backbone stages after the split, neck, rpn_head/roi_head or
        bbox_head.
        """
        comp = model.compressor
        if stage == 1:
            learn = [comp] + self._exits(model)
            frozen = [m for _, m in model.named_children() if all(m is not x for x in learn)]
            return {id(p) for m in learn for p in m.parameters()}, frozen
        edge = list(model.splitter.edge_modules()) + list(comp.edge_modules()) + \
            self._coding_models(model)
        edge_ids = {id(p) for p in unique_parameters(edge)}
        return {id(p) for p in model.parameters() if id(p) not in edge_ids}, edge

    def _enter_stage(self, model, stage: int, runner=None) -> None:
        train_ids, frozen_mods = self._stage_split(model, stage)
        train_ids -= self._model_frozen
        if stage == 1 and not train_ids:
            raise ConfigError(
                f'KnowledgeAdaptationHook: the compressor {type(model.compressor).__name__} has '
                'no trainable parameters, so the bottleneck stage has nothing to learn; set '
                'bottleneck_epochs=0 (fine-tune only) or use EntropyBottleneckNeck')
        n_train = n_frozen = 0
        for p in model.parameters():
            p.requires_grad_(id(p) in train_ids)
            if id(p) in train_ids:
                n_train += p.numel()
            else:
                n_frozen += p.numel()
        self._eval_modules = [m for top in frozen_mods for m in top.modules()
                              if isinstance(m, _NormBase)]
        if stage == 2:
            for em in self._coding_models(model):
                em.update()  # the deployment tables, fixed from now on
                self._eval_modules.append(em)
        self._apply_modes()
        self._forget_stale_log_values(runner)
        when = ''
        if runner is not None:
            when = (f' at iter {runner.iter}' if self._by_iter else f' at epoch {runner.epoch + 1}')
        if stage == 1:
            what = ('stage 1/2 "bottleneck": training the compressor only (encoder g_a, decoder '
                    'g_s, entropy model) with loss_kd_feat + its loss_rate; backbone, '
                    'neck and heads frozen')
        else:
            what = ('stage 2/2 "fine-tune": edge frozen (edge backbone stages, encoder, entropy '
                    'model with fixed tables, rounding); training decoder g_s, cloud backbone '
                    'stages, neck and heads with detection losses + loss_kd_resp')
        self._log(f'KnowledgeAdaptationHook: entering {what}{when}; {n_train} trainable / '
                  f'{n_frozen} frozen parameters')
        self.stage = stage

    @staticmethod
    def _forget_stale_log_values(runner) -> None:
        """Drop the logged history of the previous stage's losses.

        mmengine's logger prints every ``train/*`` scalar it has ever seen (windowed mean of its
        history), so ``loss_kd_feat``/``loss_rate`` would keep showing their last stage-1 values
        in stage 2 (also after a resume, which restores the history). The keys come back with
        fresh histories as soon as a stage logs them again.
        """
        hub = getattr(runner, 'message_hub', None)
        scalars = getattr(hub, 'log_scalars', None)
        if not isinstance(scalars, dict):
            return
        for key in [k for k in scalars if k.startswith(('train/loss_', 'train/rate'))]:
            scalars.pop(key)

    def _apply_modes(self) -> None:
        for m in self._eval_modules:
            if m.training:
                m.eval()
        self.distiller.eval_teacher()

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        model = _unwrap(runner.model)
        stage = self._wanted_stage(runner)
        if stage != self.stage:
            self._enter_stage(model, stage, runner)
        self._apply_modes()  # the loop calls model.train() at every epoch / after validation

    def after_train(self, runner) -> None:
        """Detach the teacher and give back the ``requires_grad`` flags the model came with."""
        model = _unwrap(runner.model)
        if callable(getattr(model, 'attach_distiller', None)):
            model.attach_distiller(None)
            for p in model.parameters():
                p.requires_grad_(id(p) not in self._model_frozen)

    def _log(self, msg: str, level: str = 'info') -> None:
        if self._logger is not None:
            getattr(self._logger, level)(msg)

    # ------------------------------------------------------------------ losses
    def distill(self, model, batch_inputs: Tensor, batch_data_samples, losses: Dict,
                intermediates: Dict) -> Dict:
        """The student's ``loss()`` hands its losses here, with its ``intermediates``
        (``backbone_outs``, ``neck_outs``, ``edge_feats`` and ``compressor_losses``, the
        compressor's own entries in ``losses``); returns the stage's losses."""
        comp_keys = set(intermediates['compressor_losses'])  # the student's loss() names them
        out = {}
        if self.stage == 1:
            w = self.detection_loss_weight_stage1
            for k, v in losses.items():
                if k in comp_keys or 'loss' not in k:
                    out[k] = v
                elif w > 0:
                    out[k] = [x * w for x in v] if isinstance(v, (list, tuple)) else v * w
            out['loss_kd_feat'] = self.distiller.feature_loss(
                model, batch_inputs, batch_data_samples, intermediates['backbone_outs'])
        else:
            for k, v in losses.items():
                if k == 'loss_rate':
                    beta = getattr(model.compressor, 'rate_weight', 0) or 1.0
                    out['rate'] = v.detach() / beta
                elif k not in comp_keys:  # other compressor losses: frozen, no gradient
                    out[k] = v
            if self._response_on():
                out['loss_kd_resp'] = self.distiller.response_loss(
                    model, batch_inputs, batch_data_samples, intermediates['neck_outs'])
        out['kd_stage'] = torch.tensor(float(self.stage), device=batch_inputs.device)
        return out
