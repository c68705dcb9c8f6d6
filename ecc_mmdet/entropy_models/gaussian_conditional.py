"""Gaussian conditional entropy model (Ballé et al. 2018, Minnen et al. 2018) with indexed tables.

Each latent element ``y`` is modelled as a Gaussian of its own mean ``mu`` and scale ``sigma``
(predicted from side information by a hyperprior), convolved with a unit uniform: the likelihood
of the quantised value is ``Phi((y - mu + 1/2) / sigma) - Phi((y - mu - 1/2) / sigma)``.

Coding does not use ``sigma`` itself: it uses a *scale index* into a fixed table of ``num_scales``
log-spaced scales, and one integer frequency table per index (support ``+-ceil(z * s_k)`` with
``z`` the ``tail_mass`` quantile, plus one escape bin). Whoever computes the indexes must make
them identical on encoder and decoder -- a scale that differs in its last bit between a CPU
edge and a GPU cloud would pick another table and desynchronise the range decoder. This module
therefore takes the indexes as *given* integers (see :class:`ExactHyperSynthesis`, which
computes them exactly), and converts a log-scale accumulator to an index with integer
thresholds (:meth:`index_from_fixed_point`).

Like :class:`~ecc_mmdet.entropy_models.FactorizedEntropyModel`, the tables are integers in the
state dict, so a cloud loads the edge's tables bit for bit rather than recomputing them with its
own libm. Unlike it, they depend only on the constructor arguments (nothing learned), so they are
plain buffers of a fixed size: no resizing on load, and mmengine's EMA copies them unchanged.
"""
from __future__ import annotations

import math
from statistics import NormalDist
from typing import Optional, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from ecc_edge.codecs.range_coding import (CodingTables, IndexedSectionDecoder,
                                          decode_with_indexed_tables, encode_indexed_sections,
                                          encode_with_indexed_tables)
from .factorized import _LowerBound, quantize_pmf
from ..utils.device import to_numpy

__all__ = ['GaussianConditionalEntropyModel', 'GaussianSectionDecoder']


def _std_normal_cdf(x: Tensor) -> Tensor:
    return 0.5 * torch.erfc(-x * (2**-0.5))


class GaussianConditionalEntropyModel(nn.Module):
    """Conditional Gaussian density of a latent given per-element means and scales.

    Args:
        num_scales: number of scale levels K (tables and indexes 0..K-1).
        scale_min, scale_max: smallest and largest scale of the table (log-spaced between).
        tail_mass: probability mass left outside each table's support (escape-coded).
        likelihood_bound: lower bound on likelihoods (keeps log2 finite).
        quantization: training proxy, 'noise' or 'ste' (see FactorizedEntropyModel).
        table_precision: bits of the integer frequency tables.
        max_support: most in-support symbols of any table.
    """

    def __init__(self, num_scales: int = 64, scale_min: float = 0.11, scale_max: float = 64.0,
                 tail_mass: float = 1e-9, likelihood_bound: float = 1e-9,
                 quantization: str = 'noise', table_precision: int = 16,
                 max_support: int = 2048):
        super().__init__()
        if quantization not in ('noise', 'ste'):
            raise ValueError(f"quantization must be 'noise' or 'ste', got {quantization!r}")
        if isinstance(num_scales, bool) or not isinstance(num_scales, int) \
                or not 2 <= num_scales <= 256:
            raise ValueError(f'num_scales must be an int in 2..256, got {num_scales!r}')
        if not 0 < scale_min < scale_max:
            raise ValueError(f'need 0 < scale_min < scale_max, got {scale_min}, {scale_max}')
        if not 0 < tail_mass < 1:
            raise ValueError(f'tail_mass must be in (0, 1), got {tail_mass}')
        if not 8 <= table_precision <= 24:
            raise ValueError('table_precision must be in 8..24 (constriction uses 24 bits)')
        self.num_scales = num_scales
        self.scale_min, self.scale_max = float(scale_min), float(scale_max)
        self.tail_mass = float(tail_mass)
        self.likelihood_bound = float(likelihood_bound)
        self.quantization = quantization
        self.table_precision = int(table_precision)
        self.max_support = int(max_support)

        log_scales = np.linspace(math.log(scale_min), math.log(scale_max), num_scales)
        step = log_scales[1] - log_scales[0]
        # index k covers log-scales in [bound[k-1], bound[k]): midpoints between levels
        bounds = log_scales[:-1] + step / 2
        self.register_buffer('scale_table', torch.from_numpy(np.exp(log_scales)).float())
        self.register_buffer('log_scale_bounds', torch.from_numpy(bounds))  # float64
        pmf, length, offset = self._build_tables(np.exp(log_scales))
        self.register_buffer('_pmf_table', torch.from_numpy(pmf))
        self.register_buffer('_pmf_length', torch.from_numpy(length))
        self.register_buffer('_offset', torch.from_numpy(offset))
        self._tables_cache = None
        self._thresholds_cache = None

    def _build_tables(self, scales: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Integer frequencies of the zero-mean discretised Gaussian of each scale level."""
        z = -NormalDist().inv_cdf(self.tail_mass / 2)
        half = np.minimum(np.ceil(scales * z).astype(np.int64), (self.max_support - 1) // 2)
        lengths = 2 * half + 1
        table = np.zeros((len(scales), int(lengths.max()) + 1), dtype=np.int32)
        for k, s in enumerate(scales):
            n = np.arange(-half[k], half[k] + 1, dtype=np.float64)
            upper = np.array([NormalDist(0, s).cdf(v + 0.5) for v in n])
            lower = np.array([NormalDist(0, s).cdf(v - 0.5) for v in n])
            pmf = upper - lower
            tail = max(0.0, 1.0 - float(pmf.sum()))
            table[k, :lengths[k] + 1] = quantize_pmf(np.append(pmf, tail), self.table_precision)
        return table, lengths.astype(np.int32), (-half).astype(np.int32)

    # ------------------------------------------------------------------ density
    def quantize(self, y: Tensor, means: Tensor, training: bool) -> Tuple[Tensor, Tensor]:
        """-> (y_hat for the decoder, y_tilde for the likelihood)."""
        if not training:
            y_hat = torch.round(y - means) + means
            return y_hat, y_hat
        noisy = y + torch.empty_like(y).uniform_(-0.5, 0.5)
        if self.quantization == 'noise':
            return noisy, noisy
        return y + (torch.round(y - means) + means - y).detach(), noisy

    def likelihood(self, values: Tensor, means: Tensor, scales: Tensor) -> Tensor:
        """p(values) under N(means, scales) convolved with U(-1/2, 1/2), bounded below."""
        scales = torch.clamp(scales, min=self.scale_min)
        v = torch.abs(values - means)  # the symmetric form: evaluate in the lower tail
        lik = _std_normal_cdf((0.5 - v) / scales) - _std_normal_cdf((-0.5 - v) / scales)
        if self.likelihood_bound > 0:
            lik = _LowerBound.apply(lik, self.likelihood_bound)
        return lik

    def scales_of(self, indexes: Tensor) -> Tensor:
        """The table scale of each index (what the coder uses)."""
        return self.scale_table[indexes.long()]

    def index_from_fixed_point(self, acc: Tensor, frac_bits: int) -> Tensor:
        """Scale indexes from exact log-scale accumulators ``acc = log_scale * 2**frac_bits``.

        ``acc`` holds integers (in any float dtype that represents them exactly). The thresholds
        ``ceil(bound * 2**frac_bits)`` are integers too, so the comparison is exact: the same
        index on every machine for the same ``acc``.
        """
        return torch.bucketize(acc.to(torch.float64).contiguous(),
                               self._thresholds(frac_bits, acc.device), right=True)

    def _thresholds(self, frac_bits: int, device) -> Tensor:
        """``ceil(bounds * 2**frac_bits)`` on ``device``, kept while the bounds are unchanged
        (they are a buffer: a loaded state dict may replace them)."""
        b = self.log_scale_bounds
        key = (frac_bits, str(device), b.data_ptr(), b._version)
        if self._thresholds_cache is None or self._thresholds_cache[0] != key:
            t = torch.ceil(b * 2.0**frac_bits).to(device=device, dtype=torch.float64)
            self._thresholds_cache = (key, t)
        return self._thresholds_cache[1]

    @staticmethod
    def bits(likelihoods: Tensor) -> Tensor:
        """Estimated bits per image: -sum(log2 p) over all but the batch dim -> (N,)."""
        return -torch.log2(likelihoods).reshape(likelihoods.shape[0], -1).sum(dim=1)

    # ------------------------------------------------------------------- coding
    def update(self, force: bool = False) -> bool:
        """The tables depend on the constructor only and are built there: nothing to update
        (the interface of FactorizedEntropyModel, which the distillation hook calls when it fixes
        the deployment tables)."""
        return False

    def tables_ready(self) -> bool:
        return self._pmf_table.numel() > 0

    def __getstate__(self):
        """Copies and pickles leave out the cached range-coder models (native objects)."""
        state = dict(self.__dict__)
        state['_tables_cache'] = state['_thresholds_cache'] = None
        return state

    def _tables(self) -> CodingTables:
        key = (self._pmf_table.data_ptr(), self._pmf_table._version)
        if self._tables_cache is None or self._tables_cache[0] != key:
            self._tables_cache = (key, CodingTables(to_numpy(self._pmf_table),
                                                    to_numpy(self._offset),
                                                    to_numpy(self._pmf_length) + 1))
        return self._tables_cache[1]

    @staticmethod
    def _check(y: Tensor, indexes: Tensor, means: Tensor) -> None:
        if y.shape != indexes.shape or y.shape != means.shape:
            raise ValueError(f'latent {tuple(y.shape)}, indexes {tuple(indexes.shape)} and '
                             f'means {tuple(means.shape)} must have one shape')

    def _symbols(self, y: Tensor, indexes: Tensor, means: Tensor):
        """-> (int32 symbols ``round(y - means)``, indexes) as flat numpy arrays."""
        self._check(y, indexes, means)
        sym = torch.round(y - means)
        if not torch.isfinite(sym).all() or sym.numel() and sym.double().abs().max() >= 2**31:
            raise ValueError('latent has non-finite values or values beyond the int32 range')
        return to_numpy(sym.reshape(-1).to(torch.int32)), to_numpy(indexes.reshape(-1))

    @torch.no_grad()
    def compress(self, y: Tensor, indexes: Tensor, means: Tensor) -> bytes:
        """One image's latent (any shape) -> range-coded body of ``round(y - means)``."""
        return encode_with_indexed_tables(*self._symbols(y, indexes, means), self._tables())

    @torch.no_grad()
    def compress_sections(self, sections) -> bytes:
        """``[(y, indexes, means), ...]`` of one image -> ONE body whose sections a
        :meth:`section_decoder` reads in order (later indexes may depend on earlier values)."""
        return encode_indexed_sections([self._symbols(*sec) for sec in sections],
                                       self._tables())

    def section_decoder(self, body: bytes) -> 'GaussianSectionDecoder':
        """Reader of a :meth:`compress_sections` body, one section at a time."""
        return GaussianSectionDecoder(body, self._tables())

    @torch.no_grad()
    def decompress(self, body: bytes, indexes: Tensor, means: Tensor) -> Tensor:
        """Inverse of :meth:`compress` -> ``y_hat = symbols + means`` (shaped like means).
        Raises CorruptedBitstreamError on a body that is not a valid encoding."""
        sym = decode_with_indexed_tables(body, to_numpy(indexes.reshape(-1)), self._tables())
        sym = torch.from_numpy(sym).reshape(means.shape)
        return sym.to(device=means.device, dtype=means.dtype) + means

    def extra_repr(self) -> str:
        return (f'num_scales={self.num_scales}, scale_min={self.scale_min}, '
                f'scale_max={self.scale_max}, quantization={self.quantization!r}')


class GaussianSectionDecoder:
    """Decodes a :meth:`GaussianConditionalEntropyModel.compress_sections` body in order:
    each :meth:`decode` bounds its symbols before returning (a forged body cannot hand huge
    values to whatever computes the next section's parameters); :meth:`finish` refuses a body
    that is not exactly the encoding of what was decoded."""

    def __init__(self, body: bytes, tables: CodingTables):
        self._dec = IndexedSectionDecoder(body, tables)

    def decode(self, indexes: Tensor, means: Tensor) -> Tensor:
        """The next section -> ``symbols + means`` (shaped, typed and placed like means)."""
        sym = torch.from_numpy(self._dec.decode(to_numpy(indexes.reshape(-1))))
        return sym.reshape(means.shape).to(device=means.device, dtype=means.dtype) + means

    def finish(self) -> None:
        self._dec.finish()
