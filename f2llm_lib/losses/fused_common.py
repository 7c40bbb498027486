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


@triton.jit
def load_pair(Q, K, offs_m, offs_n, mask_m, mask_n, d0, end, D, BLOCK_D: tl.constexpr):
    """The query rows ``offs_m`` and key rows ``offs_n`` at feature columns [d0, d0 + BLOCK_D), zero past ``end``
    (the current MRL prefix) and outside the masks: the operands of one step of a prefix dot product."""
    offs_d = d0 + tl.arange(0, BLOCK_D)
    mask_d = offs_d < end
    q = tl.load(Q + offs_m[:, None] * D + offs_d[None, :], mask=mask_m[:, None] & mask_d[None, :], other=0.0)
    k = tl.load(K + offs_n[:, None] * D + offs_d[None, :], mask=mask_n[:, None] & mask_d[None, :], other=0.0)
    return q, k
