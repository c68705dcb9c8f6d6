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
"""
import os
import os.path as osp
from typing import Dict, List, Optional, Set, Union

import torch
import torch.nn.functional as F
from mmengine.config import Config, ConfigDict
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.runner import IterBasedTrainLoop
from mmengine.runner.checkpoint import _load_checkpoint, _load_checkpoint_to_model
from mmdet.models.detectors.base_detr import DetectionTransformer
from mmdet.registry import HOOKS, MODELS
from mmdet.structures.bbox import bbox2roi, get_box_tensor
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _NormBase
from torch.nn.parallel import DistributedDataParallel

from ...utils.config_checks import ConfigError
from ...utils.modules import unique_parameters

__all__ = ['KnowledgeAdaptationHook']

_MODEL_ZOO = 'https://mmdetection.readthedocs.io/en/latest/model_zoo.html'


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if is_model_wrapper(model) else model


def _softmax_kd(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """KL(teacher || student) of softmax(logits / T) over the last dim, mean over rows, x T^2.

    The KL divergence is a *sum* over the classes (Hinton et al. 2015). mmdet's
    ``knowledge_distillation_kl_div_loss`` (LD, ``KnowledgeDistillationKLDivLoss``) averages over
    the class dimension instead, i.e. returns this value divided by the number of classes
    (+ background): 81 on COCO, 7 on the synthetic set. The sum keeps ``response_loss_weight``
    meaning the same on any dataset; to reproduce an mmdet LD weight ``w``, use
    ``response_loss_weight = w / num_logits``.
    """
    log_ps = F.log_softmax(student.float() / temperature, dim=-1)
    log_pt = F.log_softmax(teacher.float() / temperature, dim=-1)
    kl = (log_pt.exp() * (log_pt - log_ps)).sum(-1)
    return kl.mean() * temperature**2


def _sigmoid_kd(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """Per-class binary KL(teacher || student) of sigmoid(logits / T), summed over the last dim,
    mean over rows, x T^2 (zero when the logits agree)."""
    s, t = student.float() / temperature, teacher.float() / temperature
    pt = torch.sigmoid(t)
    kl = (F.binary_cross_entropy_with_logits(s, pt, reduction='none') -
          F.binary_cross_entropy_with_logits(t, pt, reduction='none'))
    return kl.sum(-1).mean() * temperature**2


class _Distiller:
    """What the student calls from ``loss()``; a plain object so the teacher it reaches through
    the hook never becomes part of the student's module tree."""

    def __init__(self, hook: 'KnowledgeAdaptationHook'):
        self.hook = hook

    def __call__(self, model, batch_inputs, batch_data_samples, losses, intermediates):
        return self.hook.distill(model, batch_inputs, batch_data_samples, losses, intermediates)

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
    """

    priority = 'NORMAL'

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
                 init_student_from_teacher: bool = True):
        if bottleneck_epochs is not None and bottleneck_iters is not None:
            raise ConfigError('KnowledgeAdaptationHook: give bottleneck_epochs or '
                              'bottleneck_iters, not both')
        for name, v in (('bottleneck_epochs', bottleneck_epochs),
                        ('bottleneck_iters', bottleneck_iters)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
                raise ConfigError(f'KnowledgeAdaptationHook: {name} must be an int >= 0, '
                                  f'got {v!r}')
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
        self.teacher_config = teacher_config
        self.teacher_checkpoint = teacher_checkpoint
        self.bottleneck_epochs = bottleneck_epochs
        self.bottleneck_iters = bottleneck_iters
        self.feature_loss_weight = float(feature_loss_weight)
        self.feature_loss_background_weight = float(feature_loss_background_weight)
        self.response_loss_weight = float(response_loss_weight)
        self.temperature = float(temperature)
        self.detection_loss_weight_stage1 = float(detection_loss_weight_stage1)
        self.response_num_rois = int(response_num_rois)
        self.init_student_from_teacher = bool(init_student_from_teacher)

        self.teacher: Optional[nn.Module] = None
        self.stage: Optional[int] = None
        self._by_iter = bottleneck_iters is not None
        self._stage1_len = bottleneck_iters if self._by_iter else bottleneck_epochs
        self._model_frozen: Set[int] = set()  # params the model froze itself (frozen_stages)
        self._eval_modules: List[nn.Module] = []
        self._logger = None
        self.num_copied = 0  # tensors copied from the teacher by init_student_from_teacher

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
                'compressor (the README shows a complete config), '
                'or remove the hook from custom_hooks.')
        if isinstance(runner.model, DistributedDataParallel) and \
                not runner.model.find_unused_parameters:
            raise ConfigError(
                'KnowledgeAdaptationHook freezes a different part of the model in each stage, so '
                'DDP must tolerate parameters without gradients. Add to the config: '
                'find_unused_parameters = True (or model_wrapper_cfg=dict('
                "type='MMDistributedDataParallel', find_unused_parameters=True)).")
        self._resolve_schedule(runner)
        cfg = getattr(runner, 'cfg', None) or {}
        teacher_config = (self.teacher_config if self.teacher_config is not None else
                          cfg.get('teacher_config'))
        teacher_checkpoint = (self.teacher_checkpoint if self.teacher_checkpoint is not None
                              else cfg.get('teacher_checkpoint'))
        device = next(model.parameters()).device
        self.teacher = self._build_teacher(teacher_config, teacher_checkpoint).to(device)
        self.teacher.eval()
        self.teacher.requires_grad_(False)
        self._check_compatible(model, self.teacher)

        loaded = (getattr(runner, '_has_loaded', False) or bool(cfg.get('load_from'))
                  or getattr(runner, 'iter', 0) > 0)
        if self.init_student_from_teacher and not loaded:
            self._copy_teacher_into(model)
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

    @staticmethod
    def _resolve_path(path: str) -> str:
        """Existing file for ``path`` (relative paths from the working directory), or ''.

        Configs that ship a teacher next to themselves can write
        ``teacher_config = '{{fileDirname}}/teacher.py'`` (mmengine expands it to the config's own
        directory), which works from any working directory.
        """
        if '::' in path:  # mmdet::faster_rcnn/... (an installed package's config)
            try:
                return Config._get_cfg_path(path, '')[0]
            except Exception as e:  # noqa: BLE001 -- shown to the user with the cause
                raise FileNotFoundError(
                    f'KnowledgeAdaptationHook: cannot resolve teacher_config {path!r}: {e}') from e
        return path if osp.isfile(path) else ''

    def _build_teacher(self, teacher_config, teacher_checkpoint) -> nn.Module:
        if teacher_config is None:
            raise ConfigError('KnowledgeAdaptationHook needs teacher_config (the unsplit '
                              "detector's config) and teacher_checkpoint: give them to the hook "
                              'or as top-level teacher_config / teacher_checkpoint in the config')
        if isinstance(teacher_config, str):
            path = self._resolve_path(teacher_config)
            if not path:
                raise FileNotFoundError(
                    f'KnowledgeAdaptationHook: teacher_config {teacher_config!r} does not exist '
                    f'(relative paths are read from the working directory {os.getcwd()}). Set '
                    'teacher_config to the config of the unsplit detector the student is '
                    'distilled from: an absolute path, a path relative to where you run '
                    "training, or an 'mmdet::...' config.")
            model_cfg = Config.fromfile(path).get('model')
            name = teacher_config
        else:
            model_cfg = teacher_config.get('model', teacher_config)
            name = 'the given teacher_config dict'
        if not isinstance(model_cfg, dict) or 'type' not in model_cfg:
            raise ConfigError(f'KnowledgeAdaptationHook: {name} has no model=dict(type=...)')
        if teacher_checkpoint is None:
            raise ConfigError('KnowledgeAdaptationHook: teacher_checkpoint is not set. '
                              + self._how_to_get_teacher(teacher_config))
        if '://' not in str(teacher_checkpoint):  # local file (URLs: mmengine downloads them)
            found = self._resolve_path(str(teacher_checkpoint))
            if not found:
                raise FileNotFoundError(
                    f'KnowledgeAdaptationHook: teacher checkpoint {teacher_checkpoint!r} not '
                    f'found (relative paths are read from the working directory {os.getcwd()}). '
                    + self._how_to_get_teacher(teacher_config))
            teacher_checkpoint = found
        teacher = MODELS.build(ConfigDict(model_cfg))
        ckpt = _load_checkpoint(teacher_checkpoint, map_location='cpu')
        state = ckpt.get('state_dict', ckpt) if isinstance(ckpt, dict) else None
        if not isinstance(state, dict):
            raise ConfigError(f'KnowledgeAdaptationHook: {teacher_checkpoint!r} holds no '
                              'state_dict')
        self._check_state_dict_fits(teacher, state, teacher_config, teacher_checkpoint)
        # the check above is the strict one (it forgives only absent num_batches_tracked)
        _load_checkpoint_to_model(teacher, ckpt, strict=False)
        self._log(f'teacher {type(teacher).__name__} from {name} loaded from '
                  f'{teacher_checkpoint} (frozen, eval mode, not part of the student)')
        return teacher

    @staticmethod
    def _how_to_get_teacher(teacher_config) -> str:
        if isinstance(teacher_config, str) and teacher_config.startswith('mmdet::'):
            return ('Download the checkpoint of that MMDetection model from its model zoo '
                    f'({_MODEL_ZOO}) and pass it with --cfg-options teacher_checkpoint=PATH.')
        cfg = teacher_config if isinstance(teacher_config, str) else 'the teacher config'
        return (f'Train the teacher first (an ordinary MMDetection training of {cfg}, e.g. '
                'with tools/train.py), then pass its checkpoint with --cfg-options '
                'teacher_checkpoint=PATH.')

    @staticmethod
    def _check_state_dict_fits(teacher, state, teacher_config, teacher_checkpoint) -> None:
        state = {(k[7:] if k.startswith('module.') else k): v for k, v in state.items()}
        own = teacher.state_dict()
        missing = [k for k in own if k not in state and not k.endswith('num_batches_tracked')]
        unexpected = [k for k in state if k not in own]
        shape = [f'{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}'
                 for k in own if k in state and hasattr(state[k], 'shape')
                 and tuple(state[k].shape) != tuple(own[k].shape)]
        if not (missing or unexpected or shape):
            return
        parts = []
        for what, keys in (('missing', missing), ('unexpected', unexpected),
                           ('shape mismatch', shape)):
            if keys:
                more = f' (+{len(keys) - 5} more)' if len(keys) > 5 else ''
                parts.append(f'{len(keys)} {what}: {", ".join(keys[:5])}{more}')
        hint = ''
        if any(k.startswith('compressor.') for k in unexpected):
            hint = ('It looks like a split (student) checkpoint; the teacher is the unsplit '
                    'detector. ')
        raise ConfigError(
            f'KnowledgeAdaptationHook: teacher_checkpoint {teacher_checkpoint!r} does not fit '
            f'teacher_config {teacher_config if isinstance(teacher_config, str) else "(dict)"}'
            f' -- {"; ".join(parts)}. {hint}Use a checkpoint trained with exactly that config, '
            'or set teacher_config to the config the checkpoint was trained with.')

    def _check_compatible(self, model, teacher) -> None:
        two_stage = getattr(model, 'with_roi_head', False)
        if two_stage and not getattr(teacher, 'with_roi_head', False):
            raise ConfigError('KnowledgeAdaptationHook: the student is two-stage but the teacher '
                              f'{type(teacher).__name__} has no roi_head; distil from the '
                              'unsplit version of the same detector')
        if not two_stage and not hasattr(teacher, 'bbox_head'):
            raise ConfigError('KnowledgeAdaptationHook: the student is single-stage but the '
                              f'teacher {type(teacher).__name__} has no bbox_head')
        if not hasattr(teacher, 'backbone') or not hasattr(teacher.backbone, 'out_indices'):
            raise ConfigError('KnowledgeAdaptationHook: the teacher needs a backbone with '
                              'out_indices (a backbone the splitter supports) for the feature '
                              'distillation')
        head = getattr(model, 'bbox_head', None)
        if getattr(head, 'loss_obj', None) is not None and self.response_loss_weight > 0:
            raise ConfigError(
                f'KnowledgeAdaptationHook: {type(head).__name__} gates its class scores by an '
                'objectness branch and trains the class logits only where objects are, so '
                'distilling the dense class scores everywhere would copy untrained logits; set '
                'response_loss_weight=0 (feature distillation and the labels still train it)')
        if isinstance(model, DetectionTransformer) and self.response_loss_weight > 0:
            raise ConfigError(
                'KnowledgeAdaptationHook: response distillation (response_loss_weight > 0) is '
                'implemented for RoI heads and dense heads, not for the query-based heads of '
                f'DETR-style detectors ({type(model).__name__}); set response_loss_weight=0 '
                '(feature distillation and the detection losses still train it)')
        pre_s, pre_t = model.data_preprocessor, teacher.data_preprocessor
        for attr in ('mean', 'std'):
            a, b = getattr(pre_s, attr, None), getattr(pre_t, attr, None)
            if isinstance(a, Tensor) and isinstance(b, Tensor) and (
                    a.shape != b.shape or not torch.allclose(a.cpu(), b.cpu())):
                self._log(f'teacher and student data_preprocessor {attr} differ; the '
                          'teacher sees the student-normalised images', 'warning')

    def _copy_teacher_into(self, model) -> None:
        t_state, s_state = self.teacher.state_dict(), model.state_dict()
        copied, skipped, per_part = 0, [], {}
        with torch.no_grad():
            for k, v in t_state.items():
                if k not in s_state:
                    continue
                if s_state[k].shape != v.shape:
                    skipped.append(k)
                    continue
                s_state[k].copy_(v)
                copied += 1
                part = k.split('.')[0]
                per_part[part] = per_part.get(part, 0) + 1
        own = [k for k in s_state if k not in t_state]
        parts = ', '.join(f'{k} {n}' for k, n in per_part.items())
        self._log(f'student initialised from the teacher: copied {copied} tensors ({parts}); '
                  f'{len(own)} student-only tensors kept (e.g. the compressor)' +
                  (f'; {len(skipped)} skipped for shape mismatch: {skipped[:5]}'
                   if skipped else ''))
        self.num_copied = copied

    # ------------------------------------------------------------------ stages
    def _wanted_stage(self, runner) -> int:
        now = runner.iter if self._by_iter else runner.epoch
        return 1 if now < self._stage1_len else 2

    @staticmethod
    def _coding_models(model) -> List[nn.Module]:
        coding = getattr(model.compressor, 'coding_models', None)
        return list(coding()) if callable(coding) else []

    def _stage_split(self, model, stage: int):
        """-> (ids of the stage's trainable parameters, frozen top-level modules).

        Stage 1: the compressor trains, every other child module is frozen. Stage 2: the edge
        (``splitter.edge_modules()``, ``compressor.edge_modules()``, the entropy model) is
        frozen and everything else trains -- decoder g_s (``compressor.cloud_modules()`` minus
        the entropy model), the backbone stages after the split, neck, rpn_head/roi_head or
        bbox_head.
        """
        comp = model.compressor
        if stage == 1:
            frozen = [m for _, m in model.named_children() if m is not comp]
            return {id(p) for p in comp.parameters()}, frozen
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
        if self.teacher is not None and self.teacher.training:
            self.teacher.eval()

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
        """The student's ``loss()`` hands its losses here; returns the stage's losses."""
        comp_keys = set(getattr(model, '_pending_losses', {}) or {}) | {'loss_rate'}
        out = {}
        if self.stage == 1:
            w = self.detection_loss_weight_stage1
            for k, v in losses.items():
                if k in comp_keys or 'loss' not in k:
                    out[k] = v
                elif w > 0:
                    out[k] = [x * w for x in v] if isinstance(v, (list, tuple)) else v * w
            out['loss_kd_feat'] = self.feature_loss_weight * self._feature_loss(
                model, batch_inputs, batch_data_samples, intermediates)
        else:
            for k, v in losses.items():
                if k == 'loss_rate':
                    beta = getattr(model.compressor, 'rate_weight', 0) or 1.0
                    out['rate'] = v.detach() / beta
                elif k not in comp_keys:  # other compressor losses: frozen, no gradient
                    out[k] = v
            if self.response_loss_weight > 0:
                out['loss_kd_resp'] = self.response_loss_weight * self._response_loss(
                    model, batch_inputs, batch_data_samples, intermediates)
        out['kd_stage'] = torch.tensor(float(self.stage), device=batch_inputs.device)
        return out

    def _foreground_weights(self, batch_data_samples, shape, input_hw) -> Optional[Tensor]:
        """(N, 1, h, w) weights: 1 on cells a GT box touches, the background weight elsewhere."""
        bg = self.feature_loss_background_weight
        if bg >= 1.0:
            return None
        n, _, h, w = shape
        sy, sx = input_hw[0] / h, input_hw[1] / w
        weights = torch.full((n, 1, h, w), bg)
        for k, sample in enumerate(batch_data_samples):
            gt = sample.get('gt_instances', None)
            if gt is None or 'bboxes' not in gt or len(gt) == 0:
                continue
            for x1, y1, x2, y2 in get_box_tensor(gt.bboxes).detach().cpu().tolist():
                c0, c1 = max(0, int(x1 // sx)), min(w, int(-(-x2 // sx)))
                r0, r1 = max(0, int(y1 // sy)), min(h, int(-(-y2 // sy)))
                weights[k, :, r0:r1, c0:c1] = 1.0
        return weights

    def _feature_loss(self, model, batch_inputs, batch_data_samples, intermediates) -> Tensor:
        student = intermediates['backbone_outs']
        # the splitter refuses out_indices computed before the split: the cloud returns them all
        s_idx = sorted(model.splitter.out_indices)
        with torch.no_grad():
            t_outs = self.teacher.backbone(batch_inputs)
        t_map = dict(zip(sorted(self.teacher.backbone.out_indices), t_outs))
        loss = batch_inputs.new_zeros(())
        for i, s in zip(s_idx, student):
            t = t_map.get(i)
            if t is None or t.shape != s.shape:
                raise ConfigError(
                    f'KnowledgeAdaptationHook: student backbone output {i} has shape '
                    f'{tuple(s.shape)} but the teacher gives '
                    f'{None if t is None else tuple(t.shape)}; feature distillation needs the '
                    'same backbone (depth, widths, out_indices) in teacher and student')
            weights = self._foreground_weights(batch_data_samples, s.shape,
                                               batch_inputs.shape[-2:])
            if weights is None:
                loss = loss + F.mse_loss(s.float(), t.float())
            else:
                weights = weights.to(s.device)
                err = (s.float() - t.float()).pow(2).mean(1, keepdim=True)  # mean over channels
                loss = loss + (err * weights).sum() / weights.sum().clamp_min(1e-12)
        return loss

    def _response_loss(self, model, batch_inputs, batch_data_samples, intermediates) -> Tensor:
        x = intermediates['neck_outs']
        T = self.temperature
        if getattr(model, 'with_roi_head', False):
            with torch.no_grad():
                t_x = self.teacher.extract_feat(batch_inputs)
                if getattr(self.teacher, 'with_rpn', False):
                    props = self.teacher.rpn_head.predict(t_x, batch_data_samples,
                                                          rescale=False)
                else:
                    props = [s.proposals for s in batch_data_samples]
                boxes = []
                for p, s in zip(props, batch_data_samples):
                    b = get_box_tensor(p.bboxes)[:self.response_num_rois]
                    gt = s.get('gt_instances', None)
                    if gt is not None and 'bboxes' in gt and len(gt) > 0:
                        b = torch.cat([b, get_box_tensor(gt.bboxes).to(b)])
                    boxes.append(b)
                rois = bbox2roi(boxes)
                if rois.shape[0] == 0:
                    return x[0].sum() * 0
                t_cls = self._roi_cls(self.teacher.roi_head, t_x, rois)
            s_cls = self._roi_cls(model.roi_head, x, rois)
            if s_cls.shape != t_cls.shape:
                raise ConfigError(f'KnowledgeAdaptationHook: student RoI scores '
                                  f'{tuple(s_cls.shape)} vs teacher {tuple(t_cls.shape)}: '
                                  'teacher and student need the same classes')
            sigmoid = getattr(getattr(model.roi_head.bbox_head, 'loss_cls', None),
                              'use_sigmoid', False)
            return (_sigmoid_kd if sigmoid else _softmax_kd)(s_cls, t_cls, T)
        head = model.bbox_head
        with torch.no_grad():
            t_cls = self.teacher.bbox_head(self.teacher.extract_feat(batch_inputs))[0]
        s_cls = head(x)[0]
        c = head.cls_out_channels

        def flat(levels):
            return torch.cat([lvl.permute(0, 2, 3, 1).reshape(-1, c) for lvl in levels])

        s_flat, t_flat = flat(s_cls), flat(t_cls)
        sigmoid = getattr(head, 'use_sigmoid_cls', False)
        return (_sigmoid_kd if sigmoid else _softmax_kd)(s_flat, t_flat, T)

    @staticmethod
    def _roi_cls(roi_head, x, rois) -> Tensor:
        if hasattr(roi_head, 'num_stages'):  # cascade: score the shared RoIs with the last stage
            return roi_head._bbox_forward(roi_head.num_stages - 1, x, rois)['cls_score']
        return roi_head._bbox_forward(x, rois)['cls_score']

