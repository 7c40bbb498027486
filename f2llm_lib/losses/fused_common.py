"""Pieces shared by the Triton kernels of the fused loss."""

from __future__ import annotations

import triton
import triton.language as tl

EPS = tl.constexpr(1e-12)  # a vector with a smaller norm is treated as zero: no direction, no gradient


@triton.jit
def dot(a, b, acc, IEEE: tl.constexpr):
    """acc + a @ b; fp32 inputs use IEEE fp32 (not TF32) so fp32 results match a float64 reference."""
    if IEEE:
        return tl.dot(a, b, acc, input_precision="ieee")
    else:
        return tl.dot(a, b, acc)
