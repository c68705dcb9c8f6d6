"""When an integer convolution is exact in float32, and how to make it so.

The integer hyper-synthesis (``ExactHyperSynthesis``) multiplies integer activations by integer
weights. Float64 gives the exact sums in any order (they stay below 2**53), but float64
convolutions run 2-4x slower than float32 ones on a CPU, and they are the coding step's largest
cost. Float32 holds every integer of magnitude up to 2**24 exactly, so a convolution is exact
in float32 -- whatever order, blocking or fused multiply-add the library uses -- when every
partial sum does, which holds when ``max_o sum_k |w_ok| * max |a| <= 2**24``.

When it does not hold for the activations at hand, they are split into base-``2**d`` digits
small enough for the bound; each digit is convolved in float32 and the results are recombined
in float64 (``sum_p conv(digit_p) * 2**(d p)``: integers below 2**53, exact). Either way the
result is the float64 one bit for bit, so each side of a link chooses its plan on its own.

Measured (``tools/benchmark_codec.py``): the channel-context model's exact parameters are ~17 %
faster on one thread; with two threads float64 convolutions parallelise as well and the gain
vanishes. The light edge (``ecc_edge.codecs.hyperprior``) makes the same choice per layer in
numpy, without digits: the products are summed in float32 where one pass is exact, the bias
added in float64, and otherwise the layer runs in float64.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

from ecc_edge.codecs.hyperprior import FLOAT32_EXACT  # one bound for both sides

__all__ = ['FLOAT32_EXACT', 'digit_plan']


def digit_plan(weight_l1: float, act_abs_max: float) -> Optional[Tuple[int, int]]:
    """-> ``(d, P)``: split activations of magnitude <= ``act_abs_max`` into ``P`` base-``2**d``
    digits (``P == 1``: no split) so that a float32 convolution of each digit with weights whose
    rows have an L1 norm <= ``weight_l1`` is exact; None when no digit size is small enough
    (float64 is needed).

    Digits: ``a = sum_p a_p 2**(d p)`` with ``a_p`` in ``[0, 2**d)`` for ``p < P - 1`` and the
    last one signed, ``|a_{P-1}| <= ceil(act_abs_max / 2**(d (P - 1)))``; each is at most
    ``2**d - 1`` in magnitude, and ``weight_l1 * (2**d - 1) <= 2**24``.
    """
    if weight_l1 <= 0 or act_abs_max <= 0:
        return (FLOAT32_EXACT.bit_length(), 1)  # all-zero products: any plan is exact
    if weight_l1 * act_abs_max <= FLOAT32_EXACT:
        return (FLOAT32_EXACT.bit_length(), 1)
    largest = math.floor(FLOAT32_EXACT / weight_l1)  # the largest digit magnitude allowed
    d = (largest + 1).bit_length() - 1  # 2**d - 1 <= largest
    if d < 1:
        return None
    base, p = 2**d, 1
    while math.ceil(act_abs_max / base**(p - 1)) > base - 1:
        p += 1
    return d, p
