"""F2LLM's loss as one fused autograd op in Triton: both losses, every MRL level, memory linear in B + N.

The trick that makes all MRL levels nearly free: levels are prefixes (8, 16, ..., d), so one pass over the
feature dim computes every level's dot products. The kernels walk d segment by segment ([0, 8), [8, 16),
[16, 32), ...); after each segment the running accumulator holds the raw prefix dot product of that level,
and running sums of squares hold the prefix norms. That level's logits are then ``acc * a_i * b_j / tau``.

Kernels (4 launches per forward + backward; no atomics in backward, no fp32 gradient scratch):
1. ``_ib_fwd``: grid (query blocks, key splits). Per tile and level: online-softmax statistics of the in-batch
   logits (row max, sum of exp, softmax-weighted sum of logits), merged over the split's key blocks and written
   once per split. Splitting over keys as well as queries keeps a GPU busy with 16 local queries; the number of
   splits is what fills the GPU (``TARGET_PROGRAMS``), no more. No B x N tensor is ever written.
2. ``_row_fwd``: one program per query. Combines the per-split statistics into a log-sum-exp per level, computes
   the positive's logit, the hard-negative softmax (positive + its k negatives) and the loss, and stores the
   per-row coefficients of the backward (hard-negative and normalisation terms; linear in the incoming gradient).
3. ``_bwd_dq``: grid (query blocks, feature-column blocks). Loops over all keys, recomputing each tile, and
   accumulates dq for its columns in registers from every level whose prefix reaches them; adds the per-row terms;
   writes dq and the hard candidates' gradients in the input dtype.
4. ``_bwd_dk``: grid (key blocks, feature-column blocks). The same over all queries for dk, including the column
   sums that the key normalisation needs, which it owns entirely.
Splitting the backward over feature columns costs recomputation (d / 256 tile passes per side) but keeps the
accumulators in registers: no atomics and no [B + N, d] fp32 buffer. That is the right trade for F2LLM's 16 x 512
problem (launches dominate) and the wrong one for 65,536 x 65,536 (the recomputed logits dominate).

Two strategies, picked per call by ``choose_strategy`` (``strategy=`` or ``forced_strategy`` override it):
- ``registers`` (fewer than ``SCRATCH_MIN_PAIRS`` query-key pairs, or no in-batch loss): the 4 kernels above;
- ``scratch`` (large in-batch problems): the forward reads prefix norms computed once (``prefix_norms``) instead
  of summing squares in every tile, with GEMM-sized tiles; the in-batch backward recomputes each logit once per
  side and sends its gradient through a bounded scratch and one GEMM per chunk (``fused_scratch``); ``_bwd_dq``
  then adds the per-row terms to each chunk of queries. Extra memory: ``fused_scratch.SCRATCH_BYTES`` (32 MiB)
  plus O((B + N) x levels) floats, whatever B and N are.

Normalisation gradient: for x_hat = x * a with a = 1 / ||x||, dL/dx = a * dL/dx_hat - a^2 (x_hat . dL/dx_hat) x.
The scalar (x_hat . dL/dx_hat) equals sum_j dL/ds_ij * s_ij, which is accumulated tile by tile.
A vector of norm below 1e-12 is given a zero gradient (its direction is undefined; PyTorch's F.normalize
would return a gradient of order 1e12 there).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import triton
import triton.language as tl

from . import fused_scratch
from .fused_common import EPS, dot, load_pair

# Programs the forward grid aims for (a few per SM on an H100); tests lower it to exercise multi-block splits.
TARGET_PROGRAMS = 512
# From this many query-key pairs on (2,048^2), the backward goes through fused_scratch (one recomputation per side).
SCRATCH_MIN_PAIRS = 1 << 22
STRATEGIES = ("auto", "registers", "scratch")


@triton.jit
def _ib_fwd(Q, K, QN, KN, DIMS, PM, PL, PT, LOSS, B, N, D, L, inv_temp, BLOCKS_PER_SPLIT, LP: tl.constexpr,
            BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PRENORM: tl.constexpr,
            DIMS_DIV: tl.constexpr, IEEE: tl.constexpr):
    """One query block x one split of the keys (BLOCKS_PER_SPLIT key blocks, merged online in registers).
    PRENORM: read the prefix norms from QN [L, B] and KN [L, N] instead of summing squares in every tile."""
    pid_m = tl.program_id(0)
    pid_s = tl.program_id(1)
    if (pid_m == 0) & (pid_s == 0):
        tl.store(LOSS, 0.0)  # the row kernel, launched next, accumulates into it
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < B
    levels = tl.arange(0, LP)
    run_m = tl.full((BLOCK_M, LP), float("-inf"), dtype=tl.float32)  # per level: running max,
    run_l = tl.zeros((BLOCK_M, LP), dtype=tl.float32)  # sum of exp(s - max),
    run_t = tl.zeros((BLOCK_M, LP), dtype=tl.float32)  # and softmax-weighted sum of logits
    first = pid_s * BLOCKS_PER_SPLIT
    last = tl.minimum(first + BLOCKS_PER_SPLIT, tl.cdiv(N, BLOCK_N))
    for kb in range(first, last):
        offs_n = kb * BLOCK_N + tl.arange(0, BLOCK_N)
        mask_n = offs_n < N
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        q_sq = tl.zeros((BLOCK_M,), dtype=tl.float32)
        k_sq = tl.zeros((BLOCK_N,), dtype=tl.float32)
        start = 0
        for level in range(L):
            end = tl.multiple_of(tl.load(DIMS + level), DIMS_DIV)  # lets the loads vectorise
            for d0 in range(start, end, BLOCK_D):
                q, k = load_pair(Q, K, offs_m, offs_n, mask_m, mask_n, d0, end, D, BLOCK_D)
                acc = dot(q, tl.trans(k), acc, IEEE)
                if not PRENORM:
                    qf = q.to(tl.float32)
                    kf = k.to(tl.float32)
                    q_sq += tl.sum(qf * qf, axis=1)
                    k_sq += tl.sum(kf * kf, axis=1)
            start = end
            if PRENORM:
                q_norm = tl.load(QN + level * B + offs_m, mask=mask_m, other=1.0)
                k_norm = tl.load(KN + level * N + offs_n, mask=mask_n, other=1.0)
            else:
                q_norm = tl.sqrt(q_sq)
                k_norm = tl.sqrt(k_sq)
            a = 1.0 / tl.maximum(q_norm, EPS)
            b = 1.0 / tl.maximum(k_norm, EPS)
            s = tl.where(mask_n[None, :], acc * a[:, None] * b[None, :] * inv_temp, 0.0)
            tile_max = tl.max(tl.where(mask_n[None, :], s, float("-inf")), axis=1)
            p = tl.where(mask_n[None, :], tl.exp(s - tile_max[:, None]), 0.0)
            here = levels[None, :] == level
            old_m = tl.sum(tl.where(here, run_m, 0.0), axis=1)
            old_m = tl.where(kb == first, float("-inf"), old_m)
            new_m = tl.maximum(old_m, tile_max)
            keep = tl.exp(old_m - new_m)
            add = tl.exp(tile_max - new_m)
            new_l = tl.sum(tl.where(here, run_l, 0.0), axis=1) * keep + tl.sum(p, axis=1) * add
            new_t = tl.sum(tl.where(here, run_t, 0.0), axis=1) * keep + tl.sum(p * s, axis=1) * add
            run_m = tl.where(here, new_m[:, None], run_m)
            run_l = tl.where(here, new_l[:, None], run_l)
            run_t = tl.where(here, new_t[:, None], run_t)
    offsets = (pid_s * L + levels[None, :]) * B + offs_m[:, None]
    mask = mask_m[:, None] & (levels[None, :] < L)
    tl.store(PM + offsets, run_m, mask=mask)
    tl.store(PL + offsets, run_l, mask=mask)
    tl.store(PT + offsets, run_t, mask=mask)


@triton.jit
def _row_fwd(Q, P, H, K, LABELS, DIMS, W, PM, PL, PT, LSE_IB, ALPHA, DELTA, BETA, LOSS, B, D, L, KH, NBN, inv_temp,
             inv_b, HAS_IB: tl.constexpr, HAS_HARD: tl.constexpr, KP: tl.constexpr, BLOCK_D: tl.constexpr,
             DIMS_DIV: tl.constexpr):
    """Per query: combine key-block statistics, hard-negative softmax, loss; and the per-row coefficients the
    backward needs (all linear in the incoming gradient, so they are stored without it):
    dq += BETA q + sum_c ALPHA_c cand_c, dcand_c = ALPHA_c q + DELTA_c cand_c, per level, on its prefix."""
    i = tl.program_id(0)
    offs_c = tl.arange(0, KP)  # candidate 0 = the positive, 1..KH = the query's hard negatives
    mask_c = offs_c < KH + 1
    q_sq = 0.0
    qk = 0.0
    k_sq = 0.0
    c_sq = tl.zeros((KP,), dtype=tl.float32)
    qc = tl.zeros((KP,), dtype=tl.float32)
    label = 0
    if HAS_IB:
        label = tl.load(LABELS + i)
    row_loss = 0.0
    start = 0
    for level in range(L):
        end = tl.multiple_of(tl.load(DIMS + level), DIMS_DIV)  # lets the loads vectorise
        for d0 in range(start, end, BLOCK_D):
            offs_d = d0 + tl.arange(0, BLOCK_D)
            mask_d = offs_d < end
            q = tl.load(Q + i * D + offs_d, mask=mask_d, other=0.0).to(tl.float32)
            q_sq += tl.sum(q * q, axis=0)
            if HAS_HARD:
                pos = tl.load(P + i * D + offs_d, mask=mask_d, other=0.0).to(tl.float32)
                neg_ptr = H + (i * KH + offs_c[:, None] - 1) * D + offs_d[None, :]
                neg = tl.load(neg_ptr, mask=(offs_c[:, None] >= 1) & mask_c[:, None] & mask_d[None, :], other=0.0)
                cand = tl.where(offs_c[:, None] == 0, pos[None, :], neg.to(tl.float32))
                qc += tl.sum(cand * q[None, :], axis=1)
                c_sq += tl.sum(cand * cand, axis=1)
            if HAS_IB:
                k = tl.load(K + label * D + offs_d, mask=mask_d, other=0.0).to(tl.float32)
                qk += tl.sum(q * k, axis=0)
                k_sq += tl.sum(k * k, axis=0)
        start = end
        q_norm = tl.sqrt(q_sq)
        a = 1.0 / tl.maximum(q_norm, EPS)
        a_g = tl.where(q_norm >= EPS, a, 0.0)  # a zero vector gets no gradient
        scale = tl.load(W + level) * inv_b  # dL/dloss_level per row, without the incoming gradient
        level_loss = 0.0
        beta = 0.0
        if HAS_HARD:
            c_norm = tl.sqrt(c_sq)
            bc = 1.0 / tl.maximum(c_norm, EPS)
            bc_g = tl.where(c_norm >= EPS, bc, 0.0)
            h = tl.where(mask_c, qc * a * bc * inv_temp, float("-inf"))
            h_max = tl.max(h, axis=0)
            lse_h = h_max + tl.log(tl.sum(tl.exp(h - h_max), axis=0))
            level_loss += lse_h - tl.sum(tl.where(offs_c == 0, h, 0.0), axis=0)
            grad_h = tl.where(mask_c, scale * (tl.exp(h - lse_h) - (offs_c == 0).to(tl.float32)), 0.0)
            grad_h_h = grad_h * tl.where(mask_c, h, 0.0)
            coef_offsets = (level * B + i) * KP + offs_c
            tl.store(ALPHA + coef_offsets, grad_h * a_g * bc_g * inv_temp)
            tl.store(DELTA + coef_offsets, -bc_g * bc_g * grad_h_h)
            beta += -a_g * a_g * tl.sum(grad_h_h, axis=0)
        if HAS_IB:
            run_m = float("-inf")
            run_l = 0.0
            run_t = 0.0
            for nb in range(NBN):
                stat = (nb * L + level) * B + i
                m_b = tl.load(PM + stat)
                new_m = tl.maximum(run_m, m_b)
                keep = tl.exp(run_m - new_m)
                add = tl.exp(m_b - new_m)
                run_l = run_l * keep + tl.load(PL + stat) * add
                run_t = run_t * keep + tl.load(PT + stat) * add
                run_m = new_m
            lse = run_m + tl.log(run_l)
            s_label = qk * a * (1.0 / tl.maximum(tl.sqrt(k_sq), EPS)) * inv_temp
            tl.store(LSE_IB + level * B + i, lse)
            level_loss += lse - s_label
            # query-norm correction: -a^2 sum_j dL/ds_ij s_ij = -a^2 scale (E_softmax[s] - s_label)
            beta += -a_g * a_g * scale * (run_t / run_l - s_label)
        tl.store(BETA + level * B + i, beta)
        row_loss += tl.load(W + level) * level_loss
    tl.atomic_add(LOSS, row_loss * inv_b)


@triton.jit
def _tile_grad(Q, K, LABELS, DIMS, W, LSE_IB, offs_m, offs_n, level, start, end, acc, q_sq, k_sq, B, N, D, inv_temp,
               inv_b, BLOCK_D: tl.constexpr, IEEE: tl.constexpr):
    """Advance the prefix walk to ``end``; return dL/d(raw prefix dot) and dL/dlogits * logits for one level."""
    mask_m = offs_m < B
    mask_n = offs_n < N
    for d0 in range(start, end, BLOCK_D):
        q, k = load_pair(Q, K, offs_m, offs_n, mask_m, mask_n, d0, end, D, BLOCK_D)
        acc = dot(q, tl.trans(k), acc, IEEE)
        qf = q.to(tl.float32)
        kf = k.to(tl.float32)
        q_sq += tl.sum(qf * qf, axis=1)
        k_sq += tl.sum(kf * kf, axis=1)
    valid = mask_m[:, None] & mask_n[None, :]
    q_norm = tl.sqrt(q_sq)
    k_norm = tl.sqrt(k_sq)
    a = 1.0 / tl.maximum(q_norm, EPS)
    b = 1.0 / tl.maximum(k_norm, EPS)
    s = tl.where(valid, acc * a[:, None] * b[None, :] * inv_temp, 0.0)
    lse = tl.load(LSE_IB + level * B + offs_m, mask=mask_m, other=0.0)
    labels = tl.load(LABELS + offs_m, mask=mask_m, other=-1)
    onehot = ((offs_n[None, :] == labels[:, None]) & valid).to(tl.float32)
    grad_s = tl.where(valid, tl.exp(s - lse[:, None]), 0.0) - onehot
    grad_s = grad_s * (tl.load(W + level) * inv_b)  # without the incoming gradient (applied at the end)
    a_g = tl.where(q_norm >= EPS, a, 0.0)
    b_g = tl.where(k_norm >= EPS, b, 0.0)
    grad_dot = grad_s * a_g[:, None] * b_g[None, :] * inv_temp
    return grad_dot, grad_s * s, acc, q_sq, k_sq, b_g


@triton.jit
def _bwd_dq(Q, P, H, K, LABELS, DIMS, W, LSE_IB, ALPHA, DELTA, BETA, GOUT, EXTRA, OQ, OP, OH, B, N, D, L, KH,
            ROW0, ROWS, inv_temp, inv_b, HAS_IB: tl.constexpr, HAS_HARD: tl.constexpr, HAS_EXTRA: tl.constexpr,
            KP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
            BLOCK_C: tl.constexpr, DIMS_DIV: tl.constexpr, IEEE: tl.constexpr):
    """dL/dq (and the hard candidates') for BLOCK_M of the queries [ROW0, ROW0 + ROWS) x BLOCK_C feature columns;
    HAS_IB: loops over all keys for the in-batch part; HAS_EXTRA: adds a precomputed fp32 part EXTRA [ROWS, D]."""
    pid_m = tl.program_id(0)
    pid_c = tl.program_id(1)
    offs_m = ROW0 + pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_m = offs_m < ROW0 + ROWS
    chunk_start = pid_c * BLOCK_C
    g_out = tl.load(GOUT).to(tl.float32)
    dq = tl.zeros((BLOCK_M, BLOCK_C), dtype=tl.float32)
    if HAS_IB:
        for nb in range(0, tl.cdiv(N, BLOCK_N)):
            offs_n = nb * BLOCK_N + tl.arange(0, BLOCK_N)
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            q_sq = tl.zeros((BLOCK_M,), dtype=tl.float32)
            k_sq = tl.zeros((BLOCK_N,), dtype=tl.float32)
            start = 0
            for level in range(L):
                end = tl.multiple_of(tl.load(DIMS + level), DIMS_DIV)  # lets the loads vectorise
                grad_dot, _gs, acc, q_sq, k_sq, _b = _tile_grad(Q, K, LABELS, DIMS, W, LSE_IB, offs_m, offs_n, level,
                                                                 start, end, acc, q_sq, k_sq, B, N, D, inv_temp,
                                                                 inv_b, BLOCK_D, IEEE)
                start = end
                if end > chunk_start:  # this level's prefix reaches into our columns
                    kc = tl.load(K + offs_n[:, None] * D + offs_c[None, :],
                                 mask=(offs_n[:, None] < N) & (offs_c[None, :] < end), other=0.0)
                    dq = dot(grad_dot.to(kc.dtype), kc, dq, IEEE)
    q_chunk = tl.load(Q + offs_m[:, None] * D + offs_c[None, :],
                      mask=mask_m[:, None] & (offs_c[None, :] < D), other=0.0).to(tl.float32)
    beta = tl.zeros((BLOCK_M, BLOCK_C), dtype=tl.float32)
    for level in range(L):
        cover = offs_c[None, :] < tl.load(DIMS + level)
        beta += tl.where(cover, tl.load(BETA + level * B + offs_m, mask=mask_m, other=0.0)[:, None], 0.0)
    dq += beta * q_chunk
    if HAS_EXTRA:
        dq += tl.load(EXTRA + (offs_m - ROW0)[:, None] * D + offs_c[None, :],
                      mask=mask_m[:, None] & (offs_c[None, :] < D), other=0.0)
    if HAS_HARD:
        for c in range(KH + 1):
            pos = tl.load(P + offs_m[:, None] * D + offs_c[None, :],
                          mask=(c == 0) & mask_m[:, None] & (offs_c[None, :] < D), other=0.0)
            neg = tl.load(H + (offs_m[:, None] * KH + c - 1) * D + offs_c[None, :],
                          mask=(c >= 1) & mask_m[:, None] & (offs_c[None, :] < D), other=0.0)
            cand = pos.to(tl.float32) + neg.to(tl.float32)
            alpha = tl.zeros((BLOCK_M, BLOCK_C), dtype=tl.float32)
            delta = tl.zeros((BLOCK_M, BLOCK_C), dtype=tl.float32)
            for level in range(L):
                cover = offs_c[None, :] < tl.load(DIMS + level)
                coef_offsets = (level * B + offs_m) * KP + c
                alpha += tl.where(cover, tl.load(ALPHA + coef_offsets, mask=mask_m, other=0.0)[:, None], 0.0)
                delta += tl.where(cover, tl.load(DELTA + coef_offsets, mask=mask_m, other=0.0)[:, None], 0.0)
            dq += alpha * cand
            dcand = (alpha * q_chunk + delta * cand) * g_out
            if c == 0:
                tl.store(OP + offs_m[:, None] * D + offs_c[None, :], dcand.to(OP.dtype.element_ty),
                         mask=mask_m[:, None] & (offs_c[None, :] < D))
            else:
                tl.store(OH + (offs_m[:, None] * KH + c - 1) * D + offs_c[None, :], dcand.to(OH.dtype.element_ty),
                         mask=mask_m[:, None] & (offs_c[None, :] < D))
    tl.store(OQ + offs_m[:, None] * D + offs_c[None, :], (dq * g_out).to(OQ.dtype.element_ty),
             mask=mask_m[:, None] & (offs_c[None, :] < D))


@triton.jit
def _bwd_dk(Q, K, LABELS, DIMS, W, LSE_IB, GOUT, OK, B, N, D, L, inv_temp, inv_b, LP: tl.constexpr,
            BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_C: tl.constexpr,
            DIMS_DIV: tl.constexpr, IEEE: tl.constexpr):
    """dL/dk for BLOCK_N keys x BLOCK_C feature columns; loops over all queries (no atomics)."""
    pid_n = tl.program_id(0)
    pid_c = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_n = offs_n < N
    chunk_start = pid_c * BLOCK_C
    levels = tl.arange(0, LP)
    g_out = tl.load(GOUT).to(tl.float32)
    dk = tl.zeros((BLOCK_N, BLOCK_C), dtype=tl.float32)
    col_sums = tl.zeros((BLOCK_N, LP), dtype=tl.float32)  # per level: sum_i dL/ds_ij s_ij
    inv_norms = tl.zeros((BLOCK_N, LP), dtype=tl.float32)  # per level: b_j (0 for a zero vector)
    for mb in range(0, tl.cdiv(B, BLOCK_M)):
        offs_m = mb * BLOCK_M + tl.arange(0, BLOCK_M)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        q_sq = tl.zeros((BLOCK_M,), dtype=tl.float32)
        k_sq = tl.zeros((BLOCK_N,), dtype=tl.float32)
        start = 0
        for level in range(L):
            end = tl.multiple_of(tl.load(DIMS + level), DIMS_DIV)  # lets the loads vectorise
            grad_dot, grad_s_s, acc, q_sq, k_sq, b_g = _tile_grad(Q, K, LABELS, DIMS, W, LSE_IB, offs_m, offs_n,
                                                                  level, start, end, acc, q_sq, k_sq, B, N, D,
                                                                  inv_temp, inv_b, BLOCK_D, IEEE)
            start = end
            here = levels[None, :] == level
            col_sums += tl.where(here, tl.sum(grad_s_s, axis=0)[:, None], 0.0)
            inv_norms = tl.where(here, b_g[:, None], inv_norms)
            if end > chunk_start:
                qc = tl.load(Q + offs_m[:, None] * D + offs_c[None, :],
                             mask=(offs_m[:, None] < B) & (offs_c[None, :] < end), other=0.0)
                dk = dot(tl.trans(grad_dot.to(qc.dtype)), qc, dk, IEEE)
    k_chunk = tl.load(K + offs_n[:, None] * D + offs_c[None, :], mask=mask_n[:, None] & (offs_c[None, :] < D),
                      other=0.0).to(tl.float32)
    correction = -inv_norms * inv_norms * col_sums  # [BLOCK_N, LP]: key-norm correction per level
    coef = tl.zeros((BLOCK_N, BLOCK_C), dtype=tl.float32)
    for level in range(L):
        cover = offs_c[None, :] < tl.load(DIMS + level)
        per_key = tl.sum(tl.where(levels[None, :] == level, correction, 0.0), axis=1)
        coef += tl.where(cover, per_key[:, None], 0.0)
    dk += coef * k_chunk
    tl.store(OK + offs_n[:, None] * D + offs_c[None, :], (dk * g_out).to(OK.dtype.element_ty),
             mask=mask_n[:, None] & (offs_c[None, :] < D))


def _blocks(batch: int, dim: int) -> dict[str, int]:
    return {"BLOCK_M": 16 if batch <= 16 else 32 if batch <= 32 else 64, "BLOCK_N": 64,
            "BLOCK_D": 32 if dim <= 32 else 64}


def _key_splits(batch: int, n_keys: int, blocks: dict[str, int]) -> int:
    """How many ways to split the keys: enough programs to fill a GPU (16 local queries give one query block),
    no more, since each split keeps a few floats per query and level (memory B x splits, never B x N)."""
    key_blocks = triton.cdiv(n_keys, blocks["BLOCK_N"])
    query_blocks = triton.cdiv(batch, blocks["BLOCK_M"])
    wanted = max(1, min(key_blocks, triton.cdiv(TARGET_PROGRAMS, query_blocks)))
    return triton.cdiv(key_blocks, triton.cdiv(key_blocks, wanted))  # no empty splits


def dims_divisor(dims: Sequence[int]) -> int:
    """A divisor of every level's dim, told to the compiler (tl.multiple_of): with 8 (F2LLM's MRL dims, and d of
    every real model) the loads along d vectorise and the loops pipeline; with 1 they still work, slower."""
    return 8 if all(d % 8 == 0 for d in dims) else 1


def _column_block(dim: int) -> int:
    """Feature columns per backward program: wide enough to limit recomputation, small enough for registers."""
    return max(16, min(256, triton.next_power_of_2(dim)))


def choose_strategy(has_ib: bool, batch: int, n_keys: int) -> str:
    """``registers`` (4 launches, every accumulator in registers: F2LLM's 16 x 512 regime) or ``scratch``
    (large in-batch problems: one logit recomputation per side, see ``fused_scratch``)."""
    return "scratch" if has_ib and batch * n_keys >= SCRATCH_MIN_PAIRS else "registers"


_forced_strategy: str | None = None


@contextmanager
def forced_strategy(strategy: str, scratch_bytes: int | None = None) -> Iterator[None]:
    """Inside the block, ``strategy="auto"`` calls (e.g. through ``contrastive_loss``) use ``strategy``, and
    optionally a smaller scratch (so that small test shapes walk several chunks): tests, notebook, benchmark."""
    global _forced_strategy
    if strategy not in STRATEGIES[1:]:
        raise ValueError(f"strategy must be one of {STRATEGIES[1:]}, got {strategy!r}")
    saved = _forced_strategy, fused_scratch.SCRATCH_BYTES
    _forced_strategy = strategy
    fused_scratch.SCRATCH_BYTES = scratch_bytes or fused_scratch.SCRATCH_BYTES
    try:
        yield
    finally:
        _forced_strategy, fused_scratch.SCRATCH_BYTES = saved


class _FusedContrastive(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, pos, neg, keys, labels, dims: Sequence[int], weights: Sequence[float], temperature: float,
                strategy: str):
        q, pos = q.contiguous(), pos.contiguous()
        batch, dim = q.shape
        has_ib, has_hard = keys is not None, neg is not None
        neg = neg.contiguous() if has_hard else pos  # a dummy pointer when absent
        keys = keys.contiguous() if has_ib else q
        labels = labels.contiguous() if has_ib else torch.zeros(1, dtype=torch.long, device=q.device)
        n_keys, k_hard, n_levels = (keys.shape[0] if has_ib else 0), (neg.shape[1] if has_hard else 0), len(dims)
        if strategy == "auto":
            strategy = _forced_strategy or choose_strategy(has_ib, batch, n_keys)
        scratch = strategy == "scratch" and has_ib
        device = q.device
        dims_t = torch.tensor(list(dims), dtype=torch.int32, device=device)
        weights_t = torch.tensor(list(weights), dtype=torch.float32, device=device)
        blocks = _blocks(batch, dim)
        dims_div = dims_divisor(dims)
        kp = triton.next_power_of_2(k_hard + 1)
        ieee = q.dtype == torch.float32
        lse_ib = torch.empty((n_levels, batch), dtype=torch.float32, device=device)
        coefs = torch.empty((2, n_levels, batch, kp) if has_hard else (2, 1), dtype=torch.float32, device=device)
        beta = torch.empty((n_levels, batch), dtype=torch.float32, device=device)
        inv_temp, inv_b = 1.0 / temperature, 1.0 / batch
        norms = (torch.empty(1, device=device),) * 2  # dummies unless the scratch path reads prefix norms
        if scratch:
            norms = tuple(fused_scratch.prefix_norms(x, dims_t, dims_div) for x in (q, keys))
        tiles = fused_scratch.current_tiles()  # the backward uses the tile shape of its forward
        fwd_blocks = {"BLOCK_M": tiles[0]["BLOCK_M"], "BLOCK_N": 64, "BLOCK_D": fused_scratch.grad_block_d(q.dtype)} \
            if scratch else blocks
        fwd_launch = {"num_warps": tiles[1], "num_stages": tiles[2]} if scratch else {}
        n_splits = _key_splits(batch, n_keys, fwd_blocks) if has_ib else 1  # statistics per row: one per split
        stats = torch.empty((3, n_splits, n_levels, batch), dtype=torch.float32, device=device)
        if has_ib:
            loss = torch.empty(1, dtype=torch.float32, device=device)  # zeroed by _ib_fwd
            per_split = triton.cdiv(triton.cdiv(n_keys, fwd_blocks["BLOCK_N"]), n_splits)
            grid = (triton.cdiv(batch, fwd_blocks["BLOCK_M"]), n_splits)
            _ib_fwd[grid](q, keys, norms[0], norms[1], dims_t, stats[0], stats[1], stats[2], loss, batch, n_keys,
                          dim, n_levels, inv_temp, per_split, LP=triton.next_power_of_2(n_levels), PRENORM=scratch,
                          DIMS_DIV=dims_div, IEEE=ieee, **fwd_blocks, **fwd_launch)
        else:
            loss = torch.zeros(1, dtype=torch.float32, device=device)
        _row_fwd[(batch,)](q, pos, neg, keys, labels, dims_t, weights_t, stats[0], stats[1], stats[2], lse_ib,
                           coefs[0], coefs[1], beta, loss, batch, dim, n_levels, k_hard, n_splits, inv_temp, inv_b,
                           HAS_IB=has_ib, HAS_HARD=has_hard, KP=kp, BLOCK_D=blocks["BLOCK_D"], DIMS_DIV=dims_div)
        ctx.save_for_backward(q, pos, neg, keys, labels, dims_t, weights_t, lse_ib, coefs, beta, *norms)
        ctx.meta = (has_ib, has_hard, n_keys, k_hard, kp, inv_temp, inv_b, blocks, ieee, scratch, tuple(dims),
                    tuple(weights), dims_div, tiles)
        return loss[0]

    @staticmethod
    def backward(ctx, grad_out):
        q, pos, neg, keys, labels, dims_t, weights_t, lse_ib, coefs, beta, q_norms, k_norms = ctx.saved_tensors
        (has_ib, has_hard, n_keys, k_hard, kp, inv_temp, inv_b, blocks, ieee, scratch, dims, weights, dims_div,
         tiles) = ctx.meta
        batch, dim = q.shape
        n_levels = dims_t.shape[0]
        grad_out = grad_out.reshape(1).to(torch.float32)
        block_c = _column_block(dim)
        warps = 8 if block_c >= 256 else 4
        out_q = torch.empty_like(q)
        out_p = torch.empty_like(pos) if has_hard else None
        out_h = torch.empty_like(neg) if has_hard else None

        def dq_kernel(row0: int, rows: int, extra: torch.Tensor | None) -> None:
            _bwd_dq[(triton.cdiv(rows, blocks["BLOCK_M"]), triton.cdiv(dim, block_c))](
                q, pos, neg, keys, labels, dims_t, weights_t, lse_ib, coefs[0], coefs[1], beta, grad_out,
                extra if extra is not None else q, out_q, out_p if has_hard else q, out_h if has_hard else q, batch,
                n_keys, dim, n_levels, k_hard, row0, rows, inv_temp, inv_b, HAS_IB=has_ib and not scratch,
                HAS_HARD=has_hard, HAS_EXTRA=extra is not None, KP=kp, BLOCK_C=block_c, DIMS_DIV=dims_div,
                IEEE=ieee, num_warps=warps, **blocks)

        out_k = None
        if scratch:
            args = (q, keys, labels, dims, weights, lse_ib, q_norms, k_norms, inv_temp, inv_b, dims_div, tiles)
            for row0, rows, extra in fused_scratch.query_chunks(*args):
                dq_kernel(row0, rows, extra)
            out_k = fused_scratch.key_grads(*args, grad_out)
            return out_q, out_p, out_h, out_k, None, None, None, None, None
        dq_kernel(0, batch, None)
        if has_ib:
            out_k = torch.empty_like(keys)
            _bwd_dk[(triton.cdiv(n_keys, blocks["BLOCK_N"]), triton.cdiv(dim, block_c))](
                q, keys, labels, dims_t, weights_t, lse_ib, grad_out, out_k, batch, n_keys, dim, n_levels, inv_temp,
                inv_b, LP=triton.next_power_of_2(n_levels), BLOCK_C=block_c, DIMS_DIV=dims_div, IEEE=ieee,
                num_warps=warps, **blocks)
        return out_q, out_p, out_h, out_k, None, None, None, None, None


def fused_loss(queries: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor | None,
               keys: torch.Tensor | None, labels: torch.Tensor | None, dims: Sequence[int],
               weights: Sequence[float], temperature: float, strategy: str = "auto") -> torch.Tensor:
    """Same semantics as :func:`~f2llm_lib.losses.reference.reference_loss`, in one fused autograd op.

    ``strategy``: ``auto`` (registers below ``SCRATCH_MIN_PAIRS`` query-key pairs, scratch above), or either
    one forced (tests and benchmarks)."""
    if queries.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"the Triton loss takes float32, float16 or bfloat16 inputs, got {queries.dtype}")
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    return _FusedContrastive.apply(queries, positives, negatives, keys, labels, tuple(dims), tuple(weights),
                                   temperature, strategy)
