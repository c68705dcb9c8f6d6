"""A frozen teacher detector and the losses that distil it into a student.

:class:`DetectionDistiller` is what a training schedule (``KnowledgeAdaptationHook``) or an
online-adaptation loop needs from a teacher: build and load it, check it fits the student,
initialise the student from it, the feature and response distillation losses, and its
detections as pseudo labels. It is a plain object, not an ``nn.Module``: whatever holds it, the
teacher never becomes a submodule of the student, so it stays out of the student's parameters,
state_dict, checkpoints, optimizer and deep copies (EMA).
"""
from typing import List, Optional, Union

import torch
from mmdet.models.detectors.base_detr import DetectionTransformer
from mmdet.registry import MODELS
from mmdet.structures import DetDataSample
from mmdet.structures.bbox import bbox2roi, get_box_tensor
from torch import Tensor, nn

from ..errors import ConfigError
from .teacher import build_teacher

__all__ = ['DetectionDistiller']


def _build_loss(cfg: Union[dict, nn.Module]) -> nn.Module:
    return cfg if isinstance(cfg, nn.Module) else MODELS.build(dict(cfg))


def _num_classes(detector) -> Optional[int]:
    """Classes of the detector's final classifier: the (last cascade stage's) RoI bbox head,
    else the dense/query head."""
    roi_head = getattr(detector, 'roi_head', None)
    if roi_head is not None:
        head = getattr(roi_head, 'bbox_head', None)
        if isinstance(head, (nn.ModuleList, list, tuple)):
            head = head[-1]
    else:
        head = getattr(detector, 'bbox_head', None)
    n = getattr(head, 'num_classes', None)
    return None if n is None else int(n)


def roi_cls_scores(roi_head, x, rois: Tensor) -> Tensor:
    """The RoI head's class scores of the given ``rois`` (a cascade: of its last stage).

    mmdet 3.3 has no public call for this: ``StandardRoIHead.forward`` takes proposals but also
    runs the mask branch, ``CascadeRoIHead.forward`` refines the boxes from stage to stage, and
    response distillation needs teacher and student to score the very same boxes. So this is the
    one place that calls the private ``_bbox_forward(x, rois)`` /
    ``_bbox_forward(stage, x, rois)``; ``tests/test_engine/test_framework_internals.py`` fails
    when mmdet changes their signatures or their ``cls_score`` output.
    """
    if hasattr(roi_head, 'num_stages'):  # cascade: score the shared RoIs with the last stage
        return roi_head._bbox_forward(roi_head.num_stages - 1, x, rois)['cls_score']
    return roi_head._bbox_forward(x, rois)['cls_score']


@MODELS.register_module()
class DetectionDistiller:
    """A frozen teacher with the feature and response distillation losses of a split student.

    Args:
        teacher_config: the teacher's mmdet config (file path, ``'mmdet::...'`` config, full
            config or model config dict). ``None``: the ``cfg`` given to :meth:`build` supplies
            its top-level ``teacher_config``.
        teacher_checkpoint: checkpoint of that teacher (path or URL); ``None``: ``cfg``'s
            top-level ``teacher_checkpoint``.
        feature_loss: config (or module) of the per-level feature loss, ``FeatureKDLoss``.
        response_loss: config (or module) of the class-score loss, ``ResponseKDLoss``.
        response_num_rois: two-stage response distillation: best teacher proposals per image
            used as shared RoIs (plus the GT boxes).
        owner: who uses it, the prefix of every error message.
    """

    def __init__(self,
                 teacher_config: Union[str, dict, None] = None,
                 teacher_checkpoint: Optional[str] = None,
                 feature_loss: Union[dict, nn.Module] = dict(type='FeatureKDLoss'),
                 response_loss: Union[dict, nn.Module] = dict(type='ResponseKDLoss'),
                 response_num_rois: int = 128,
                 owner: str = 'KnowledgeAdaptationHook'):
        if int(response_num_rois) < 1:
            raise ConfigError(f'{owner}: response_num_rois must be >= 1')
        self.teacher_config = teacher_config
        self.teacher_checkpoint = teacher_checkpoint
        self.feature_kd = _build_loss(feature_loss)
        self.response_kd = _build_loss(response_loss)
        self.response_num_rois = int(response_num_rois)
        self.owner = owner
        self.teacher: Optional[nn.Module] = None
        self.logger = None

    def __deepcopy__(self, memo):  # e.g. an EMA copy of the student: share, never copy a teacher
        return self

    @property
    def built(self) -> bool:
        return self.teacher is not None

    def build(self, device=None, cfg=None, logger=None) -> 'DetectionDistiller':
        """Build and load the teacher (frozen, eval mode) on ``device``.

        ``cfg`` is the training config: its top-level ``teacher_config``/``teacher_checkpoint``
        fill in what was not given, so ``--cfg-options teacher_checkpoint=...`` works.
        """
        cfg = cfg or {}
        teacher_config = (self.teacher_config if self.teacher_config is not None else
                          cfg.get('teacher_config'))
        teacher_checkpoint = (self.teacher_checkpoint if self.teacher_checkpoint is not None
                              else cfg.get('teacher_checkpoint'))
        self.logger = logger
        teacher = build_teacher(teacher_config, teacher_checkpoint, owner=self.owner,
                                logger=logger)
        self.teacher = teacher.to(device) if device is not None else teacher
        return self

    def eval_teacher(self) -> None:
        """Put the teacher back in eval mode (a ``.train()`` somewhere reached it, or some of its
        layers were switched to train mode)."""
        if self.teacher is not None and any(m.training for m in self.teacher.modules()):
            self.teacher.eval()

    def _log(self, msg: str, level: str = 'info') -> None:
        if self.logger is not None:
            getattr(self.logger, level)(msg)

    def _need_teacher(self) -> nn.Module:
        if self.teacher is None:
            raise RuntimeError(f'{self.owner}: the teacher is not built yet; call '
                               'DetectionDistiller.build() first')
        return self.teacher

    # ------------------------------------------------------------------ checks
    def check_compatible(self, model, response: bool) -> None:
        """Refuse teacher/student pairs the losses cannot compare (``response``: the response
        loss will be used)."""
        teacher, owner = self._need_teacher(), self.owner
        two_stage = getattr(model, 'with_roi_head', False)
        if two_stage and not getattr(teacher, 'with_roi_head', False):
            raise ConfigError(f'{owner}: the student is two-stage but the teacher '
                              f'{type(teacher).__name__} has no roi_head; distil from the '
                              'unsplit version of the same detector')
        if not two_stage and not hasattr(teacher, 'bbox_head'):
            raise ConfigError(f'{owner}: the student is single-stage but the '
                              f'teacher {type(teacher).__name__} has no bbox_head')
        if not hasattr(teacher, 'backbone') or not hasattr(teacher.backbone, 'out_indices'):
            raise ConfigError(f'{owner}: the teacher needs a backbone with '
                              'out_indices (a backbone the splitter supports) for the feature '
                              'distillation')
        head = getattr(model, 'bbox_head', None)
        if getattr(head, 'loss_obj', None) is not None and response:
            raise ConfigError(
                f'{owner}: {type(head).__name__} gates its class scores by an '
                'objectness branch and trains the class logits only where objects are, so '
                'distilling the dense class scores everywhere would copy untrained logits; set '
                'response_loss_weight=0 (feature distillation and the labels still train it)')
        if isinstance(model, DetectionTransformer) and response:
            raise ConfigError(
                f'{owner}: response distillation (response_loss_weight > 0) is '
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

    def check_classes(self, model) -> None:
        """Refuse a teacher that detects a different number of classes than the student (or its
        edge exit): its class scores, heads and pseudo labels would not mean the same labels."""
        teacher, owner = self._need_teacher(), self.owner
        n_t = _num_classes(teacher)
        if n_t is None:
            return
        fix = ('use a teacher trained on the same classes as the student (the same dataset '
               'metainfo), or set the num_classes of the student (and its dataset metainfo '
               'classes) to those of the teacher')
        n_s = _num_classes(model)
        if n_s is not None and n_s != n_t:
            raise ConfigError(f'{owner}: the teacher {type(teacher).__name__} detects {n_t} '
                              f'classes but the student {type(model).__name__} detects {n_s}; '
                              f'{fix}')
        edge_exit = getattr(model, 'edge_exit', None)
        n_e = getattr(edge_exit, 'num_classes', None) if edge_exit is not None else None
        if n_e is not None and int(n_e) != n_t:
            raise ConfigError(f'{owner}: the teacher {type(teacher).__name__} detects {n_t} '
                              f'classes but the student\'s edge_exit detects {int(n_e)}; {fix}')

    # ------------------------------------------------------------------ weights
    def copy_into(self, model) -> int:
        """Copy every teacher tensor whose key and shape match into ``model``; -> how many."""
        t_state, s_state = self._need_teacher().state_dict(), model.state_dict()
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
        return copied

    # ------------------------------------------------------------------ losses
    def feature_loss(self, model, batch_inputs: Tensor, batch_data_samples,
                     backbone_outs) -> Tensor:
        """Sum over the student's post-split backbone outputs of the feature loss against the
        teacher's output of the same stage."""
        teacher = self._need_teacher()
        # the splitter refuses out_indices computed before the split: the cloud returns them all
        s_idx = sorted(model.splitter.out_indices)
        with torch.no_grad():
            t_outs = teacher.backbone(batch_inputs)
        t_map = dict(zip(sorted(teacher.backbone.out_indices), t_outs))
        loss = batch_inputs.new_zeros(())
        for i, s in zip(s_idx, backbone_outs):
            t = t_map.get(i)
            if t is None or t.shape != s.shape:
                raise ConfigError(
                    f'{self.owner}: student backbone output {i} has shape '
                    f'{tuple(s.shape)} but the teacher gives '
                    f'{None if t is None else tuple(t.shape)}; feature distillation needs the '
                    'same backbone (depth, widths, out_indices) in teacher and student')
            loss = loss + self.feature_kd(s, t, batch_data_samples, batch_inputs.shape[-2:])
        return loss

    def response_loss(self, model, batch_inputs: Tensor, batch_data_samples,
                      neck_outs) -> Tensor:
        """Class-score distillation: on shared RoIs (teacher proposals + GT boxes) for two-stage
        students, on every anchor/point of the dense head otherwise."""
        teacher = self._need_teacher()
        x = neck_outs
        if getattr(model, 'with_roi_head', False):
            with torch.no_grad():
                t_x = teacher.extract_feat(batch_inputs)
                if getattr(teacher, 'with_rpn', False):
                    props = teacher.rpn_head.predict(t_x, batch_data_samples, rescale=False)
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
                t_cls = roi_cls_scores(teacher.roi_head, t_x, rois)
            s_cls = roi_cls_scores(model.roi_head, x, rois)
            if s_cls.shape != t_cls.shape:
                raise ConfigError(f'{self.owner}: student RoI scores '
                                  f'{tuple(s_cls.shape)} vs teacher {tuple(t_cls.shape)}: '
                                  'teacher and student need the same classes')
            sigmoid = getattr(getattr(model.roi_head.bbox_head, 'loss_cls', None),
                              'use_sigmoid', False)
            return self.response_kd(s_cls, t_cls, use_sigmoid=bool(sigmoid))
        head = model.bbox_head
        with torch.no_grad():
            t_cls = teacher.bbox_head(teacher.extract_feat(batch_inputs))[0]
        s_cls = head(x)[0]
        c = head.cls_out_channels

        def flat(levels):
            return torch.cat([lvl.permute(0, 2, 3, 1).reshape(-1, c) for lvl in levels])

        sigmoid = getattr(head, 'use_sigmoid_cls', False)
        return self.response_kd(flat(s_cls), flat(t_cls), use_sigmoid=bool(sigmoid))

    # ------------------------------------------------------------------ pseudo labels
    def predict(self, batch_inputs: Tensor, batch_data_samples,
                rescale: bool = False) -> List[DetDataSample]:
        """The teacher's detections (``pred_instances``) of a preprocessed batch.

        The teacher writes into fresh samples carrying only the metainfo, so the caller's samples
        (with their ground truth or the student's predictions) are left as they were.
        """
        teacher = self._need_teacher()
        self.eval_teacher()
        fresh = [DetDataSample(metainfo=s.metainfo) for s in batch_data_samples]
        with torch.no_grad():
            return teacher.predict(batch_inputs, fresh, rescale=rescale)
