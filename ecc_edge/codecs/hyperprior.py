"""The hyperprior's coding step in numpy: ``HyperpriorBottleneckNeck.compress`` (ecc_mmdet)
after the encoders, for the light edge.

Given the latent ``y`` and the side information ``z = h_a(y)`` (both from the edge graph):

1. z's symbols ``round(z - median)`` are range-coded with z's per-channel tables (the factorized
   model), and ``z_hat = symbols + median`` in float32, as the PyTorch entropy model computes it;
2. the integer hyper-synthesis (:class:`IntegerHyperSynthesis`, ``ExactHyperSynthesis.exact``)
   turns ``z_hat`` into means on the ``2**-F`` grid and log-scale accumulators: integer weights,
   fixed-point activations, every product and sum an integer below 2**53, so float64 gives the
   exact result in any summation order (numpy's matmul here, torch's conv2d there); a layer
   whose products' sums for the activations at hand stay within 2**24 multiplies in float32,
   exact as well and twice as fast;
3. the accumulators become scale-table indexes by integer thresholds
   (``GaussianConditionalEntropyModel.index_from_fixed_point``), and y's symbols
   ``round(y - mean)`` are range-coded with the indexed Gaussian tables.

The body is z's bytes then y's; the codec params carry z's length. With a channel context
(``ChannelContextHyperpriorNeck``), step 3 runs slice by slice (:class:`ChannelContext`) and
y's slices share one range-coded stream. Nothing here depends on how
``y`` and ``z`` were computed: for the same float32 values the bytes equal the PyTorch edge's.
"""
from __future__ import annotations

from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from .range_coding import (CodingTables, encode_indexed_sections, encode_with_cdf_tables,
                           encode_with_indexed_tables)

__all__ = ['ChannelContext', 'HyperpriorEncoder', 'IntegerHyperSynthesis', 'conv3x3_exact',
           'quantise',
           'scale_indexes', 'tables_from_rows']


def quantise(values: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """``round(values - centres)`` (half to even, as ``torch.round``) in the inputs' float32,
    as int32; refuses non-finite or out-of-int32 values (ValueError)."""
    sym = np.round(values - centres)
    if not np.isfinite(sym).all() or (sym.size and np.abs(sym).max() >= 2**31):
        raise ValueError('the latent has non-finite or out-of-range values')
    return sym.astype(np.int32)


def tables_from_rows(pmf_rows: Sequence[Sequence[int]], offsets: Sequence[int],
                     lengths: Sequence[int]) -> CodingTables:
    """Range-coder tables from rows of integer frequencies (each row's first ``lengths[i]``
    entries: its support + the escape bin), as the sidecar stores them."""
    pmf = np.zeros((len(lengths), max(lengths)), np.int64)
    for i, (row, n) in enumerate(zip(pmf_rows, lengths)):
        pmf[i, :n] = row[:n]
    return CodingTables(pmf, np.asarray(offsets), np.asarray(lengths))


#: float32 holds every integer up to 2**24: a matmul whose partial sums stay within it is exact
#: in float32, whatever order BLAS sums in
FLOAT32_EXACT = 2**24


def conv3x3_exact(a: np.ndarray, weight: np.ndarray, bias: Optional[np.ndarray]) -> np.ndarray:
    """3x3 convolution, stride 1, zero padding 1, of integer-valued arrays: ``a`` (C, H, W),
    ``weight`` (O, C * 9) in (c, ky, kx) order, ``bias`` (O,) or None -> (O, H, W), in ``a``'s
    dtype.

    An im2col matmul: exact whatever order BLAS sums in, as long as every partial sum is an
    integer the dtype holds (below 2**53 in float64, ``ExactHyperSynthesis`` checks its bounds
    at construction; within :data:`FLOAT32_EXACT` in float32, checked per call by the
    layers)."""
    c, h, w = a.shape
    padded = np.zeros((c, h + 2, w + 2), a.dtype)
    padded[:, 1:-1, 1:-1] = a
    cols = np.empty((c, 3, 3, h, w), a.dtype)  # (c, ky, kx) rows, filled tap by tap
    for ky in range(3):
        for kx in range(3):
            cols[:, ky, kx] = padded[:, ky:ky + h, kx:kx + w]
    out = weight @ cols.reshape(c * 9, h * w)
    if bias is not None:
        out += bias[:, None]
    return out.reshape(-1, h, w)


class _Layer(NamedTuple):
    weight: np.ndarray  # (O, C * 9) float64 integers: round(clamp(w) * 2**F)
    bias: np.ndarray  # (O,) float64 integers: round(b * 2**(2F))
    weight32: np.ndarray  # the same weights in float32, used where FLOAT32_EXACT holds
    row_l1: float  # max over outputs of sum |weight|: bounds every partial sum

    @classmethod
    def of(cls, spec: Dict) -> '_Layer':
        w = np.asarray(spec['weight'], np.float64).reshape(spec['out_channels'],
                                                           spec['in_channels'] * 9)
        b = np.asarray(spec['bias'], np.float64)
        return cls(w, b, w.astype(np.float32), float(np.abs(w).sum(1).max()) if w.size else 0.)

    def __call__(self, a: np.ndarray) -> np.ndarray:
        """The exact convolution of float64 integer activations ``a`` -> float64 integers:
        the products summed in float32 when every partial sum stays within FLOAT32_EXACT
        (the bias added in float64), otherwise all in float64."""
        a_max = float(np.abs(a).max()) if a.size else 0.0
        if self.row_l1 * a_max <= FLOAT32_EXACT:
            out = conv3x3_exact(a.astype(np.float32), self.weight32, None).astype(np.float64)
            out += self.bias[:, None, None]
            return out
        return conv3x3_exact(a, self.weight, self.bias)


class IntegerHyperSynthesis:
    """``ExactHyperSynthesis.exact`` in numpy: z_hat (Cz, h, w) -> (means (C, H, W) float32 on
    the ``2**-F`` grid, log-scale accumulators (C, H, W) float64 integers at scale 2**(2F)),
    H, W = h, w times ``2**up_steps``.

    Args:
        layers: per conv, dict(weight=flat (O*C*9) integers, bias=(O) integers, in_channels,
            out_channels), the first ``up_steps`` preceded by a nearest 2x upsampling and
            followed by the clamped fixed-point activation, the last one the output conv.
        frac_bits, act_max, mean_max, predict_means, upsample: ``ExactHyperSynthesis``'s.
    """

    def __init__(self, layers: List[Dict], frac_bits: int, act_max: float, mean_max: float,
                 predict_means: bool, upsample: bool = True):
        self.layers = [_Layer.of(spec) for spec in layers]
        self.up_steps = len(layers) - 1
        self.upsample = bool(upsample)
        self.scale = 2.0**int(frac_bits)
        self.act_max = float(act_max)
        self.mean_max = float(mean_max)
        self.predict_means = bool(predict_means)

    def __call__(self, z_hat: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        s = self.scale
        a = np.round(np.clip(z_hat.astype(np.float64), -self.act_max, self.act_max) * s)
        for i, layer in enumerate(self.layers):
            if self.upsample and i < self.up_steps:  # nearest 2x
                a = a.repeat(2, axis=1).repeat(2, axis=2)
            acc = layer(a)
            if i < self.up_steps:
                a = np.clip(np.floor(acc / s + 0.5), 0, self.act_max * s)
        if not self.predict_means:
            return np.zeros(acc.shape, np.float32), acc
        c = acc.shape[0] // 2
        means = np.clip(np.floor(acc[:c] / s + 0.5) / s, -self.mean_max, self.mean_max)
        return means.astype(np.float32), acc[c:]


def scale_indexes(log_acc: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Scale-table index of each accumulator: the number of integer thresholds <= it
    (``torch.bucketize(..., right=True)``), int64."""
    return np.searchsorted(thresholds, log_acc, side='right').astype(np.int64)


class ChannelContext:
    """``ChannelContextHyperpriorNeck``'s coding of y in numpy: slice ``i``'s means and scale
    indexes are the hyper-synthesis' corrected by an integer transform of the hyper-synthesis'
    output and the slices before it (``symbol + mean``, exact in float64), as
    ``ChannelContextHyperpriorNeck._exact_code`` computes them.

    Args:
        transforms: per slice, its layers (as :class:`IntegerHyperSynthesis` takes them).
        frac_bits, act_max, mean_max, predict_means: the hyper-synthesis' (shared).
    """

    def __init__(self, transforms: List[List[Dict]], frac_bits: int, act_max: float,
                 mean_max: float, predict_means: bool):
        self.transforms = [IntegerHyperSynthesis(layers, frac_bits, act_max, mean_max,
                                                 predict_means, upsample=False)
                           for layers in transforms]
        self.scale = 2.0**int(frac_bits)
        self.mean_max = float(mean_max)

    def sections(self, y: np.ndarray, means: np.ndarray, log_acc: np.ndarray,
                 thresholds: np.ndarray) -> List[Tuple[np.ndarray, np.ndarray]]:
        """y (C, h, w) float32 and the hyper-synthesis' means / log accumulators (cropped to
        y) -> per slice (int32 symbols (C/S, h, w), flat scale indexes), in coding order."""
        cs = y.shape[0] // len(self.transforms)
        fixed = [means.astype(np.float64), log_acc / self.scale**2]
        context, out = [], []
        for i, t in enumerate(self.transforms):
            d_mean, d_log = t(np.concatenate(fixed + context))
            sl = slice(i * cs, (i + 1) * cs)
            m = np.clip(means[sl].astype(np.float64) + d_mean.astype(np.float64),
                        -self.mean_max, self.mean_max)
            sym = quantise(y[sl], m.astype(np.float32))
            out.append((sym, scale_indexes(log_acc[sl] + d_log, thresholds).reshape(-1)))
            context.append(sym.astype(np.float64) + m)
        return out


class HyperpriorEncoder:
    """``HyperpriorBottleneckNeck.compress`` of one image from its graph outputs.

    Args:
        spec: the sidecar's ``hyperprior`` (``ecc_mmdet.deployment.edge_export``): synthesis
            (layers, frac_bits, act_max, mean_max, predict_means), index_thresholds and the
            Gaussian tables (offsets, lengths, pmf_table).
        z_tables: z's per-channel tables; z_medians: (Cz,) float32 medians of z's channels.
    """

    def __init__(self, spec: Dict, z_tables: CodingTables, z_medians: np.ndarray):
        syn = spec['synthesis']
        self.synthesis = IntegerHyperSynthesis(syn['layers'], syn['frac_bits'], syn['act_max'],
                                               syn['mean_max'], syn['predict_means'])
        self.thresholds = np.asarray(spec['index_thresholds'], np.float64)
        g = spec['gaussian']
        self.y_tables = tables_from_rows(g['pmf_table'], g['offsets'], g['lengths'])
        self.z_tables = z_tables
        self.z_medians = np.asarray(z_medians, np.float32).reshape(-1, 1, 1)
        ctx = spec.get('channel_context')
        self.context = None if ctx is None else ChannelContext(
            [t['layers'] for t in ctx['transforms']], syn['frac_bits'], syn['act_max'],
            syn['mean_max'], syn['predict_means'])

    @classmethod
    def from_sidecar(cls, codec: Dict, spec: Dict) -> 'HyperpriorEncoder':
        """From the sidecar's ``codec`` (z's factorized tables and medians) and
        ``hyperprior``."""
        return cls(spec, tables_from_rows(codec['pmf_table'], codec['offsets'], codec['lengths']),
                   np.asarray(codec['medians'], np.float32))

    def hyper(self, z_sym: np.ndarray, size: Tuple[int, int]) -> Tuple[np.ndarray, np.ndarray]:
        """z's symbols (Cz, zh, zw) -> the hyper-synthesis' (means float32, log accumulators)
        cropped to a (C, h, w) latent."""
        means, log_acc = self.synthesis(z_sym.astype(np.float32) + self.z_medians)
        h, w = size
        return means[:, :h, :w], log_acc[:, :h, :w]

    def params(self, z_sym: np.ndarray, size: Tuple[int, int]) -> Tuple[np.ndarray, np.ndarray]:
        """z's symbols -> (means float32, scale indexes int64) of a (C, h, w) latent (without
        a channel context: those of its first slice depend on y)."""
        means, log_acc = self.hyper(z_sym, size)
        return means, scale_indexes(log_acc, self.thresholds)

    def compress(self, y: np.ndarray, z: np.ndarray
                 ) -> Tuple[bytes, bytes, np.ndarray, np.ndarray]:
        """y (C, h, w) and z (Cz, zh, zw) float32 -> (z's body, y's body, y's symbols,
        z's symbols)."""
        z_sym = quantise(z, self.z_medians)
        z_body = encode_with_cdf_tables(z_sym.reshape(len(z_sym), -1), self.z_tables, None)
        if self.context is not None:
            sections = self.context.sections(y, *self.hyper(z_sym, y.shape[-2:]),
                                             self.thresholds)
            y_body = encode_indexed_sections(sections, self.y_tables)
            return z_body, y_body, np.concatenate([sym for sym, _ in sections]), z_sym
        means, idx = self.params(z_sym, y.shape[-2:])
        y_sym = quantise(y, means)
        y_body = encode_with_indexed_tables(y_sym.reshape(-1), idx.reshape(-1), self.y_tables)
        return z_body, y_body, y_sym, z_sym
