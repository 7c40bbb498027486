"""The large-batch path of the fused loss: one logit recomputation per side and a bounded scratch of gradient tiles.

The register backward of ``fused`` keeps each program's accumulator in registers, so it recomputes every
logit tile once per 256 feature columns: 4x the logit work at d = 1024, which dominates at 65,536 x 65,536.
Here the logits are recomputed once per side instead and their gradients go through a bounded scratch:

- query side, per chunk of R queries: ``_logit_grad_tile_kernel`` writes G[R, N] = (p - y) b_j / tau (the logit
  gradient times the key's inverse norm, in the input dtype), then one GEMM G @ K gives the chunk's raw-dot
  gradient; the query's own factor a_i w / B is folded into the tile (bf16, fp32) or applied after the GEMM in
  fp32 (fp16, where 1 / B would underflow at large B);
- key side, per chunk of C keys: the transposed tile G'[C, B] = (p - y) a_i / tau, then G' @ Q, times
  b_j w / B; the key-normalisation term needs sum_i dL/ds_ij s_ij = k_j . (G'Q)_j (times the factors),
  which the GEMM result already holds, so no column sums are accumulated anywhere (``_key_epilogue_kernel``).

R and C are chosen so the scratch stays at ``KernelSettings.scratch_bytes`` (when one row of it fits), whatever B
and N are: the extra memory is that scratch, one [R, d] fp32 accumulator and the per-row statistics.

With several MRL levels (bf16, fp32; ``KernelSettings.segment_levels``) each side walks a tile once for all levels
instead of once per level (``_segment_grad_tile_kernel``): the levels are prefixes, so the columns of segment
[d_{s-1}, d_s) receive the gradients of levels s .. L-1, and one slot per segment holds H_s = sum_{l >= s} G_l.
One GEMM per segment (H_s times that segment's columns) then costs one full-width product in all, against
sum_l d_l / d of it per level (2.2x at 64/128/256/384). The key-normalisation term needs each level's
k_j . (G'_l Q)_j, which no segment GEMM holds any more: the tile kernel sums G'_l * raw_dot_l per key instead.
The L slots share the scratch, so chunks are L times smaller (at least one tile: 64 MiB at 65,536 keys and four
levels); ``python -m f2llm_lib.bench.kernels --count-launches 65536 --one-pass`` counts 6,148 launches against the
per-level path's 5,380: fewer, fuller tile kernels, more and smaller GEMMs. Off by default until a GPU has timed it.

Layout: kernels, then launchers (``prefix_norms``, ``logit_grad_tiles``, ``segment_grad_tiles``,
``query_grad_chunks``, ``key_grads``); ``fused`` calls them.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence

import torch
import triton
import triton.language as tl

from .fused_common import EPS, dot, load_pair
from .kernel_settings import TileShape

EPILOGUE_ROWS = 16  # keys per program of the key-side epilogue (a row-wise pass over [rows, d])


@triton.jit
def _prefix_norms_kernel(
    rows_ptr,  # [R, D] the vectors
    dims_ptr,  # [L] int32 MRL prefix dims, increasing
    norms_ptr,  # [L, R] fp32 out: each row's norm over each prefix
    num_rows,  # R
    dim,  # D
    num_levels,  # L
    BLOCK_R: tl.constexpr,  # rows per program
    BLOCK_D: tl.constexpr,  # feature columns per step
    DIMS_DIV: tl.constexpr,  # a divisor of every prefix dim (tl.multiple_of: vectorised loads)
):
    """norms[level, r] = ||rows[r, :dims[level]]||, every level in one pass over the row."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_mask = rows < num_rows
    sum_sq = tl.zeros((BLOCK_R,), dtype=tl.float32)
    start = 0
    for level in range(num_levels):
        end = tl.multiple_of(tl.load(dims_ptr + level), DIMS_DIV)
        for d0 in range(start, end, BLOCK_D):
            cols = d0 + tl.arange(0, BLOCK_D)
            x = tl.load(rows_ptr + rows[:, None] * dim + cols[None, :],
                        mask=row_mask[:, None] & (cols[None, :] < end), other=0.0).to(tl.float32)
            sum_sq += tl.sum(x * x, axis=1)
        start = end
        tl.store(norms_ptr + level * num_rows + rows, tl.sqrt(sum_sq), mask=row_mask)


@triton.jit
def _level_softmax_grad(
    raw_dot,  # [BLOCK_M, BLOCK_N] fp32 raw prefix dot products of the tile at this level
    query_norms_ptr,  # [L, B] fp32 prefix norms of the queries
    key_norms_ptr,  # [L, N] fp32 prefix norms of the keys
    lse_ptr,  # [L, B] fp32 in-batch log-sum-exp per level
    is_label,  # [BLOCK_M, BLOCK_N] fp32: 1 where the key is the query's positive
    valid,  # [BLOCK_M, BLOCK_N] both rows exist
    query_rows,  # [BLOCK_M] query indices
    key_rows,  # [BLOCK_N] key indices
    query_mask,  # [BLOCK_M]
    key_mask,  # [BLOCK_N]
    level,  # which MRL level
    num_queries,  # B
    num_keys,  # N
    inv_temperature,  # 1 / tau
):
    """dL/dlogit / (w / B) = softmax - label on one tile at one level (0 outside), and the gradient factors of the
    queries and keys at that level: 1 / norm, 0 for a (near-)zero vector, whose direction is undefined."""
    query_norm = tl.load(query_norms_ptr + level * num_queries + query_rows, mask=query_mask, other=1.0)
    key_norm = tl.load(key_norms_ptr + level * num_keys + key_rows, mask=key_mask, other=1.0)
    inv_query_norm = 1.0 / tl.maximum(query_norm, EPS)
    inv_key_norm = 1.0 / tl.maximum(key_norm, EPS)
    logits = raw_dot * inv_query_norm[:, None] * inv_key_norm[None, :] * inv_temperature
    lse = tl.load(lse_ptr + level * num_queries + query_rows, mask=query_mask, other=0.0)
    grad = tl.where(valid, tl.exp(logits - lse[:, None]) - is_label, 0.0)
    query_factor = tl.where(query_norm >= EPS, inv_query_norm, 0.0)
    key_factor = tl.where(key_norm >= EPS, inv_key_norm, 0.0)
    return grad, query_factor, key_factor


@triton.jit
def _logit_grad_tile_kernel(
    query_ptr,  # [B, D] queries
    key_ptr,  # [N, D] keys (gathered positives, then shared negatives)
    query_norms_ptr,  # [L, B] fp32 prefix norms of the queries
    key_norms_ptr,  # [L, N] fp32 prefix norms of the keys
    labels_ptr,  # [B] int64: the key index of each query's positive
    lse_ptr,  # [L, B] fp32: each query's in-batch log-sum-exp per level (from the forward)
    scratch_ptr,  # out, input dtype: [rows, cols] (query side) or [cols, rows] (key side)
    num_queries,  # B
    num_keys,  # N
    dim,  # D, the row stride
    level,  # which MRL level
    end,  # that level's prefix dim
    row0,  # first query of the chunk
    rows,  # queries in the chunk
    col0,  # first key of the chunk
    cols,  # keys in the chunk
    inv_temperature,  # 1 / tau
    row_scale,  # w_level / B, folded in when FOLD
    TRANSPOSED: tl.constexpr,  # False: the query side's tile; True: the key side's, transposed
    BLOCK_M: tl.constexpr,  # queries per program
    BLOCK_N: tl.constexpr,  # keys per program
    BLOCK_D: tl.constexpr,  # feature columns per step of the dot product
    DIMS_DIV: tl.constexpr,  # a divisor of ``end`` (tl.multiple_of: vectorised loads)
    IEEE: tl.constexpr,  # fp32 inputs: IEEE products, not TF32
    FOLD: tl.constexpr,  # also multiply by the output row's own factor and ``row_scale``
):
    """One tile of one level's in-batch logit gradient, queries [row0, row0 + rows) x keys [col0, col0 + cols).

    TRANSPOSED False: scratch[i - row0, j - col0] = (p_ij - y_ij) b_j / tau   (query side)
    TRANSPOSED True:  scratch[j - col0, i - row0] = (p_ij - y_ij) a_i / tau   (key side)
    FOLD adds the output row's own factor: a_i w / B on the query side, b_j w / B on the key side, so the GEMM
    that follows gives the chunk's gradient with no per-row pass after it.
    """
    # The fastest grid axis walks the short side (the chunk), so programs running together share the long side's
    # tile and each chunk reads the long operand from HBM about once.
    query_rows = row0 + tl.program_id(1 if TRANSPOSED else 0) * BLOCK_M + tl.arange(0, BLOCK_M)
    key_rows = col0 + tl.program_id(0 if TRANSPOSED else 1) * BLOCK_N + tl.arange(0, BLOCK_N)
    query_mask = query_rows < row0 + rows
    key_mask = key_rows < col0 + cols
    raw_dot = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    end = tl.multiple_of(end, DIMS_DIV)
    for d0 in range(0, end, BLOCK_D):
        q, k = load_pair(query_ptr, key_ptr, query_rows, key_rows, query_mask, key_mask, d0, end, dim, BLOCK_D)
        raw_dot = dot(q, tl.trans(k), raw_dot, IEEE)
    labels = tl.load(labels_ptr + query_rows, mask=query_mask, other=-1)
    valid = query_mask[:, None] & key_mask[None, :]
    is_label = (key_rows[None, :] == labels[:, None]).to(tl.float32)
    grad, query_factor, key_factor = _level_softmax_grad(
        raw_dot, query_norms_ptr, key_norms_ptr, lse_ptr, is_label, valid, query_rows, key_rows, query_mask, key_mask,
        level, num_queries, num_keys, inv_temperature)
    if TRANSPOSED:
        grad = grad * (query_factor * inv_temperature)[:, None]
        if FOLD:
            grad = grad * (key_factor * row_scale)[None, :]
        out_ptrs = scratch_ptr + (key_rows - col0)[None, :] * rows + (query_rows - row0)[:, None]
    else:
        grad = grad * (key_factor * inv_temperature)[None, :]
        if FOLD:
            grad = grad * (query_factor * row_scale)[:, None]
        out_ptrs = scratch_ptr + (query_rows - row0)[:, None] * cols + (key_rows - col0)[None, :]
    tl.store(out_ptrs, grad.to(scratch_ptr.dtype.element_ty), mask=valid)


@triton.jit
def _segment_grad_tile_kernel(
    query_ptr,  # [B, D] queries
    key_ptr,  # [N, D] keys (gathered positives, then shared negatives)
    query_norms_ptr,  # [L, B] fp32 prefix norms of the queries
    key_norms_ptr,  # [L, N] fp32 prefix norms of the keys
    labels_ptr,  # [B] int64: the key index of each query's positive
    lse_ptr,  # [L, B] fp32: each query's in-batch log-sum-exp per level (from the forward)
    dims_ptr,  # [L] int32 MRL prefix dims, increasing
    level_scales_ptr,  # [L] fp32: each level's weight / B
    slots_ptr,  # out, input dtype: [L, rows, cols] (query side) or [L, cols, rows] (key side), one slot per segment
    norm_sums_ptr,  # [L, cols] fp32, added to atomically (key side): per level, sum_i G'_l[j, i] * raw_dot_l[i, j]
    num_queries,  # B
    num_keys,  # N
    dim,  # D, the row stride
    num_levels,  # L
    row0,  # first query of the chunk
    rows,  # queries in the chunk
    col0,  # first key of the chunk
    cols,  # keys in the chunk
    inv_temperature,  # 1 / tau
    TRANSPOSED: tl.constexpr,  # False: the query side's tiles; True: the key side's, transposed
    BLOCK_M: tl.constexpr,  # queries per program
    BLOCK_N: tl.constexpr,  # keys per program
    BLOCK_D: tl.constexpr,  # feature columns per step of the dot product
    DIMS_DIV: tl.constexpr,  # a divisor of every prefix dim (tl.multiple_of: vectorised loads)
    IEEE: tl.constexpr,  # fp32 inputs: IEEE products, not TF32
):
    """Every level's logit gradient for one tile, from one walk along d, summed per prefix segment.

    Segment s holds the columns [dims[s-1], dims[s]); the levels whose prefix contains it are s, s+1, ..., L-1, so
    slot s receives H_s = sum_{l >= s} G_l, where G_l is level l's tile with both row factors folded in (query side:
    (p - y) a_i b_j w_l / (B tau); key side the same, transposed). One GEMM per segment, H_s times that segment's
    columns, then gives every level's gradient at once: the GEMMs together cost one full-width product.
    The walk keeps the running sum R_l = sum_{l' <= l} G_l' in registers and stores -R_{s-1} into slot s as it
    passes; at the end slot s becomes R_{L-1} - R_{s-1} = H_s. Key side: also sum_i G'_l[j, i] * raw_dot_l[i, j]
    (= k_j . (G'_l Q)_j, what the key normalisation needs per level) into ``norm_sums``.
    """
    query_rows = row0 + tl.program_id(1 if TRANSPOSED else 0) * BLOCK_M + tl.arange(0, BLOCK_M)
    key_rows = col0 + tl.program_id(0 if TRANSPOSED else 1) * BLOCK_N + tl.arange(0, BLOCK_N)
    query_mask = query_rows < row0 + rows
    key_mask = key_rows < col0 + cols
    valid = query_mask[:, None] & key_mask[None, :]
    labels = tl.load(labels_ptr + query_rows, mask=query_mask, other=-1)
    is_label = (key_rows[None, :] == labels[:, None]).to(tl.float32)
    if TRANSPOSED:
        slot_offsets = (key_rows - col0)[None, :] * rows + (query_rows - row0)[:, None]
        slot_size = cols * rows
    else:
        slot_offsets = (query_rows - row0)[:, None] * cols + (key_rows - col0)[None, :]
        slot_size = rows * cols
    raw_dot = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    running = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    start = 0
    for level in range(num_levels):
        end = tl.multiple_of(tl.load(dims_ptr + level), DIMS_DIV)
        for d0 in range(start, end, BLOCK_D):
            q, k = load_pair(query_ptr, key_ptr, query_rows, key_rows, query_mask, key_mask, d0, end, dim, BLOCK_D)
            raw_dot = dot(q, tl.trans(k), raw_dot, IEEE)
        start = end
        grad, query_factor, key_factor = _level_softmax_grad(
            raw_dot, query_norms_ptr, key_norms_ptr, lse_ptr, is_label, valid, query_rows, key_rows, query_mask,
            key_mask, level, num_queries, num_keys, inv_temperature)
        scale = tl.load(level_scales_ptr + level) * inv_temperature
        grad = grad * (query_factor * scale)[:, None] * key_factor[None, :]
        running += grad
        if TRANSPOSED:
            tl.atomic_add(norm_sums_ptr + level * cols + (key_rows - col0), tl.sum(grad * raw_dot, axis=0),
                          mask=key_mask)
        if level + 1 < num_levels:
            tl.store(slots_ptr + (level + 1) * slot_size + slot_offsets,
                     (-running).to(slots_ptr.dtype.element_ty), mask=valid)
    tl.store(slots_ptr + slot_offsets, running.to(slots_ptr.dtype.element_ty), mask=valid)
    tl.debug_barrier()  # the loads below read what this program's other threads may have stored
    for level in range(1, num_levels):
        ptrs = slots_ptr + level * slot_size + slot_offsets
        earlier = tl.load(ptrs, mask=valid, other=0.0).to(tl.float32)
        tl.store(ptrs, (running + earlier).to(slots_ptr.dtype.element_ty), mask=valid)


@triton.jit
def _key_segment_epilogue_kernel(
    unit_grad_ptr,  # fp32, segment-major: segment s is a [cols, dims[s] - dims[s-1]] block at offset cols * dims[s-1]
    key_ptr,  # [N, D] keys
    key_norms_ptr,  # [L, N] fp32 prefix norms of the keys
    norm_sums_ptr,  # [L, cols] fp32: per level, k_j . (G'_l Q)_j (the segment tile kernel's sums)
    dims_ptr,  # [L] int32 MRL prefix dims, increasing
    out_ptr,  # [N, D] out, input dtype: dL/dkeys
    grad_output_ptr,  # [1] the incoming gradient of the loss
    col0,  # first key of the chunk
    cols,  # keys in the chunk
    num_keys,  # N
    dim,  # D
    num_levels,  # L
    BLOCK_R: tl.constexpr,  # keys per program
    BLOCK_D: tl.constexpr,  # feature columns per step
):
    """Key gradients of BLOCK_R keys of a chunk, every level at once: in segment s, U_s[j] minus k_j times
    sum_{l >= s} b_l^2 (k_j . U_l[j]) (each level's key-normalisation term, on the columns its prefix covers);
    zero past the last prefix."""
    chunk_rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_mask = chunk_rows < cols
    key_rows = col0 + chunk_rows
    along = tl.zeros((BLOCK_R,), dtype=tl.float32)  # sum over the levels l >= s of b_l^2 (k_j . U_l[j])
    for level in range(num_levels):
        key_norm = tl.load(key_norms_ptr + level * num_keys + key_rows, mask=row_mask, other=1.0)
        key_factor = tl.where(key_norm >= EPS, 1.0 / tl.maximum(key_norm, EPS), 0.0)
        along += key_factor * key_factor * tl.load(norm_sums_ptr + level * cols + chunk_rows, mask=row_mask,
                                                   other=0.0)
    grad_output = tl.load(grad_output_ptr).to(tl.float32)
    start = 0
    for level in range(num_levels):
        end = tl.load(dims_ptr + level)
        width = end - start
        for d0 in range(start, end, BLOCK_D):
            cols_d = d0 + tl.arange(0, BLOCK_D)
            mask = row_mask[:, None] & (cols_d[None, :] < end)
            u = tl.load(unit_grad_ptr + cols * start + chunk_rows[:, None] * width + (cols_d - start)[None, :],
                        mask=mask, other=0.0)
            k = tl.load(key_ptr + key_rows[:, None] * dim + cols_d[None, :], mask=mask, other=0.0).to(tl.float32)
            tl.store(out_ptr + key_rows[:, None] * dim + cols_d[None, :],
                     ((u - k * along[:, None]) * grad_output).to(out_ptr.dtype.element_ty), mask=mask)
        key_norm = tl.load(key_norms_ptr + level * num_keys + key_rows, mask=row_mask, other=1.0)
        key_factor = tl.where(key_norm >= EPS, 1.0 / tl.maximum(key_norm, EPS), 0.0)
        along -= key_factor * key_factor * tl.load(norm_sums_ptr + level * cols + chunk_rows, mask=row_mask,
                                                   other=0.0)
        start = end
    for d0 in range(start, dim, BLOCK_D):  # past the last prefix no level reaches: no in-batch gradient
        cols_d = d0 + tl.arange(0, BLOCK_D)
        mask = row_mask[:, None] & (cols_d[None, :] < dim)
        tl.store(out_ptr + key_rows[:, None] * dim + cols_d[None, :],
                 tl.zeros((BLOCK_R, BLOCK_D), dtype=tl.float32).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _key_epilogue_kernel(
    unit_grad_ptr,  # [cols, end] fp32: G'^T Q for this chunk and level, already times b_j w / B
    key_ptr,  # [N, D] keys
    key_norms_ptr,  # [L, N] fp32 prefix norms of the keys
    accumulator_ptr,  # [cols, D] fp32: the chunk's key gradient summed over the levels so far
    out_ptr,  # [N, D] out, input dtype: dL/dkeys
    grad_output_ptr,  # [1] the incoming gradient of the loss
    col0,  # first key of the chunk
    cols,  # keys in the chunk
    num_keys,  # N
    dim,  # D
    level,  # which MRL level
    end,  # that level's prefix dim
    FIRST: tl.constexpr,  # the first level: write the accumulator instead of adding to it
    LAST: tl.constexpr,  # the last level: write out (times the incoming gradient) instead of the accumulator
    BLOCK_R: tl.constexpr,  # keys per program
    BLOCK_D: tl.constexpr,  # feature columns per step
):
    """One level's key gradients for BLOCK_R keys of a chunk: U[j] - b_j^2 (k_j . U[j]) k_j on the prefix (the
    key-normalisation term), 0 beyond it, added to the levels before."""
    chunk_rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_mask = chunk_rows < cols
    key_rows = col0 + chunk_rows
    along = tl.zeros((BLOCK_R,), dtype=tl.float32)
    for d0 in range(0, end, BLOCK_D):
        cols_d = d0 + tl.arange(0, BLOCK_D)
        mask = row_mask[:, None] & (cols_d[None, :] < end)
        u = tl.load(unit_grad_ptr + chunk_rows[:, None] * end + cols_d[None, :], mask=mask, other=0.0)
        k = tl.load(key_ptr + key_rows[:, None] * dim + cols_d[None, :], mask=mask, other=0.0).to(tl.float32)
        along += tl.sum(u * k, axis=1)
    key_norm = tl.load(key_norms_ptr + level * num_keys + key_rows, mask=row_mask, other=1.0)
    key_factor = tl.where(key_norm >= EPS, 1.0 / tl.maximum(key_norm, EPS), 0.0)
    along = along * key_factor * key_factor
    grad_output = tl.load(grad_output_ptr).to(tl.float32)
    for d0 in range(0, dim, BLOCK_D):
        cols_d = d0 + tl.arange(0, BLOCK_D)
        mask = row_mask[:, None] & (cols_d[None, :] < dim)
        prefix = mask & (cols_d[None, :] < end)
        u = tl.load(unit_grad_ptr + chunk_rows[:, None] * end + cols_d[None, :], mask=prefix, other=0.0)
        k = tl.load(key_ptr + key_rows[:, None] * dim + cols_d[None, :], mask=prefix, other=0.0).to(tl.float32)
        value = u - k * along[:, None]
        if not FIRST:
            value += tl.load(accumulator_ptr + chunk_rows[:, None] * dim + cols_d[None, :], mask=mask, other=0.0)
        if LAST:
            tl.store(out_ptr + key_rows[:, None] * dim + cols_d[None, :],
                     (value * grad_output).to(out_ptr.dtype.element_ty), mask=mask)
        else:
            tl.store(accumulator_ptr + chunk_rows[:, None] * dim + cols_d[None, :], value, mask=mask)


# ---------------------------------------------------------------------------------------------------------------
# Launchers


def prefix_norms(x: torch.Tensor, dims_t: torch.Tensor, dims_div: int) -> torch.Tensor:
    """[levels, rows] fp32: each row's norm over each MRL prefix."""
    rows, dim = x.shape
    out = torch.empty((dims_t.shape[0], rows), dtype=torch.float32, device=x.device)
    _prefix_norms_kernel[(triton.cdiv(rows, 64),)](x, dims_t, out, rows, dim, dims_t.shape[0], BLOCK_R=64,
                                                   BLOCK_D=64 if dim > 32 else 32, DIMS_DIV=dims_div)
    return out


def grad_block_d(dtype: torch.dtype) -> int:
    """Feature columns per step of the large-batch tiles: 64 for 16-bit inputs, 32 for fp32 (twice the bytes)."""
    return 64 if dtype in (torch.float16, torch.bfloat16) else 32


def chunk_size(other: int, element_size: int, block: int, scratch_bytes: int) -> int:
    """Rows of a [chunk, other] scratch that fit ``scratch_bytes`` (a multiple of the tile, at least one tile)."""
    fit = scratch_bytes // max(1, other * element_size)
    return max(block, fit // block * block)


def folds(dtype: torch.dtype) -> bool:
    """Whether the scratch tile carries the row factor w / B (the tile kernel's FOLD): in bf16 and fp32, whose 8-bit
    exponent holds (p - y) a_i b_j w / (B tau) at any batch; in fp16 it underflows at large B (6e-8 is its smallest
    number), so fp16 applies the factor in fp32 after the GEMM instead."""
    return dtype != torch.float16


def _gradient_factor(norms: torch.Tensor) -> torch.Tensor:
    """1 / ||x|| per level and row, 0 for a (near-)zero vector whose direction, hence gradient, is undefined."""
    return torch.where(norms >= 1e-12, 1.0 / norms.clamp_min(1e-12), torch.zeros_like(norms))


def logit_grad_tiles(q: torch.Tensor, keys: torch.Tensor, q_norms: torch.Tensor, k_norms: torch.Tensor,
                     labels: torch.Tensor, lse: torch.Tensor, scratch: torch.Tensor, *, level: int, end: int,
                     rows: tuple[int, int], cols: tuple[int, int], inv_temperature: float, transposed: bool,
                     dims_div: int, tiles: TileShape, row_scale: float) -> None:
    """Fill ``scratch`` with one level's logit gradients for queries rows = (first, count) x keys cols = (first,
    count): [count_q, count_k] on the query side, transposed on the key side."""
    (row0, num_rows), (col0, num_cols) = rows, cols
    grid = (triton.cdiv(num_rows, tiles.block_m), triton.cdiv(num_cols, tiles.block_n))
    _logit_grad_tile_kernel[grid[::-1] if transposed else grid](
        q, keys, q_norms, k_norms, labels, lse, scratch, q.shape[0], keys.shape[0], q.shape[1], level, end, row0,
        num_rows, col0, num_cols, inv_temperature, row_scale, TRANSPOSED=transposed, BLOCK_M=tiles.block_m,
        BLOCK_N=tiles.block_n, BLOCK_D=grad_block_d(q.dtype), DIMS_DIV=dims_div, IEEE=q.dtype == torch.float32,
        FOLD=folds(q.dtype), num_warps=tiles.num_warps, num_stages=tiles.num_stages)


def segment_grad_tiles(q: torch.Tensor, keys: torch.Tensor, q_norms: torch.Tensor, k_norms: torch.Tensor,
                       labels: torch.Tensor, lse: torch.Tensor, dims_t: torch.Tensor, level_scales: torch.Tensor,
                       slots: torch.Tensor, norm_sums: torch.Tensor | None, *, rows: tuple[int, int],
                       cols: tuple[int, int], inv_temperature: float, transposed: bool, dims_div: int,
                       tiles: TileShape) -> None:
    """Fill ``slots`` [L, ...] with the per-segment sums of every level's logit gradients for queries rows = (first,
    count) x keys cols = (first, count), in one launch; the key side (``transposed``) also adds each level's
    normalisation sums into ``norm_sums`` [L, count_k]."""
    (row0, num_rows), (col0, num_cols) = rows, cols
    grid = (triton.cdiv(num_rows, tiles.block_m), triton.cdiv(num_cols, tiles.block_n))
    _segment_grad_tile_kernel[grid[::-1] if transposed else grid](
        q, keys, q_norms, k_norms, labels, lse, dims_t, level_scales, slots,
        norm_sums if norm_sums is not None else lse, q.shape[0], keys.shape[0], q.shape[1], dims_t.shape[0], row0,
        num_rows, col0, num_cols, inv_temperature, TRANSPOSED=transposed, BLOCK_M=tiles.block_m,
        BLOCK_N=tiles.block_n, BLOCK_D=grad_block_d(q.dtype), DIMS_DIV=dims_div, IEEE=q.dtype == torch.float32,
        num_warps=tiles.num_warps, num_stages=tiles.num_stages)


def segments(dims: Sequence[int]) -> list[tuple[int, int]]:
    """[(start, end)] of each prefix segment: [0, d_1), [d_1, d_2), ..., [d_{L-1}, d_L)."""
    return list(zip((0, *dims[:-1]), dims, strict=True))


def segmented(dtype: torch.dtype, dims: Sequence[int], settings_allow: bool = True) -> bool:
    """Whether the backward takes the one-pass path for MRL levels: several levels, the factors folded into the
    tiles (bf16 and fp32; fp16 applies them per level after the GEMM, so its levels cannot be summed first)."""
    return settings_allow and len(dims) > 1 and folds(dtype)


def _product_into(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor, accumulate: bool) -> None:
    """out (fp32) = or += a @ b, in one GEMM whatever a's dtype: cuBLAS takes bf16/fp16 operands with an fp32
    output; the CPU (tests: fp32 only on this path) multiplies in fp32."""
    if a.dtype == torch.float32:
        if accumulate:
            out.addmm_(a, b)
        else:
            torch.mm(a, b, out=out)
    elif not _fp32_output_gemm() or not out.is_contiguous():  # the product, then one add (or copy)
        product = torch.mm(a, b, out_dtype=torch.float32) if _fp32_output_gemm() else torch.mm(a, b).float()
        out.add_(product) if accumulate else out.copy_(product)
    elif accumulate:
        torch.addmm(out, a, b, out_dtype=torch.float32, out=out)
    else:
        torch.mm(a, b, out_dtype=torch.float32, out=out)


@functools.cache
def _fp32_output_gemm() -> bool:
    """Whether this torch has cuBLAS GEMMs with 16-bit operands and an fp32 output (``out_dtype``, torch >= 2.8);
    without it the product is rounded to the input dtype once, then added in fp32."""
    if not torch.cuda.is_available():  # a CPU build raises AssertionError on any CUDA tensor
        return False
    try:
        a = torch.ones(2, 2, dtype=torch.bfloat16, device="cuda")
        return torch.mm(a, a, out_dtype=torch.float32).dtype == torch.float32
    except (TypeError, RuntimeError):
        return False


def _chunks(total: int, other: int, like: torch.Tensor, block: int, scratch_bytes: int, zero: bool = True):
    """Walk ``total`` rows in chunks that keep a [chunk, other] scratch at ``scratch_bytes``: yield (first, count,
    that chunk's [count, other] scratch in the input dtype, its fp32 [count, d] accumulator, zeroed if ``zero``).
    The two buffers are allocated once and reused by every chunk."""
    step = chunk_size(other, like.element_size(), block, scratch_bytes)
    scratch = torch.empty(min(step, total) * other, dtype=like.dtype, device=like.device)
    accumulator = torch.empty((min(step, total), like.shape[1]), dtype=torch.float32, device=like.device)
    for first in range(0, total, step):
        count = min(step, total - first)
        yield (first, count, scratch[: count * other].view(count, other),
               accumulator[:count].zero_() if zero else accumulator)


def query_grad_chunks(q: torch.Tensor, keys: torch.Tensor, labels: torch.Tensor, dims: Sequence[int],
                      weights: Sequence[float], lse: torch.Tensor, q_norms: torch.Tensor, k_norms: torch.Tensor, *,
                      inv_temperature: float, inv_batch: float, dims_div: int, tiles: TileShape,
                      scratch_bytes: int, segment_levels: bool = True) -> Iterator[tuple[int, int, torch.Tensor]]:
    """Yield (first row, rows, fp32 in-batch gradient of those queries before the incoming grad): [rows, d], or with
    several MRL levels on the one-pass path (``segmented``) the segment-major buffer (segment s a contiguous
    [rows, d_s - d_{s-1}] block at offset rows * d_{s-1}; nothing past the last prefix)."""
    batch, num_keys = q.shape[0], keys.shape[0]
    if segmented(q.dtype, dims, segment_levels):
        yield from _query_grad_segments(q, keys, labels, dims, weights, lse, q_norms, k_norms,
                                        inv_temperature=inv_temperature, inv_batch=inv_batch, dims_div=dims_div,
                                        tiles=tiles, scratch_bytes=scratch_bytes)
        return
    fold = folds(q.dtype)
    factors = None if fold else _gradient_factor(q_norms)
    for row0, rows, scratch, acc in _chunks(batch, num_keys, q, tiles.block_m, scratch_bytes, zero=len(dims) > 1):
        for level, (end, weight) in enumerate(zip(dims, weights, strict=True)):
            logit_grad_tiles(q, keys, q_norms, k_norms, labels, lse, scratch, level=level, end=end,
                             rows=(row0, rows), cols=(0, num_keys), inv_temperature=inv_temperature,
                             transposed=False, dims_div=dims_div, tiles=tiles, row_scale=weight * inv_batch)
            if fold:  # one GEMM straight into the fp32 accumulator (the first one writes it: one level, no zeroing)
                _product_into(acc[:rows, :end], scratch, keys[:, :end], accumulate=len(dims) > 1)
            else:
                part = torch.mm(scratch, keys[:, :end]).float()
                acc[:, :end] += part.mul_((factors[level, row0:row0 + rows] * (weight * inv_batch))[:, None])
        yield row0, rows, acc[:rows]


def _level_tensors(q: torch.Tensor, dims: Sequence[int], weights: Sequence[float],
                   inv_batch: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The prefix dims (int32) and each level's w / B (fp32) on the inputs' device, for the one-pass kernels."""
    return (torch.tensor(list(dims), dtype=torch.int32, device=q.device),
            torch.tensor([w * inv_batch for w in weights], dtype=torch.float32, device=q.device))


def _query_grad_segments(q: torch.Tensor, keys: torch.Tensor, labels: torch.Tensor, dims: Sequence[int],
                         weights: Sequence[float], lse: torch.Tensor, q_norms: torch.Tensor, k_norms: torch.Tensor,
                         *, inv_temperature: float, inv_batch: float, dims_div: int, tiles: TileShape,
                         scratch_bytes: int) -> Iterator[tuple[int, int, torch.Tensor]]:
    """The query side with every MRL level in one tile launch per chunk, then one GEMM per segment into its own
    contiguous block of the accumulator (no strided prefix written, so no copy)."""
    batch, num_keys = q.shape[0], keys.shape[0]
    levels = len(dims)
    dims_t, level_scales = _level_tensors(q, dims, weights, inv_batch)
    step = chunk_size(num_keys * levels, q.element_size(), tiles.block_m, scratch_bytes)
    slots_buffer = torch.empty(levels * min(step, batch) * num_keys, dtype=q.dtype, device=q.device)
    accumulator = torch.empty(min(step, batch) * dims[-1], dtype=torch.float32, device=q.device)
    for row0 in range(0, batch, step):
        rows = min(step, batch - row0)
        slots = slots_buffer[: levels * rows * num_keys].view(levels, rows, num_keys)
        segment_grad_tiles(q, keys, q_norms, k_norms, labels, lse, dims_t, level_scales, slots, None,
                           rows=(row0, rows), cols=(0, num_keys), inv_temperature=inv_temperature, transposed=False,
                           dims_div=dims_div, tiles=tiles)
        for level, (start, end) in enumerate(segments(dims)):
            _product_into(accumulator[rows * start: rows * end].view(rows, end - start), slots[level],
                          keys[:, start:end], accumulate=False)
        yield row0, rows, accumulator[: rows * dims[-1]]


def _key_grad_segments(q: torch.Tensor, keys: torch.Tensor, labels: torch.Tensor, dims: Sequence[int],
                       weights: Sequence[float], lse: torch.Tensor, q_norms: torch.Tensor, k_norms: torch.Tensor, *,
                       inv_temperature: float, inv_batch: float, dims_div: int, tiles: TileShape,
                       scratch_bytes: int, grad_output: torch.Tensor) -> torch.Tensor:
    """The key side with every MRL level in one tile launch per chunk (which also sums each level's normalisation
    term), one GEMM per segment, one epilogue launch."""
    batch, num_keys = q.shape[0], keys.shape[0]
    levels = len(dims)
    dims_t, level_scales = _level_tensors(q, dims, weights, inv_batch)
    step = chunk_size(batch * levels, q.element_size(), tiles.block_n, scratch_bytes)
    slots_buffer = torch.empty(levels * min(step, num_keys) * batch, dtype=q.dtype, device=q.device)
    unit_grad = torch.empty(min(step, num_keys) * dims[-1], dtype=torch.float32, device=q.device)
    sums_buffer = torch.empty(levels * min(step, num_keys), dtype=torch.float32, device=q.device)
    out = torch.empty_like(keys)
    for col0 in range(0, num_keys, step):
        cols = min(step, num_keys - col0)
        slots = slots_buffer[: levels * cols * batch].view(levels, cols, batch)
        norm_sums = sums_buffer[: levels * cols].view(levels, cols).zero_()
        segment_grad_tiles(q, keys, q_norms, k_norms, labels, lse, dims_t, level_scales, slots, norm_sums,
                           rows=(0, batch), cols=(col0, cols), inv_temperature=inv_temperature, transposed=True,
                           dims_div=dims_div, tiles=tiles)
        for level, (start, end) in enumerate(segments(dims)):
            _product_into(unit_grad[cols * start: cols * end].view(cols, end - start), slots[level],
                          q[:, start:end], accumulate=False)
        _key_segment_epilogue_kernel[(triton.cdiv(cols, EPILOGUE_ROWS),)](
            unit_grad, keys, k_norms, norm_sums, dims_t, out, grad_output, col0, cols, num_keys, q.shape[1], levels,
            BLOCK_R=EPILOGUE_ROWS, BLOCK_D=64)
    return out


def key_grads(q: torch.Tensor, keys: torch.Tensor, labels: torch.Tensor, dims: Sequence[int],
              weights: Sequence[float], lse: torch.Tensor, q_norms: torch.Tensor, k_norms: torch.Tensor, *,
              inv_temperature: float, inv_batch: float, dims_div: int, tiles: TileShape, scratch_bytes: int,
              grad_output: torch.Tensor, segment_levels: bool = True) -> torch.Tensor:
    """dL/dkeys, chunk by chunk of keys; the key-normalisation term comes from the GEMM result itself (one pass per
    level) or from sums the tile kernel keeps (several levels on the one-pass path)."""
    if segmented(q.dtype, dims, segment_levels):
        return _key_grad_segments(q, keys, labels, dims, weights, lse, q_norms, k_norms,
                                  inv_temperature=inv_temperature, inv_batch=inv_batch, dims_div=dims_div,
                                  tiles=tiles, scratch_bytes=scratch_bytes, grad_output=grad_output)
    batch, num_keys = q.shape[0], keys.shape[0]
    out = torch.empty_like(keys)
    if folds(q.dtype):
        # per chunk and level: the tile, one GEMM into U, one epilogue (normalisation term, accumulate, write out)
        dim = q.shape[1]
        step = chunk_size(batch, q.element_size(), tiles.block_n, scratch_bytes)
        unit_grad_buffer = torch.empty(min(step, num_keys) * dim, dtype=torch.float32, device=q.device)
        for col0, cols, scratch, acc in _chunks(num_keys, batch, q, tiles.block_n, scratch_bytes, zero=False):
            for level, (end, weight) in enumerate(zip(dims, weights, strict=True)):
                logit_grad_tiles(q, keys, q_norms, k_norms, labels, lse, scratch, level=level, end=end,
                                 rows=(0, batch), cols=(col0, cols), inv_temperature=inv_temperature,
                                 transposed=True, dims_div=dims_div, tiles=tiles, row_scale=weight * inv_batch)
                unit_grad = unit_grad_buffer[: cols * end].view(cols, end)
                _product_into(unit_grad, scratch, q[:, :end], accumulate=False)
                _key_epilogue_kernel[(triton.cdiv(cols, EPILOGUE_ROWS),)](
                    unit_grad, keys, k_norms, acc, out, grad_output, col0, cols, num_keys, dim, level, end,
                    FIRST=level == 0, LAST=level == len(dims) - 1, BLOCK_R=EPILOGUE_ROWS, BLOCK_D=64)
        return out
    factors = _gradient_factor(k_norms)
    for col0, cols, scratch, acc in _chunks(num_keys, batch, q, tiles.block_n, scratch_bytes):
        for level, (end, weight) in enumerate(zip(dims, weights, strict=True)):
            logit_grad_tiles(q, keys, q_norms, k_norms, labels, lse, scratch, level=level, end=end, rows=(0, batch),
                             cols=(col0, cols), inv_temperature=inv_temperature, transposed=True,
                             dims_div=dims_div, tiles=tiles, row_scale=1.0)
            key_factor = factors[level, col0:col0 + cols]
            unit_grad = torch.mm(scratch, q[:, :end]).float().mul_((key_factor * (weight * inv_batch))[:, None])
            key_prefix = keys[col0:col0 + cols, :end].float()
            # d/dk of k / ||k||: remove the component along k (sum_i dL/ds_ij s_ij = k_j . unit_grad_j)
            along = (key_prefix * unit_grad).sum(dim=1) * key_factor * key_factor
            acc[:, :end] += unit_grad.sub_(key_prefix * along[:, None])  # key_prefix may be the keys themselves
        out[col0:col0 + cols] = (acc * grad_output).to(out.dtype)
    return out
