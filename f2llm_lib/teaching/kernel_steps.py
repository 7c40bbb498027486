"""Notebook 02's kernel, built up in steps: each step is small enough to read whole and is checked against float64.

The in-batch InfoNCE loss of unit vectors q_i, k_j with temperature tau:
``loss = mean_i [ lse_j(s_ij) - s_ii ]``, ``s_ij = q_i . k_j / tau``, and ``dloss/ds_ij = (p_ij - [i = j]) / B``
with ``p_ij = exp(s_ij - lse_i)``.

0. ``chunked_in_batch``: the bridge, in PyTorch. Forward reads the keys a chunk at a time with the online
   log-sum-exp (two numbers per row survive between chunks); backward recomputes each chunk's logits and uses
   ``p = exp(s - lse)``: only ``lse`` (one number per row) is kept between the passes.
1. ``in_batch_forward``: the same forward as one Triton kernel. A program owns a block of queries and loops over
   blocks of keys; the chunk of step 0 becomes a tile in registers.
2. ``InBatchLoss``: adds the backward: one kernel for dq (a program per query block, looping over keys) and one
   for dk (a program per key block, looping over queries). Each recomputes its tiles instead of storing B x N.
3. ``mrl_in_batch_forward``: every Matryoshka level in one pass. Levels are prefixes of the feature dim, so the
   kernel walks the dims segment by segment; after each segment the running dot product *is* that level's, and
   running sums of squares give that level's norms.
4. The finished op (``fused.py``) adds the hard-negative softmax, the normalisation inside the kernels, several
   key splits per query block and the backward of every level: ``contrastive_loss(..., impl="triton")``.

Steps 0-2 take unit vectors (normalise before calling; autograd handles that part); step 3 takes raw vectors,
since each level re-normalises its own prefix. fp32 only: these are for reading, the library op is for use.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# ---------------------------------------------------------------------------------------------------------------
# Step 0: the bridge, chunked PyTorch


def chunked_in_batch(queries: torch.Tensor, keys: torch.Tensor, temperature: float,
                     chunk: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, dloss/dqueries, dloss/dkeys) for unit vectors, reading ``chunk`` keys (then queries) at a time."""
    batch = queries.shape[0]
    run_max = torch.full((batch,), float("-inf"), dtype=queries.dtype)
    run_sum = torch.zeros(batch, dtype=queries.dtype)
    for start in range(0, keys.shape[0], chunk):  # forward: online log-sum-exp over key chunks
        logits = queries @ keys[start:start + chunk].T / temperature
        new_max = torch.maximum(run_max, logits.max(dim=1).values)
        run_sum = run_sum * torch.exp(run_max - new_max) + torch.exp(logits - new_max[:, None]).sum(dim=1)
        run_max = new_max
    lse = run_max + torch.log(run_sum)
    positive = (queries * keys[:batch]).sum(-1) / temperature
    loss = (lse - positive).mean()
    d_queries, d_keys = torch.zeros_like(queries), torch.zeros_like(keys)
    for start in range(0, keys.shape[0], chunk):  # backward: recompute each chunk, softmax = exp(s - lse)
        logits = queries @ keys[start:start + chunk].T / temperature
        grad = torch.exp(logits - lse[:, None])  # p_ij
        rows = torch.arange(batch)
        cols = rows - start
        own = (cols >= 0) & (cols < logits.shape[1])
        grad[rows[own], cols[own]] -= 1.0  # the label's -1
        grad /= batch * temperature  # mean over queries; ds/dq = k / tau
        d_queries += grad @ keys[start:start + chunk]
        d_keys[start:start + chunk] += grad.T @ queries
    return loss, d_queries, d_keys


# ---------------------------------------------------------------------------------------------------------------
# Step 1: the forward as a Triton kernel


@triton.jit
def _in_batch_forward_kernel(
    queries_ptr,  # [B, D] fp32, unit rows
    keys_ptr,  # [N, D] fp32, unit rows; key i is query i's positive
    lse_ptr,  # [B] out: log-sum-exp of each query's logits
    positive_ptr,  # [B] out: each query's logit with its own positive
    num_queries,  # B
    num_keys,  # N
    dim,  # D
    inv_temperature,  # 1 / tau
    BLOCK_M: tl.constexpr,  # queries per program
    BLOCK_N: tl.constexpr,  # keys per tile
    BLOCK_D: tl.constexpr,  # >= D, a power of two: a whole row is one load here (the library op loops over d)
):
    query_rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    features = tl.arange(0, BLOCK_D)
    query_tile = tl.load(queries_ptr + query_rows[:, None] * dim + features[None, :],
                         mask=(query_rows[:, None] < num_queries) & (features[None, :] < dim), other=0.0)
    run_max = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    run_sum = tl.zeros((BLOCK_M,), dtype=tl.float32)
    positive = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for key_start in range(0, num_keys, BLOCK_N):
        key_rows = key_start + tl.arange(0, BLOCK_N)
        key_tile = tl.load(keys_ptr + key_rows[:, None] * dim + features[None, :],
                           mask=(key_rows[:, None] < num_keys) & (features[None, :] < dim), other=0.0)
        logits = tl.dot(query_tile, tl.trans(key_tile)) * inv_temperature
        logits = tl.where(key_rows[None, :] < num_keys, logits, float("-inf"))  # padding keys count for nothing
        new_max = tl.maximum(run_max, tl.max(logits, axis=1))
        run_sum = run_sum * tl.exp(run_max - new_max) + tl.sum(tl.exp(logits - new_max[:, None]), axis=1)
        run_max = new_max
        is_own = query_rows[:, None] == key_rows[None, :]
        positive += tl.sum(tl.where(is_own, logits, 0.0), axis=1)
    valid = query_rows < num_queries
    tl.store(lse_ptr + query_rows, run_max + tl.log(run_sum), mask=valid)
    tl.store(positive_ptr + query_rows, positive, mask=valid)


def in_batch_forward(queries: torch.Tensor, keys: torch.Tensor, temperature: float,
                     block_m: int = 16, block_n: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch step 1's kernel: (loss, lse per query)."""
    batch, dim = queries.shape
    lse = torch.empty(batch, dtype=torch.float32, device=queries.device)
    positive = torch.empty_like(lse)
    _in_batch_forward_kernel[(triton.cdiv(batch, block_m),)](
        queries.contiguous(), keys.contiguous(), lse, positive, batch, keys.shape[0], dim, 1.0 / temperature,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=max(16, triton.next_power_of_2(dim)))
    return (lse - positive).mean(), lse


@triton.jit
def _decoupled_forward_kernel(
    queries_ptr,  # [B, D] fp32, unit rows
    keys_ptr,  # [N, D] fp32, unit rows; key i is query i's positive
    lse_ptr,  # [B] out: log-sum-exp of each query's logits, its positive left out
    positive_ptr,  # [B] out: each query's logit with its own positive
    num_queries,  # B
    num_keys,  # N
    dim,  # D
    inv_temperature,  # 1 / tau
    BLOCK_M: tl.constexpr,  # queries per program
    BLOCK_N: tl.constexpr,  # keys per tile
    BLOCK_D: tl.constexpr,  # >= D, a power of two
):
    """Exercise 02.6's reference: step 1's kernel for the decoupled contrastive loss (Yeh et al., 2022), whose
    denominator leaves the positive out. One line differs: the marked one."""
    query_rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    features = tl.arange(0, BLOCK_D)
    query_tile = tl.load(queries_ptr + query_rows[:, None] * dim + features[None, :],
                         mask=(query_rows[:, None] < num_queries) & (features[None, :] < dim), other=0.0)
    run_max = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    run_sum = tl.zeros((BLOCK_M,), dtype=tl.float32)
    positive = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for key_start in range(0, num_keys, BLOCK_N):
        key_rows = key_start + tl.arange(0, BLOCK_N)
        key_tile = tl.load(keys_ptr + key_rows[:, None] * dim + features[None, :],
                           mask=(key_rows[:, None] < num_keys) & (features[None, :] < dim), other=0.0)
        logits = tl.dot(query_tile, tl.trans(key_tile)) * inv_temperature
        logits = tl.where(key_rows[None, :] < num_keys, logits, float("-inf"))
        is_own = query_rows[:, None] == key_rows[None, :]
        positive += tl.sum(tl.where(is_own, logits, 0.0), axis=1)
        logits = tl.where(is_own, float("-inf"), logits)  # the edit: the positive counts for nothing below
        new_max = tl.maximum(run_max, tl.max(logits, axis=1))  # finite: a row's first tile has other keys (N > 1)
        run_sum = run_sum * tl.exp(run_max - new_max) + tl.sum(tl.exp(logits - new_max[:, None]), axis=1)
        run_max = new_max
    valid = query_rows < num_queries
    tl.store(lse_ptr + query_rows, run_max + tl.log(run_sum), mask=valid)
    tl.store(positive_ptr + query_rows, positive, mask=valid)


# ---------------------------------------------------------------------------------------------------------------
# Step 2: the backward, two kernels that recompute their tiles


@triton.jit
def _in_batch_grad_tile(query_tile, key_tile, query_rows, key_rows, lse, num_keys, inv_temperature, grad_scale):
    """dloss/ds for one tile, times grad_scale = dloss_out / (B tau): (p - [i = j]) * grad_scale."""
    logits = tl.dot(query_tile, tl.trans(key_tile)) * inv_temperature
    probs = tl.exp(logits - lse[:, None])
    grad = probs - tl.where(query_rows[:, None] == key_rows[None, :], 1.0, 0.0)
    return tl.where(key_rows[None, :] < num_keys, grad, 0.0) * grad_scale


@triton.jit
def _in_batch_dq_kernel(
    queries_ptr,  # [B, D]
    keys_ptr,  # [N, D]
    lse_ptr,  # [B] from the forward
    d_queries_ptr,  # [B, D] out
    num_queries,  # B
    num_keys,  # N
    dim,  # D
    inv_temperature,  # 1 / tau
    grad_scale,  # incoming gradient / (B tau)
    BLOCK_M: tl.constexpr,  # queries per program
    BLOCK_N: tl.constexpr,  # keys per tile
    BLOCK_D: tl.constexpr,  # >= D, a power of two
):
    query_rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    features = tl.arange(0, BLOCK_D)
    query_mask = (query_rows[:, None] < num_queries) & (features[None, :] < dim)
    query_tile = tl.load(queries_ptr + query_rows[:, None] * dim + features[None, :], mask=query_mask, other=0.0)
    lse = tl.load(lse_ptr + query_rows, mask=query_rows < num_queries, other=0.0)
    d_query = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    for key_start in range(0, num_keys, BLOCK_N):
        key_rows = key_start + tl.arange(0, BLOCK_N)
        key_tile = tl.load(keys_ptr + key_rows[:, None] * dim + features[None, :],
                           mask=(key_rows[:, None] < num_keys) & (features[None, :] < dim), other=0.0)
        grad = _in_batch_grad_tile(query_tile, key_tile, query_rows, key_rows, lse, num_keys, inv_temperature,
                                   grad_scale)
        d_query += tl.dot(grad, key_tile)
    tl.store(d_queries_ptr + query_rows[:, None] * dim + features[None, :], d_query, mask=query_mask)


@triton.jit
def _in_batch_dk_kernel(
    queries_ptr,  # [B, D]
    keys_ptr,  # [N, D]
    lse_ptr,  # [B] from the forward
    d_keys_ptr,  # [N, D] out
    num_queries,  # B
    num_keys,  # N
    dim,  # D
    inv_temperature,  # 1 / tau
    grad_scale,  # incoming gradient / (B tau)
    BLOCK_M: tl.constexpr,  # queries per tile
    BLOCK_N: tl.constexpr,  # keys per program
    BLOCK_D: tl.constexpr,  # >= D, a power of two
):
    key_rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    features = tl.arange(0, BLOCK_D)
    key_mask = (key_rows[:, None] < num_keys) & (features[None, :] < dim)
    key_tile = tl.load(keys_ptr + key_rows[:, None] * dim + features[None, :], mask=key_mask, other=0.0)
    d_key = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    for query_start in range(0, num_queries, BLOCK_M):
        query_rows = query_start + tl.arange(0, BLOCK_M)
        valid = query_rows < num_queries
        query_tile = tl.load(queries_ptr + query_rows[:, None] * dim + features[None, :],
                             mask=valid[:, None] & (features[None, :] < dim), other=0.0)
        lse = tl.load(lse_ptr + query_rows, mask=valid, other=0.0)
        grad = _in_batch_grad_tile(query_tile, key_tile, query_rows, key_rows, lse, num_keys, inv_temperature,
                                   grad_scale)
        d_key += tl.dot(tl.trans(grad), query_tile)  # padding queries loaded as zeros: they add nothing
    tl.store(d_keys_ptr + key_rows[:, None] * dim + features[None, :], d_key, mask=key_mask)


class InBatchLoss(torch.autograd.Function):
    """Steps 1 + 2 as an autograd op: forward kernel, then the two backward kernels; saves only lse."""

    @staticmethod
    def forward(ctx, queries: torch.Tensor, keys: torch.Tensor, temperature: float) -> torch.Tensor:
        queries, keys = queries.contiguous(), keys.contiguous()
        loss, lse = in_batch_forward(queries, keys, temperature)
        ctx.save_for_backward(queries, keys, lse)
        ctx.temperature = temperature
        return loss

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        queries, keys, lse = ctx.saved_tensors
        batch, dim = queries.shape
        d_queries, d_keys = torch.empty_like(queries), torch.empty_like(keys)
        grad_scale = float(grad_loss) / (batch * ctx.temperature)
        common = dict(BLOCK_M=16, BLOCK_N=16, BLOCK_D=max(16, triton.next_power_of_2(dim)))
        arguments = (batch, keys.shape[0], dim, 1.0 / ctx.temperature, grad_scale)
        _in_batch_dq_kernel[(triton.cdiv(batch, 16),)](queries, keys, lse, d_queries, *arguments, **common)
        _in_batch_dk_kernel[(triton.cdiv(keys.shape[0], 16),)](queries, keys, lse, d_keys, *arguments, **common)
        return d_queries, d_keys, None


def in_batch_loss(queries: torch.Tensor, keys: torch.Tensor, temperature: float) -> torch.Tensor:
    """Step 2's differentiable in-batch loss of unit vectors."""
    return InBatchLoss.apply(queries, keys, temperature)


# ---------------------------------------------------------------------------------------------------------------
# Step 3: all MRL levels in one pass over the feature dim


@triton.jit
def _mrl_forward_kernel(
    queries_ptr,  # [B, D] fp32, raw (each level normalises its own prefix)
    keys_ptr,  # [N, D] fp32, raw
    level_dims_ptr,  # [L] int32: the prefix length of each level, increasing, the last = D
    run_max_ptr,  # [L, B] in/out: running max of each level's logits (starts at -inf)
    run_sum_ptr,  # [L, B] in/out: running sum of exp(logit - running max) (starts at 0)
    num_queries,  # B
    num_keys,  # N
    dim,  # D
    inv_temperature,  # 1 / tau
    NUM_LEVELS: tl.constexpr,  # L
    BLOCK_M: tl.constexpr,  # queries per program
    BLOCK_N: tl.constexpr,  # keys per tile
    BLOCK_D: tl.constexpr,  # features read per step of the d-loop
):
    query_rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    query_valid = query_rows < num_queries
    for key_start in range(0, num_keys, BLOCK_N):
        key_rows = key_start + tl.arange(0, BLOCK_N)
        key_valid = key_rows < num_keys
        dots = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)  # running prefix dot products
        query_sq = tl.zeros((BLOCK_M,), dtype=tl.float32)  # running prefix sums of squares
        key_sq = tl.zeros((BLOCK_N,), dtype=tl.float32)
        segment_start = 0
        for level in tl.static_range(NUM_LEVELS):
            segment_end = tl.load(level_dims_ptr + level)
            for feature_start in range(segment_start, segment_end, BLOCK_D):  # only this level's new dims
                features = feature_start + tl.arange(0, BLOCK_D)
                in_segment = features < segment_end
                query_tile = tl.load(queries_ptr + query_rows[:, None] * dim + features[None, :],
                                     mask=query_valid[:, None] & in_segment[None, :], other=0.0)
                key_tile = tl.load(keys_ptr + key_rows[:, None] * dim + features[None, :],
                                   mask=key_valid[:, None] & in_segment[None, :], other=0.0)
                dots += tl.dot(query_tile, tl.trans(key_tile))
                query_sq += tl.sum(query_tile * query_tile, axis=1)
                key_sq += tl.sum(key_tile * key_tile, axis=1)
            segment_start = segment_end
            # dots is now this level's prefix dot product: normalise and update its online log-sum-exp
            inv_norms = (1.0 / tl.sqrt(tl.maximum(query_sq, 1e-24)))[:, None] * (
                1.0 / tl.sqrt(tl.maximum(key_sq, 1e-24)))[None, :]
            logits = tl.where(key_valid[None, :], dots * inv_norms * inv_temperature, float("-inf"))
            # The running statistics live in memory between key tiles ([L, B] floats); the library op keeps
            # them in registers as a [BLOCK_M, levels] tile instead.
            out = level * num_queries + query_rows
            run_max = tl.load(run_max_ptr + out, mask=query_valid, other=0.0)
            run_sum = tl.load(run_sum_ptr + out, mask=query_valid, other=0.0)
            new_max = tl.maximum(run_max, tl.max(logits, axis=1))
            run_sum = run_sum * tl.exp(run_max - new_max) + tl.sum(tl.exp(logits - new_max[:, None]), axis=1)
            tl.store(run_max_ptr + out, new_max, mask=query_valid)
            tl.store(run_sum_ptr + out, run_sum, mask=query_valid)


def mrl_in_batch_forward(queries: torch.Tensor, keys: torch.Tensor, level_dims: list[int], weights: list[float],
                         temperature: float, block_m: int = 16, block_n: int = 16,
                         block_d: int = 16) -> torch.Tensor:
    """Launch step 3's kernel: the weighted sum over levels of the in-batch loss of each prefix (raw inputs)."""
    batch, dim = queries.shape
    levels = torch.tensor(level_dims, dtype=torch.int32, device=queries.device)
    run_max = torch.full((len(level_dims), batch), float("-inf"), dtype=torch.float32, device=queries.device)
    run_sum = torch.zeros_like(run_max)
    _mrl_forward_kernel[(triton.cdiv(batch, block_m),)](
        queries.contiguous(), keys.contiguous(), levels, run_max, run_sum, batch, keys.shape[0], dim,
        1.0 / temperature, NUM_LEVELS=len(level_dims), BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d)
    lse = run_max + torch.log(run_sum)
    # The positive logit of each level is one dot product per row: cheap enough to take on the host here.
    positive = torch.stack([torch.nn.functional.cosine_similarity(queries[:, :d], keys[:batch, :d], dim=-1)
                            for d in level_dims]) / temperature
    per_level = (lse - positive).mean(dim=1)
    return (per_level * torch.tensor(weights, dtype=per_level.dtype, device=per_level.device)).sum()


# ---------------------------------------------------------------------------------------------------------------
# Checking a step, as notebook 02 does after each one


def check_step(step: int, batch: int, keys: int, dim: int, temperature: float = 0.05, seed: int = 0) -> dict:
    """Run step 0-3 on random (batch, keys, dim) inputs and compare with float64 autograd of the definition.

    Returns the max abs error of each quantity the step computes and ``within_tolerance`` (step 0 runs in
    float64: 1e-10 relative; steps 1-3 in fp32: ``tolerances.TOLERANCES[torch.float32]``).
    """
    from ..losses.api import mrl_levels, mrl_weights
    from ..losses.tolerances import TOLERANCES

    gen = torch.Generator().manual_seed(seed)
    raw_q = torch.randn(batch, dim, generator=gen, dtype=torch.float64)
    raw_k = torch.randn(keys, dim, generator=gen, dtype=torch.float64)
    dims = mrl_levels(dim) if step == 3 else [dim]
    weights = mrl_weights(dims, dim) if step == 3 else [1.0]
    q, k = raw_q.clone().requires_grad_(), raw_k.clone().requires_grad_()
    truth = sum(w * torch.nn.functional.cross_entropy(
        torch.nn.functional.normalize(q[:, :d], dim=-1) @ torch.nn.functional.normalize(k[:, :d], dim=-1).T
        / temperature, torch.arange(batch)) for d, w in zip(dims, weights, strict=True))
    truth.backward()
    unit_q, unit_k = (torch.nn.functional.normalize(x, dim=-1) for x in (raw_q, raw_k))
    if step == 0:
        loss, d_unit_q, d_unit_k = chunked_in_batch(unit_q, unit_k, temperature, chunk=max(1, keys // 3))
        got = {"loss": loss}
        # chain rule through the normalisation (autograd does it for the kernel steps)
        unit_leaf_q, unit_leaf_k = raw_q.clone().requires_grad_(), raw_k.clone().requires_grad_()
        torch.autograd.backward([torch.nn.functional.normalize(unit_leaf_q, dim=-1),
                                 torch.nn.functional.normalize(unit_leaf_k, dim=-1)], [d_unit_q, d_unit_k])
        got.update(dq=unit_leaf_q.grad, dk=unit_leaf_k.grad)
        atol, rtol = 1e-12, 1e-10
    elif step in (1, 2):
        q32, k32 = raw_q.float().requires_grad_(), raw_k.float().requires_grad_()
        unit32_q, unit32_k = (torch.nn.functional.normalize(x, dim=-1) for x in (q32, k32))
        if step == 1:
            got = {"loss": in_batch_forward(unit32_q.detach(), unit32_k.detach(), temperature)[0]}
        else:
            loss = in_batch_loss(unit32_q, unit32_k, temperature)
            loss.backward()
            got = {"loss": loss.detach(), "dq": q32.grad, "dk": k32.grad}
        atol, rtol = TOLERANCES[torch.float32]
    elif step == 3:
        got = {"loss": mrl_in_batch_forward(raw_q.float(), raw_k.float(), dims, weights, temperature)}
        atol, rtol = TOLERANCES[torch.float32]
    else:
        raise ValueError(f"step must be 0, 1, 2 or 3, got {step}")
    want = {"loss": truth.detach(), "dq": q.grad, "dk": k.grad}
    errors = {f"{name}_err": float((value.double() - want[name]).abs().max()) for name, value in got.items()}
    close = all(torch.allclose(value.double(), want[name], atol=atol, rtol=rtol) for name, value in got.items())
    return {"step": step, "B": batch, "N": keys, "d": dim, "levels": len(dims), **errors, "within_tolerance": close}
