"""A learned router (DynamicDet / ORIC style): predicts how much offloading an image would gain.

A small MLP on :func:`router_features` (and, optionally, :func:`gain_features` and an
out-of-distribution distance of F_k) scores the per-image gain of the cloud over the edge exit,
learned on held-out calibration images (``tools/train_router.py``). The objective is a
regression of the per-image AP difference, a pairwise ranking of it (only the order matters for a
threshold, and a ranking loss is not pulled around by the large per-image AP noise), or a
classification of "the cloud finds more objects here". It is trained after the exits, on a
frozen model, and remembers the exits it was trained for (a fingerprint of their weights): a
router of another model is refused instead of routing by noise.

The light edge runs it in numpy (:mod:`ecc_edge.exits`): its features come from the exit's raw
class maps and detections the runtime already decodes, and the sidecar carries the MLP's
float32 weights and the feature standardisation (and the gain features' bands).
``pool_features`` and ``ood_features`` are not exported: they read F_k, which is not an output of
the edge graph.
"""
import hashlib
from typing import Dict, Tuple

import torch
from mmdet.registry import MODELS
from torch import Tensor, nn

from ...errors import ConfigError
from ...utils.device import tensor_bytes
from .base import BaseRouter
from .features import (ANCHOR_THRESHOLDS, COUNT_SCALE, COUNT_THRESHOLDS, NUM_GAIN_FEATURES,
                       SCORE_BANDS, channel_statistics, gain_features, router_features)

__all__ = ['LearnedRouter', 'exit_fingerprint']


def exit_fingerprint(module: nn.Module) -> int:
    """A 63-bit hash of a module's parameter names, shapes and values."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(tensor_bytes(t))
    return int.from_bytes(h.digest()[:8], 'little') >> 1


#: what the MLP learns from the per-image targets (see the module docstring)
OBJECTIVES = ('regress', 'rank', 'classify')
#: inputs of the F_k distance: the raw channel statistics become these two distances
_OOD_INPUTS = 2


def _pairwise_rank_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Logistic loss on every pair whose targets differ, weighted by the difference: a pair
    whose gains differ more costs more when ranked the wrong way round."""
    d = target[:, None] - target[None, :]
    w = d.clamp_min(0)
    if not bool((w > 0).any()):
        return (pred * 0).sum()
    return (w * nn.functional.softplus(pred[None, :] - pred[:, None])).sum() / w.sum()


def _balanced_bce(pred: Tensor, target: Tensor) -> Tensor:
    """BCE on ``target > 0`` with the positives weighted to balance the classes."""
    y = (target > 0).float()
    pos = y.mean().clamp(1e-3, 1 - 1e-3)
    return nn.functional.binary_cross_entropy_with_logits(pred, y, pos_weight=(1 - pos) / pos)


_LOSSES = dict(regress=nn.functional.mse_loss, rank=_pairwise_rank_loss, classify=_balanced_bce)


@MODELS.register_module()
class LearnedRouter(BaseRouter):
    """MLP(router features) -> predicted offloading gain; offload when it exceeds the threshold.

    Args:
        feature_channels: channels of F_k (set by the split detector).
        top_k: anchors whose scores enter the features.
        hidden: width of the hidden layer.
        pool_features: also feed F_k average-pooled (C more inputs: needs more training images
            than the exit-output features alone, which is all a few hundred images support).
        gain_features: also feed :func:`gain_features` (the maps' expected object count against
            the detections reported, per score band).
        ood_features: also feed how far F_k's channel statistics lie from those of the
            training images (two distances; the statistics are fitted with the MLP).
        objective: ``'regress'`` (MSE on the target), ``'rank'`` (pairwise ranking of it) or
            ``'classify'`` (BCE on target > 0); the target is what ``fit`` is given.
    """

    score_range: Tuple[float, float] = (float('-inf'), float('inf'))

    def __init__(self, feature_channels: int, top_k: int = 16, hidden: int = 16,
                 pool_features: bool = False, gain_features: bool = False,
                 ood_features: bool = False, objective: str = 'regress', **kwargs):
        super().__init__(**kwargs)
        if objective not in OBJECTIVES:
            raise ConfigError(f'LearnedRouter.objective must be one of {", ".join(OBJECTIVES)}, '
                              f'got {objective!r}')
        self.top_k, self.objective = int(top_k), objective
        self.pool_features, self.gain_features = bool(pool_features), bool(gain_features)
        self.ood_features = bool(ood_features)
        c = int(feature_channels)
        dim = 2 * self.top_k + len(COUNT_THRESHOLDS) + (c if self.pool_features else 0) + (
            NUM_GAIN_FEATURES if self.gain_features else 0) + (
            _OOD_INPUTS if self.ood_features else 0)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        # feature standardisation, fitted with the MLP; checkpointed with it
        self.register_buffer('feat_mean', torch.zeros(dim))
        self.register_buffer('feat_std', torch.ones(dim))
        # F_k's channel statistics on the training images (the OOD distance's reference)
        n_ood = 2 * c if self.ood_features else 0
        self.register_buffer('ood_mean', torch.zeros(n_ood))
        self.register_buffer('ood_std', torch.ones(n_ood))
        # fingerprint of the exits it was trained on (0 = untrained); checkpointed with it
        self.register_buffer('trained_for', torch.zeros((), dtype=torch.int64))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # mmengine loads non-strictly and only warns on a shape mismatch: that would leave an
        # untrained MLP routing behind a matching fingerprint
        bad = [f'{prefix}{k}: checkpoint {tuple(state_dict[prefix + k].shape)} vs this router '
               f'{tuple(v.shape)}' for k, v in self.state_dict().items()
               if prefix + k in state_dict and state_dict[prefix + k].shape != v.shape]
        if bad:
            raise ConfigError('the checkpoint\'s LearnedRouter was built with other settings '
                              '(top_k, hidden, pool_features, gain_features, ood_features) or '
                              'for another model:\n  ' + '\n  '.join(bad) + '\nUse the router '
                              'config it was trained with, or retrain it with '
                              'tools/train_router.py')
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def features(self, exits) -> Tensor:
        """(N, D) raw features; with ``ood_features`` the last 2C are F_k's channel
        statistics, which :meth:`forward` turns into distances."""
        parts = [router_features(exits, self.top_k, self.pool_features)]
        if self.gain_features:
            parts.append(gain_features(exits).to(parts[0].device))
        if self.ood_features:
            parts.append(channel_statistics(exits.features).to(parts[0].device))
        return torch.cat(parts, -1)

    def _inputs(self, feats: Tensor) -> Tensor:
        """Raw features -> MLP inputs (before standardisation): the channel statistics become
        log1p of the mean squared z-score of the means and of the deviations."""
        if not self.ood_features:
            return feats
        n = self.ood_mean.numel()
        z = ((feats[:, -n:] - self.ood_mean) / self.ood_std).square()
        dist = torch.stack([z[:, :n // 2].mean(-1), z[:, n // 2:].mean(-1)], -1)
        return torch.cat([feats[:, :-n], torch.log1p(dist)], -1)

    def forward(self, feats: Tensor) -> Tensor:
        return self.mlp((self._inputs(feats) - self.feat_mean) / self.feat_std).squeeze(-1)

    def fit(self, feats: Tensor, targets: Tensor, fingerprint: int, max_epochs: int = 500,
            lr: float = 1e-2, weight_decay: float = 1e-2, holdout: float = 0.25,
            seed: int = 0) -> dict:
        """Fit the MLP to per-image ``targets`` (the offloading gain on held-out images: AP
        difference, or objects found by the cloud and not the exit) from ``feats`` (full batch,
        AdamW, the ``objective``'s loss); only this router's parameters and buffers change.

        The number of epochs is chosen on a ``holdout`` share of the images (lowest validation
        loss: an MLP overfits a few hundred images quickly), then the router is refitted on all
        of them for that many epochs. Returns ``dict(epochs, holdout_loss, train_loss,
        objective)``.
        """
        feats, targets = feats.float().detach(), targets.float().detach()
        n = feats.shape[0]
        if n != targets.shape[0] or n < 8:
            raise ValueError(f'need >= 8 (features, target) pairs, got {n} and '
                             f'{targets.shape[0]}')
        if not torch.isfinite(feats).all() or not torch.isfinite(targets).all():
            raise ValueError('router training data has non-finite values')
        if self.objective != 'regress' and bool((targets == targets[0]).all()):
            raise ValueError(f'every target is {float(targets[0])}: nothing to {self.objective}')
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        n_val = max(2, int(round(holdout * n)))
        val, tr = perm[:n_val], perm[n_val:]
        curve = self._fit(feats[tr], targets[tr], max_epochs, lr, weight_decay, seed,
                          (feats[val], targets[val]))
        epochs = int(torch.tensor(curve).argmin()) + 1
        train_loss = self._fit(feats, targets, epochs, lr, weight_decay, seed)
        self.trained_for.fill_(int(fingerprint))
        return dict(epochs=epochs, holdout_loss=float(min(curve)), train_loss=train_loss,
                    objective=self.objective)

    def _fit(self, feats, targets, epochs, lr, weight_decay, seed, val=None):
        torch.manual_seed(seed)
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                m.reset_parameters()
        if self.ood_features:
            n = self.ood_mean.numel()
            self.ood_mean.copy_(feats[:, -n:].mean(0))
            self.ood_std.copy_(feats[:, -n:].std(0).clamp_min(1e-6))
        x = self._inputs(feats)
        self.feat_mean.copy_(x.mean(0))
        self.feat_std.copy_(x.std(0).clamp_min(1e-6))
        loss_fn = _LOSSES[self.objective]
        opt = torch.optim.AdamW(self.mlp.parameters(), lr=lr, weight_decay=weight_decay)
        curve = []
        self.train()
        for _ in range(epochs):
            opt.zero_grad()
            loss = loss_fn(self(feats), targets)
            loss.backward()
            opt.step()
            if val is not None:
                with torch.no_grad():
                    curve.append(float(loss_fn(self(val[0]), val[1])))
        self.eval()
        return curve if val is not None else float(loss.detach())

    def scores(self, exits) -> Tensor:
        return self(self.features(exits).to(self.mlp[0].weight.device)).detach()

    def light_edge_params(self) -> Dict:
        """The features' settings, their standardisation and the MLP's layers (float32 values,
        exact in JSON); ReLU between layers. ConfigError when the light edge cannot compute the
        features or the router is untrained."""
        for flag, what in (('pool_features', 'F_k average-pooled'),
                           ('ood_features', 'the channel statistics of F_k')):
            if getattr(self, flag):
                raise ConfigError(
                    f'the light edge runtime cannot run LearnedRouter({flag}=True): its '
                    f'features include {what}, which the edge graph does not output. Train '
                    f'the router with {flag}=False, or run the edge with PyTorch')
        if int(self.trained_for) == 0:
            raise ConfigError('LearnedRouter is untrained (router.trained_for == 0): train it '
                              'with tools/train_router.py before export')

        def floats(t):
            return t.detach().float().cpu().tolist()

        layers = [dict(weight=floats(m.weight), bias=floats(m.bias))
                  for m in self.mlp if isinstance(m, nn.Linear)]
        gain = dict(anchor_thresholds=list(ANCHOR_THRESHOLDS),
                    score_bands=list(SCORE_BANDS)) if self.gain_features else None
        return dict(top_k=self.top_k, count_thresholds=list(COUNT_THRESHOLDS),
                    count_scale=COUNT_SCALE, feat_mean=floats(self.feat_mean),
                    feat_std=floats(self.feat_std), layers=layers, gain=gain)

    def check_exits(self, fingerprint: int) -> None:
        """Refuse to route for exits other than those it was trained for."""
        trained = int(self.trained_for)
        if trained == 0:
            raise ConfigError('LearnedRouter is untrained (router.trained_for == 0): train it '
                              'with tools/train_router.py on this model, or choose another '
                              'router type')
        if trained != fingerprint:
            raise ConfigError(
                'LearnedRouter was trained for other edge exits (fingerprint '
                f'{trained:#x}, this model {fingerprint:#x}): the router checkpoint belongs to '
                'another model or exits that were retrained since. Retrain it with '
                'tools/train_router.py for this checkpoint')
