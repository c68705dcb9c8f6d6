"""The edge tiers of a dynamic split detector: exits, extension exit, router, score calibration.

An image can finish on the edge: the edge exit (an mmdet dense head on F_k) detects, the router
decides from its output whether the image still goes to the cloud, and MEANet's extension exit
re-detects the hard classes of kept images whose top detection is of one. With
``calibrate_scores`` each tier's scores are mapped to P(true positive) (maps fitted on a
calibration split) so the edge's and the cloud's detections rank correctly in one list.

The exit and router modules are children of the detector (``edge_exit.*``, ``router.*``,
``extension_exit.*`` in its state_dict), built and checked by the functions below;
:class:`EdgeTiers` is a plain object the detector holds (no state_dict keys) that runs them. It
reads the modules and settings (``hard_classes``, ``calibrate_scores``, ``score_maps``,
``train_exits_only``) from the detector at each call, so a router swapped in
(``model.router = ...``) is the one that runs.

The detector's config keys:

* ``edge_exit``: an :class:`~ecc_mmdet.models.exits.EdgeExit` config (edge neck + mmdet dense
  head on F_k): images the router keeps on the edge finish with its detections.
* ``router``: ``RandomRouter``, ``ScoreBandRouter``, ``EntropyRouter`` or ``LearnedRouter``, with
  ``threshold`` or ``target_offload_ratio``. Without a router (or an exit) every image goes to the
  cloud.
* ``extension_exit`` + ``hard_classes``: an ``EdgeExit`` with more compute trained only on the
  hard classes (label indices: those the main exit does worst on, from its per-class AP on a
  validation split). Kept images whose main-exit top detection is of a hard class run it; its
  hard-class detections replace the main exit's (tier ``edge_extension``).
* ``train_exits_only``: True / 'main' trains the main exit alone, 'extension' the extension exit
  alone (everything else frozen, in eval mode), from the labels and, with
  ``edge_exit.distill_weight > 0``, from the cloud's detections.
* ``calibrate_scores``: map each tier's scores to P(true positive) before merging (maps fitted on
  the calibration split by ``RouterCalibrationHook`` / the benchmark, in ``model.score_maps``).
"""
from typing import List, Optional, Sequence

import torch
from mmdet.registry import MODELS
from mmdet.structures import DetDataSample
from torch import Tensor

from ...errors import ConfigError
from ...utils.device import to_numpy
from ..exits import ExitOutput
from ..routers import LearnedRouter, exit_fingerprint

__all__ = ['EdgeTiers', 'build_exit', 'build_router', 'check_hard_classes', 'exit_training_mode']


def build_exit(cfg: Optional[dict], channels: int, key: str = 'edge_exit'):
    """An ``EdgeExit`` on F_k (``channels`` channels), checked to run on it; None without one."""
    if cfg is None:
        return None
    if not isinstance(cfg, dict) or 'type' not in cfg:
        raise ConfigError(f"{key} must be dict(type='EdgeExit', neck=..., head=...)")
    cfg = dict(cfg)
    cfg.setdefault('in_channels', channels)
    module = MODELS.build(cfg)
    module.check_runs_on(channels)
    return module


def build_router(cfg: Optional[dict], channels: int):
    """A router from config (a learned one reads F_k's ``channels``); None without one."""
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


def check_hard_classes(hard_classes, edge_exit, extension_exit) -> Optional[List[int]]:
    """The extension exit's hard classes, sorted; they come with an extension exit only."""
    if (extension_exit is None) != (hard_classes is None):
        raise ConfigError('extension_exit and hard_classes go together: the extension exit '
                          'serves the hard classes (label indices), e.g. hard_classes=[2, 3]')
    if extension_exit is not None and edge_exit is None:
        raise ConfigError('extension_exit needs the main edge_exit it extends')
    if hard_classes is None:
        return None
    n_cls = extension_exit.num_classes
    hard = sorted({int(c) for c in hard_classes})
    if not hard or hard[0] < 0 or hard[-1] >= n_cls:
        raise ConfigError(f'hard_classes must be label indices in [0, {n_cls}), got '
                          f'{list(hard_classes)}')
    return hard


def exit_training_mode(train_exits_only, edge_exit, extension_exit) -> Optional[str]:
    """``train_exits_only`` as 'main', 'extension' or None, checked against the exits built."""
    mode = {True: 'main', False: None, 'main': 'main', 'extension': 'extension'}.get(
        train_exits_only, '?')
    if mode == '?':
        raise ConfigError(f"train_exits_only must be True/'main', 'extension' or False, got "
                          f'{train_exits_only!r}')
    if mode is not None and {'main': edge_exit, 'extension': extension_exit}[mode] is None:
        raise ConfigError(f"train_exits_only={train_exits_only!r} needs "
                          f"{'an edge_exit' if mode == 'main' else 'an extension_exit'}"
                          "=dict(type='EdgeExit', ...) to train")
    return mode


class EdgeTiers:
    """Runs the exits and the router of ``model`` (a split detector) and calibrates scores."""

    def __init__(self, model):
        self.model = model
        self._exit_fingerprint = None  # of the exits the learned router was last checked for

    # ---- deployment steps (ordered by ecc_mmdet.deployment.pipeline) ----
    def run_exits(self, f: Tensor, batch_data_samples, rescale: bool = True) -> ExitOutput:
        """Edge: the exit's detections and raw scores for the router."""
        exit_ = self.model.edge_exit
        results, cls_scores = exit_.predict(f, batch_data_samples, rescale)
        return ExitOutput(results=results, cls_scores=cls_scores, features=f,
                          samples=list(batch_data_samples), num_classes=exit_.num_classes,
                          tiers=['edge_main'] * len(results))

    def needs_extension(self, exits: ExitOutput, kept: Sequence[int]) -> List[int]:
        """Of the ``kept`` images, those whose main-exit top detection is of a hard class."""
        out = []
        for i in kept:
            res = exits.results[i]
            if len(res) and int(res.labels[res.scores.argmax()]) in self.model.hard_classes:
                out.append(i)
        return out

    def run_extension(self, f: Tensor, batch_data_samples, main_results, rescale: bool = True):
        """Edge: the extension exit's hard-class detections replace the main exit's."""
        ext, _ = self.model.extension_exit.predict(f, batch_data_samples, rescale)
        merged = []
        for m, e in zip(main_results, ext):
            hard = torch.as_tensor(self.model.hard_classes, device=m.labels.device)
            merged.append(type(m).cat([m[~torch.isin(m.labels, hard)],
                                       e[torch.isin(e.labels, hard)]]))
        return merged

    def route(self, exits: ExitOutput) -> Tensor:
        """Edge: (N,) bool, True = offload."""
        self.check_router()
        return self.model.router.decide(exits)

    def check_router(self) -> None:
        """Refuse a learned router fitted for other exits (checked once per exit weights)."""
        if isinstance(self.model.router, LearnedRouter):
            if self._exit_fingerprint is None:
                self._exit_fingerprint = exit_fingerprint(self.model.edge_exit)
            self.model.router.check_exits(self._exit_fingerprint)

    def forget_exit(self) -> None:
        """New exit weights (training, a checkpoint load): check the learned router again."""
        self._exit_fingerprint = None

    # ---- score calibration ----
    def calibrating(self) -> bool:
        m = self.model
        return bool(m.calibrate_scores) and m.edge_exit is not None and m.router is not None

    def calibrated(self, instances, tier: str):
        """``instances`` with the tier's scores mapped to P(true positive), when configured."""
        if not self.calibrating():
            return instances
        maps = self.model.score_maps
        if maps is None:
            raise RuntimeError(
                'calibrate_scores=True but no score maps were fitted: they come from the '
                'calibration split (RouterCalibrationHook in the Runner, or '
                'ecc_mmdet.deployment.calibration.fit_score_maps)')
        out = instances.clone()
        s = instances.scores
        out.scores = torch.as_tensor(maps[tier](to_numpy(s)), dtype=s.dtype, device=s.device)
        return out

    def finish_on_edge(self, sample: DetDataSample, instances) -> DetDataSample:
        """The sample of an image the edge keeps, with its (calibrated) detections."""
        return self.model.add_pred_to_datasample([sample],
                                                 [self.calibrated(instances, 'edge')])[0]

    def calibrate_cloud(self, results: List[DetDataSample]) -> List[DetDataSample]:
        if self.calibrating():
            for r in results:
                r.pred_instances = self.calibrated(r.pred_instances, 'cloud')
        return results

    # ---- training ----
    def trained_exit(self) -> Optional[str]:
        """The child that exit-only training trains (``edge_exit`` / ``extension_exit``)."""
        return {'main': 'edge_exit', 'extension': 'extension_exit'}.get(
            self.model.train_exits_only)

    def after_train_mode(self, mode: bool) -> None:
        """After ``model.train(mode)``: the exits may change, and in exit-only training
        everything but the trained exit runs as deployed (BN statistics, the codec's rounding)."""
        self.forget_exit()
        keep = self.trained_exit()
        if mode and keep:
            for name, child in self.model.named_children():
                if name != keep:
                    child.eval()

    def freeze_all_but_trained_exit(self) -> None:
        keep = self.trained_exit()
        if keep is not None:
            for name, p in self.model.named_parameters():
                if not name.startswith(keep + '.'):
                    p.requires_grad_(False)

    def hard_only(self, samples):
        """Samples whose ground truth keeps only the hard classes (the extension's task)."""
        out = []
        hard = torch.as_tensor(self.model.hard_classes)
        for s in samples:
            t = DetDataSample(metainfo=s.metainfo)
            gt = s.gt_instances
            t.gt_instances = gt[torch.isin(gt.labels, hard.to(gt.labels.device))]
            out.append(t)
        return out

    def distils(self) -> bool:
        """Whether an exit learns from a stronger model's detections (``distill_weight``)."""
        m = self.model
        return any(e is not None and e.distill_weight > 0
                   for e in (m.edge_exit, m.extension_exit))

    def joint_losses(self, f: Tensor, batch_data_samples, teacher_results=None) -> dict:
        """Joint training: the exits' losses on F_k (detached by the caller: the exits read F_k,
        never change it), with pseudo labels from ``teacher_results`` (per-image InstanceData
        of a stronger model, e.g. the distillation teacher) when given."""
        m, losses = self.model, {}
        for exit_, prefix, hard in ((m.edge_exit, '', False), (m.extension_exit, 'ext_', True)):
            if exit_ is None:
                continue
            samples = self.hard_only(batch_data_samples) if hard else batch_data_samples
            pseudo = None
            if teacher_results is not None:
                pseudo = exit_.pseudo_labels(teacher_results, batch_data_samples)
                pseudo = self.hard_only(pseudo) if hard else pseudo
            losses.update({prefix + k: v for k, v in exit_.loss(f, samples, pseudo).items()})
        return losses

    def exit_only_losses(self, batch_inputs: Tensor, batch_data_samples) -> dict:
        """Exit-only training: F_k and the cloud's detections from the frozen model."""
        m = self.model
        extension = m.train_exits_only == 'extension'
        exit_ = m.extension_exit if extension else m.edge_exit
        if extension:
            batch_data_samples = self.hard_only(batch_data_samples)
        with torch.no_grad():
            f = m.splitter.forward_edge(batch_inputs)
            pseudo = None
            if exit_.distill_weight > 0:
                fresh = [DetDataSample(metainfo=s.metainfo) for s in batch_data_samples]
                f_hat, _ = m.compressor(f)  # eval mode: exactly what decoding gives
                cloud = m.predict_from_features(m.cloud_features(f_hat), fresh, rescale=False)
                pseudo = exit_.pseudo_labels([c.pred_instances for c in cloud],
                                             batch_data_samples)
                if extension:
                    pseudo = self.hard_only(pseudo)
        return exit_.loss(f, batch_data_samples, pseudo)
