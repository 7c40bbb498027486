"""F2LLM's loss as one fused autograd op in Triton: both losses, every MRL level, memory linear in B + N.

The trick that makes all MRL levels nearly free: levels are prefixes (8, 16, ..., d), so one pass over the
feature dim computes every level's dot products. The kernels walk d segment by segment ([0, 8), [8, 16),
[16, 32), ...); after each segment the running accumulator holds the raw prefix dot product of that level,
and running sums of squares hold the prefix norms. That level's logits are then ``acc * a_i * b_j / tau``.

Kernels (4 launches per forward + backward; no atomics in backward, no fp32 gradient scratch):
1. ``_in_batch_stats_kernel``: grid (query blocks, key splits). Per tile and level: softmax statistics of the
   in-batch logits (row max, sum of exp, softmax-weighted sum of logits), merged over the split's key blocks
   and written once per split. Splitting over keys as well as queries keeps a GPU busy with 16 local queries; the
   number of splits is what fills the GPU (``KernelSettings.target_programs``), no more. The maximum is fixed at
   1 / tau (logits are cosines / tau) where exp(-2 / tau) is a normal fp32 number, which saves the online
   rescaling of every level's state per tile; an online maximum otherwise. No B x N tensor is
   ever written.
2. ``_row_loss_kernel``: one program per query. Combines the per-split statistics into a log-sum-exp per level,
   computes the positive's logit, the hard-negative softmax (positive + its k negatives) and the loss, and stores
   the per-row coefficients of the backward (hard-negative and normalisation terms; linear in the incoming
   gradient).
3. ``_query_grad_kernel``: grid (query blocks, feature-column blocks). Loops over all keys, recomputing each tile,
   and accumulates dq for its columns in registers from every level whose prefix reaches them; adds the per-row
   terms; writes dq and the hard candidates' gradients in the input dtype.
4. ``_key_grad_kernel``: grid (key blocks, feature-column blocks). The same over all queries for dk, including
   the column sums that the key normalisation needs, which it owns entirely.
Splitting the backward over feature columns costs recomputation (d / 256 tile passes per side) but keeps the
accumulators in registers: no atomics and no [B + N, d] fp32 buffer. That is the right trade for F2LLM's 16 x 512
problem (launches dominate) and the wrong one for 65,536 x 65,536 (the recomputed logits dominate).

Two strategies, picked per call by ``KernelSettings.strategy_for`` (the settings can force either):
- ``registers`` (fewer than ``large_batch_min_pairs`` query-key pairs, or no in-batch loss): the 4 kernels above;
- ``large_batch``: the forward reads prefix norms computed once instead of summing squares in every tile, with
  GEMM-sized tiles; the in-batch backward recomputes each logit once per side and sends its gradient through a
  bounded scratch and one GEMM per chunk (``fused_large_batch``); ``_query_grad_kernel`` then adds the per-row
  terms to each chunk of queries. Extra memory: ``KernelSettings.scratch_bytes`` (32 MiB) plus O((B + N) x levels)
  floats, whatever B and N are.

Normalisation gradient: for x_hat = x * a with a = 1 / ||x||, dL/dx = a * dL/dx_hat - a^2 (x_hat . dL/dx_hat) x.
The scalar (x_hat . dL/dx_hat) equals sum_j dL/ds_ij * s_ij, which is accumulated tile by tile.
A vector of norm below 1e-12 is given a zero gradient (its direction is undefined; PyTorch's F.normalize
would return a gradient of order 1e12 there).

Layout (as Liger-Kernel's): kernels, then launcher functions (one per kernel, plus ``fused_forward`` and
``fused_backward``), then the thin autograd class ``FusedContrastiveFunction`` and ``fused_loss``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from . import fused_large_batch
from .fused_common import EPS, dot, load_pair
from .kernel_settings import KernelSettings

# ---------------------------------------------------------------------------------------------------------------
# Kernels


@triton.jit
def _in_batch_stats_kernel(
    query_ptr,  # [B, D] queries
    key_ptr,  # [N, D] keys (gathered positives, then shared negatives)
    query_norms_ptr,  # [L, B] fp32 prefix norms (read when PRENORM, else a dummy)
    key_norms_ptr,  # [L, N] fp32 prefix norms (read when PRENORM, else a dummy)
    dims_ptr,  # [L] int32 MRL prefix dims, increasing
    split_max_ptr,  # [splits, L, B] fp32 out: running max of each query's logits over the split's keys
    split_sum_ptr,  # [splits, L, B] fp32 out: sum of exp(logit - max)
    split_weighted_ptr,  # [splits, L, B] fp32 out: sum of exp(logit - max) * logit
    loss_ptr,  # [1] fp32: zeroed here; the row kernel, launched next, accumulates into it
    num_queries,  # B
    num_keys,  # N
    dim,  # D, the row stride
    num_levels,  # L
    inv_temperature,  # 1 / tau
    blocks_per_split,  # key blocks each program merges online
    LEVELS_POW2: tl.constexpr,  # L rounded up to a power of two (the per-level register columns)
    BLOCK_M: tl.constexpr,  # queries per program
    BLOCK_N: tl.constexpr,  # keys per tile
    BLOCK_D: tl.constexpr,  # feature columns per step of the dot product
    PRENORM: tl.constexpr,  # read the prefix norms instead of summing squares in every tile (large-batch path)
    DIMS_DIV: tl.constexpr,  # a divisor of every prefix dim (tl.multiple_of: vectorised loads)
    IEEE: tl.constexpr,  # fp32 inputs: IEEE products, not TF32
    FIXED_MAX: tl.constexpr,  # 1 / tau as every row's maximum (exp2, no rescaling): only where 2 / tau < 80
):
    """One query block x one split of the keys: per level, softmax statistics merged in registers, against the
    fixed maximum 1 / tau (FIXED_MAX: every exp(logit - 1 / tau) >= exp(-2 / tau) stays a normal fp32 number) or an
    online maximum."""
    query_block = tl.program_id(0)
    split = tl.program_id(1)
    if (query_block == 0) & (split == 0):
        tl.store(loss_ptr, 0.0)
    query_rows = query_block * BLOCK_M + tl.arange(0, BLOCK_M)
    query_mask = query_rows < num_queries
    levels = tl.arange(0, LEVELS_POW2)
    run_max = tl.full((BLOCK_M, LEVELS_POW2), float("-inf"), dtype=tl.float32)
    run_sum = tl.zeros((BLOCK_M, LEVELS_POW2), dtype=tl.float32)
    run_weighted = tl.zeros((BLOCK_M, LEVELS_POW2), dtype=tl.float32)
    first_block = split * blocks_per_split
    last_block = tl.minimum(first_block + blocks_per_split, tl.cdiv(num_keys, BLOCK_N))
    for key_block in range(first_block, last_block):
        key_rows = key_block * BLOCK_N + tl.arange(0, BLOCK_N)
        key_mask = key_rows < num_keys
        raw_dot = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        query_sq = tl.zeros((BLOCK_M,), dtype=tl.float32)
        key_sq = tl.zeros((BLOCK_N,), dtype=tl.float32)
        start = 0
        for level in range(num_levels):
            end = tl.multiple_of(tl.load(dims_ptr + level), DIMS_DIV)
            for d0 in range(start, end, BLOCK_D):
                q, k = load_pair(query_ptr, key_ptr, query_rows, key_rows, query_mask, key_mask, d0, end, dim,
                                 BLOCK_D)
                raw_dot = dot(q, tl.trans(k), raw_dot, IEEE)
                if not PRENORM:
                    q32 = q.to(tl.float32)
                    k32 = k.to(tl.float32)
                    query_sq += tl.sum(q32 * q32, axis=1)
                    key_sq += tl.sum(k32 * k32, axis=1)
            start = end
            if PRENORM:
                query_norm = tl.load(query_norms_ptr + level * num_queries + query_rows, mask=query_mask, other=1.0)
                key_norm = tl.load(key_norms_ptr + level * num_keys + key_rows, mask=key_mask, other=1.0)
            else:
                query_norm = tl.sqrt(query_sq)
                key_norm = tl.sqrt(key_sq)
            inv_query_norm = 1.0 / tl.maximum(query_norm, EPS)
            inv_key_norm = 1.0 / tl.maximum(key_norm, EPS)
            logits = tl.where(key_mask[None, :],
                              raw_dot * inv_query_norm[:, None] * inv_key_norm[None, :] * inv_temperature, 0.0)
            this_level = levels[None, :] == level
            if FIXED_MAX:  # logits are cosines / tau, at most 1 / tau: that bound is the maximum, no rescaling
                probs = tl.where(key_mask[None, :], tl.exp2((logits - inv_temperature) * 1.4426950408889634), 0.0)
                run_sum += tl.where(this_level, tl.sum(probs, axis=1)[:, None], 0.0)
                run_weighted += tl.where(this_level, tl.sum(probs * logits, axis=1)[:, None], 0.0)
            else:
                tile_max = tl.max(tl.where(key_mask[None, :], logits, float("-inf")), axis=1)
                probs = tl.where(key_mask[None, :], tl.exp(logits - tile_max[:, None]), 0.0)
                old_max = tl.sum(tl.where(this_level, run_max, 0.0), axis=1)
                old_max = tl.where(key_block == first_block, float("-inf"), old_max)
                new_max = tl.maximum(old_max, tile_max)
                keep = tl.exp(old_max - new_max)
                add = tl.exp(tile_max - new_max)
                new_sum = tl.sum(tl.where(this_level, run_sum, 0.0), axis=1) * keep + tl.sum(probs, axis=1) * add
                new_weighted = (tl.sum(tl.where(this_level, run_weighted, 0.0), axis=1) * keep
                                + tl.sum(probs * logits, axis=1) * add)
                run_max = tl.where(this_level, new_max[:, None], run_max)
                run_sum = tl.where(this_level, new_sum[:, None], run_sum)
                run_weighted = tl.where(this_level, new_weighted[:, None], run_weighted)
    if FIXED_MAX:
        run_max = tl.full((BLOCK_M, LEVELS_POW2), inv_temperature, dtype=tl.float32)
    offsets = (split * num_levels + levels[None, :]) * num_queries + query_rows[:, None]
    mask = query_mask[:, None] & (levels[None, :] < num_levels)
    tl.store(split_max_ptr + offsets, run_max, mask=mask)
    tl.store(split_sum_ptr + offsets, run_sum, mask=mask)
    tl.store(split_weighted_ptr + offsets, run_weighted, mask=mask)


@triton.jit
def _row_loss_kernel(
    query_ptr,  # [B, D] queries
    positive_ptr,  # [B, D] each query's positive
    hard_ptr,  # [B, KH, D] each query's hard negatives (a dummy when HAS_HARD is False)
    key_ptr,  # [N, D] in-batch keys (a dummy when HAS_IN_BATCH is False)
    labels_ptr,  # [B] int64: the key index of each query's positive
    dims_ptr,  # [L] int32 MRL prefix dims, increasing
    level_weights_ptr,  # [L] fp32 MRL weights
    split_max_ptr,  # [splits, L, B] fp32: the statistics kernel's output
    split_sum_ptr,  # [splits, L, B] fp32
    split_weighted_ptr,  # [splits, L, B] fp32
    lse_ptr,  # [L, B] fp32 out: the in-batch log-sum-exp per level (the backward's softmax)
    hard_alpha_ptr,  # [L, B, KP] fp32 out: dq += alpha_c cand_c; dcand_c = alpha_c q + ...
    hard_delta_ptr,  # [L, B, KP] fp32 out: ... + delta_c cand_c
    query_beta_ptr,  # [L, B] fp32 out: dq += beta q (the query-normalisation terms)
    loss_ptr,  # [1] fp32: accumulates the mean loss
    num_queries,  # B
    dim,  # D, the row stride
    num_levels,  # L
    num_hard,  # KH, hard negatives per query
    num_splits,  # key splits of the statistics kernel
    inv_temperature,  # 1 / tau
    inv_batch,  # 1 / B
    HAS_IN_BATCH: tl.constexpr,  # add the in-batch loss
    HAS_HARD: tl.constexpr,  # add the hard-negative loss
    KP: tl.constexpr,  # KH + 1 candidates rounded up to a power of two
    BLOCK_D: tl.constexpr,  # feature columns per step
    DIMS_DIV: tl.constexpr,  # a divisor of every prefix dim (tl.multiple_of: vectorised loads)
):
    """Per query: combine the key splits' statistics, hard-negative softmax, loss; and the per-row coefficients the
    backward needs (all linear in the incoming gradient, so they are stored without it):
    dq += beta q + sum_c alpha_c cand_c, dcand_c = alpha_c q + delta_c cand_c, per level, on its prefix."""
    row = tl.program_id(0)
    candidates = tl.arange(0, KP)  # candidate 0 = the positive, 1..KH = the query's hard negatives
    candidate_mask = candidates < num_hard + 1
    query_sq = 0.0
    label_dot = 0.0
    label_sq = 0.0
    candidate_sq = tl.zeros((KP,), dtype=tl.float32)
    candidate_dot = tl.zeros((KP,), dtype=tl.float32)
    label = 0
    if HAS_IN_BATCH:
        label = tl.load(labels_ptr + row)
    row_loss = 0.0
    start = 0
    for level in range(num_levels):
        end = tl.multiple_of(tl.load(dims_ptr + level), DIMS_DIV)
        for d0 in range(start, end, BLOCK_D):
            cols = d0 + tl.arange(0, BLOCK_D)
            col_mask = cols < end
            q = tl.load(query_ptr + row * dim + cols, mask=col_mask, other=0.0).to(tl.float32)
            query_sq += tl.sum(q * q, axis=0)
            if HAS_HARD:
                positive = tl.load(positive_ptr + row * dim + cols, mask=col_mask, other=0.0).to(tl.float32)
                hard_ptrs = hard_ptr + (row * num_hard + candidates[:, None] - 1) * dim + cols[None, :]
                hard = tl.load(hard_ptrs, mask=(candidates[:, None] >= 1) & candidate_mask[:, None]
                               & col_mask[None, :], other=0.0)
                candidate = tl.where(candidates[:, None] == 0, positive[None, :], hard.to(tl.float32))
                candidate_dot += tl.sum(candidate * q[None, :], axis=1)
                candidate_sq += tl.sum(candidate * candidate, axis=1)
            if HAS_IN_BATCH:
                k = tl.load(key_ptr + label * dim + cols, mask=col_mask, other=0.0).to(tl.float32)
                label_dot += tl.sum(q * k, axis=0)
                label_sq += tl.sum(k * k, axis=0)
        start = end
        query_norm = tl.sqrt(query_sq)
        inv_query_norm = 1.0 / tl.maximum(query_norm, EPS)
        query_factor = tl.where(query_norm >= EPS, inv_query_norm, 0.0)  # a zero vector gets no gradient
        scale = tl.load(level_weights_ptr + level) * inv_batch  # dL/dloss_level per row, without the incoming grad
        level_loss = 0.0
        beta = 0.0
        if HAS_HARD:
            candidate_norm = tl.sqrt(candidate_sq)
            inv_candidate_norm = 1.0 / tl.maximum(candidate_norm, EPS)
            candidate_factor = tl.where(candidate_norm >= EPS, inv_candidate_norm, 0.0)
            hard_logits = tl.where(candidate_mask, candidate_dot * inv_query_norm * inv_candidate_norm
                                   * inv_temperature, float("-inf"))
            hard_max = tl.max(hard_logits, axis=0)
            hard_lse = hard_max + tl.log(tl.sum(tl.exp(hard_logits - hard_max), axis=0))
            level_loss += hard_lse - tl.sum(tl.where(candidates == 0, hard_logits, 0.0), axis=0)
            grad_logits = tl.where(candidate_mask, scale * (tl.exp(hard_logits - hard_lse)
                                                             - (candidates == 0).to(tl.float32)), 0.0)
            grad_times_logits = grad_logits * tl.where(candidate_mask, hard_logits, 0.0)
            coef_offsets = (level * num_queries + row) * KP + candidates
            tl.store(hard_alpha_ptr + coef_offsets, grad_logits * query_factor * candidate_factor * inv_temperature)
            tl.store(hard_delta_ptr + coef_offsets, -candidate_factor * candidate_factor * grad_times_logits)
            beta += -query_factor * query_factor * tl.sum(grad_times_logits, axis=0)
        if HAS_IN_BATCH:
            run_max = float("-inf")
            run_sum = 0.0
            run_weighted = 0.0
            for split in range(num_splits):
                stat = (split * num_levels + level) * num_queries + row
                split_max = tl.load(split_max_ptr + stat)
                new_max = tl.maximum(run_max, split_max)
                keep = tl.exp(run_max - new_max)
                add = tl.exp(split_max - new_max)
                run_sum = run_sum * keep + tl.load(split_sum_ptr + stat) * add
                run_weighted = run_weighted * keep + tl.load(split_weighted_ptr + stat) * add
                run_max = new_max
            lse = run_max + tl.log(run_sum)
            label_logit = label_dot * inv_query_norm * (1.0 / tl.maximum(tl.sqrt(label_sq), EPS)) * inv_temperature
            tl.store(lse_ptr + level * num_queries + row, lse)
            level_loss += lse - label_logit
            # query-norm correction: -a^2 sum_j dL/ds_ij s_ij = -a^2 scale (E_softmax[s] - s_label)
            beta += -query_factor * query_factor * scale * (run_weighted / run_sum - label_logit)
        tl.store(query_beta_ptr + level * num_queries + row, beta)
        row_loss += tl.load(level_weights_ptr + level) * level_loss
    tl.atomic_add(loss_ptr, row_loss * inv_batch)


@triton.jit
def _tile_logit_grad(query_ptr, key_ptr, labels_ptr, level_weights_ptr, lse_ptr, query_rows, key_rows, level, start,
                     end, raw_dot, query_sq, key_sq, num_queries, num_keys, dim, inv_temperature, inv_batch,
                     BLOCK_D: tl.constexpr, IEEE: tl.constexpr):
    """Advance one tile's prefix walk from ``start`` to ``end`` (the running raw dot product and sums of squares
    come in and go out); return dL/d(raw prefix dot) and dL/dlogits * logits for that level (both without the
    incoming gradient), and the keys' gradient factors b_j (0 for a zero vector)."""
    query_mask = query_rows < num_queries
    key_mask = key_rows < num_keys
    for d0 in range(start, end, BLOCK_D):
        q, k = load_pair(query_ptr, key_ptr, query_rows, key_rows, query_mask, key_mask, d0, end, dim, BLOCK_D)
        raw_dot = dot(q, tl.trans(k), raw_dot, IEEE)
        q32 = q.to(tl.float32)
        k32 = k.to(tl.float32)
        query_sq += tl.sum(q32 * q32, axis=1)
        key_sq += tl.sum(k32 * k32, axis=1)
    valid = query_mask[:, None] & key_mask[None, :]
    query_norm = tl.sqrt(query_sq)
    key_norm = tl.sqrt(key_sq)
    inv_query_norm = 1.0 / tl.maximum(query_norm, EPS)
    inv_key_norm = 1.0 / tl.maximum(key_norm, EPS)
    logits = tl.where(valid, raw_dot * inv_query_norm[:, None] * inv_key_norm[None, :] * inv_temperature, 0.0)
    lse = tl.load(lse_ptr + level * num_queries + query_rows, mask=query_mask, other=0.0)
    labels = tl.load(labels_ptr + query_rows, mask=query_mask, other=-1)
    is_label = ((key_rows[None, :] == labels[:, None]) & valid).to(tl.float32)
    grad_logits = tl.where(valid, tl.exp(logits - lse[:, None]), 0.0) - is_label
    grad_logits = grad_logits * (tl.load(level_weights_ptr + level) * inv_batch)
    query_factor = tl.where(query_norm >= EPS, inv_query_norm, 0.0)
    key_factor = tl.where(key_norm >= EPS, inv_key_norm, 0.0)
    grad_raw_dot = grad_logits * query_factor[:, None] * key_factor[None, :] * inv_temperature
    return grad_raw_dot, grad_logits * logits, raw_dot, query_sq, key_sq, key_factor


@triton.jit
def _query_grad_kernel(
    query_ptr,  # [B, D] queries
    positive_ptr,  # [B, D] positives
    hard_ptr,  # [B, KH, D] hard negatives (a dummy when HAS_HARD is False)
    key_ptr,  # [N, D] in-batch keys
    labels_ptr,  # [B] int64: the key index of each query's positive
    dims_ptr,  # [L] int32 MRL prefix dims, increasing
    level_weights_ptr,  # [L] fp32 MRL weights
    lse_ptr,  # [L, B] fp32 in-batch log-sum-exp per level
    hard_alpha_ptr,  # [L, B, KP] fp32 per-row coefficients (the row kernel's output)
    hard_delta_ptr,  # [L, B, KP] fp32
    query_beta_ptr,  # [L, B] fp32
    grad_output_ptr,  # [1] the incoming gradient of the loss
    extra_ptr,  # fp32 precomputed in-batch gradient of these queries (read when HAS_EXTRA): [ROWS, D], or
    # segment-major when EXTRA_SEGMENTED (segment s a [ROWS, d_s - d_{s-1}] block at offset ROWS * d_{s-1})
    query_grad_ptr,  # [B, D] out: dL/dqueries, input dtype
    positive_grad_ptr,  # [B, D] out: dL/dpositives from the hard-negative loss (when HAS_HARD)
    hard_grad_ptr,  # [B, KH, D] out: dL/dhard negatives (when HAS_HARD)
    num_queries,  # B
    num_keys,  # N
    dim,  # D
    num_levels,  # L
    num_hard,  # KH
    row0,  # first query of this launch (the large-batch path launches per chunk)
    rows,  # queries in this launch
    inv_temperature,  # 1 / tau
    inv_batch,  # 1 / B
    HAS_IN_BATCH: tl.constexpr,  # loop over all keys for the in-batch part
    HAS_HARD: tl.constexpr,  # the hard-negative terms and the candidates' gradients
    HAS_EXTRA: tl.constexpr,  # add extra_ptr (the large-batch path's in-batch part)
    EXTRA_SEGMENTED: tl.constexpr,  # extra_ptr is segment-major (the one-pass MRL path)
    KP: tl.constexpr,  # KH + 1 rounded up to a power of two
    BLOCK_M: tl.constexpr,  # queries per program
    BLOCK_N: tl.constexpr,  # keys per tile
    BLOCK_D: tl.constexpr,  # feature columns per step of the recomputed dot product
    BLOCK_C: tl.constexpr,  # feature columns of dq each program owns
    DIMS_DIV: tl.constexpr,  # a divisor of every prefix dim (tl.multiple_of: vectorised loads)
    IEEE: tl.constexpr,  # fp32 inputs: IEEE products, not TF32
):
    """dL/dq (and the hard candidates') for BLOCK_M of the queries [row0, row0 + rows) x BLOCK_C feature columns."""
    query_rows = row0 + tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    out_cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    query_mask = query_rows < row0 + rows
    out_mask = query_mask[:, None] & (out_cols[None, :] < dim)
    first_col = tl.program_id(1) * BLOCK_C
    grad_output = tl.load(grad_output_ptr).to(tl.float32)
    dq = tl.zeros((BLOCK_M, BLOCK_C), dtype=tl.float32)
    if HAS_IN_BATCH:
        for key_block in range(0, tl.cdiv(num_keys, BLOCK_N)):
            key_rows = key_block * BLOCK_N + tl.arange(0, BLOCK_N)
            raw_dot = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            query_sq = tl.zeros((BLOCK_M,), dtype=tl.float32)
            key_sq = tl.zeros((BLOCK_N,), dtype=tl.float32)
            start = 0
            for level in range(num_levels):
                end = tl.multiple_of(tl.load(dims_ptr + level), DIMS_DIV)
                grad_raw_dot, _unused_products, raw_dot, query_sq, key_sq, _unused_factor = _tile_logit_grad(
                    query_ptr, key_ptr, labels_ptr, level_weights_ptr, lse_ptr, query_rows, key_rows, level, start,
                    end, raw_dot, query_sq, key_sq, num_queries, num_keys, dim, inv_temperature, inv_batch, BLOCK_D,
                    IEEE)
                start = end
                if end > first_col:  # this level's prefix reaches into our columns
                    k_cols = tl.load(key_ptr + key_rows[:, None] * dim + out_cols[None, :],
                                     mask=(key_rows[:, None] < num_keys) & (out_cols[None, :] < end), other=0.0)
                    dq = dot(grad_raw_dot.to(k_cols.dtype), k_cols, dq, IEEE)
    q_cols = tl.load(query_ptr + query_rows[:, None] * dim + out_cols[None, :], mask=out_mask,
                     other=0.0).to(tl.float32)
    beta = tl.zeros((BLOCK_M, BLOCK_C), dtype=tl.float32)
    for level in range(num_levels):
        covered = out_cols[None, :] < tl.load(dims_ptr + level)
        level_beta = tl.load(query_beta_ptr + level * num_queries + query_rows, mask=query_mask, other=0.0)
        beta += tl.where(covered, level_beta[:, None], 0.0)
    dq += beta * q_cols
    if HAS_EXTRA:
        if EXTRA_SEGMENTED:  # each column's segment: where its block starts and how wide it is
            seg_start = tl.zeros((BLOCK_C,), dtype=tl.int32)
            seg_width = tl.zeros((BLOCK_C,), dtype=tl.int32)
            start = 0
            for level in range(num_levels):
                end = tl.load(dims_ptr + level)
                inside = (out_cols >= start) & (out_cols < end)
                seg_start = tl.where(inside, start, seg_start)
                seg_width = tl.where(inside, end - start, seg_width)
                start = end
            offsets = (rows * seg_start[None, :] + (query_rows - row0)[:, None] * seg_width[None, :]
                       + (out_cols - seg_start)[None, :])
            dq += tl.load(extra_ptr + offsets, mask=out_mask & (out_cols[None, :] < start), other=0.0)
        else:
            dq += tl.load(extra_ptr + (query_rows - row0)[:, None] * dim + out_cols[None, :], mask=out_mask,
                          other=0.0)
    if HAS_HARD:
        for c in range(num_hard + 1):
            positive = tl.load(positive_ptr + query_rows[:, None] * dim + out_cols[None, :],
                               mask=(c == 0) & out_mask, other=0.0)
            hard = tl.load(hard_ptr + (query_rows[:, None] * num_hard + c - 1) * dim + out_cols[None, :],
                           mask=(c >= 1) & out_mask, other=0.0)
            candidate = positive.to(tl.float32) + hard.to(tl.float32)
            alpha = tl.zeros((BLOCK_M, BLOCK_C), dtype=tl.float32)
            delta = tl.zeros((BLOCK_M, BLOCK_C), dtype=tl.float32)
            for level in range(num_levels):
                covered = out_cols[None, :] < tl.load(dims_ptr + level)
                coef_offsets = (level * num_queries + query_rows) * KP + c
                alpha += tl.where(covered, tl.load(hard_alpha_ptr + coef_offsets, mask=query_mask,
                                                   other=0.0)[:, None], 0.0)
                delta += tl.where(covered, tl.load(hard_delta_ptr + coef_offsets, mask=query_mask,
                                                   other=0.0)[:, None], 0.0)
            dq += alpha * candidate
            d_candidate = (alpha * q_cols + delta * candidate) * grad_output
            if c == 0:
                tl.store(positive_grad_ptr + query_rows[:, None] * dim + out_cols[None, :],
                         d_candidate.to(positive_grad_ptr.dtype.element_ty), mask=out_mask)
            else:
                tl.store(hard_grad_ptr + (query_rows[:, None] * num_hard + c - 1) * dim + out_cols[None, :],
                         d_candidate.to(hard_grad_ptr.dtype.element_ty), mask=out_mask)
    tl.store(query_grad_ptr + query_rows[:, None] * dim + out_cols[None, :],
             (dq * grad_output).to(query_grad_ptr.dtype.element_ty), mask=out_mask)


@triton.jit
def _key_grad_kernel(
    query_ptr,  # [B, D] queries
    key_ptr,  # [N, D] in-batch keys
    labels_ptr,  # [B] int64: the key index of each query's positive
    dims_ptr,  # [L] int32 MRL prefix dims, increasing
    level_weights_ptr,  # [L] fp32 MRL weights
    lse_ptr,  # [L, B] fp32 in-batch log-sum-exp per level
    grad_output_ptr,  # [1] the incoming gradient of the loss
    key_grad_ptr,  # [N, D] out: dL/dkeys, input dtype
    num_queries,  # B
    num_keys,  # N
    dim,  # D
    num_levels,  # L
    inv_temperature,  # 1 / tau
    inv_batch,  # 1 / B
    LEVELS_POW2: tl.constexpr,  # L rounded up to a power of two
    BLOCK_M: tl.constexpr,  # queries per tile
    BLOCK_N: tl.constexpr,  # keys per program
    BLOCK_D: tl.constexpr,  # feature columns per step of the recomputed dot product
    BLOCK_C: tl.constexpr,  # feature columns of dk each program owns
    DIMS_DIV: tl.constexpr,  # a divisor of every prefix dim (tl.multiple_of: vectorised loads)
    IEEE: tl.constexpr,  # fp32 inputs: IEEE products, not TF32
):
    """dL/dk for BLOCK_N keys x BLOCK_C feature columns; loops over all queries (no atomics)."""
    key_rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    out_cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    key_mask = key_rows < num_keys
    out_mask = key_mask[:, None] & (out_cols[None, :] < dim)
    first_col = tl.program_id(1) * BLOCK_C
    levels = tl.arange(0, LEVELS_POW2)
    grad_output = tl.load(grad_output_ptr).to(tl.float32)
    dk = tl.zeros((BLOCK_N, BLOCK_C), dtype=tl.float32)
    column_sums = tl.zeros((BLOCK_N, LEVELS_POW2), dtype=tl.float32)  # per level: sum_i dL/ds_ij s_ij
    key_factors = tl.zeros((BLOCK_N, LEVELS_POW2), dtype=tl.float32)  # per level: b_j (0 for a zero vector)
    for query_block in range(0, tl.cdiv(num_queries, BLOCK_M)):
        query_rows = query_block * BLOCK_M + tl.arange(0, BLOCK_M)
        raw_dot = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        query_sq = tl.zeros((BLOCK_M,), dtype=tl.float32)
        key_sq = tl.zeros((BLOCK_N,), dtype=tl.float32)
        start = 0
        for level in range(num_levels):
            end = tl.multiple_of(tl.load(dims_ptr + level), DIMS_DIV)
            grad_raw_dot, grad_times_logits, raw_dot, query_sq, key_sq, key_factor = _tile_logit_grad(
                query_ptr, key_ptr, labels_ptr, level_weights_ptr, lse_ptr, query_rows, key_rows, level, start, end,
                raw_dot, query_sq, key_sq, num_queries, num_keys, dim, inv_temperature, inv_batch, BLOCK_D, IEEE)
            start = end
            this_level = levels[None, :] == level
            column_sums += tl.where(this_level, tl.sum(grad_times_logits, axis=0)[:, None], 0.0)
            key_factors = tl.where(this_level, key_factor[:, None], key_factors)
            if end > first_col:
                q_cols = tl.load(query_ptr + query_rows[:, None] * dim + out_cols[None, :],
                                 mask=(query_rows[:, None] < num_queries) & (out_cols[None, :] < end), other=0.0)
                dk = dot(tl.trans(grad_raw_dot.to(q_cols.dtype)), q_cols, dk, IEEE)
    k_cols = tl.load(key_ptr + key_rows[:, None] * dim + out_cols[None, :], mask=out_mask, other=0.0).to(tl.float32)
    correction = -key_factors * key_factors * column_sums  # [BLOCK_N, LEVELS_POW2]: key-norm term per level
    coef = tl.zeros((BLOCK_N, BLOCK_C), dtype=tl.float32)
    for level in range(num_levels):
        covered = out_cols[None, :] < tl.load(dims_ptr + level)
        per_key = tl.sum(tl.where(levels[None, :] == level, correction, 0.0), axis=1)
        coef += tl.where(covered, per_key[:, None], 0.0)
    dk += coef * k_cols
    tl.store(key_grad_ptr + key_rows[:, None] * dim + out_cols[None, :],
             (dk * grad_output).to(key_grad_ptr.dtype.element_ty), mask=out_mask)


# ---------------------------------------------------------------------------------------------------------------
# Launchers


def dims_divisor(dims: Sequence[int]) -> int:
    """A divisor of every level's dim, told to the compiler (tl.multiple_of): with 8 (F2LLM's MRL dims, and d of
    every real model) the loads along d vectorise and the loops pipeline; with 1 they still work, slower."""
    return 8 if all(d % 8 == 0 for d in dims) else 1


def _register_blocks(batch: int, dim: int) -> dict[str, int]:
    """Tile of the register kernels: query blocks as small as F2LLM's 16 local queries allow."""
    return {"BLOCK_M": 16 if batch <= 16 else 32 if batch <= 32 else 64, "BLOCK_N": 64,
            "BLOCK_D": 32 if dim <= 32 else 64}


def _column_block(dim: int) -> int:
    """Feature columns per backward program: wide enough to limit recomputation, small enough for registers."""
    return max(16, min(256, triton.next_power_of_2(dim)))


def key_splits(batch: int, num_keys: int, block_m: int, block_n: int, target_programs: int) -> int:
    """How many ways to split the keys: enough programs to fill a GPU (16 local queries give one query block),
    no more, since each split keeps a few floats per query and level (memory B x splits, never B x N)."""
    key_blocks = triton.cdiv(num_keys, block_n)
    query_blocks = triton.cdiv(batch, block_m)
    wanted = max(1, min(key_blocks, triton.cdiv(target_programs, query_blocks)))
    return triton.cdiv(key_blocks, triton.cdiv(key_blocks, wanted))  # no empty splits


@dataclass(frozen=True)
class LaunchPlan:
    """Everything the forward decided that its backward must repeat: shapes, strategy, tiles, scalars."""

    has_in_batch: bool
    has_hard: bool
    num_keys: int
    num_hard: int
    candidates_pow2: int  # KP: num_hard + 1 rounded up to a power of two
    inv_temperature: float
    inv_batch: float
    dims: tuple[int, ...]
    weights: tuple[float, ...]
    dims_div: int
    ieee: bool  # fp32 inputs: IEEE products in the kernels
    strategy: str  # "registers" or "large_batch"
    settings: KernelSettings


class SavedTensors(NamedTuple):
    """What the backward reads, by name (``ctx.save_for_backward`` takes and returns a plain tuple)."""

    queries: torch.Tensor
    positives: torch.Tensor
    hard_negatives: torch.Tensor  # the positives again when there are none (a dummy pointer)
    keys: torch.Tensor  # the queries again when there is no in-batch loss
    labels: torch.Tensor
    dims: torch.Tensor  # [L] int32
    weights: torch.Tensor  # [L] fp32
    lse: torch.Tensor  # [L, B] in-batch log-sum-exp per level
    hard_alpha: torch.Tensor  # [L, B, KP] (a dummy without hard negatives)
    hard_delta: torch.Tensor  # [L, B, KP]
    query_beta: torch.Tensor  # [L, B]
    query_norms: torch.Tensor  # [L, B] prefix norms (large-batch path; a dummy otherwise)
    key_norms: torch.Tensor  # [L, N]


def in_batch_stats(saved: SavedTensors, plan: LaunchPlan, loss: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Launch ``_in_batch_stats_kernel``: [3, splits, L, B] per-split statistics, and the number of splits."""
    batch, dim = saved.queries.shape
    large = plan.strategy == "large_batch"
    if large:
        tiles = plan.settings.tiles
        blocks = {"BLOCK_M": tiles.block_m, "BLOCK_N": 64, "BLOCK_D": fused_large_batch.grad_block_d(
            saved.queries.dtype)}
        launch = {"num_warps": tiles.num_warps, "num_stages": tiles.num_stages}
    else:
        blocks, launch = _register_blocks(batch, dim), {}
    splits = key_splits(batch, plan.num_keys, blocks["BLOCK_M"], blocks["BLOCK_N"], plan.settings.target_programs)
    stats = torch.empty((3, splits, len(plan.dims), batch), dtype=torch.float32, device=saved.queries.device)
    blocks_per_split = triton.cdiv(triton.cdiv(plan.num_keys, blocks["BLOCK_N"]), splits)
    grid = (triton.cdiv(batch, blocks["BLOCK_M"]), splits)
    _in_batch_stats_kernel[grid](
        saved.queries, saved.keys, saved.query_norms, saved.key_norms, saved.dims, stats[0], stats[1], stats[2], loss,
        batch, plan.num_keys, dim, len(plan.dims), plan.inv_temperature, blocks_per_split,
        LEVELS_POW2=triton.next_power_of_2(len(plan.dims)), PRENORM=large, DIMS_DIV=plan.dims_div, IEEE=plan.ieee,
        FIXED_MAX=fixed_maximum(plan.inv_temperature), **blocks, **launch)
    return stats, splits


def fixed_maximum(inv_temperature: float) -> bool:
    """Whether the forward may take 1 / tau as every row's maximum: logits lie in [-1 / tau, 1 / tau], so each
    exp(logit - 1 / tau) is at least exp(-2 / tau), a normal fp32 number while 2 / tau < 80 (tau > 0.025; F2LLM's
    0.05 gives exp(-40)). Below that an online maximum rescales instead."""
    return 2.0 * inv_temperature < 80.0


def row_losses(saved: SavedTensors, plan: LaunchPlan, stats: torch.Tensor, splits: int, loss: torch.Tensor) -> None:
    """Launch ``_row_loss_kernel``: adds the mean loss into ``loss``, fills lse and the per-row coefficients."""
    batch, dim = saved.queries.shape
    _row_loss_kernel[(batch,)](
        saved.queries, saved.positives, saved.hard_negatives, saved.keys, saved.labels, saved.dims, saved.weights,
        stats[0], stats[1], stats[2], saved.lse, saved.hard_alpha, saved.hard_delta, saved.query_beta, loss, batch,
        dim, len(plan.dims), plan.num_hard, splits, plan.inv_temperature, plan.inv_batch,
        HAS_IN_BATCH=plan.has_in_batch, HAS_HARD=plan.has_hard, KP=plan.candidates_pow2,
        BLOCK_D=_register_blocks(batch, dim)["BLOCK_D"], DIMS_DIV=plan.dims_div)


def query_grads(saved: SavedTensors, plan: LaunchPlan, grad_output: torch.Tensor, outputs: dict[str, torch.Tensor],
                rows: tuple[int, int], extra: torch.Tensor | None, extra_segmented: bool = False) -> None:
    """Launch ``_query_grad_kernel`` for the queries rows = (first, count): writes outputs["queries"] (and the
    hard candidates'); loops over the keys itself unless ``extra`` holds their in-batch part already (segment-major
    when ``extra_segmented``)."""
    batch, dim = saved.queries.shape
    blocks, block_c = _register_blocks(batch, dim), _column_block(dim)
    row0, count = rows
    dummy = saved.queries  # for pointers a launch does not read
    _query_grad_kernel[(triton.cdiv(count, blocks["BLOCK_M"]), triton.cdiv(dim, block_c))](
        saved.queries, saved.positives, saved.hard_negatives, saved.keys, saved.labels, saved.dims, saved.weights,
        saved.lse, saved.hard_alpha, saved.hard_delta, saved.query_beta, grad_output,
        extra if extra is not None else dummy, outputs["queries"], outputs.get("positives", dummy),
        outputs.get("hard_negatives", dummy), batch, plan.num_keys, dim, len(plan.dims), plan.num_hard, row0, count,
        plan.inv_temperature, plan.inv_batch, HAS_IN_BATCH=plan.has_in_batch and extra is None,
        HAS_HARD=plan.has_hard, HAS_EXTRA=extra is not None, EXTRA_SEGMENTED=extra_segmented,
        KP=plan.candidates_pow2, BLOCK_C=block_c,
        DIMS_DIV=plan.dims_div, IEEE=plan.ieee, num_warps=8 if block_c >= 256 else 4, **blocks)


def key_grads_registers(saved: SavedTensors, plan: LaunchPlan, grad_output: torch.Tensor) -> torch.Tensor:
    """Launch ``_key_grad_kernel``: dL/dkeys with every accumulator in registers."""
    batch, dim = saved.queries.shape
    blocks, block_c = _register_blocks(batch, dim), _column_block(dim)
    out = torch.empty_like(saved.keys)
    _key_grad_kernel[(triton.cdiv(plan.num_keys, blocks["BLOCK_N"]), triton.cdiv(dim, block_c))](
        saved.queries, saved.keys, saved.labels, saved.dims, saved.weights, saved.lse, grad_output, out, batch,
        plan.num_keys, dim, len(plan.dims), plan.inv_temperature, plan.inv_batch,
        LEVELS_POW2=triton.next_power_of_2(len(plan.dims)), BLOCK_C=block_c, DIMS_DIV=plan.dims_div, IEEE=plan.ieee,
        num_warps=8 if block_c >= 256 else 4, **blocks)
    return out


def fused_forward(queries: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor | None,
                  keys: torch.Tensor | None, labels: torch.Tensor | None, dims: Sequence[int],
                  weights: Sequence[float], temperature: float,
                  settings: KernelSettings) -> tuple[torch.Tensor, SavedTensors, LaunchPlan]:
    """The loss (a 0-dim fp32 tensor), what the backward reads, and how it must launch."""
    queries, positives = queries.contiguous(), positives.contiguous()
    batch = queries.shape[0]
    device = queries.device
    has_in_batch, has_hard = keys is not None, negatives is not None
    num_keys = keys.shape[0] if has_in_batch else 0
    num_hard = negatives.shape[1] if has_hard else 0
    plan = LaunchPlan(has_in_batch=has_in_batch, has_hard=has_hard, num_keys=num_keys, num_hard=num_hard,
                      candidates_pow2=triton.next_power_of_2(num_hard + 1), inv_temperature=1.0 / temperature,
                      inv_batch=1.0 / batch, dims=tuple(dims), weights=tuple(weights), dims_div=dims_divisor(dims),
                      ieee=queries.dtype == torch.float32,
                      strategy=settings.strategy_for(has_in_batch, batch, num_keys), settings=settings)
    levels = len(dims)
    coef_shape = (levels, batch, plan.candidates_pow2) if has_hard else (1,)
    dims_t = torch.tensor(list(dims), dtype=torch.int32, device=device)
    keys = keys.contiguous() if has_in_batch else queries
    large = plan.strategy == "large_batch"
    dummy = torch.empty(1, device=device)
    saved = SavedTensors(
        queries=queries, positives=positives, keys=keys, dims=dims_t,
        hard_negatives=negatives.contiguous() if has_hard else positives,
        labels=labels.contiguous() if has_in_batch else torch.zeros(1, dtype=torch.long, device=device),
        weights=torch.tensor(list(weights), dtype=torch.float32, device=device),
        lse=torch.empty((levels, batch), dtype=torch.float32, device=device),
        hard_alpha=torch.empty(coef_shape, dtype=torch.float32, device=device),
        hard_delta=torch.empty(coef_shape, dtype=torch.float32, device=device),
        query_beta=torch.empty((levels, batch), dtype=torch.float32, device=device),
        query_norms=fused_large_batch.prefix_norms(queries, dims_t, plan.dims_div) if large else dummy,
        key_norms=fused_large_batch.prefix_norms(keys, dims_t, plan.dims_div) if large else dummy)
    if has_in_batch:
        loss = torch.empty(1, dtype=torch.float32, device=device)  # zeroed by the statistics kernel
        stats, splits = in_batch_stats(saved, plan, loss)
    else:
        loss = torch.zeros(1, dtype=torch.float32, device=device)
        stats, splits = torch.empty((3, 1), dtype=torch.float32, device=device), 1
    row_losses(saved, plan, stats, splits, loss)
    return loss[0], saved, plan


def fused_backward(saved: SavedTensors, plan: LaunchPlan,
                   grad_output: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Gradients of (queries, positives, hard negatives, keys): None for an input that was not given."""
    grad_output = grad_output.reshape(1).to(torch.float32)
    outputs = {"queries": torch.empty_like(saved.queries)}
    if plan.has_hard:
        outputs["positives"] = torch.empty_like(saved.positives)
        outputs["hard_negatives"] = torch.empty_like(saved.hard_negatives)
    key_grad = None
    if plan.strategy == "large_batch":
        chunk_args = (saved.queries, saved.keys, saved.labels, plan.dims, plan.weights, saved.lse, saved.query_norms,
                      saved.key_norms)
        chunk_kwargs = {"inv_temperature": plan.inv_temperature, "inv_batch": plan.inv_batch,
                        "dims_div": plan.dims_div, "tiles": plan.settings.tiles,
                        "scratch_bytes": plan.settings.scratch_bytes, "segment_levels": plan.settings.segment_levels}
        one_pass = fused_large_batch.segmented(saved.queries.dtype, plan.dims, plan.settings.segment_levels)
        for row0, rows, extra in fused_large_batch.query_grad_chunks(*chunk_args, **chunk_kwargs):
            query_grads(saved, plan, grad_output, outputs, (row0, rows), extra, extra_segmented=one_pass)
        key_grad = fused_large_batch.key_grads(*chunk_args, **chunk_kwargs, grad_output=grad_output)
    else:
        query_grads(saved, plan, grad_output, outputs, (0, saved.queries.shape[0]), None)
        if plan.has_in_batch:
            key_grad = key_grads_registers(saved, plan, grad_output)
    return outputs["queries"], outputs.get("positives"), outputs.get("hard_negatives"), key_grad


# ---------------------------------------------------------------------------------------------------------------
# Autograd


class FusedContrastiveFunction(torch.autograd.Function):
    """Thin autograd wrapper: the launchers above do the work; the saved state is named (``SavedTensors``)."""

    @staticmethod
    def forward(ctx, queries, positives, negatives, keys, labels, dims, weights, temperature, settings):
        loss, saved, plan = fused_forward(queries, positives, negatives, keys, labels, dims, weights, temperature,
                                          settings)
        ctx.save_for_backward(*saved)
        ctx.plan = plan
        return loss

    @staticmethod
    def backward(ctx, grad_output):
        grads = fused_backward(SavedTensors(*ctx.saved_tensors), ctx.plan, grad_output)
        return (*grads, None, None, None, None, None)


def fused_loss(queries: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor | None,
               keys: torch.Tensor | None, labels: torch.Tensor | None, dims: Sequence[int],
               weights: Sequence[float], temperature: float, settings: KernelSettings | None = None) -> torch.Tensor:
    """Same semantics as :func:`~f2llm_lib.losses.reference.reference_loss`, in one fused autograd op.

    ``settings``: strategy, tile shape and scratch size (:class:`KernelSettings`; the defaults pick the strategy
    by problem size). None of them changes the result beyond rounding."""
    if queries.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"the Triton loss takes float32, float16 or bfloat16 inputs, got {queries.dtype}")
    settings = settings or KernelSettings()
    if not isinstance(settings, KernelSettings):
        raise TypeError(f"settings must be a KernelSettings, got {type(settings).__name__}")
    return FusedContrastiveFunction.apply(queries, positives, negatives, keys, labels, tuple(dims), tuple(weights),
                                          temperature, settings)
