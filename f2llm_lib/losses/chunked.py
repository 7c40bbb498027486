"""InfoNCE with memory linear in B + N: online log-sum-exp over key chunks, recomputation in backward.

Forward, per chunk of keys: logits tile S = q k_c^T / tau (B x c), running row max m and running sum l of
exp(S - m): lse = m + log l. Only lse (B numbers) is saved. Backward recomputes each tile and uses
dL/dS = g (softmax(S) - onehot(label)), softmax(S) = exp(S - lse), so dq = sum_c dS k_c / tau and
dk_c = dS^T q / tau. Peak extra memory: one B x c tile instead of the B x N logits (and their gradient).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .reference import accumulation_dtype, safe_normalize


class _ChunkedInfoNCE(torch.autograd.Function):
    """Mean over rows of cross-entropy(q k^T / tau, labels) for unit-norm q [B, d] and k [N, d]."""

    @staticmethod
    def forward(ctx, q, k, labels, temperature: float, chunk: int):
        acc = accumulation_dtype(q.dtype)
        rows = torch.arange(q.shape[0], device=q.device)
        run_max = torch.full((q.shape[0],), float("-inf"), device=q.device, dtype=acc)
        run_sum = torch.zeros_like(run_max)
        for start in range(0, k.shape[0], chunk):
            tile = (q @ k[start:start + chunk].T).to(acc) / temperature
            new_max = torch.maximum(run_max, tile.max(dim=1).values)
            run_sum = run_sum * torch.exp(run_max - new_max) + torch.exp(tile - new_max[:, None]).sum(dim=1)
            run_max = new_max
        lse = run_max + torch.log(run_sum)
        target = (q * k[labels]).sum(-1).to(acc) / temperature
        ctx.save_for_backward(q, k, labels, lse)
        ctx.temperature, ctx.chunk, ctx.rows = temperature, chunk, rows
        return (lse - target).mean()

    @staticmethod
    def backward(ctx, grad_out):
        q, k, labels, lse = ctx.saved_tensors
        acc = lse.dtype
        scale = grad_out.to(acc) / (q.shape[0] * ctx.temperature)
        dq = torch.zeros(q.shape, dtype=acc, device=q.device)
        dk = torch.zeros(k.shape, dtype=acc, device=k.device)
        for start in range(0, k.shape[0], ctx.chunk):
            keys = k[start:start + ctx.chunk]
            probs = torch.exp((q @ keys.T).to(acc) / ctx.temperature - lse[:, None])
            hit = (labels >= start) & (labels < start + keys.shape[0])
            probs[ctx.rows[hit], labels[hit] - start] -= 1.0  # softmax - onehot
            probs *= scale
            dq += probs @ keys.to(acc)
            dk[start:start + keys.shape[0]] = probs.T @ q.to(acc)
        return dq.to(q.dtype), dk.to(k.dtype), None, None, None


def chunked_loss(queries: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor | None,
                 keys: torch.Tensor | None, labels: torch.Tensor | None, dims: Sequence[int],
                 weights: Sequence[float], temperature: float, chunk: int = 1024) -> torch.Tensor:
    """Same semantics as :func:`~f2llm_lib.losses.reference.reference_loss`; memory O((B + N) d)."""
    acc = accumulation_dtype(queries.dtype)
    total = queries.new_zeros((), dtype=acc)
    for dim, weight in zip(dims, weights, strict=True):
        q = safe_normalize(queries[:, :dim])
        level = 0.0
        if keys is not None:
            k = safe_normalize(keys[:, :dim])
            level = level + _ChunkedInfoNCE.apply(q, k, labels, temperature, chunk)
        if negatives is not None:  # k + 1 candidates per query: already linear in B, no chunking needed
            candidates = safe_normalize(torch.cat([positives.unsqueeze(1), negatives], dim=1)[..., :dim])
            logits = (q.unsqueeze(1) * candidates).sum(-1).to(acc) / temperature
            zeros = torch.zeros(len(q), dtype=torch.long, device=q.device)
            level = level + torch.nn.functional.cross_entropy(logits, zeros)
        total = total + weight * level
    return total
