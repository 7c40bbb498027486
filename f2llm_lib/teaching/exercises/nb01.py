"""Notebook 01's exercises: F2LLM's hard-negative rule, what its margin keeps, and decontamination."""

from __future__ import annotations

import numpy as np

from ...data.decontaminate import Decontaminator
from ...data.mining import MiningConfig, select_negatives
from ._common import ExerciseFailed


def f2llm_negatives(scores: np.ndarray, positive_score: float, k: int) -> list[int]:
    """Reference for 01.1, worked through (sentence-transformers' ``mine_hard_negatives``, which F2LLM ran).

    1. Rank every candidate, best first (a stable sort, so ties keep their order); the pool is the 100 best.
    2. Filter the pool: drop a candidate scoring above 0.8, or above 95% of the positive's score (the positive minus
       5% of its absolute value): as relevant as the answer, it is probably another answer.
    3. Of the survivors, still best first, skip the first 5 (likely unlabelled positives that passed the filters)
       and take the next k.
    """
    scores = np.asarray(scores, dtype=float)
    pool = np.argsort(-scores, kind="stable")[:100]
    threshold = positive_score - abs(positive_score) * 0.05
    survivors = [int(i) for i in pool if scores[i] <= 0.8 and scores[i] <= threshold]
    return survivors[5:5 + k]


def skip_then_filter(scores: np.ndarray, positive_score: float, k: int) -> list[int]:
    """The rule's prose read literally (skip ranks 1-5, then filter ranks 6-100): another order, other negatives."""
    ranked = np.argsort(-np.asarray(scores, dtype=float), kind="stable")[5:100]
    return [int(i) for i in ranked if scores[i] <= 0.8 and scores[i] <= 0.95 * positive_score][:k]


def check_f2llm_negatives(answer) -> None:
    rng = np.random.default_rng(0)
    scores = rng.uniform(0.3, 0.95, size=300)
    # positive 0.82: 95% of it (0.779) binds and fewer than k survive in the 100 best (the pool's end matters);
    # positive 0.92: 95% of it is 0.874, so the 0.8 cap binds
    for positive, k in ((0.82, 24), (0.92, 24)):
        got = answer(scores, positive, k)
        if got is None:
            raise ExerciseFailed("the function returned None; return the kept candidates' indices, best first")
        _explain_negatives([int(i) for i in got], scores, positive, k)


def _explain_negatives(got: list[int], scores: np.ndarray, positive: float, k: int) -> None:
    expected = f2llm_negatives(scores, positive, k)
    ranked = np.argsort(-scores, kind="stable")
    rank_of = {int(c): r + 1 for r, c in enumerate(ranked)}
    if got == expected:
        return
    if got == skip_then_filter(scores, positive, k):
        raise ExerciseFailed("you skipped ranks 1-5 before filtering: mine_hard_negatives (what F2LLM ran) filters "
                             "the 100 best first, then skips the 5 best survivors")
    if any(scores[i] > 0.8 for i in got):
        raise ExerciseFailed(f"positive score {positive}: you kept a candidate scoring above 0.8: the rule keeps "
                             "scores of at most 0.8")
    if any(scores[i] > 0.95 * positive for i in got):
        raise ExerciseFailed(f"positive score {positive}: you kept a candidate scoring above 95% of the "
                             f"positive's score ({0.95 * positive:.3f} here)")
    survivors = [int(i) for i in ranked[:100] if scores[i] <= 0.8 and scores[i] <= 0.95 * positive]
    if set(survivors[:5]) & set(got):
        raise ExerciseFailed("you kept one of the 5 best survivors: they are skipped (likely false negatives that "
                             "passed the filters)")
    if any(rank_of[i] > 100 for i in got):
        raise ExerciseFailed(f"you kept a candidate ranked {max(rank_of[i] for i in got)}: only the 100 best are "
                             "looked at, even when fewer than 5 + k survive")
    if sorted(got) == sorted(expected):
        raise ExerciseFailed("the right candidates in the wrong order: return them best first (highest score first)")
    missing = sorted(set(expected) - set(got), key=rank_of.get)
    raise ExerciseFailed(f"positive score {positive}: kept {len(got)} candidates, expected {len(expected)}; "
                         + (f"e.g. the candidate at rank {rank_of[missing[0]]} is missing. " if missing else "")
                         + "Filter the 100 best, skip the 5 best survivors, take the next k in score order")


def kept_fraction(window_scores: np.ndarray, positive_score: float, relative_margin: float) -> float:
    """Reference for 01.2, worked through: with cosine scores (bounded, as an embedding scorer gives), a window
    candidate passes when it is below ``(1 - relative_margin)`` times the positive's score *and* below the 0.8
    cap; the answer is the passing share of the window."""
    window = np.asarray(window_scores, dtype=float)
    if len(window) == 0:
        return 0.0
    below_margin = window < (1 - relative_margin) * positive_score
    below_cap = window < 0.8
    return float(np.mean(below_margin & below_cap))


def check_kept_fraction(answer) -> None:
    window = np.linspace(0.3, 0.95, 66)  # cosines of one query's pool of candidates
    positive = 0.92  # 95% of it is 0.874: above the 0.8 cap, so the cap decides for small margins
    for margin in (0.0, 0.05, 0.3):
        got = answer(window, positive, margin)
        if got is None:
            raise ExerciseFailed("the function returned None; return a fraction between 0 and 1")
        expected = kept_fraction(window, positive, margin)
        if abs(float(got) - expected) < 1e-9:
            continue
        if abs(float(got) - float(np.mean(window < (1 - margin) * positive))) < 1e-9:
            raise ExerciseFailed(f"with relative_margin {margin}: got {float(got):.3f}, expected {expected:.3f}; the "
                                 "0.8 cap is missing: a candidate must also score below 0.8")
        if abs(float(got) - float(np.mean((window < positive - margin) & (window < 0.8)))) < 1e-9:
            raise ExerciseFailed(f"with relative_margin {margin}: got {float(got):.3f}, expected {expected:.3f}; the "
                                 "margin is relative: below (1 - margin) x the positive's score, not positive - margin")
        raise ExerciseFailed(f"with relative_margin {margin}: got {float(got):.3f}, expected {expected:.3f}. A "
                             "candidate passes when below (1 - margin) x the positive's score and below 0.8")


def contaminated(train_texts: list[str], eval_texts: list[str]) -> list[int]:
    """Reference for 01.3, worked through: two texts are the same when they match after case folding and with
    every run of whitespace collapsed to one space (a re-indented or re-cased copy is still a copy); a set of the
    normalised evaluation texts makes each lookup O(1). Return the indices of the training texts to drop."""
    def normalise(text: str) -> str:
        return " ".join(text.casefold().split())

    held_out = {normalise(t) for t in eval_texts}
    return [i for i, text in enumerate(train_texts) if normalise(text) in held_out]


def check_contaminated(answer) -> None:
    eval_texts = ["Return the sum of a and b.", "Open a file and return a stream.", "Sort the list in place."]
    train_texts = ["Return the sum of a and b.",  # an exact copy
                   "return the  SUM of a and b.",  # the same text, re-cased and re-spaced
                   "Open a file and return a stream.\n    Raise OSError on failure.",  # contains one: a new text
                   "Sort the list\n   in place.",  # the same text across a line break
                   "Compute a checksum."]
    got = answer(train_texts, eval_texts)
    if got is None:
        raise ExerciseFailed("the function returned None; return the indices of the training texts to drop")
    got = sorted(int(i) for i in got)
    expected = contaminated(train_texts, eval_texts)
    if got == expected:
        return
    if 2 in got:
        raise ExerciseFailed("you dropped text 2, which only contains an evaluation text: compare whole texts "
                             "(substring matching drops good training data; n-gram overlap is a separate, "
                             "stricter option)")
    if got == [0]:
        raise ExerciseFailed("only the exact copy was found: normalise first (case fold, collapse whitespace), or "
                             "re-cased and re-indented copies of evaluation texts stay in the training data")
    raise ExerciseFailed(f"dropped {got}, expected {expected}: normalise both sides, then compare whole texts")


EXERCISES = {
    "01.1": ("F2LLM's hard-negative rule", check_f2llm_negatives, f2llm_negatives),
    "01.2": ("what the margin keeps", check_kept_fraction, kept_fraction),
    "01.3": ("decontamination", check_contaminated, contaminated),
}


def library_negatives(scores: np.ndarray, positive_score: float, k: int) -> list[int]:
    """The library's rule on the same input (tests hold the reference above to it)."""
    kept, _, _ = select_negatives(np.asarray(scores, dtype=float), positive_score, np.zeros(len(scores), bool),
                                  MiningConfig(num_negatives=k))
    return kept


def library_contaminated(train_texts: list[str], eval_texts: list[str]) -> list[int]:
    """The library's decontamination decision on the same input (tests hold the reference above to it)."""
    decontaminator = Decontaminator(eval_texts)
    return [i for i, text in enumerate(train_texts) if decontaminator.matches(text)]
