"""Gathering keys across processes, with the gradient convention made explicit.

Queries stay local; keys (positives, shared negatives) are all-gathered so that each rank scores its queries
against every rank's keys. Rank r's loss then depends on keys owned by other ranks, so the gradient a rank
computes for a remote key must be summed back to the key's owner: backward = all-reduce(SUM) of the gathered
gradient, then each rank keeps its own slice. With DDP averaging parameter gradients over R ranks, training
then follows the gradient of the global mean loss (the mean over all R x B queries), exactly what one process
would compute on the concatenated batch. See tests/test_loss_distributed.py.

``stop_grad=True`` reproduces the released F2LLM code, whose ``accelerator.gather`` returns a tensor without
autograd history: in a multi-process run the in-batch loss then trains only the query side (no gradient even
for the local keys). In a single process ``accelerator.gather`` is the identity, so nothing is detached.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def world() -> tuple[int, int]:
    """(rank, world size) of the default process group, or (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, local: torch.Tensor) -> torch.Tensor:
        rank, size = world()
        ctx.rank, ctx.rows = rank, local.shape[0]
        parts = [torch.empty_like(local) for _ in range(size)]
        dist.all_gather(parts, local.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)  # every rank's gradient for each key, summed
        return grad[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows]


def gather_keys(local: torch.Tensor, stop_grad: bool = False) -> torch.Tensor:
    """All-gather ``local`` (same shape on every rank) along dim 0; identity in a single process."""
    rank, size = world()
    if size == 1:
        return local
    sizes = [torch.zeros(1, dtype=torch.long, device=local.device) for _ in range(size)]
    dist.all_gather(sizes, torch.tensor([local.shape[0]], device=local.device))
    if len({int(s) for s in sizes}) != 1:
        raise ValueError(f"every rank must hold the same number of keys to gather; got {[int(s) for s in sizes]}")
    if stop_grad:
        parts = [torch.empty_like(local) for _ in range(size)]
        dist.all_gather(parts, local.detach().contiguous())
        return torch.cat(parts)
    return _GatherWithGrad.apply(local)
