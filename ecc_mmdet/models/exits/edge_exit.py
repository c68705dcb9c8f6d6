"""Edge exits: a light detector over the features the edge already computes (MEANet's main block).

An exit is an ordinary mmdet dense head (``ATSSHead``, ``RetinaHead``, ``FCOSHead``, ...) on a small
edge neck that turns the split-point feature map F_k into a few pyramid levels. Images the router
keeps on the edge finish with the exit's detections and send nothing; the others go to the cloud as
before. The exit learns from the labels and, optionally, from the cloud detector's own detections
(pseudo-label distillation, ECCENTRIC's "knowledge adaptation": the cloud's knowledge flows back
into the edge), which the split detector computes and passes in.
"""
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import torch
from mmcv.cnn import ConvModule
from mmdet.registry import MODELS
from mmdet.structures import DetDataSample
from mmengine.model import BaseModule
from mmengine.structures import InstanceData
from torch import Tensor, nn

from ...errors import ConfigError

__all__ = ['EdgeExit', 'EdgeExitPyramid', 'ExitOutput']


@dataclass
class ExitOutput:
    """What the exits computed for a batch; routers read it, the pipeline merges from it.

    results:    per image, the exit's detections (InstanceData: bboxes, scores, labels)
    cls_scores: the head's raw classification maps, one (N, A*C, H, W) tensor per level
    features:   the split-point feature map F_k (N, C, H, W)
    samples:    the batch's data samples (image ids for the random router)
    num_classes: classes of the exit head
    tiers:      per image, the exit that produced ``results`` ('edge_main' / 'edge_extension')
    """
    results: List[InstanceData]
    cls_scores: List[Tensor]
    features: Tensor
    samples: Sequence[DetDataSample]
    num_classes: int
    tiers: List[str] = field(default_factory=list)


@MODELS.register_module()
class EdgeExitPyramid(BaseModule):
    """F_k -> ``num_levels`` maps of ``out_channels``, each a stride-2 conv block below the last.

    Light on purpose: two 3x3 convolutions per level (the first one strided), BN + ReLU.
    """

    def __init__(self, in_channels: int, out_channels: int = 32, num_levels: int = 3,
                 norm_cfg: dict = dict(type='BN'), init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        if num_levels < 1:
            raise ConfigError(f'EdgeExitPyramid: num_levels must be >= 1, got {num_levels}')
        blocks, c = [], in_channels
        for _ in range(num_levels):
            blocks.append(nn.Sequential(
                ConvModule(c, out_channels, 3, stride=2, padding=1, norm_cfg=norm_cfg),
                ConvModule(out_channels, out_channels, 3, padding=1, norm_cfg=norm_cfg)))
            c = out_channels
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: Tensor):
        outs = []
        for block in self.blocks:
            x = block(x)
            outs.append(x)
        return tuple(outs)


@MODELS.register_module()
class EdgeExit(BaseModule):
    """Edge neck + mmdet dense head, run on F_k.

    Args:
        neck: neck config; ``in_channels`` defaults to the channels of F_k.
        head: an mmdet dense-head config (its ``train_cfg``/``test_cfg`` come from the keys below).
        train_cfg / test_cfg: the head's assigner/sampler and NMS settings, as in a single-stage
            detector config.
        distill_weight: weight of the loss on the cloud detector's detections (pseudo labels) when
            the split detector provides them; 0 trains on the labels only.
        pseudo_label_score_thr: cloud detections at or above this score become pseudo labels.
        recall_boost: recall-rate boosting (ECCENTRIC): the weight of positive anchors in the
            head's focal classification loss (its ``alpha``; mmdet's default 0.25). Larger values
            make the exit fire on more objects -- fewer objects silently dropped on the edge, at
            the price of more false positives (which the router sees as uncertainty). None keeps
            the head's own setting.
        in_channels: set by the split detector (channels of F_k).
    """

    def __init__(self, neck: dict, head: dict, train_cfg: Optional[dict] = None,
                 test_cfg: Optional[dict] = None, distill_weight: float = 0.0,
                 pseudo_label_score_thr: float = 0.5, recall_boost: Optional[float] = None,
                 in_channels: Optional[int] = None, init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        if not isinstance(neck, dict) or not isinstance(head, dict):
            raise ConfigError('edge_exit needs neck=dict(type=...) and head=dict(type=...), e.g. '
                              "neck=dict(type='EdgeExitPyramid'), head=dict(type='ATSSHead', ...)")
        if not 0.0 <= float(distill_weight):
            raise ConfigError(f'edge_exit.distill_weight must be >= 0, got {distill_weight}')
        if not 0.0 <= float(pseudo_label_score_thr) <= 1.0:
            raise ConfigError('edge_exit.pseudo_label_score_thr must be in [0, 1], got '
                              f'{pseudo_label_score_thr}')
        neck = dict(neck)
        if in_channels is not None:
            neck.setdefault('in_channels', in_channels)
        head = dict(head)
        head.update(train_cfg=train_cfg, test_cfg=test_cfg)
        if recall_boost is not None:
            loss_cls = dict(head.get('loss_cls') or {})
            if 'FocalLoss' not in str(loss_cls.get('type', '')) or \
                    not 0.0 < float(recall_boost) < 1.0:
                raise ConfigError(
                    'edge_exit.recall_boost sets the focal loss alpha of the exit head: it needs '
                    "head.loss_cls=dict(type='FocalLoss', ...) and a value in (0, 1), got "
                    f'loss_cls type {loss_cls.get("type")!r}, recall_boost={recall_boost}')
            head['loss_cls'] = dict(loss_cls, alpha=float(recall_boost))
        try:
            self.neck = MODELS.build(neck)
        except Exception as e:  # noqa: BLE001  (re-raised with the key to fix)
            raise ConfigError(f'edge_exit.neck could not be built: {e}') from e
        try:
            self.head = MODELS.build(head)
        except Exception as e:  # noqa: BLE001
            raise ConfigError(f'edge_exit.head could not be built: {e}') from e
        self.distill_weight = float(distill_weight)
        self.pseudo_label_score_thr = float(pseudo_label_score_thr)

    @property
    def num_classes(self) -> int:
        return int(self.head.num_classes)

    @torch.no_grad()
    def check_runs_on(self, channels: int) -> None:
        """Run neck + head once on a dummy F_k; a clear error when the configs do not fit."""
        was = self.training
        self.eval()
        try:
            x = self.neck(torch.zeros(1, channels, 32, 32))
        except Exception as e:  # noqa: BLE001
            raise ConfigError(
                f'edge_exit.neck cannot run on the edge features ({channels} channels at the '
                f'split point): {e}. Set edge_exit.neck.in_channels={channels} or leave it '
                'unset') from e
        try:
            levels = len(x)
            outs = self.head(x)
            n_out = len(outs[0])
        except Exception as e:  # noqa: BLE001
            shapes = [tuple(t.shape) for t in x]
            raise ConfigError(
                f'edge_exit.head cannot run on the edge neck outputs {shapes}: {e}. Make '
                'edge_exit.head.in_channels equal the neck\'s out_channels and give its '
                'prior/anchor generator one stride per neck level') from e
        finally:
            self.train(was)
        if n_out != levels:
            raise ConfigError(f'edge_exit.head produced {n_out} levels for {levels} neck levels: '
                              'give its anchor/prior generator one stride per neck level')

    def forward(self, f: Tensor):
        return self.head(self.neck(f))

    def loss(self, f: Tensor, samples: Sequence[DetDataSample],
             pseudo_samples: Optional[Sequence[DetDataSample]] = None) -> Dict[str, Tensor]:
        """Label losses (``exit_*``) + weighted losses on pseudo labels (``exit_kd_*``)."""
        x = self.neck(f)
        losses = {f'exit_{k}': v for k, v in self.head.loss(x, samples).items()}
        if pseudo_samples is not None and self.distill_weight > 0:
            for k, v in self.head.loss(x, pseudo_samples).items():
                w = self.distill_weight
                losses[f'exit_kd_{k}'] = [w * t for t in v] if isinstance(v, list) else w * v
        return losses

    def predict(self, f: Tensor, samples: Sequence[DetDataSample], rescale: bool = True):
        """-> (per-image InstanceData, raw classification maps per level)."""
        outs = self(f)
        metas = [s.metainfo for s in samples]
        results = self.head.predict_by_feat(*outs, batch_img_metas=metas, rescale=rescale)
        return results, list(outs[0])

    def pseudo_labels(self, cloud_results: Sequence[InstanceData],
                      samples: Sequence[DetDataSample]) -> List[DetDataSample]:
        """Data samples whose ground truth is the cloud's confident detections."""
        out = []
        for res, s in zip(cloud_results, samples):
            keep = res.scores >= self.pseudo_label_score_thr
            gt = InstanceData(bboxes=res.bboxes[keep].detach(), labels=res.labels[keep].detach())
            p = DetDataSample(metainfo=s.metainfo)
            p.gt_instances = gt
            out.append(p)
        return out
