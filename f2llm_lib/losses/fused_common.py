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
def load_pair(
    query_ptr,  # [B, D] queries
    key_ptr,  # [N, D] keys
    query_rows,  # [BLOCK_M] row indices into the queries
    key_rows,  # [BLOCK_N] row indices into the keys
    query_mask,  # [BLOCK_M] which of those rows exist
    key_mask,  # [BLOCK_N]
    d0,  # first feature column of this step
    end,  # the current MRL prefix: columns from here on read as zero
    dim,  # D, the row stride
    BLOCK_D: tl.constexpr,  # feature columns per step
):
    """The query rows and key rows at feature columns [d0, d0 + BLOCK_D), zero past ``end`` and outside the
    masks: the operands of one step of a prefix dot product."""
    cols = d0 + tl.arange(0, BLOCK_D)
    col_mask = cols < end
    q = tl.load(query_ptr + query_rows[:, None] * dim + cols[None, :],
                mask=query_mask[:, None] & col_mask[None, :], other=0.0)
    k = tl.load(key_ptr + key_rows[:, None] * dim + cols[None, :], mask=key_mask[:, None] & col_mask[None, :],
                other=0.0)
    return q, k
