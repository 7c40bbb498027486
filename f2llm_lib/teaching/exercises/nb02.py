"""Notebook 02's exercises: the in-batch loss from its definition, and merging two online log-sum-exp states."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...losses.reference import reference_loss
from ._common import ExerciseFailed, expect_close


def in_batch_loss(queries: torch.Tensor, keys: torch.Tensor, temperature: float) -> torch.Tensor:
    """Reference for 02.1: each query against every key, its own at the same index; cosine / temperature, softmax
    cross-entropy, mean over queries."""
    q, k = F.normalize(queries, dim=-1), F.normalize(keys, dim=-1)
    return F.cross_entropy(q @ k.T / temperature, torch.arange(len(q)))


def check_in_batch_loss(answer) -> None:
    gen = torch.Generator().manual_seed(1)
    q, k = torch.randn(9, 13, generator=gen, dtype=torch.float64), torch.randn(9, 13, generator=gen,
                                                                               dtype=torch.float64)
    got = answer(q, k, 0.05)
    if got is None:
        raise ExerciseFailed("the function returned None; return the loss as a scalar tensor")
    truth = reference_loss(q, k, None, k, torch.arange(9), [13], [1.0], 0.05)
    unnormalised = F.cross_entropy(q @ k.T / 0.05, torch.arange(9))
    if torch.is_tensor(got) and torch.allclose(got.double(), unnormalised):
        raise ExerciseFailed("the logits use raw dot products: normalise queries and keys first (cosine)")
    expect_close(got, truth, "the loss", "logits = cosine(q_i, k_j) / temperature, label of query i = i")


def merge_lse(max_a: float, sum_a: float, max_b: float, sum_b: float) -> tuple[float, float]:
    """Reference for 02.2: two partial states (running max m, sum of exp(x - m)) of one row -> the state of both
    parts: rescale each sum to the larger max."""
    new_max = max(max_a, max_b)
    return new_max, sum_a * torch.exp(torch.tensor(max_a - new_max)).item() + \
        sum_b * torch.exp(torch.tensor(max_b - new_max)).item()


def check_merge_lse(answer) -> None:
    gen = torch.Generator().manual_seed(2)
    row = torch.randn(40, generator=gen, dtype=torch.float64) * 8
    a, b = row[:17], row[17:]
    state = answer(float(a.max()), float(torch.exp(a - a.max()).sum()), float(b.max()),
                   float(torch.exp(b - b.max()).sum()))
    if state is None:
        raise ExerciseFailed("the function returned None; return (max, sum)")
    new_max, new_sum = state
    lse = new_max + torch.log(torch.tensor(float(new_sum), dtype=torch.float64))
    expect_close(lse, torch.logsumexp(row, 0), "max + log(sum)",
                 "Rescale each part's sum by exp(its max - the new max) before adding them")


EXERCISES = {
    "02.1": ("the in-batch loss from its definition", check_in_batch_loss, in_batch_loss),
    "02.2": ("merging two online log-sum-exp states", check_merge_lse, merge_lse),
}
