"""A learned router (DynamicDet / ORIC style): predicts how much offloading an image would gain.

A small MLP on :func:`router_features` regresses the per-image gain of the cloud over the edge
exit (per-image AP difference on training images; ``tools/train_router.py``). It is trained after
the exits, on a frozen model, and remembers the exits it was trained for (a fingerprint of their
weights): a router of another model is refused instead of routing by noise.

The light edge runs it in numpy (:mod:`ecc_edge.exits`): its features come from the exit's raw
class maps and detections the runtime already decodes, and the sidecar carries the MLP's
float32 weights and the feature standardisation. ``pool_features`` is not exported: F_k is not
an output of the edge graph.
"""
import hashlib
from typing import Dict, Tuple

import torch
from mmdet.registry import MODELS
from torch import Tensor, nn

from ...errors import ConfigError
from ...utils.device import tensor_bytes
from .base import BaseRouter
from .features import COUNT_SCALE, COUNT_THRESHOLDS, router_features

__all__ = ['LearnedRouter', 'exit_fingerprint']


def exit_fingerprint(module: nn.Module) -> int:
    """A 63-bit hash of a module's parameter names, shapes and values."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(tensor_bytes(t))
    return int.from_bytes(h.digest()[:8], 'little') >> 1


@MODELS.register_module()
class LearnedRouter(BaseRouter):
    """MLP(router features) -> predicted offloading gain; offload when it exceeds the threshold.

    Args:
        feature_channels: channels of F_k (set by the split detector).
        top_k: anchors whose scores enter the features.
        hidden: width of the hidden layer.
        pool_features: also feed F_k average-pooled (C more inputs: needs more training images
            than the exit-output features alone, which is all a few hundred images support).
    """

    score_range: Tuple[float, float] = (float('-inf'), float('inf'))

    def __init__(self, feature_channels: int, top_k: int = 16, hidden: int = 16,
                 pool_features: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.top_k = int(top_k)
        self.pool_features = bool(pool_features)
        dim = 2 * self.top_k + 3 + (int(feature_channels) if self.pool_features else 0)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        # feature standardisation, fitted with the MLP; checkpointed with it
        self.register_buffer('feat_mean', torch.zeros(dim))
        self.register_buffer('feat_std', torch.ones(dim))
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
                              '(top_k, hidden, pool_features) or for another model:\n  '
                              + '\n  '.join(bad) + '\nUse the router config it was trained '
                              'with, or retrain it with tools/train_router.py')
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def features(self, exits) -> Tensor:
        return router_features(exits, self.top_k, self.pool_features)

    def forward(self, feats: Tensor) -> Tensor:
        return self.mlp((feats - self.feat_mean) / self.feat_std).squeeze(-1)

    def fit(self, feats: Tensor, gains: Tensor, fingerprint: int, max_epochs: int = 500,
            lr: float = 1e-2, weight_decay: float = 1e-2, holdout: float = 0.25,
            seed: int = 0) -> dict:
        """Regress ``gains`` (per-image offloading gain on held-out images) from ``feats``
        (full batch, AdamW, MSE); only this router's parameters change.

        The number of epochs is chosen on a ``holdout`` share of the pairs (lowest validation
        MSE: a few hundred images overfit an MLP quickly), then the router is refitted on all of
        them for that many epochs. Returns ``dict(epochs, holdout_mse, train_mse)``.
        """
        feats, gains = feats.float().detach(), gains.float().detach()
        n = feats.shape[0]
        if n != gains.shape[0] or n < 8:
            raise ValueError(f'need >= 8 (features, gain) pairs, got {n} and {gains.shape[0]}')
        if not torch.isfinite(feats).all() or not torch.isfinite(gains).all():
            raise ValueError('router training data has non-finite values')
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        n_val = max(2, int(round(holdout * n)))
        val, tr = perm[:n_val], perm[n_val:]
        curve = self._fit(feats[tr], gains[tr], max_epochs, lr, weight_decay, seed,
                          (feats[val], gains[val]))
        epochs = int(torch.tensor(curve).argmin()) + 1
        train_mse = self._fit(feats, gains, epochs, lr, weight_decay, seed)
        self.trained_for.fill_(int(fingerprint))
        return dict(epochs=epochs, holdout_mse=float(min(curve)), train_mse=train_mse)

    def _fit(self, feats, gains, epochs, lr, weight_decay, seed, val=None):
        torch.manual_seed(seed)
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                m.reset_parameters()
        self.feat_mean.copy_(feats.mean(0))
        self.feat_std.copy_(feats.std(0).clamp_min(1e-6))
        opt = torch.optim.AdamW(self.mlp.parameters(), lr=lr, weight_decay=weight_decay)
        curve = []
        self.train()
        for _ in range(epochs):
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(self(feats), gains)
            loss.backward()
            opt.step()
            if val is not None:
                with torch.no_grad():
                    curve.append(float(torch.nn.functional.mse_loss(self(val[0]), val[1])))
        self.eval()
        return curve if val is not None else float(loss.detach())

    def scores(self, exits) -> Tensor:
        return self(self.features(exits).to(self.mlp[0].weight.device)).detach()

    def light_edge_params(self) -> Dict:
        """The features' settings, their standardisation and the MLP's layers (float32 values,
        exact in JSON); ReLU between layers. ConfigError when the light edge cannot compute the
        features or the router is untrained."""
        if self.pool_features:
            raise ConfigError(
                'the light edge runtime cannot run LearnedRouter(pool_features=True): its '
                'features include F_k average-pooled, which the edge graph does not output. '
                'Train the router with pool_features=False, or run the edge with PyTorch')
        if int(self.trained_for) == 0:
            raise ConfigError('LearnedRouter is untrained (router.trained_for == 0): train it '
                              'with tools/train_router.py before export')

        def floats(t):
            return t.detach().float().cpu().tolist()

        layers = [dict(weight=floats(m.weight), bias=floats(m.bias))
                  for m in self.mlp if isinstance(m, nn.Linear)]
        return dict(top_k=self.top_k, count_thresholds=list(COUNT_THRESHOLDS),
                    count_scale=COUNT_SCALE, feat_mean=floats(self.feat_mean),
                    feat_std=floats(self.feat_std), layers=layers)

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
