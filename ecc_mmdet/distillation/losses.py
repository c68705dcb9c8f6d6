"""Distillation losses: response (class-score KL) and feature (per-level MSE) matching.

Registered into ``mmdet.registry.MODELS`` so a :class:`~.distiller.DetectionDistiller` config can
name them (``feature_loss=dict(type='FeatureKDLoss', ...)``).
"""
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from mmdet.registry import MODELS
from torch import Tensor, nn

from ..errors import ConfigError
from ..structures.box_masks import object_mask

__all__ = ['softmax_kd', 'sigmoid_kd', 'ResponseKDLoss', 'FeatureKDLoss']


def softmax_kd(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
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


def sigmoid_kd(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """Per-class binary KL(teacher || student) of sigmoid(logits / T), summed over the last dim,
    mean over rows, x T^2 (zero when the logits agree)."""
    s, t = student.float() / temperature, teacher.float() / temperature
    pt = torch.sigmoid(t)
    kl = (F.binary_cross_entropy_with_logits(s, pt, reduction='none') -
          F.binary_cross_entropy_with_logits(t, pt, reduction='none'))
    return kl.sum(-1).mean() * temperature**2


@MODELS.register_module()
class ResponseKDLoss(nn.Module):
    """``loss_weight`` x the temperature-softened KL of class scores (rows: RoIs or positions).

    The caller says whether the head scores classes with sigmoids (per-class binary KL, e.g.
    RetinaNet) or a softmax, because only the head knows.

    Args:
        temperature: softening temperature ``T`` (the loss is scaled by ``T**2``).
        loss_weight: factor of the loss (``KnowledgeAdaptationHook`` skips the term when 0).
    """

    def __init__(self, temperature: float = 1.0, loss_weight: float = 1.0):
        super().__init__()
        if not temperature > 0:
            raise ConfigError(f'ResponseKDLoss: temperature must be > 0, got {temperature!r}')
        if not loss_weight >= 0:
            raise ConfigError(f'ResponseKDLoss: loss_weight must be >= 0, got {loss_weight!r}')
        self.temperature = float(temperature)
        self.loss_weight = float(loss_weight)

    def forward(self, student_logits: Tensor, teacher_logits: Tensor,
                use_sigmoid: bool) -> Tensor:
        kd = sigmoid_kd if use_sigmoid else softmax_kd
        return self.loss_weight * kd(student_logits, teacher_logits, self.temperature)

    def extra_repr(self) -> str:
        return f'temperature={self.temperature}, loss_weight={self.loss_weight}'


@MODELS.register_module()
class FeatureKDLoss(nn.Module):
    """``loss_weight`` x the squared error between a student and a teacher feature map.

    With ``background_weight`` = b < 1 the error is weighted by 1 on the cells a ground-truth
    box touches and b elsewhere (a weighted mean, so b = 1 is the plain MSE): a codec trained
    with it stops spending effort on background texture the detector does not need.

    Args:
        background_weight: weight in [0, 1] of the error outside the ground-truth boxes.
        loss_weight: factor of the loss.
    """

    def __init__(self, background_weight: float = 1.0, loss_weight: float = 1.0):
        super().__init__()
        if not 0 <= background_weight <= 1:
            raise ConfigError('FeatureKDLoss: background_weight must be in [0, 1], got '
                              f'{background_weight!r}')
        if not loss_weight >= 0:
            raise ConfigError(f'FeatureKDLoss: loss_weight must be >= 0, got {loss_weight!r}')
        self.background_weight = float(background_weight)
        self.loss_weight = float(loss_weight)

    def foreground_weights(self, batch_data_samples, shape: Sequence[int],
                           input_hw: Sequence[int]) -> Optional[Tensor]:
        """(N, 1, h, w) weights: 1 on cells a GT box touches, the background weight elsewhere
        (``None`` for the plain MSE, b >= 1)."""
        bg = self.background_weight
        if bg >= 1.0:
            return None
        return bg + (1.0 - bg) * object_mask(batch_data_samples, shape, input_hw)

    def forward(self, student_feat: Tensor, teacher_feat: Tensor, batch_data_samples,
                input_hw: Sequence[int]) -> Tensor:
        """One level: ``student_feat``/``teacher_feat`` (N, C, h, w) of an ``input_hw`` batch."""
        s, t = student_feat.float(), teacher_feat.float()
        weights = self.foreground_weights(batch_data_samples, student_feat.shape, input_hw)
        if weights is None:
            loss = F.mse_loss(s, t)
        else:
            weights = weights.to(student_feat.device)
            err = (s - t).pow(2).mean(1, keepdim=True)  # mean over channels
            loss = (err * weights).sum() / weights.sum().clamp_min(1e-12)
        return self.loss_weight * loss

    def extra_repr(self) -> str:
        return f'background_weight={self.background_weight}, loss_weight={self.loss_weight}'
