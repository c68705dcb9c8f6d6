"""What adapts the edge model's normalisation layers, and how.

Two places can learn. On the **edge** itself, without any upload (the baselines): ``NormStats``
re-estimates the batch-norm statistics from the stream, ``Tent`` also takes an entropy-
minimisation step on the norm layers' affine parameters (backpropagation on the device). In the
**cloud** (CEMA): :class:`CloudAdapter` keeps a copy of the edge model, labels each uploaded
image once with the teacher's confident detections, keeps it in a FIFO replay buffer, and trains
the copy's edge normalisation layers (affine parameters by SGD, statistics by the batches'
moments) on new uploads mixed with replayed ones; what it learned goes down as a PARAM_UPDATE
(:mod:`ecc_mmdet.deployment.param_update`).

Only the normalisation layers of the edge model change (``edge_norm_modules``: the edge backbone
stages and the exits); everything else keeps ``requires_grad`` as it was and is never stepped.
"""
import contextlib
from abc import ABCMeta, abstractmethod
import copy
import math
from collections import deque
from typing import Dict, List, Sequence, Set

import torch
from mmdet.models.utils import unpack_gt_instances
from mmdet.registry import TASK_UTILS
from mmdet.structures import DetDataSample
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _NormBase

from ..deployment.param_update import edge_norm_modules
from ..models.exits.edge_exit import ExitOutput
from ..models.routers.features import top_k_entropy
from ..errors import ConfigError

__all__ = ['norm_affine_parameters', 'norm_train_mode', 'running_stats', 'load_running_stats',
           'exit_forward', 'exit_entropy', 'exit_pseudo_label_loss', 'NormStats', 'Tent',
           'ReplayBuffer', 'CloudAdapter']


def norm_affine_parameters(model) -> List[nn.Parameter]:
    """The affine parameters (weight, bias) of the edge model's normalisation layers."""
    out = []
    for mod in edge_norm_modules(model).values():
        out += [p for p in mod.parameters(recurse=False) if p is not None]
    return out


@contextlib.contextmanager
def norm_train_mode(model):
    """The whole model in eval mode except the edge norm layers, which use and update batch
    statistics; eval mode everywhere afterwards (the deployed state)."""
    model.eval()
    for mod in edge_norm_modules(model).values():
        mod.train()
    try:
        yield model
    finally:
        model.eval()


def _stat_layers(model) -> Dict[str, _NormBase]:
    return {name: m for name, m in model.named_modules()
            if isinstance(m, _NormBase) and m.track_running_stats}


def running_stats(model) -> Dict[str, Tensor]:
    """A copy of the running statistics of every batch-norm layer of ``model`` (what
    re-estimating them, e.g. the teacher's ``adapt_teacher``, changes; the weights stay)."""
    return {f'{name}.{k}': b.detach().clone() for name, m in _stat_layers(model).items()
            for k, b in m.named_buffers(recurse=False) if b is not None}


@torch.no_grad()
def load_running_stats(model, stats: Dict[str, Tensor]) -> None:
    """Put :func:`running_stats`' copy back into ``model``."""
    for name, m in _stat_layers(model).items():
        for k, b in m.named_buffers(recurse=False):
            if b is not None:
                b.copy_(stats[f'{name}.{k}'])


def exit_forward(model, batch_inputs: Tensor):
    """(F_k, the edge exit's raw outputs) of a preprocessed batch."""
    if getattr(model, 'edge_exit', None) is None:
        raise ConfigError('online adaptation adapts the edge exit (the model that predicts on '
                          'the device); this model has no edge_exit: use a dynamic config '
                          '(e.g. configs/ecc_faster_rcnn_r18_synthetic_dynamic.py)')
    f = model.splitter.forward_edge(batch_inputs)
    return f, model.edge_exit(f)


def exit_entropy(model, f: Tensor, outs, top_k: int, detach: bool) -> Tensor:
    """(N,) the exit's uncertainty per image (the router's and the selection's statistic)."""
    exits = ExitOutput(results=[], cls_scores=list(outs[0]), features=f, samples=[],
                       num_classes=model.edge_exit.num_classes)
    return top_k_entropy(exits, top_k, detach=detach)


def exit_pseudo_label_loss(model, outs, samples: Sequence[DetDataSample]) -> Tensor:
    """The exit head's detection loss with ``samples``' gt_instances (pseudo labels) as targets."""
    gts, ignores, metas = unpack_gt_instances(samples)
    losses = model.edge_exit.head.loss_by_feat(*outs, gts, metas, ignores)
    total = None
    for v in losses.values():
        v = sum(v) if isinstance(v, (list, tuple)) else v
        total = v if total is None else total + v
    return total


class _EdgeLearner(metaclass=ABCMeta):
    """Edge-only adaptation on the batch just predicted (never before it is scored)."""

    def __init__(self, top_k: int = 10):
        self.top_k = int(top_k)

    def attach(self, model) -> None:
        """Called once per stream, after the model was (re)loaded."""

    @abstractmethod
    def step(self, model, batch_inputs: Tensor) -> Dict[str, float]:
        """Adapt on one preprocessed batch; returns figures to log."""


@TASK_UTILS.register_module()
class NormStats(_EdgeLearner):
    """Edge-only: update the edge batch-norm running statistics with each batch's moments (each
    layer's own momentum), no gradients (BN adaptation)."""

    def step(self, model, batch_inputs: Tensor) -> Dict[str, float]:
        with torch.no_grad(), norm_train_mode(model):
            f, outs = exit_forward(model, batch_inputs)
            ent = exit_entropy(model, f, outs, self.top_k, detach=True)
        return dict(entropy=float(ent.mean()))


@TASK_UTILS.register_module()
class Tent(_EdgeLearner):
    """Edge-only: one SGD step per batch on the exit's mean top-k entropy, over the edge norm
    layers' affine parameters (statistics updated as in :class:`NormStats`)."""

    def __init__(self, lr: float = 1e-3, momentum: float = 0.9, top_k: int = 10):
        super().__init__(top_k)
        if not lr > 0:
            raise ConfigError(f'Tent.lr must be > 0, got {lr}')
        self.lr, self.momentum = float(lr), float(momentum)
        self.optimizer = None

    def attach(self, model) -> None:
        self.optimizer = torch.optim.SGD(norm_affine_parameters(model), lr=self.lr,
                                         momentum=self.momentum)

    def step(self, model, batch_inputs: Tensor) -> Dict[str, float]:
        params = norm_affine_parameters(model)
        flags = [p.requires_grad for p in params]
        try:
            for p in params:
                p.requires_grad_(True)
            with torch.enable_grad(), norm_train_mode(model):
                f, outs = exit_forward(model, batch_inputs)
                loss = exit_entropy(model, f, outs, self.top_k, detach=False).mean()
                # gradients of the affine parameters only: nothing else gets a .grad
                grads = torch.autograd.grad(loss, params, allow_unused=True)
        finally:
            for p, flag in zip(params, flags):
                p.requires_grad_(flag)
        for p, g in zip(params, grads):
            p.grad = None if g is None else g.detach()
        self.optimizer.step()
        for p in params:
            p.grad = None
        return dict(entropy=float(loss.detach()))


class ReplayBuffer:
    """FIFO of uploaded samples (decoded image, data sample with pseudo labels), bounded."""

    def __init__(self, capacity: int):
        if int(capacity) < 1:
            raise ConfigError(f'replay buffer capacity must be >= 1, got {capacity}')
        self.items = deque(maxlen=int(capacity))

    def __len__(self) -> int:
        return len(self.items)

    def add(self, image: Tensor, sample: DetDataSample) -> None:
        self.items.append((image, sample))

    def draw(self, n: int, generator: torch.Generator) -> list:
        if not self.items or n <= 0:
            return []
        idx = torch.randint(len(self.items), (n,), generator=generator).tolist()
        return [self.items[i] for i in idx]


@TASK_UTILS.register_module()
class CloudAdapter:
    """The cloud side of CEMA for detection.

    Args:
        lr, momentum: SGD on the copy's edge norm affine parameters (CEMA: 2.5e-3, 0.9).
        steps: SGD steps per update round.
        batch_size: images per step: the newest uploads first, the rest replayed.
        new_fraction: at most this share of a step's images are new uploads (CEMA: 1:3, 0.25).
        capacity: replay buffer size (FIFO).
        score_thr: the teacher's detections at or above it are the pseudo labels.
        entropy_weight: weight of the copy's entropy on the uploads (0 disables it).
        top_k: anchors of the entropy.
        skip_empty: keep an upload out of training when the teacher found nothing in it at
            ``score_thr``: under a strong shift that is the teacher failing, not evidence of an
            empty scene, and training on it teaches the exit to see nothing (its entropy, and
            with it the router's offload ratio, collapse).
        adapt_teacher: re-estimate the teacher's batch-norm statistics on every upload batch
            before it labels it (CEMA adapts its foundation model's normalisation layers too):
            the teacher here is an ordinary detector, as hurt by the shift as the edge, and
            pseudo labels from the unadapted teacher are no better than the adapted edge's own.
            Its statistics go back to the checkpoint's at every new stream.
        seed: the replay draws.
    """

    def __init__(self, lr: float = 2.5e-3, momentum: float = 0.9, steps: int = 4,
                 batch_size: int = 8, new_fraction: float = 0.25, capacity: int = 512,
                 score_thr: float = 0.5, entropy_weight: float = 0.0, top_k: int = 10,
                 skip_empty: bool = True, adapt_teacher: bool = True, seed: int = 0):
        if not lr > 0 or int(steps) < 1 or int(batch_size) < 1:
            raise ConfigError(f'CloudAdapter needs lr > 0, steps >= 1, batch_size >= 1; got '
                              f'lr={lr}, steps={steps}, batch_size={batch_size}')
        if not 0.0 < float(new_fraction) <= 1.0 or not 0.0 <= float(score_thr) <= 1.0:
            raise ConfigError('CloudAdapter needs new_fraction in (0, 1] and score_thr in [0, 1]')
        self.lr, self.momentum, self.steps = float(lr), float(momentum), int(steps)
        self.batch_size, self.new_fraction = int(batch_size), float(new_fraction)
        self.capacity, self.score_thr = int(capacity), float(score_thr)
        self.entropy_weight, self.top_k, self.seed = float(entropy_weight), int(top_k), int(seed)
        self.adapt_teacher, self.skip_empty = bool(adapt_teacher), bool(skip_empty)
        self.num_skipped = 0
        self.model = self.distiller = None
        self._teacher_state = None

    def attach(self, edge_model, distiller) -> None:
        """A fresh copy of the edge model as it is now, an empty buffer, the teacher as loaded
        (a new stream)."""
        self.distiller = distiller
        teacher = distiller.teacher
        if self._teacher_state is None:  # only its statistics change (adapt_teacher)
            self._teacher_state = running_stats(teacher)
        else:
            load_running_stats(teacher, self._teacher_state)
        self.model = copy.deepcopy(edge_model)
        self.model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.params = norm_affine_parameters(self.model)
        for p in self.params:
            p.requires_grad_(True)
        self.optimizer = torch.optim.SGD(self.params, lr=self.lr, momentum=self.momentum)
        self.buffer = ReplayBuffer(self.capacity)
        self.pending: List[tuple] = []
        self.num_skipped = 0
        self.generator = torch.Generator().manual_seed(self.seed)

    def _batch(self, items):
        data = dict(inputs=[img for img, _ in items],
                    data_samples=[copy.deepcopy(s) for _, s in items])
        data = self.model.data_preprocessor(data, False)
        return data['inputs'], data['data_samples']

    @torch.no_grad()
    def receive(self, images: Sequence[Tensor], samples: Sequence[DetDataSample]
                ) -> List[DetDataSample]:
        """Uploaded images (uint8 CHW as the cloud decoded them): label once with the teacher
        and queue them. Returns the teacher's detections in original-image coordinates (to
        measure the pseudo labels' quality; the loop scores them)."""
        if not images:
            return []
        items = [(img, DetDataSample(metainfo=dict(s.metainfo))) for img, s in zip(images, samples)]
        inputs, fresh = self._batch(items)
        if self.adapt_teacher:
            self._teacher_norm_stats(inputs)
        teacher = self.distiller.predict(inputs, fresh, rescale=False)
        scored = []
        for (img, s), t in zip(items, teacher):
            r = DetDataSample(metainfo=s.metainfo)
            r.pred_instances = t.pred_instances.clone()
            sx, sy = s.metainfo.get('scale_factor', (1.0, 1.0))[:2]
            r.pred_instances.bboxes = r.pred_instances.bboxes / r.pred_instances.bboxes.new_tensor(
                [sx, sy, sx, sy])
            scored.append(r)
            inst = t.pred_instances
            keep = inst.scores >= self.score_thr
            s.gt_instances = inst[keep].clone()
            s.gt_instances.pop('scores')
            if self.skip_empty and not len(s.gt_instances):
                self.num_skipped += 1
                continue
            self.pending.append((img, s))
        return scored

    def _teacher_norm_stats(self, inputs: Tensor) -> None:
        teacher = self.distiller.teacher
        for m in _stat_layers(teacher).values():
            m.train()
        try:
            teacher.extract_feat(inputs)
        finally:
            teacher.eval()

    def loss(self, items) -> Tensor:
        """The copy's training loss on ``items`` (differentiable in the affine parameters)."""
        inputs, samples = self._batch(items)
        f, outs = exit_forward(self.model, inputs)
        loss = exit_pseudo_label_loss(self.model, outs, samples)
        if self.entropy_weight > 0:
            loss = loss + self.entropy_weight * exit_entropy(
                self.model, f, outs, self.top_k, detach=False).mean()
        return loss

    def adapt(self) -> Set:
        """One update round -> the image ids it trained on (empty: nothing to learn yet)."""
        new = self.pending
        self.pending = []
        if not new and not len(self.buffer):
            return set()
        used = set()
        n_new = max(1, math.ceil(self.batch_size * self.new_fraction))
        with torch.enable_grad(), norm_train_mode(self.model):
            for step in range(self.steps):
                fresh, new = new[:n_new], new[n_new:]
                items = fresh + self.buffer.draw(self.batch_size - len(fresh), self.generator)
                for item in fresh:
                    self.buffer.add(*item)
                if not items:
                    break
                used |= {s.metainfo.get('img_id') for _, s in items}
                loss = self.loss(items)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
        for item in new:  # more uploads than this round's steps take: into the buffer
            self.buffer.add(*item)
        return used
