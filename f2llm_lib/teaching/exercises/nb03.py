"""Notebook 03's exercises: which rows a rank trains on, the gradient of the gathered keys, and two predictions
of the loss (before training; with a temperature and a margin)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

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


def loss_at_uniform_scores(num_negatives: int, global_batch: int, retrieval: bool) -> float:
    """Reference for 03.3, worked through: when every cosine is the same (an untrained embedder is close to this:
    notebook 00's narrow cone), a softmax over c candidates gives each 1/c, and the cross-entropy is log c. The
    hard-negative term has c = 1 + num_negatives (the positive is a candidate too); retrieval adds the in-batch
    term over the global batch's positives, c = global_batch. F2LLM's loss is their sum."""
    loss = math.log(1 + num_negatives)
    if retrieval:
        loss += math.log(global_batch)
    return loss


def check_loss_at_uniform_scores(answer) -> None:
    for negatives, batch, retrieval in ((7, 512, True), (2, 16, True), (7, 512, False), (24, 64, False)):
        got = answer(negatives, batch, retrieval)
        if got is None:
            raise ExerciseFailed("the function returned None; return the loss as a number")
        expected = loss_at_uniform_scores(negatives, batch, retrieval)
        if abs(float(got) - expected) < 1e-9:
            continue
        setting = f"{negatives} negatives, global batch {batch}, retrieval={retrieval}"
        if abs(float(got) - (math.log(negatives) + (math.log(batch) if retrieval else 0.0))) < 1e-9:
            raise ExerciseFailed(f"{setting}: got {float(got):.4f}, expected {expected:.4f}: the positive is one of "
                                 "the candidates of the hard-negative softmax: 1 + negatives of them")
        if retrieval and abs(float(got) - math.log(1 + negatives)) < 1e-9:
            raise ExerciseFailed(f"{setting}: got {float(got):.4f}, expected {expected:.4f}: retrieval adds the "
                                 "in-batch term, a softmax over the global batch's positives")
        if not retrieval and abs(float(got) - expected - math.log(batch)) < 1e-9:
            raise ExerciseFailed(f"{setting}: got {float(got):.4f}, expected {expected:.4f}: only retrieval datasets "
                                 "have the in-batch term; classification and clustering use the hard negatives alone")
        raise ExerciseFailed(f"{setting}: got {float(got):.4f}, expected {expected:.4f}: with equal scores a softmax "
                             "over c candidates gives log c")


def loss_with_margin(margin: float, temperature: float, num_negatives: int) -> float:
    """Reference for 03.4, worked through: the positive's cosine exceeds each of the k negatives' by ``margin``.
    Subtract the positive's logit from every logit: the positive's becomes 0, each negative's -margin / tau. The
    cross-entropy is then log(e^0 + k e^(-margin / tau)) - 0 = log(1 + k e^(-margin / tau)). A smaller tau turns
    the same margin into a larger logit gap: the loss falls towards 0, and the gradient concentrates on the
    hardest negatives."""
    return math.log1p(num_negatives * math.exp(-margin / temperature))


def check_loss_with_margin(answer) -> None:
    for margin, temperature, negatives in ((0.1, 0.05, 7), (0.1, 0.5, 7), (0.02, 0.05, 24), (0.3, 0.02, 1)):
        got = answer(margin, temperature, negatives)
        if got is None:
            raise ExerciseFailed("the function returned None; return the loss as a number")
        expected = loss_with_margin(margin, temperature, negatives)
        numeric = F.cross_entropy(torch.tensor([[margin / temperature] + [0.0] * negatives], dtype=torch.float64),
                                  torch.tensor([0]))
        assert abs(expected - float(numeric)) < 1e-9  # the derivation agrees with the definition
        if abs(float(got) - expected) < 1e-9:
            continue
        setting = f"margin {margin}, temperature {temperature}, {negatives} negatives"
        if abs(float(got) - math.log1p(negatives * math.exp(-margin))) < 1e-9:
            raise ExerciseFailed(f"{setting}: got {float(got):.4f}, expected {expected:.4f}: the logits are cosines "
                                 "divided by the temperature, so the gap is margin / temperature")
        if abs(float(got) - math.log(negatives * math.exp(-margin / temperature))) < 1e-9:
            raise ExerciseFailed(f"{setting}: got {float(got):.4f}, expected {expected:.4f}: the positive is in the "
                                 "denominator too: log(1 + k e^(-margin / tau))")
        raise ExerciseFailed(f"{setting}: got {float(got):.4f}, expected {expected:.4f}: shift every logit by the "
                             "positive's, then the loss is log(sum of exp(shifted logits))")


EXERCISES = {
    "03.1": ("a rank's slice of the global batch", check_local_rows, local_rows),
    "03.2": ("the gradient of the gathered keys", check_gather_backward, gather_backward),
    "03.3": ("predict the loss before training", check_loss_at_uniform_scores, loss_at_uniform_scores),
    "03.4": ("the loss from a margin and a temperature", check_loss_with_margin, loss_with_margin),
}
