"""F2LLM's loss as one fused autograd op in Triton: both losses, every MRL level, memory linear in B + N.

The trick that makes all MRL levels nearly free: levels are prefixes (8, 16, ..., d), so one pass over the
feature dim computes every level's dot products. The kernels walk d segment by segment ([0, 8), [8, 16),
[16, 32), ...); after each segment the running accumulator holds the raw prefix dot product of that level,
and running sums of squares hold the prefix norms. That level's logits are then ``acc * a_i * b_j / tau``.

Kernels (4 Triton launches per forward + backward, plus one zero-fill each way):
1. ``_ib_fwd``: grid (query blocks, key blocks). Per tile and level: online-softmax statistics of the in-batch
   logits (row max, sum of exp, softmax-weighted sum of logits) written per key block. Splitting over keys as
   well as queries keeps a GPU busy with 16 local queries. No B x N tensor is ever written.
2. ``_row_fwd``: one program per query. Combines the key-block statistics into a log-sum-exp per level, computes
   the positive's logit and the hard-negative softmax (positive + its k negatives), adds the weighted loss.
3. ``_ib_bwd``: same grid as 1. Recomputes each tile, forms dL/dlogits = g (softmax - onehot) and accumulates
   dq and dk for every level's prefix with fp32 atomics, plus the column sums the key normalisation needs.
4. ``_row_bwd``: one program per query (hard-negative gradients, the query-norm correction) and per key (the
   key-norm correction), then the cast to the input dtype.

Normalisation gradient: for x_hat = x * a with a = 1 / ||x||, dL/dx = a * dL/dx_hat - a^2 (x_hat . dL/dx_hat) x.
The scalar (x_hat . dL/dx_hat) equals sum_j dL/ds_ij * s_ij, which is accumulated tile by tile.
A vector of norm below 1e-12 is given a zero gradient (its direction is undefined; PyTorch's F.normalize
would return a gradient of order 1e12 there).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import triton
import triton.language as tl

EPS = tl.constexpr(1e-12)


@triton.jit
def _dot(a, b, acc, IEEE: tl.constexpr):
    if IEEE:
        return tl.dot(a, b, acc, input_precision="ieee")
    else:
        return tl.dot(a, b, acc)


@triton.jit
def _ib_fwd(Q, K, DIMS, PM, PL, PT, B, N, D, L, inv_temp,
            BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, IEEE: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < B
    mask_n = offs_n < N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    q_sq = tl.zeros((BLOCK_M,), dtype=tl.float32)
    k_sq = tl.zeros((BLOCK_N,), dtype=tl.float32)
    start = 0
    for level in range(L):
        end = tl.load(DIMS + level)
        for d0 in range(start, end, BLOCK_D):
            offs_d = d0 + tl.arange(0, BLOCK_D)
            mask_d = offs_d < end
            q = tl.load(Q + offs_m[:, None] * D + offs_d[None, :], mask=mask_m[:, None] & mask_d[None, :], other=0.0)
            k = tl.load(K + offs_n[:, None] * D + offs_d[None, :], mask=mask_n[:, None] & mask_d[None, :], other=0.0)
            acc = _dot(q, tl.trans(k), acc, IEEE)
            qf = q.to(tl.float32)
            kf = k.to(tl.float32)
            q_sq += tl.sum(qf * qf, axis=1)
            k_sq += tl.sum(kf * kf, axis=1)
        start = end
        a = 1.0 / tl.maximum(tl.sqrt(q_sq), EPS)
        b = 1.0 / tl.maximum(tl.sqrt(k_sq), EPS)
        s = acc * a[:, None] * b[None, :] * inv_temp
        s = tl.where(mask_n[None, :], s, 0.0)
        row_max = tl.max(tl.where(mask_n[None, :], s, float("-inf")), axis=1)
        p = tl.where(mask_n[None, :], tl.exp(s - row_max[:, None]), 0.0)
        base = (pid_n * L + level) * B + offs_m
        tl.store(PM + base, row_max, mask=mask_m)
        tl.store(PL + base, tl.sum(p, axis=1), mask=mask_m)
        tl.store(PT + base, tl.sum(p * s, axis=1), mask=mask_m)


@triton.jit
def _row_fwd(Q, P, H, K, LABELS, DIMS, W, PM, PL, PT, LSE_IB, CQ, LSE_H, LOSS, B, D, L, KH, NBN, inv_temp, inv_b,
             HAS_IB: tl.constexpr, HAS_HARD: tl.constexpr, KP: tl.constexpr, BLOCK_D: tl.constexpr):
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
        end = tl.load(DIMS + level)
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
        a = 1.0 / tl.maximum(tl.sqrt(q_sq), EPS)
        level_loss = 0.0
        if HAS_HARD:
            bc = 1.0 / tl.maximum(tl.sqrt(c_sq), EPS)
            h = tl.where(mask_c, qc * a * bc * inv_temp, float("-inf"))
            h_max = tl.max(h, axis=0)
            lse_h = h_max + tl.log(tl.sum(tl.exp(h - h_max), axis=0))
            tl.store(LSE_H + level * B + i, lse_h)
            level_loss += lse_h - tl.sum(tl.where(offs_c == 0, h, 0.0), axis=0)
        if HAS_IB:
            run_m = float("-inf")
            run_l = 0.0
            run_t = 0.0
            for nb in range(NBN):
                base = (nb * L + level) * B + i
                m_b = tl.load(PM + base)
                new_m = tl.maximum(run_m, m_b)
                keep = tl.exp(run_m - new_m)
                add = tl.exp(m_b - new_m)
                run_l = run_l * keep + tl.load(PL + base) * add
                run_t = run_t * keep + tl.load(PT + base) * add
                run_m = new_m
            lse = run_m + tl.log(run_l)
            s_label = qk * a * (1.0 / tl.maximum(tl.sqrt(k_sq), EPS)) * inv_temp
            tl.store(LSE_IB + level * B + i, lse)
            tl.store(CQ + level * B + i, run_t / run_l - s_label)  # E_softmax[s] - s_label, for backward
            level_loss += lse - s_label
        row_loss += tl.load(W + level) * level_loss
    tl.atomic_add(LOSS, row_loss * inv_b)


@triton.jit
def _ib_bwd(Q, K, LABELS, DIMS, W, LSE_IB, GOUT, DQ, DK, CK, B, N, D, L, inv_temp, inv_b,
            BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, IEEE: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < B
    mask_n = offs_n < N
    valid = mask_m[:, None] & mask_n[None, :]
    labels = tl.load(LABELS + offs_m, mask=mask_m, other=-1)
    onehot = (offs_n[None, :] == labels[:, None]) & valid
    g_out = tl.load(GOUT).to(tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    q_sq = tl.zeros((BLOCK_M,), dtype=tl.float32)
    k_sq = tl.zeros((BLOCK_N,), dtype=tl.float32)
    start = 0
    for level in range(L):
        end = tl.load(DIMS + level)
        for d0 in range(start, end, BLOCK_D):
            offs_d = d0 + tl.arange(0, BLOCK_D)
            mask_d = offs_d < end
            q = tl.load(Q + offs_m[:, None] * D + offs_d[None, :], mask=mask_m[:, None] & mask_d[None, :], other=0.0)
            k = tl.load(K + offs_n[:, None] * D + offs_d[None, :], mask=mask_n[:, None] & mask_d[None, :], other=0.0)
            acc = _dot(q, tl.trans(k), acc, IEEE)
            qf = q.to(tl.float32)
            kf = k.to(tl.float32)
            q_sq += tl.sum(qf * qf, axis=1)
            k_sq += tl.sum(kf * kf, axis=1)
        start = end
        q_norm = tl.sqrt(q_sq)
        k_norm = tl.sqrt(k_sq)
        a = 1.0 / tl.maximum(q_norm, EPS)
        b = 1.0 / tl.maximum(k_norm, EPS)
        s = acc * a[:, None] * b[None, :] * inv_temp
        lse = tl.load(LSE_IB + level * B + offs_m, mask=mask_m, other=0.0)
        p = tl.where(valid, tl.exp(s - lse[:, None]), 0.0)
        g = g_out * tl.load(W + level) * inv_b
        grad_s = g * (p - onehot.to(tl.float32))  # dL/dlogits
        tl.atomic_add(CK + level * N + offs_n, tl.sum(tl.where(valid, grad_s * s, 0.0), axis=0), mask=mask_n)
        a_g = tl.where(q_norm >= EPS, a, 0.0)
        b_g = tl.where(k_norm >= EPS, b, 0.0)
        grad_dot = grad_s * a_g[:, None] * b_g[None, :] * inv_temp  # dL/d(raw prefix dot)
        for d0 in range(0, end, BLOCK_D):
            offs_d = d0 + tl.arange(0, BLOCK_D)
            mask_d = offs_d < end
            q = tl.load(Q + offs_m[:, None] * D + offs_d[None, :], mask=mask_m[:, None] & mask_d[None, :], other=0.0)
            k = tl.load(K + offs_n[:, None] * D + offs_d[None, :], mask=mask_n[:, None] & mask_d[None, :], other=0.0)
            dq = _dot(grad_dot, k.to(tl.float32), tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32), IEEE)
            tl.atomic_add(DQ + offs_m[:, None] * D + offs_d[None, :], dq, mask=mask_m[:, None] & mask_d[None, :])
            dk = _dot(tl.trans(grad_dot), q.to(tl.float32), tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32), IEEE)
            tl.atomic_add(DK + offs_n[:, None] * D + offs_d[None, :], dk, mask=mask_n[:, None] & mask_d[None, :])


@triton.jit
def _row_bwd(Q, P, H, K, DIMS, W, CQ, LSE_H, CK, GOUT, DQ, DK, DC, OQ, OP, OH, OK, B, NK, D, L, KH, inv_temp, inv_b,
             HAS_IB: tl.constexpr, HAS_HARD: tl.constexpr, KP: tl.constexpr, BLOCK_D: tl.constexpr):
    r = tl.program_id(0)
    g_out = tl.load(GOUT).to(tl.float32)
    offs_c = tl.arange(0, KP)
    mask_c = offs_c < KH + 1
    if r < B:  # a query row: hard-negative gradients and the query-norm correction
        i = r
        q_sq = 0.0
        c_sq = tl.zeros((KP,), dtype=tl.float32)
        qc = tl.zeros((KP,), dtype=tl.float32)
        start = 0
        for level in range(L):
            end = tl.load(DIMS + level)
            for d0 in range(start, end, BLOCK_D):
                offs_d = d0 + tl.arange(0, BLOCK_D)
                mask_d = offs_d < end
                q = tl.load(Q + i * D + offs_d, mask=mask_d, other=0.0).to(tl.float32)
                q_sq += tl.sum(q * q, axis=0)
                if HAS_HARD:
                    pos = tl.load(P + i * D + offs_d, mask=mask_d, other=0.0).to(tl.float32)
                    neg_ptr = H + (i * KH + offs_c[:, None] - 1) * D + offs_d[None, :]
                    neg = tl.load(neg_ptr, mask=(offs_c[:, None] >= 1) & mask_c[:, None] & mask_d[None, :],
                                  other=0.0)
                    cand = tl.where(offs_c[:, None] == 0, pos[None, :], neg.to(tl.float32))
                    qc += tl.sum(cand * q[None, :], axis=1)
                    c_sq += tl.sum(cand * cand, axis=1)
            start = end
            q_norm = tl.sqrt(q_sq)
            a = 1.0 / tl.maximum(q_norm, EPS)
            a_g = tl.where(q_norm >= EPS, a, 0.0)
            g = g_out * tl.load(W + level) * inv_b
            beta = 0.0  # coefficient of q in dq (norm corrections)
            alpha = tl.zeros((KP,), dtype=tl.float32)  # coefficient of candidate c in dq, and of q in dcand_c
            delta = tl.zeros((KP,), dtype=tl.float32)  # coefficient of candidate c in dcand_c
            if HAS_HARD:
                c_norm = tl.sqrt(c_sq)
                bc = 1.0 / tl.maximum(c_norm, EPS)
                bc_g = tl.where(c_norm >= EPS, bc, 0.0)
                h = tl.where(mask_c, qc * a * bc * inv_temp, float("-inf"))
                p = tl.where(mask_c, tl.exp(h - tl.load(LSE_H + level * B + i)), 0.0)
                grad_h = tl.where(mask_c, g * (p - (offs_c == 0).to(tl.float32)), 0.0)
                grad_h_h = grad_h * tl.where(mask_c, h, 0.0)
                alpha = grad_h * a_g * bc_g * inv_temp
                delta = -bc_g * bc_g * grad_h_h
                beta += -a_g * a_g * tl.sum(grad_h_h, axis=0)
            if HAS_IB:
                beta += -a_g * a_g * g * tl.load(CQ + level * B + i)
            for d0 in range(0, end, BLOCK_D):
                offs_d = d0 + tl.arange(0, BLOCK_D)
                mask_d = offs_d < end
                q = tl.load(Q + i * D + offs_d, mask=mask_d, other=0.0).to(tl.float32)
                dq = tl.load(DQ + i * D + offs_d, mask=mask_d, other=0.0) + beta * q
                if HAS_HARD:
                    pos = tl.load(P + i * D + offs_d, mask=mask_d, other=0.0).to(tl.float32)
                    neg_ptr = H + (i * KH + offs_c[:, None] - 1) * D + offs_d[None, :]
                    neg = tl.load(neg_ptr, mask=(offs_c[:, None] >= 1) & mask_c[:, None] & mask_d[None, :],
                                  other=0.0)
                    cand = tl.where(offs_c[:, None] == 0, pos[None, :], neg.to(tl.float32))
                    dq += tl.sum(alpha[:, None] * cand, axis=0)
                    dc_ptr = DC + (i * KP + offs_c[:, None]) * D + offs_d[None, :]
                    dc_mask = mask_c[:, None] & mask_d[None, :]
                    dc = tl.load(dc_ptr, mask=dc_mask, other=0.0)
                    dc += alpha[:, None] * q[None, :] + delta[:, None] * cand
                    tl.store(dc_ptr, dc, mask=dc_mask)
                tl.store(DQ + i * D + offs_d, dq, mask=mask_d)
        for d0 in range(0, D, BLOCK_D):  # cast to the input dtype
            offs_d = d0 + tl.arange(0, BLOCK_D)
            mask_d = offs_d < D
            dq = tl.load(DQ + i * D + offs_d, mask=mask_d, other=0.0)
            tl.store(OQ + i * D + offs_d, dq.to(OQ.dtype.element_ty), mask=mask_d)
            if HAS_HARD:
                dc = tl.load(DC + (i * KP + offs_c[:, None]) * D + offs_d[None, :],
                             mask=mask_c[:, None] & mask_d[None, :], other=0.0)
                dp = tl.sum(tl.where(offs_c[:, None] == 0, dc, 0.0), axis=0)
                tl.store(OP + i * D + offs_d, dp.to(OP.dtype.element_ty), mask=mask_d)
                tl.store(OH + (i * KH + offs_c[:, None] - 1) * D + offs_d[None, :], dc.to(OH.dtype.element_ty),
                         mask=(offs_c[:, None] >= 1) & mask_c[:, None] & mask_d[None, :])
    else:  # a key row: the key-norm correction -b^2 (sum_i dL/ds_ij s_ij) k
        if HAS_IB:
            j = r - B
            k_sq = 0.0
            start = 0
            for level in range(L):
                end = tl.load(DIMS + level)
                for d0 in range(start, end, BLOCK_D):
                    offs_d = d0 + tl.arange(0, BLOCK_D)
                    k = tl.load(K + j * D + offs_d, mask=offs_d < end, other=0.0).to(tl.float32)
                    k_sq += tl.sum(k * k, axis=0)
                start = end
                k_norm = tl.sqrt(k_sq)
                b_g = tl.where(k_norm >= EPS, 1.0 / tl.maximum(k_norm, EPS), 0.0)
                coef = -b_g * b_g * tl.load(CK + level * NK + j)
                for d0 in range(0, end, BLOCK_D):
                    offs_d = d0 + tl.arange(0, BLOCK_D)
                    mask_d = offs_d < end
                    k = tl.load(K + j * D + offs_d, mask=mask_d, other=0.0).to(tl.float32)
                    dk = tl.load(DK + j * D + offs_d, mask=mask_d, other=0.0)
                    tl.store(DK + j * D + offs_d, dk + coef * k, mask=mask_d)
            for d0 in range(0, D, BLOCK_D):
                offs_d = d0 + tl.arange(0, BLOCK_D)
                mask_d = offs_d < D
                dk = tl.load(DK + j * D + offs_d, mask=mask_d, other=0.0)
                tl.store(OK + j * D + offs_d, dk.to(OK.dtype.element_ty), mask=mask_d)


def _blocks(batch: int, dim: int) -> tuple[int, int, int]:
    block_m = 16 if batch <= 16 else 32 if batch <= 32 else 64
    block_d = 32 if dim <= 32 else 64
    return block_m, 64, block_d


class _FusedContrastive(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, pos, neg, keys, labels, dims: Sequence[int], weights: Sequence[float], temperature: float):
        q, pos = q.contiguous(), pos.contiguous()
        batch, dim = q.shape
        has_ib, has_hard = keys is not None, neg is not None
        neg = neg.contiguous() if has_hard else pos  # dummy pointer when absent
        keys = keys.contiguous() if has_ib else q
        n_keys = keys.shape[0] if has_ib else 0
        k_hard = neg.shape[1] if has_hard else 0
        n_levels = len(dims)
        device = q.device
        dims_t = torch.tensor(list(dims), dtype=torch.int32, device=device)
        weights_t = torch.tensor(list(weights), dtype=torch.float32, device=device)
        labels = labels.to(torch.int32).contiguous() if has_ib else dims_t
        block_m, block_n, block_d = _blocks(batch, dim)
        n_blocks = triton.cdiv(n_keys, block_n) if has_ib else 1
        ieee = q.dtype == torch.float32
        stats = torch.empty((3, n_blocks, n_levels, batch), dtype=torch.float32, device=device)
        per_row = torch.empty((3, n_levels, batch), dtype=torch.float32, device=device)  # lse_ib, cq, lse_h
        loss = torch.zeros(1, dtype=torch.float32, device=device)
        inv_temp, inv_b = 1.0 / temperature, 1.0 / batch
        if has_ib:
            grid = (triton.cdiv(batch, block_m), n_blocks)
            _ib_fwd[grid](q, keys, dims_t, stats[0], stats[1], stats[2], batch, n_keys, dim, n_levels, inv_temp,
                          BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d, IEEE=ieee)
        kp = triton.next_power_of_2(k_hard + 1)
        _row_fwd[(batch,)](q, pos, neg, keys, labels, dims_t, weights_t, stats[0], stats[1], stats[2],
                           per_row[0], per_row[1], per_row[2], loss, batch, dim, n_levels, k_hard, n_blocks,
                           inv_temp, inv_b, HAS_IB=has_ib, HAS_HARD=has_hard, KP=kp, BLOCK_D=block_d)
        ctx.save_for_backward(q, pos, neg, keys, labels, dims_t, weights_t, per_row)
        ctx.meta = (has_ib, has_hard, n_keys, k_hard, kp, inv_temp, inv_b, (block_m, block_n, block_d), ieee)
        return loss[0]

    @staticmethod
    def backward(ctx, grad_out):
        q, pos, neg, keys, labels, dims_t, weights_t, per_row = ctx.saved_tensors
        has_ib, has_hard, n_keys, k_hard, kp, inv_temp, inv_b, (block_m, block_n, block_d), ieee = ctx.meta
        batch, dim = q.shape
        n_levels = dims_t.shape[0]
        grad_out = grad_out.reshape(1).to(torch.float32).contiguous()
        # One zero-filled fp32 scratch: dq, dk, key-norm column sums, per-candidate grads.
        sizes = [batch * dim, n_keys * dim, n_levels * n_keys, batch * kp * dim if has_hard else 0]
        scratch = torch.zeros(sum(sizes), dtype=torch.float32, device=q.device)
        dq_acc, dk_acc, ck, dc = torch.split(scratch, sizes)
        out_q = torch.empty_like(q)
        out_p = torch.empty_like(pos) if has_hard else None
        out_h = torch.empty_like(neg) if has_hard else None
        out_k = torch.empty_like(keys) if has_ib else None
        if has_ib:
            grid = (triton.cdiv(batch, block_m), triton.cdiv(n_keys, block_n))
            _ib_bwd[grid](q, keys, labels, dims_t, weights_t, per_row[0], grad_out, dq_acc, dk_acc, ck, batch,
                          n_keys, dim, n_levels, inv_temp, inv_b,
                          BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d, IEEE=ieee)
        _row_bwd[(batch + n_keys,)](q, pos, neg, keys, dims_t, weights_t, per_row[1], per_row[2], ck, grad_out,
                                    dq_acc, dk_acc, dc, out_q, out_p if has_hard else q, out_h if has_hard else q,
                                    out_k if has_ib else q, batch, max(n_keys, 1), dim, n_levels, k_hard, inv_temp,
                                    inv_b, HAS_IB=has_ib, HAS_HARD=has_hard, KP=kp, BLOCK_D=block_d)
        return out_q, out_p, out_h, out_k, None, None, None, None


def fused_loss(queries: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor | None,
               keys: torch.Tensor | None, labels: torch.Tensor | None, dims: Sequence[int],
               weights: Sequence[float], temperature: float) -> torch.Tensor:
    """Same semantics as :func:`~f2llm_lib.losses.reference.reference_loss`, in one fused autograd op."""
    if queries.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"the Triton loss takes float32, float16 or bfloat16 inputs, got {queries.dtype}")
    return _FusedContrastive.apply(queries, positives, negatives, keys, labels, tuple(dims), tuple(weights),
                                   temperature)
