"""Notebook 02's exercises: the in-batch loss and its gradient, the hard-negative term, the MRL weights, merging
online log-sum-exp states, and an edit to the notebook's Triton kernel."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ...losses.api import contrastive_loss
from ...losses.api import mrl_weights as library_mrl_weights
from ...losses.reference import reference_loss
from ._common import ExerciseFailed, expect_close


def in_batch_loss(queries: torch.Tensor, keys: torch.Tensor, temperature: float) -> torch.Tensor:
    """Reference for 02.1, worked through: normalise both sides so that a dot product is a cosine; the logits are
    cosine / temperature, one row per query and one column per key; query i's label is column i (its own
    positive), so the loss is the softmax cross-entropy of each row against its diagonal, averaged over queries."""
    q, k = F.normalize(queries, dim=-1), F.normalize(keys, dim=-1)
    logits = q @ k.T / temperature
    log_probs = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    return -log_probs.diagonal().mean()


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
    without_temperature = F.cross_entropy(F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).T, torch.arange(9))
    if torch.is_tensor(got) and torch.allclose(got.double(), without_temperature):
        raise ExerciseFailed("the temperature is missing: divide the cosines by it (0.05 sharpens the softmax 20x)")
    expect_close(got, truth, "the loss", "logits = cosine(q_i, k_j) / temperature, label of query i = i")


def merge_lse(max_a: float, sum_a: float, max_b: float, sum_b: float) -> tuple[float, float]:
    """Reference for 02.2, worked through: part a's sum is of exp(x - max_a). The merged state keeps the larger
    max m, so part a's sum must become a sum of exp(x - m) = exp(x - max_a) * exp(max_a - m): multiply it by
    exp(max_a - m), which is at most 1 and so cannot overflow, whatever the scale of x. The same for b."""
    new_max = max(max_a, max_b)
    return new_max, sum_a * math.exp(max_a - new_max) + sum_b * math.exp(max_b - new_max)


def check_merge_lse(answer) -> None:
    gen = torch.Generator().manual_seed(2)
    row = torch.randn(40, generator=gen, dtype=torch.float64) * 8 + 1000.0  # logits near 1,000: exp() overflows
    row[17:] -= 9.0  # part b's max sits below part a's: rescaling only one side is wrong too
    a, b = row[:17], row[17:]
    state = answer(float(a.max()), float(torch.exp(a - a.max()).sum()), float(b.max()),
                   float(torch.exp(b - b.max()).sum()))
    if state is None:
        raise ExerciseFailed("the function returned None; return (max, sum)")
    new_max, new_sum = (float(v) for v in state)
    if not (math.isfinite(new_max) and math.isfinite(new_sum)) or new_sum <= 0:
        raise ExerciseFailed(f"the state ({new_max:.6g}, {new_sum:.6g}) is not finite and positive: the maxima are "
                             "near 1,000 here and exp(1000) overflows even in float64. Never undo the max: rescale "
                             "each sum by exp(its max - the new max), which is at most 1")
    if new_max != max(float(a.max()), float(b.max())):
        raise ExerciseFailed("the merged running max must be the larger of the two maxima (so every later "
                             "exp(x - max) stays at most 1)")
    lse = new_max + math.log(new_sum)
    expect_close(lse, torch.logsumexp(row, 0), "max + log(sum)",
                 "Rescale each part's sum by exp(its max - the new max) before adding them")


def in_batch_logit_grad(logits: torch.Tensor) -> torch.Tensor:
    """Reference for 02.3, worked through. loss = (1/B) sum_i [lse_i - s_ii] with lse_i = log sum_j exp(s_ij).
    d lse_i / d s_ij = exp(s_ij - lse_i) = p_ij, the softmax of row i; d s_ii / d s_ij = [i = j]. So
    d loss / d s_ij = (p_ij - [i = j]) / B: each row's softmax minus the one-hot of its label, over B."""
    batch = logits.shape[0]
    probs = torch.softmax(logits, dim=1)
    one_hot = torch.eye(batch, logits.shape[1], dtype=logits.dtype)
    return (probs - one_hot) / batch


def check_in_batch_logit_grad(answer) -> None:
    gen = torch.Generator().manual_seed(5)
    logits = (torch.randn(6, 9, generator=gen, dtype=torch.float64) * 3).requires_grad_()
    F.cross_entropy(logits, torch.arange(6)).backward()
    truth = logits.grad
    got = answer(logits.detach().clone())
    if got is None:
        raise ExerciseFailed("the function returned None; return a [B, N] tensor")
    got = torch.as_tensor(got).double()
    probs = torch.softmax(logits.detach(), dim=1)
    one_hot = torch.eye(6, 9, dtype=torch.float64)
    if got.shape == truth.shape:
        if torch.allclose(got, probs - one_hot):
            raise ExerciseFailed("right up to a factor: the loss is a mean over the B queries, so divide by B")
        if torch.allclose(got, probs / 6) or torch.allclose(got, probs):
            raise ExerciseFailed("the label's term is missing: subtract 1 at each row's own column (d s_ii / d s_ij "
                                 "= [i = j])")
        if torch.allclose(got, (torch.softmax(logits.detach(), dim=0) - one_hot) / 6):
            raise ExerciseFailed("that softmax runs down the columns: each query's softmax is over its own row")
    expect_close(got, truth, "d loss / d logits", "(softmax of each row - one-hot of its label) / B")


def hard_negative_loss(queries: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor,
                       temperature: float) -> torch.Tensor:
    """Reference for 02.4, worked through: each query has its own candidates, [its positive, its k hard
    negatives], a [B, 1 + k, d] stack; the logits are the query's cosine with each of its own candidates over the
    temperature, [B, 1 + k]; the label is column 0 (the positive); softmax cross-entropy, mean over queries.
    No other query's positive appears here: that is the in-batch term's job."""
    q = F.normalize(queries, dim=-1)
    candidates = F.normalize(torch.cat([positives[:, None], negatives], dim=1), dim=-1)
    logits = torch.einsum("bd,bcd->bc", q, candidates) / temperature
    return (torch.logsumexp(logits, dim=1) - logits[:, 0]).mean()


def check_hard_negative_loss(answer) -> None:
    gen = torch.Generator().manual_seed(6)
    q, p = (torch.randn(5, 11, generator=gen, dtype=torch.float64) for _ in range(2))
    n = torch.randn(5, 3, 11, generator=gen, dtype=torch.float64)
    got = answer(q, p, n, 0.05)
    if got is None:
        raise ExerciseFailed("the function returned None; return the loss as a scalar tensor")
    truth = contrastive_loss(q, p, n, in_batch=False, temperature=0.05, impl="reference")
    qn, pn, nn = F.normalize(q, dim=-1), F.normalize(p, dim=-1), F.normalize(n, dim=-1)
    pos = (qn * pn).sum(-1) / 0.05
    neg = torch.einsum("bd,bkd->bk", qn, nn) / 0.05
    wrong = {
        "the positive is missing from the softmax: the denominator runs over [positive, negatives]":
            (torch.logsumexp(neg, 1) - pos).mean(),
        "that softmax includes the other queries' positives: the hard-negative term uses each query's own "
        "candidates only": (torch.logsumexp(torch.cat([qn @ pn.T / 0.05, neg], 1), 1) - pos).mean(),
        "the logits use raw dot products: normalise the query and every candidate (cosine)":
            (torch.logsumexp(torch.cat([(q * p).sum(-1, keepdim=True), torch.einsum("bd,bkd->bk", q, n)], 1)
                             / 0.05, 1) - (q * p).sum(-1) / 0.05).mean(),
    }
    if torch.is_tensor(got):
        for message, value in wrong.items():
            if torch.allclose(got.double(), value):
                raise ExerciseFailed(message)
    expect_close(got, truth, "the loss", "logits [B, 1 + k] = cosine(query, [positive, negatives]) / temperature, "
                 "label 0, cross-entropy, mean over queries")


def mrl_weights(dims: list[int], hidden_size: int) -> list[float]:
    """Reference for 02.5, worked through: F2LLM-v2 weighs the level of ``dim`` by 1 / (n * sqrt(hidden / dim)),
    where n is the level's rank counting from the full width (n = 1 for hidden_size itself, 2 for the next
    smaller level, ...). Two factors shrink a small level's weight: its rank, and how far its width is below the
    full one."""
    largest_first = sorted(dims, reverse=True)
    return [1.0 / ((largest_first.index(dim) + 1) * math.sqrt(hidden_size / dim)) for dim in dims]


def check_mrl_weights(answer) -> None:
    dims, hidden = [8, 16, 32, 64, 96], 96
    got = answer(dims, hidden)
    if got is None:
        raise ExerciseFailed("the function returned None; return one weight per dim, in the order of dims")
    got = [float(w) for w in got]
    expected = library_mrl_weights(dims, hidden)
    if len(got) != len(dims):
        raise ExerciseFailed(f"{len(got)} weights for {len(dims)} dims: one weight per level")
    if all(abs(w - got[0]) < 1e-12 for w in got):
        raise ExerciseFailed("every level weighs the same: the smaller a level, the smaller its weight")
    if all(abs(g - 1 / math.sqrt(hidden / d)) < 1e-12 for g, d in zip(got, dims, strict=True)):
        raise ExerciseFailed("the width factor is right, the rank factor 1/n is missing (n = 1 for the full width, "
                             "2 for the next level, ...)")
    if got[-1] <= got[0]:
        raise ExerciseFailed("the full width should weigh the most; check the direction of sqrt(hidden / dim) and "
                             "that n counts from the largest level")
    expect_close(torch.tensor(got), torch.tensor(expected), "the weights",
                 "1 / (n * sqrt(hidden / dim)), n = 1 for the largest dim")


def dcl_kernel_launch(kernel, queries: torch.Tensor, keys: torch.Tensor, temperature: float,
                      block: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch a kernel with the signature of notebook 02's forward kernel; return (loss, lse per query)."""
    import triton

    batch, dim = queries.shape
    lse = torch.empty(batch, dtype=torch.float32, device=queries.device)
    positive = torch.empty_like(lse)
    kernel[(triton.cdiv(batch, block),)](queries.contiguous(), keys.contiguous(), lse, positive, batch,
                                         keys.shape[0], dim, 1.0 / temperature, BLOCK_M=block, BLOCK_N=block,
                                         BLOCK_D=max(16, triton.next_power_of_2(dim)))
    return (lse - positive).mean(), lse


def decoupled_loss_float64(queries: torch.Tensor, keys: torch.Tensor, temperature: float) -> torch.Tensor:
    """The decoupled contrastive loss (Yeh et al., 2022) in float64: the positive leaves the denominator."""
    q, k = F.normalize(queries.double(), dim=-1), F.normalize(keys.double(), dim=-1)
    logits = q @ k.T / temperature
    rows = torch.arange(q.shape[0])
    positive = logits[rows, rows].clone()
    logits[rows, rows] = float("-inf")
    return (torch.logsumexp(logits, 1) - positive).mean()


def dcl_kernel():
    """Reference for 02.6: ``kernel_steps._decoupled_forward_kernel``, step 1's kernel with one line added (read
    it there). Imported on demand: Triton ships for Linux only."""
    from ..kernel_steps import _decoupled_forward_kernel

    return _decoupled_forward_kernel


def check_dcl_kernel(answer) -> None:
    if answer is None:
        raise NotImplementedError  # the notebook's cell starts as `decoupled_kernel = None`
    try:
        from triton.runtime import KernelInterface
    except ImportError as exc:
        raise ExerciseFailed(f"Triton does not import here ({exc}); this exercise needs Linux") from exc
    if not isinstance(answer, KernelInterface):
        raise ExerciseFailed("pass the @triton.jit kernel itself (the checker launches it, in the interpreter "
                             "without a GPU), not a Python function")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    gen = torch.Generator().manual_seed(7)
    for batch, num_keys, dim in ((5, 5, 24), (17, 23, 40)):  # ragged: keys beyond the batch are shared negatives
        raw_q = torch.randn(batch, dim, generator=gen)
        raw_k = torch.randn(num_keys, dim, generator=gen)
        q, k = (F.normalize(x, dim=-1).to(device) for x in (raw_q, raw_k))
        loss, lse = dcl_kernel_launch(answer, q, k, 0.05)
        truth = decoupled_loss_float64(raw_q, raw_k, 0.05)
        standard = F.cross_entropy(F.normalize(raw_q.double(), dim=-1) @ F.normalize(raw_k.double(), dim=-1).T
                                   / 0.05, torch.arange(batch))
        if not torch.isfinite(loss):
            raise ExerciseFailed(f"the loss is {float(loss)} on a {batch} x {num_keys} batch: a row whose logits are "
                                 "all -inf (or a padding key not masked) gives log(0) or nan")
        if abs(float(loss) - float(standard)) < 1e-4 * max(1.0, abs(float(standard))):
            raise ExerciseFailed("that is the standard in-batch loss: the positive is still in the running max and "
                                 "sum. Set its logit to -inf (tl.where on query_rows == key_rows) before they update")
        if abs(float(loss) - float(truth)) > 1e-4 * max(1.0, abs(float(truth))):
            raise ExerciseFailed(f"loss {float(loss):.6f}, expected {float(truth):.6f} on a {batch} x {num_keys} "
                                 "batch: keep picking up the positive's logit for the first term; only the sum "
                                 "and max leave it out")


EXERCISES = {
    "02.1": ("the in-batch loss from its definition", check_in_batch_loss, in_batch_loss),
    "02.2": ("merging two online log-sum-exp states", check_merge_lse, merge_lse),
    "02.3": ("the gradient of the in-batch softmax, by hand", check_in_batch_logit_grad, in_batch_logit_grad),
    "02.4": ("the hard-negative term", check_hard_negative_loss, hard_negative_loss),
    "02.5": ("the MRL weights", check_mrl_weights, mrl_weights),
    # the answer is a kernel; its reference is loaded on demand (the fourth field: call it to get the answer)
    "02.6": ("an edit to the kernel: the positive leaves the denominator", check_dcl_kernel, dcl_kernel, True),
}
