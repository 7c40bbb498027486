"""Notebook 01's exercises: F2LLM's hard-negative rule, what its margin keeps, and decontamination."""

from __future__ import annotations

import numpy as np

from ...data.decontaminate import Decontaminator
from ...data.mining import MiningConfig, select_negatives
from ._common import ExerciseFailed


def f2llm_negatives(scores: np.ndarray, positive_score: float, k: int) -> list[int]:
    """Reference for 01.1, worked through.

    1. Rank every candidate, best first (a stable sort, so ties keep their order).
    2. The window: ranks 6 to 100, i.e. skip the 5 best (likely unlabelled positives) and stop at rank 100.
    3. The margin rule: keep a candidate only if it scores below 0.8 and below 95% of the positive's score.
    4. The first k survivors, still best first.
    """
    scores = np.asarray(scores, dtype=float)
    ranked = np.argsort(-scores, kind="stable")
    window = ranked[5:100]
    survivors = [int(i) for i in window if scores[i] < 0.8 and scores[i] < 0.95 * positive_score]
    return survivors[:k]


def check_f2llm_negatives(answer) -> None:
    rng = np.random.default_rng(0)
    scores = rng.uniform(0.3, 0.95, size=300)
    # positive 0.82: 95% of it (0.779) binds and fewer than k survive in ranks 6-100 (the window's end matters);
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
    if set(ranked[:5].tolist()) & set(got):
        raise ExerciseFailed("you kept a candidate among the 5 best: F2LLM skips them (likely false negatives)")
    if any(scores[i] >= 0.8 for i in got):
        raise ExerciseFailed(f"positive score {positive}: you kept a candidate scoring 0.8 or more: the rule keeps "
                             "scores below 0.8")
    if any(scores[i] >= 0.95 * positive for i in got):
        raise ExerciseFailed(f"positive score {positive}: you kept a candidate scoring at least 95% of the "
                             f"positive's score ({0.95 * positive:.3f} here)")
    if any(rank_of[i] > 100 for i in got):
        raise ExerciseFailed(f"you kept a candidate ranked {max(rank_of[i] for i in got)}: only ranks 6 to 100 are "
                             "looked at, even when fewer than k survive")
    if sorted(got) == sorted(expected) and got != expected:
        raise ExerciseFailed("the right candidates in the wrong order: return them best first (highest score first)")
    if got != expected:
        missing = sorted(set(expected) - set(got), key=rank_of.get)
        raise ExerciseFailed(f"positive score {positive}: kept {len(got)} candidates, expected {len(expected)}; "
                             + (f"e.g. the candidate at rank {rank_of[missing[0]]} passes every test but is missing. "
                                if missing else "") + "Take the first k survivors in score order among ranks 6 to 100")


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
    window = np.linspace(0.3, 0.95, 66)  # cosines of the candidates ranked 6 to 100 for one query
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
