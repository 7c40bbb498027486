"""Notebook 03's exercises: which rows a rank trains on, and the gradient of the gathered keys."""

from __future__ import annotations

import torch

from ._common import ExerciseFailed, expect_close


def local_rows(global_rows: list[int], rank: int, per_device: int) -> list[int]:
    """Reference for 03.1: rank r takes the r-th slice of the global batch."""
    return list(global_rows[rank * per_device:(rank + 1) * per_device])


def check_local_rows(answer) -> None:
    rows = [11, 4, 9, 2, 7, 5, 0, 3]
    for rank in range(4):
        got = answer(rows, rank, 2)
        if got is None:
            raise ExerciseFailed("the function returned None; return the rows of that rank")
        if list(got) != local_rows(rows, rank, 2):
            raise ExerciseFailed(f"rank {rank} got {list(got)}, expected {local_rows(rows, rank, 2)}: contiguous "
                                 "slices, so N ranks of B see exactly one process's batch of N x B")


def gather_backward(grads_per_rank: list[torch.Tensor], rank: int) -> torch.Tensor:
    """Reference for 03.2: every rank holds a gradient for ALL gathered keys; a key's owner needs the sum over
    ranks of its rows (all-reduce, then keep its own slice)."""
    total = torch.stack(grads_per_rank).sum(0)
    rows = total.shape[0] // len(grads_per_rank)
    return total[rank * rows:(rank + 1) * rows]


def check_gather_backward(answer) -> None:
    gen = torch.Generator().manual_seed(3)
    grads = [torch.randn(6, 4, generator=gen) for _ in range(3)]  # 3 ranks, 2 keys each
    for rank in range(3):
        got = answer(grads, rank)
        if got is None:
            raise ExerciseFailed("the function returned None; return the owner's [rows, dim] gradient")
        if torch.is_tensor(got) and got.shape == (2, 4) and torch.allclose(got, grads[rank][2 * rank:2 * rank + 2]):
            raise ExerciseFailed("that is only this rank's own gradient: the other ranks' losses also used these "
                                 "keys, so their gradients must be summed in (the released code's stop-gradient "
                                 "gather drops them)")
        expect_close(got, gather_backward(grads, rank), f"rank {rank}'s gradient",
                     "Sum the gradients of every rank, then keep this rank's rows")


EXERCISES = {
    "03.1": ("a rank's slice of the global batch", check_local_rows, local_rows),
    "03.2": ("the gradient of the gathered keys", check_gather_backward, gather_backward),
}
