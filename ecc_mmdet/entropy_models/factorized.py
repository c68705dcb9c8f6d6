"""Factorized (per-channel, non-parametric) entropy model of Ballé et al. 2018.

The design follows CompressAI's ``EntropyBottleneck`` (which cannot be imported here): each
channel has its own small monotone MLP (``filters=(3, 3, 3)``) giving a cumulative density,
whose differences over unit bins are the likelihoods of the quantised latent; ``quantiles``
(the median and the ``tail_mass`` tails) are found by bisection in :meth:`update`.

Differences from CompressAI, and why:

* The coding tables are integer *frequencies* (pmf, total ``2**table_precision``, every
  in-support symbol >= 1, one overflow bin) computed in float64 on the CPU, coded with
  ``constriction`` by :mod:`ecc_edge.codecs.range_coding`; out-of-support values are escaped
  and coded exactly, so compression is lossless for any finite latent.
* The tables (``_pmf_table``, ``_pmf_length``, ``_offset``) are state-dict entries but not
  buffers: their sizes follow the learned tails, and whatever copies buffers in place between
  two copies of a model (mmengine's ``EMAHook`` and its averaged model) would meet tables of
  another size. Loading takes the checkpoint's sizes -- CompressAI's classic "size mismatch for
  _quantized_cdf" trap. A model writes them once built; a checkpoint without tables also loads
  (they are derived data) and is recomputed on ``eval()``.
* A fingerprint of the parameters is stored with the tables. ``eval()`` recomputes stale
  tables automatically; ``compress``/``decompress`` refuse missing or stale tables rather than
  silently coding with tables the other side may not have.
* The tail-mass of each channel is taken at that channel's own last support symbol (CompressAI
  reads the padded last column).

Tables are shipped in the checkpoint: edge and cloud must use bit-identical tables, and float
maths may differ across platforms, so the cloud should load them rather than recompute them.
"""
from __future__ import annotations

import hashlib
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ecc_edge.codecs.range_coding import CodingTables, decode_with_cdf_tables, encode_with_cdf_tables
from ..utils.derived import DerivedCache
from ..utils.device import tensor_bytes, to_numpy

__all__ = ['FactorizedEntropyModel']


class _LowerBound(torch.autograd.Function):
    """max(x, bound) that still lets gradients through when they would raise x.

    Without this, likelihoods stuck at the bound get zero gradient and can never recover.
    """

    @staticmethod
    def forward(ctx, x: Tensor, bound: float) -> Tensor:
        ctx.save_for_backward(x)
        ctx.bound = bound
        return torch.clamp(x, min=bound)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (x, ) = ctx.saved_tensors
        passthrough = (x >= ctx.bound) | (grad < 0)
        return grad * passthrough.to(grad.dtype), None


def quantize_pmf(probs: np.ndarray, precision: int) -> np.ndarray:
    """float64 probabilities -> int64 frequencies >= 1 summing exactly to 2**precision.

    Each entry gets 1 plus its share of the remaining mass (floor), and the leftover units go to
    the largest remainders (stable order). Deterministic for identical float64 input.
    """
    total = 1 << precision
    n = probs.size
    p = np.where(np.isfinite(probs) & (probs > 0), probs, 0.0)
    p = p / p.sum() if p.sum() > 0 else np.full(n, 1.0 / n)
    share = p * (total - n)
    freq = np.floor(share).astype(np.int64) + 1
    deficit = int(total - freq.sum())
    if deficit > 0:
        order = np.argsort(-(share - np.floor(share)), kind='stable')
        freq[order[:deficit]] += 1
    return freq


class FactorizedEntropyModel(nn.Module):
    """Per-channel learned density for a latent ``y`` of shape (N, C, ...).

    Args:
        channels: number of latent channels C.
        filters: hidden widths of each channel's cumulative-density MLP.
        init_scale: initial scale of the density (and of the tail quantiles).
        tail_mass: probability mass left outside the coding tables.
        likelihood_bound: lower bound on likelihoods (keeps log2 finite).
        quantization: training-time quantisation proxy. 'noise': y + U(-0.5, 0.5) everywhere.
            'ste': the returned y_hat is round(y - median) + median with a straight-through
            gradient, while the likelihoods use the noisy y (the "mixed" scheme of Minnen &
            Singh 2020: the decoder sees true quantisation, the rate stays smooth).
        table_precision: bits of the integer coding tables (total frequency 2**precision).
        max_support: most in-support symbols per channel (wider tails are escape-coded).
    """

    #: the integer coding tables (name -> dtype). Derived from the parameters by ``update()``,
    #: their sizes depend on the learned tails, so a checkpoint's may differ from a fresh
    #: model's. Kept outside the buffers (see the module docstring); owners that check
    #: checkpoint shapes skip these state-dict names.
    _TABLE_DTYPES = dict(_offset=torch.int32, _pmf_length=torch.int32, _pmf_table=torch.int32,
                         _tables_fingerprint=torch.int64)
    TABLE_KEYS = tuple(_TABLE_DTYPES)

    def __init__(self, channels: int, filters: Sequence[int] = (3, 3, 3),
                 init_scale: float = 10.0, tail_mass: float = 1e-9,
                 likelihood_bound: float = 1e-9, quantization: str = 'noise',
                 table_precision: int = 16, max_support: int = 4096):
        super().__init__()
        if quantization not in ('noise', 'ste'):
            raise ValueError(f"quantization must be 'noise' or 'ste', got {quantization!r}")
        if not 8 <= table_precision <= 24:
            raise ValueError('table_precision must be in 8..24 (constriction uses 24 bits)')
        if not 1 <= max_support < (1 << table_precision) // 2:
            raise ValueError('max_support must be in [1, 2**table_precision / 2)')
        self.channels = int(channels)
        self.filters = tuple(int(f) for f in filters)
        self.init_scale = float(init_scale)
        self.tail_mass = float(tail_mass)
        self.likelihood_bound = float(likelihood_bound)
        self.quantization = quantization
        self.table_precision = int(table_precision)
        self.max_support = int(max_support)

        dims = (1, ) + self.filters + (1, )
        scale = self.init_scale**(1 / (len(self.filters) + 1))
        self.matrices = nn.ParameterList()
        self.biases = nn.ParameterList()
        self.factors = nn.ParameterList()
        for i in range(len(self.filters) + 1):
            init = float(np.log(np.expm1(1 / scale / dims[i + 1])))
            self.matrices.append(nn.Parameter(torch.full((channels, dims[i + 1], dims[i]), init)))
            bias = torch.empty(channels, dims[i + 1], 1).uniform_(-0.5, 0.5)
            self.biases.append(nn.Parameter(bias))
            if i < len(self.filters):
                self.factors.append(nn.Parameter(torch.zeros(channels, dims[i + 1], 1)))
        # (C, 1, 3): the tail_mass/2, median and 1 - tail_mass/2 points of each channel's
        # density. Derived data, found by bisection in update() -- not learned with an auxiliary
        # loss as in CompressAI, whose large gradients would swamp the detector's gradient
        # clipping and need a second optimiser.
        init = torch.tensor([-self.init_scale, 0.0, self.init_scale])
        self.register_buffer('quantiles', init.repeat(channels, 1, 1))
        target = float(np.log(2 / self.tail_mass - 1))
        self.register_buffer('target', torch.tensor([-target, 0.0, target]), persistent=False)
        self.reset_tables()

    # ------------------------------------------------------------------ density
    def _logits_cumulative(self, x: Tensor, stop_gradient: bool,
                           params: Optional[List[Tensor]] = None) -> Tensor:
        """Cumulative logits of x with shape (C, 1, M) -> (C, 1, M)."""
        if params is None:
            params = [*self.matrices, *self.biases, *self.factors]
            if stop_gradient:
                params = [p.detach() for p in params]
        k = len(self.filters) + 1
        matrices, biases, factors = params[:k], params[k:2 * k], params[2 * k:]
        logits = x
        for i in range(k):
            logits = torch.matmul(F.softplus(matrices[i]), logits) + biases[i]
            if i < len(factors):
                logits = logits + torch.tanh(factors[i]) * torch.tanh(logits)
        return logits

    def _likelihood(self, x: Tensor, params: Optional[List[Tensor]] = None
                    ) -> Tuple[Tensor, Tensor, Tensor]:
        lower = self._logits_cumulative(x - 0.5, False, params)
        upper = self._logits_cumulative(x + 0.5, False, params)
        # Evaluate in whichever tail is numerically safer (difference of small sigmoids).
        sign = -torch.sign(lower + upper).detach()
        return (torch.abs(torch.sigmoid(sign * upper) - torch.sigmoid(sign * lower)), lower, upper)

    def _medians(self) -> Tensor:
        return self.quantiles[:, 0, 1].detach()

    def dequantize_eval(self, y: Tensor) -> Tensor:
        """Eval-mode ``y_hat`` alone (what :meth:`decompress` returns for :meth:`compress`'s
        bodies), without the likelihoods ``forward`` computes."""
        medians = self._medians().to(y.dtype).view(1, -1, *([1] * (y.dim() - 2)))
        return torch.round(y - medians) + medians

    def forward(self, y: Tensor, training: Optional[bool] = None) -> Tuple[Tensor, Tensor]:
        """-> (y_hat, likelihoods), both shaped like y (N, C, ...)."""
        if training is None:
            training = self.training
        if y.dim() < 2 or y.shape[1] != self.channels:
            raise ValueError(f'expected (N, {self.channels}, ...) latent, got {tuple(y.shape)}')
        medians = self._medians().to(y.dtype).view(1, -1, *([1] * (y.dim() - 2)))
        if training:
            noisy = y + torch.empty_like(y).uniform_(-0.5, 0.5)
            if self.quantization == 'noise':
                y_hat = noisy
            else:
                y_hat = y + (torch.round(y - medians) + medians - y).detach()
        else:
            y_hat = noisy = torch.round(y - medians) + medians
        # (N, C, ...) -> (C, 1, N*...) so each channel's MLP sees all its values at once.
        perm = (1, 0, *range(2, y.dim()))
        values = noisy.permute(*perm).reshape(self.channels, 1, -1)
        # The density is evaluated in >= float32 (under AMP or a half-precision model too).
        dtype = torch.promote_types(self.quantiles.dtype, torch.float32)
        params = None if self.quantiles.dtype == dtype else [
            p.to(dtype) for p in [*self.matrices, *self.biases, *self.factors]]
        with torch.autocast(device_type=y.device.type, enabled=False):
            lik, _, _ = self._likelihood(values.to(dtype), params)
            if self.likelihood_bound > 0:
                lik = _LowerBound.apply(lik, self.likelihood_bound)
        shape_cf = noisy.permute(*perm).shape
        inv = (1, 0, *range(2, y.dim()))
        likelihoods = lik.reshape(shape_cf).permute(*inv).contiguous()
        return y_hat, likelihoods

    @torch.no_grad()
    def fit_quantiles(self, params: Optional[List[Tensor]] = None, iters: int = 80) -> Tensor:
        """Bisection for the points where each channel's cumulative logits hit ``target``.

        The cumulative density is monotonic in x, so 80 float64 halvings of a bracket that is
        first widened until it contains the target give the quantiles to ~1e-12.
        """
        if params is None:
            params = [p.detach().cpu().double() for p in
                      [*self.matrices, *self.biases, *self.factors]]
        target = self.target.detach().cpu().double().view(1, 1, 3)
        span = torch.full((self.channels, 1, 3), max(self.init_scale, 1.0), dtype=torch.float64)
        for _ in range(60):  # widen the bracket [-span, span] until it contains the target
            lo_ok = self._logits_cumulative(-span, True, params) <= target
            hi_ok = self._logits_cumulative(span, True, params) >= target
            if bool((lo_ok & hi_ok).all()):
                break
            span = torch.where(lo_ok & hi_ok, span, span * 2)
        lo, hi = -span, span.clone()
        for _ in range(iters):
            mid = (lo + hi) / 2
            below = self._logits_cumulative(mid, True, params) < target
            lo = torch.where(below, mid, lo)
            hi = torch.where(below, hi, mid)
        return (lo + hi) / 2

    @staticmethod
    def bits(likelihoods: Tensor) -> Tensor:
        """Estimated bits per image: -sum(log2 p) over all but the batch dim -> (N,)."""
        return -torch.log2(likelihoods).reshape(likelihoods.shape[0], -1).sum(dim=1)

    # ------------------------------------------------------------------- tables
    def _fingerprint(self) -> int:
        """Hash of the parameters the tables derive from, rehashed only when their values
        change (:class:`DerivedCache` compares values: mmengine's EMA swaps weights in place
        through ``.data``, which version counters miss)."""
        cache = self.__dict__.setdefault('_fingerprint_cache', DerivedCache())
        return cache.get([*self.matrices, *self.biases, *self.factors], self._hash_params)

    def _hash_params(self) -> int:
        h = hashlib.blake2b(digest_size=8)
        for p in [*self.matrices, *self.biases, *self.factors]:
            h.update(str((tuple(p.shape), str(p.dtype))).encode())
            h.update(tensor_bytes(p))
        h.update(repr((self.table_precision, self.max_support)).encode())
        return int.from_bytes(h.digest(), 'little', signed=True)

    def tables_ready(self) -> bool:
        """True when coding tables exist and match the current parameters."""
        return (self._pmf_table.numel() > 0 and self._tables_fingerprint.numel() == 1
                and int(self._tables_fingerprint.item()) == self._fingerprint())

    @torch.no_grad()
    def update(self, force: bool = False) -> bool:
        """(Re)compute the integer coding tables; returns False if they were already current."""
        if not force and self.tables_ready():
            return False
        params = [p.detach().cpu().double() for p in
                  [*self.matrices, *self.biases, *self.factors]]
        fitted = self.fit_quantiles(params)
        self.quantiles.copy_(fitted.to(self.quantiles))
        q = fitted[:, 0, :]
        medians = q[:, 1]
        minima = torch.clamp(torch.ceil(medians - q[:, 0]), min=0).long()
        maxima = torch.clamp(torch.ceil(q[:, 2] - medians), min=0).long()
        half = self.max_support // 2
        minima = torch.clamp(minima, max=half)
        maxima = torch.minimum(maxima, self.max_support - 1 - minima)
        lengths = minima + maxima + 1  # in-support symbols per channel
        max_len = int(lengths.max()) if lengths.numel() else 1
        samples = (torch.arange(max_len, dtype=torch.float64)[None, :] +
                   (medians - minima)[:, None]).unsqueeze(1)  # (C, 1, L)
        pmf, lower, upper = self._likelihood(samples, params)
        # Mass outside each channel's own support -> its overflow bin.
        tail = (torch.sigmoid(lower[:, 0, 0]) +
                torch.sigmoid(-upper[:, 0].gather(1, (lengths - 1)[:, None])[:, 0]))
        tail, pmf = to_numpy(tail), to_numpy(pmf[:, 0])
        table = np.zeros((self.channels, max_len + 1), dtype=np.int32)
        for c in range(self.channels):
            n = int(lengths[c])
            table[c, :n + 1] = quantize_pmf(np.append(pmf[c, :n], tail[c]), self.table_precision)
        device = self.quantiles.device
        self._offset = (-minima).to(torch.int32).to(device)
        self._pmf_length = lengths.to(torch.int32).to(device)
        self._pmf_table = torch.from_numpy(table).to(device)
        self._tables_fingerprint = torch.tensor([self._fingerprint()], dtype=torch.int64,
                                                device=device)
        return True

    def train(self, mode: bool = True):
        """Entering eval mode refreshes the coding tables if the parameters changed."""
        super().train(mode)
        if not mode and not self.tables_ready():
            self.update(force=True)
        return self

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self._pmf_table.numel():  # none built: nothing to ship
            for name in self.TABLE_KEYS:
                t = getattr(self, name)
                destination[prefix + name] = t if keep_vars else t.detach()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        keys = [prefix + name for name in self.TABLE_KEYS]
        unexpected_keys[:] = [k for k in unexpected_keys if k not in keys]  # not buffers
        if not all(k in state_dict for k in keys):
            # Tables are derived data: a checkpoint of this model without (all of) them loads
            # with no tables, and eval()/update() recomputes them. (A partial state dict without
            # this model leaves it as it is.)
            if any(k.startswith(prefix) for k in state_dict):
                self.reset_tables()
            return
        # The checkpoint's sizes (they depend on the learned tails), instead of failing with
        # "size mismatch" as CompressAI does.
        device = self.quantiles.device
        for name, key in zip(self.TABLE_KEYS, keys):
            value = state_dict[key].detach().to(device=device, dtype=self._TABLE_DTYPES[name])
            setattr(self, name, value.clone())

    def _apply(self, fn, *args, **kwargs):
        """Moves (``to``, ``cuda``, ``half``, ...) take the tables along, as they would buffers."""
        super()._apply(fn, *args, **kwargs)
        for name in self.TABLE_KEYS:
            setattr(self, name, fn(getattr(self, name)))
        return self

    def reset_tables(self) -> None:
        """Drop the coding tables (derived data: ``eval()``/``update()`` rebuilds them)."""
        device = self.quantiles.device
        for name, dtype in self._TABLE_DTYPES.items():
            shape = (0, 0) if name == '_pmf_table' else (0, )
            setattr(self, name, torch.zeros(shape, dtype=dtype, device=device))

    def __getstate__(self):
        """Copies and pickles leave out the cached range-coder models (native objects that
        cannot be pickled); they are rebuilt from the table buffers on first use."""
        state = dict(self.__dict__)
        state.pop('_coding_tables', None)
        return state

    # --------------------------------------------------------------- coding
    def _tables_numpy(self):
        if self._pmf_table.numel() == 0:
            raise RuntimeError('FactorizedEntropyModel has no coding tables: call update() or '
                               'eval() (or load a checkpoint saved after update()) first')
        if not self.tables_ready():
            raise RuntimeError('FactorizedEntropyModel coding tables are stale (parameters '
                               'changed since update()): call update(force=True) or eval()')
        fp = int(self._tables_fingerprint.item())
        cached = self.__dict__.get('_coding_tables')
        if cached is None or cached[0] != fp:
            tables = CodingTables(to_numpy(self._pmf_table), to_numpy(self._offset),
                                  to_numpy(self._pmf_length, np.int64) + 1)
            self.__dict__['_coding_tables'] = cached = (fp, tables)
        return cached[1]

    @torch.no_grad()
    def compress(self, y: Tensor) -> List[bytes]:
        """(N, C, H, W) latent -> one range-coded body per image (symbols round(y - median))."""
        tables = self._tables_numpy()
        if y.dim() != 4 or y.shape[1] != self.channels:
            raise ValueError(f'expected (N, {self.channels}, H, W) latent, got {tuple(y.shape)}')
        medians = self._medians().to(y.dtype).view(1, -1, 1, 1)
        sym = torch.round(y - medians)
        if not torch.isfinite(sym).all() or sym.numel() and sym.double().abs().max() >= 2**31:
            raise ValueError('latent has non-finite values or values beyond the int32 range')
        sym = to_numpy(sym.reshape(y.shape[0], self.channels, -1).to(torch.int32))
        return [encode_with_cdf_tables(s, tables, None) for s in sym]

    @torch.no_grad()
    def decompress(self, bodies: Sequence[bytes], shape: Sequence[int],
                   dtype: Optional[torch.dtype] = None) -> Tensor:
        """Bodies from :meth:`compress` + spatial (H, W) -> y_hat (N, C, H, W).

        Equal bit for bit to ``forward``'s eval-mode y_hat for a latent of ``dtype`` (default:
        the parameters' dtype). Raises CorruptedBitstreamError on undecodable bodies.
        """
        tables = self._tables_numpy()
        h, w = (int(v) for v in shape)
        out = np.zeros((len(bodies), self.channels, h * w), dtype=np.int32)
        for i, body in enumerate(bodies):
            out[i] = decode_with_cdf_tables(body, h * w, tables, None)
        medians = self._medians()
        medians = medians.to(dtype or medians.dtype).view(1, -1, 1, 1)
        sym = torch.from_numpy(out.reshape(len(bodies), self.channels, h, w))
        return sym.to(device=medians.device, dtype=medians.dtype) + medians
