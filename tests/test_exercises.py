"""Every exercise: its checker accepts the reference answer, rejects each wrong answer a learner is likely to give
with a message that says what is wrong, and reports an untouched exercise as not attempted (so a learner's notebook
runs on). The reference answers are worked through by hand; where the library computes the same thing, they agree."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from f2llm_lib.teaching import kernel_steps
from f2llm_lib.teaching.exercises import EXERCISES, check, nb01, nb02, solution


def _not_attempted(*args, **kwargs):
    raise NotImplementedError


@triton.jit
def _drops_the_positive_everywhere(queries_ptr, keys_ptr, lse_ptr, positive_ptr, num_queries, num_keys, dim,
                                   inv_temperature, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                                   BLOCK_D: tl.constexpr):
    """A wrong 02.6: the positive leaves the denominator and the first term too (its logit is read after the edit)."""
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
        logits = tl.where(is_own, float("-inf"), logits)
        positive += tl.sum(tl.where(is_own, 0.0, 0.0), axis=1)
        new_max = tl.maximum(run_max, tl.max(logits, axis=1))
        run_sum = run_sum * tl.exp(run_max - new_max) + tl.sum(tl.exp(logits - new_max[:, None]), axis=1)
        run_max = new_max
    valid = query_rows < num_queries
    tl.store(lse_ptr + query_rows, run_max + tl.log(run_sum), mask=valid)
    tl.store(positive_ptr + query_rows, positive, mask=valid)


def _sorted_ascending_survivors(scores, positive, k):
    return list(reversed(nb01.f2llm_negatives(scores, positive, k)))


def _no_pool_end(scores, positive, k):
    ranked = np.argsort(-scores, kind="stable")
    return [int(i) for i in ranked if scores[i] <= 0.8 and scores[i] <= 0.95 * positive][5:5 + k]


def _no_skip(scores, positive, k):
    ranked = np.argsort(-scores, kind="stable")[:100]
    return [int(i) for i in ranked if scores[i] <= 0.8 and scores[i] <= 0.95 * positive][:k]


WRONG = [  # (exercise, a wrong answer a learner is likely to give, words its message must contain)
    ("00.1", lambda hidden, lengths: hidden[:, -1], "lengths - 1"),
    ("00.1", lambda hidden, lengths: hidden[torch.arange(len(lengths)), lengths.clamp(max=hidden.shape[1] - 1)],
     "off by one"),
    ("00.2", lambda ids, lengths: (ids != 2).long(), "EOS = PAD"),
    ("00.2", lambda ids, lengths: (torch.arange(ids.shape[1])[None, :] >= (ids.shape[1] - lengths)[:, None]).long(),
     "left"),
    ("00.3", lambda instruction, text: f"Instruction: {instruction}\nQuery: {text}" if instruction else text,
     "'Instruct: '"),
    ("00.3", lambda instruction, text: f"Instruct: {instruction} Query: {text}" if instruction else text, "newline"),
    ("00.3", lambda instruction, text: f"Instruct: {instruction}\nQuery:{text}" if instruction else text, "space"),
    ("00.3", lambda instruction, text: f"Instruct: {instruction}\nQuery: {text}", "without a label"),
    ("01.1", lambda scores, positive, k: list(np.argsort(-scores)[:k]), "above 0.8"),
    ("01.1", lambda scores, positive, k: [int(i) for i in np.argsort(-scores, kind="stable")[5:100]
                                          if scores[i] < 0.8 and scores[i] < 0.95 * positive][:k],
     "before filtering"),
    ("01.1", lambda scores, positive, k: [int(i) for i in np.argsort(-scores, kind="stable")[:100]
                                          if scores[i] < 0.8][5:5 + k], "95%"),
    ("01.1", _no_skip, "5 best survivors"),
    ("01.1", _sorted_ascending_survivors, "wrong order"),
    ("01.1", _no_pool_end, "only the 100 best"),
    ("01.2", lambda window, positive, margin: float(np.mean(np.asarray(window) < (1 - margin) * positive)),
     "0.8 cap is missing"),
    ("01.2", lambda window, positive, margin: float(np.mean((np.asarray(window) < positive - margin)
                                                            & (np.asarray(window) < 0.8))), "relative"),
    ("01.3", lambda train, held: [i for i, t in enumerate(train) if t in held], "normalise first"),
    ("01.3", lambda train, held: [i for i, t in enumerate(train) if any(" ".join(h.casefold().split())
                                                                        in " ".join(t.casefold().split())
                                                                        for h in held)], "whole texts"),
    ("02.1", lambda q, k, t: F.cross_entropy(q @ k.T / t, torch.arange(len(q))), "normalise"),
    ("02.1", lambda q, k, t: F.cross_entropy(F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).T,
                                             torch.arange(len(q))), "temperature"),
    ("02.2", lambda ma, sa, mb, sb: (max(ma, mb), sa + sb), "Rescale"),
    ("02.2", lambda ma, sa, mb, sb: (0.0, sa * math.exp(ma) + sb * math.exp(mb)) if ma < 700 else
     (0.0, float("inf")), "overflow"),  # math.exp(1000) raises OverflowError; torch/numpy give inf: the same mistake
    ("02.2", lambda ma, sa, mb, sb: (min(ma, mb), sa * math.exp(ma - min(ma, mb)) + sb * math.exp(mb - min(ma, mb))),
     "larger of the two"),
    ("02.3", lambda s: torch.softmax(s, 1) - torch.eye(*s.shape, dtype=s.dtype), "divide by B"),
    ("02.3", lambda s: torch.softmax(s, 1) / s.shape[0], "label's term"),
    ("02.3", lambda s: (torch.softmax(s, 0) - torch.eye(*s.shape, dtype=s.dtype)) / s.shape[0], "own row"),
    ("02.4", lambda q, p, n, t: (torch.logsumexp(torch.einsum("bd,bkd->bk", F.normalize(q, dim=-1),
                                                              F.normalize(n, dim=-1)) / t, 1)
                                 - (F.normalize(q, dim=-1) * F.normalize(p, dim=-1)).sum(-1) / t).mean(),
     "positive is missing"),
    ("02.4", lambda q, p, n, t: (torch.logsumexp(torch.cat([F.normalize(q, dim=-1) @ F.normalize(p, dim=-1).T,
                                                            torch.einsum("bd,bkd->bk", F.normalize(q, dim=-1),
                                                                         F.normalize(n, dim=-1))], 1) / t, 1)
                                 - (F.normalize(q, dim=-1) * F.normalize(p, dim=-1)).sum(-1) / t).mean(),
     "own candidates"),
    ("02.4", lambda q, p, n, t: (torch.logsumexp(torch.cat([(q * p).sum(-1, keepdim=True),
                                                            torch.einsum("bd,bkd->bk", q, n)], 1) / t, 1)
                                 - (q * p).sum(-1) / t).mean(), "cosine"),
    ("02.5", lambda dims, hidden: [1.0 / len(dims)] * len(dims), "weighs the same"),
    ("02.5", lambda dims, hidden: [1.0 / math.sqrt(hidden / d) for d in dims], "rank factor"),
    ("02.5", lambda dims, hidden: [1.0 / ((i + 1) * math.sqrt(hidden / d)) for i, d in enumerate(dims)],
     "full width should weigh the most"),
    ("02.6", kernel_steps._in_batch_forward_kernel, "standard in-batch loss"),
    ("02.6", _drops_the_positive_everywhere, "keep picking up the positive"),
    ("02.6", lambda q, k, t: nb02.decoupled_loss_float64(q, k, t), "@triton.jit kernel itself"),
    ("03.1", lambda rows, rank, per_device: rows[rank::2][:per_device], "contiguous"),
    ("03.2", lambda grads, rank: grads[rank][2 * rank:2 * rank + 2], "summed"),
    ("03.3", lambda k, batch, retrieval: math.log(k) + (math.log(batch) if retrieval else 0.0), "1 + negatives"),
    ("03.3", lambda k, batch, retrieval: math.log(1 + k), "in-batch term"),
    ("03.3", lambda k, batch, retrieval: math.log(1 + k) + math.log(batch), "only retrieval"),
    ("03.4", lambda margin, tau, k: math.log1p(k * math.exp(-margin)), "divided by the temperature"),
    ("03.4", lambda margin, tau, k: math.log(k * math.exp(-margin / tau)), "denominator too"),
    ("04.1", lambda ranking, relevant: float(any(d in relevant for d in ranking[:10])), "log2"),
    ("04.2", lambda hidden, mask: hidden.mean(1), "pad positions"),
    ("04.3", lambda query, docs, ids, k: [ids[int(i)] for i in torch.argsort(docs @ query, descending=True)[:k]],
     "raw dot product"),
    ("04.3", lambda query, docs, ids, k: [ids[int(i)] for i in torch.argsort(
        F.normalize(docs, dim=1) @ F.normalize(query, dim=0))[:k]], "worst-first"),
]


def test_at_least_three_exercises_per_notebook_and_a_wrong_answer_probe_for_each():
    assert len(EXERCISES) >= 15
    per_notebook = {}
    for key in EXERCISES:
        per_notebook[key.split(".")[0]] = per_notebook.get(key.split(".")[0], 0) + 1
    assert set(per_notebook) == {"00", "01", "02", "03", "04"} and min(per_notebook.values()) >= 3, per_notebook
    assert {key for key, _, _ in WRONG} == set(EXERCISES)


@pytest.mark.parametrize("key", sorted(EXERCISES))
def test_reference_answer_passes(key):
    assert check(key, solution(key), quiet=True) == "passed"


@pytest.mark.parametrize("key,answer,words", WRONG, ids=[f"{k}-{i}" for i, (k, _, _) in enumerate(WRONG)])
def test_wrong_answer_is_rejected_with_a_useful_message(key, answer, words, capsys):
    assert check(key, answer) == "failed"
    printed = capsys.readouterr().out
    assert "not yet:" in printed and words in printed, printed


@pytest.mark.parametrize("key", sorted(EXERCISES))
def test_untouched_exercise_is_not_attempted(key):
    untouched = None if key == "02.6" else _not_attempted  # 02.6's cell starts as `decoupled_kernel = None`
    assert check(key, untouched, quiet=True) == "not attempted"


def test_unknown_exercise_names_the_known_ones():
    with pytest.raises(KeyError, match="00.1"):
        check("99.9", solution("00.1"))


def test_worked_references_agree_with_the_library():
    """The exercises' hand-written references compute what the library computes, on the checkers' inputs and more."""
    rng = np.random.default_rng(3)
    for _ in range(20):
        scores = rng.uniform(0.0, 1.0, size=int(rng.integers(3, 300)))
        positive, k = float(rng.uniform(0.3, 1.0)), int(rng.integers(1, 30))
        assert nb01.f2llm_negatives(scores, positive, k) == nb01.library_negatives(scores, positive, k)
    train = ["A b", "a  B", "x", "Ab", " a\tb "]
    assert nb01.contaminated(train, ["a b"]) == nb01.library_contaminated(train, ["a b"]) == [0, 1, 4]
    gen = torch.Generator().manual_seed(0)
    q, p = torch.randn(4, 8, generator=gen), torch.randn(4, 8, generator=gen)
    torch.testing.assert_close(nb02.in_batch_loss(q, p, 0.05),
                               F.cross_entropy(F.normalize(q, dim=-1) @ F.normalize(p, dim=-1).T / 0.05,
                                               torch.arange(4)))


def test_the_workshop_guide_lists_every_exercise():
    import re

    from f2llm_lib.paths import REPO_ROOT

    guide = (REPO_ROOT / "docs" / "WORKSHOP.md").read_text()
    listed = re.findall(r"^\| (\d\d\.\d) \|", guide, flags=re.M)
    assert listed == sorted(EXERCISES), "docs/WORKSHOP.md's exercise table must list every exercise, in order"
