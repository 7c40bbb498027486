"""InfoNCE with memory linear in B + N: online log-sum-exp over key chunks, recomputation in backward.

Forward, per chunk of keys: logits tile S = q k_c^T / tau (B x c), running row max m and running sum l of
exp(S - m): lse = m + log l. Only lse (B numbers) is saved. Backward recomputes each tile and uses
dL/dS = g (softmax(S) - onehot(label)), softmax(S) = exp(S - lse), so dq = sum_c dS k_c / tau and
dk_c = dS^T q / tau. Peak extra memory: one B x c tile instead of the B x N logits (and their gradient).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .reference import accumulation_dtype, false_negative_mask, safe_normalize


def _inverse_norms(x: torch.Tensor, acc: torch.dtype, eps: float = 1e-12) -> torch.Tensor:
    x = x.to(acc)
    norm = _rowdot(x, x).sqrt()  # vector_norm would allocate an [n, d] temporary
    return torch.where(norm >= eps, 1.0 / norm.clamp_min(eps), torch.zeros_like(norm))  # zero vector: no grad


class _ChunkedInfoNCE(torch.autograd.Function):
    """Mean over rows of cross-entropy(q_hat k_hat^T / tau, labels) for raw q [B, d], k [N, d].

    Normalisation is folded in (q_hat = a q, a = 1 / ||q||) so that no normalised copy is ever stored: only the
    inputs (views), B + N inverse norms and B log-sum-exps are kept; tiles are scaled in place.
    """

    @staticmethod
    def forward(ctx, q, k, labels, temperature: float, chunk: int, margin: float | None = None,
                stats: dict | None = None):
        acc = accumulation_dtype(q.dtype)
        a, b = _inverse_norms(q, acc), _inverse_norms(k, acc)
        row_scale = (a / temperature)[:, None]
        # Half inputs are upcast once (raw dot products of unnormalised half vectors can overflow); float32
        # inputs are used as they are, so no copy is made.
        q_acc, k_acc = q.to(acc), k.to(acc)
        run_max = torch.full((q.shape[0],), float("-inf"), device=q.device, dtype=acc)
        run_sum = torch.zeros_like(run_max)
        target = torch.empty_like(run_max)  # each row's positive logit, picked up in the chunk that holds it
        rows = torch.arange(q.shape[0], device=q.device)
        if margin is not None:  # the mask needs every row's positive logit before the first tile
            target = _rowdot(q_acc, k_acc[labels]) * a * b[labels] / temperature
        masked = 0
        for start in range(0, k.shape[0], chunk):
            tile = q_acc @ k_acc[start:start + chunk].T
            tile.mul_(row_scale).mul_(b[start:start + chunk][None, :])  # logits, in place
            hit = (labels >= start) & (labels < start + tile.shape[1])
            if margin is None:
                target[hit] = tile[rows[hit], labels[hit] - start]
            else:
                drop = _tile_mask(tile, target, start, labels, margin, temperature)
                tile.masked_fill_(drop, float("-inf"))
                masked += int(drop.sum())
            new_max = torch.maximum(run_max, tile.amax(dim=1))
            run_sum.mul_(torch.exp(run_max - new_max)).add_(tile.sub_(new_max[:, None]).exp_().sum(dim=1))
            run_max = new_max
        lse = run_max + torch.log(run_sum)
        ctx.save_for_backward(q, k, labels, lse, a, b, target)
        ctx.temperature, ctx.chunk, ctx.margin = temperature, chunk, margin
        if stats is not None and margin is not None:
            stats["masked"] = masked
        return (lse - target).mean()

    @staticmethod
    def backward(ctx, grad_out):
        # float32 statistics even when backward runs inside an autocast region
        with torch.autocast(device_type=grad_out.device.type, enabled=False):
            return _ChunkedInfoNCE._backward(ctx, grad_out)

    @staticmethod
    def _backward(ctx, grad_out):
        q, k, labels, lse, a, b, target = ctx.saved_tensors
        acc, tau, rows = lse.dtype, ctx.temperature, torch.arange(q.shape[0], device=q.device)
        g = grad_out.to(acc) / q.shape[0]
        q_acc, k_acc = q.to(acc), k.to(acc)  # views when the inputs are already float32
        dq_scaled = torch.zeros(q.shape, dtype=acc, device=q.device)  # a * dL/dq_hat
        dk_hat = torch.empty(k.shape, dtype=acc, device=k.device)  # dL/dk_hat
        for start in range(0, k.shape[0], ctx.chunk):
            stop = min(start + ctx.chunk, k.shape[0])
            grad_s = q_acc @ k_acc[start:stop].T
            grad_s.mul_(a[:, None] / tau).mul_(b[None, start:stop])  # logits
            if ctx.margin is not None:  # the forward's mask (a selection: no gradient of its own)
                grad_s.masked_fill_(_tile_mask(grad_s, target, start, labels, ctx.margin, tau), float("-inf"))
            grad_s.sub_(lse[:, None]).exp_()  # softmax
            hit = (labels >= start) & (labels < stop)
            grad_s[rows[hit], labels[hit] - start] -= 1.0  # softmax - onehot
            grad_s.mul_(g / tau).mul_(a[:, None])  # dL/dlogits / tau, times a: one tile, scaled in place
            torch.matmul(grad_s.T, q_acc, out=dk_hat[start:stop])  # (dS a)^T q = dS^T q_hat
            dq_scaled.addmm_(grad_s.mul_(b[None, start:stop]), k_acc[start:stop])  # a (dS k_hat)
        # Through the normalisation, x_hat = c x: dL/dx = c dx_hat - c^3 (x . dx_hat) x. With m = a dq_hat:
        # dL/dq = m - a^2 (q . m) q. In place, so no second [B, d] or [N, d] buffer is allocated.
        dq = dq_scaled.addcmul_(q_acc, (a * a * _rowdot(q_acc, dq_scaled))[:, None], value=-1.0)
        dk = dk_hat.mul_(b[:, None]).addcmul_(k_acc, (b * b * _rowdot(k_acc, dk_hat))[:, None], value=-1.0)
        return dq.to(q.dtype), dk.to(k.dtype), None, None, None, None, None


def _tile_mask(tile: torch.Tensor, target: torch.Tensor, start: int, labels: torch.Tensor, margin: float,
               temperature: float) -> torch.Tensor:
    columns = torch.arange(start, start + tile.shape[1], device=tile.device)
    return false_negative_mask(tile, target, columns, labels, margin, temperature)


def _prefix(x: torch.Tensor, dim: int) -> torch.Tensor:
    """The first ``dim`` features; the tensor itself at full width, so that autograd's slice backward does not
    allocate a second full-size gradient."""
    return x if dim == x.shape[-1] else x[..., :dim]


def _rowdot(x: torch.Tensor, y: torch.Tensor, block_elements: int = 1 << 21) -> torch.Tensor:
    """Row-wise dot products, a block of rows at a time: no [n, d] temporary (a batched matmul on unsqueezed
    views would copy both inputs)."""
    rows = max(1, block_elements // max(x.shape[-1], 1))
    return torch.cat([(x[i:i + rows] * y[i:i + rows]).sum(-1) for i in range(0, x.shape[0], rows)])


def chunked_loss(queries: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor | None,
                 keys: torch.Tensor | None, labels: torch.Tensor | None, dims: Sequence[int],
                 weights: Sequence[float], temperature: float, chunk: int = 1024,
                 false_negative_margin: float | None = None, stats: dict | None = None) -> torch.Tensor:
    """Same semantics as :func:`~f2llm_lib.losses.reference.reference_loss`; memory O((B + N) d)."""
    acc = accumulation_dtype(queries.dtype)
    total = queries.new_zeros((), dtype=acc)
    for dim, weight in zip(dims, weights, strict=True):
        level = 0.0
        if keys is not None:
            level = level + _ChunkedInfoNCE.apply(_prefix(queries, dim), _prefix(keys, dim), labels, temperature,
                                                  chunk, false_negative_margin, stats)
        if negatives is not None:  # k + 1 candidates per query: already linear in B, no chunking needed
            q = safe_normalize(_prefix(queries, dim))
            candidates = safe_normalize(torch.cat([positives.unsqueeze(1), negatives], dim=1)[..., :dim])
            logits = (q.unsqueeze(1) * candidates).sum(-1).to(acc) / temperature
            zeros = torch.zeros(len(q), dtype=torch.long, device=q.device)
            level = level + torch.nn.functional.cross_entropy(logits, zeros)
        total = total + weight * level
    return total
