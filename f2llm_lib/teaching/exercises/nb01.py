"""Notebook 01's exercises: F2LLM's hard-negative rule, and what its margin does."""

from __future__ import annotations

import numpy as np

from ...data.mining import MiningConfig, select_negatives
from ._common import ExerciseFailed


def f2llm_negatives(scores: np.ndarray, positive_score: float, k: int) -> list[int]:
    """Reference for 01.1: candidates ranked 6 to 100 by score, each below 0.8 and below 95% of the positive's
    score; the first k survivors, best first."""
    kept, _, _ = select_negatives(np.asarray(scores, dtype=float), positive_score, np.zeros(len(scores), bool),
                                  MiningConfig(num_negatives=k))
    return kept


def check_f2llm_negatives(answer) -> None:
    rng = np.random.default_rng(0)
    scores = rng.uniform(0.2, 0.95, size=150)
    got = answer(scores, 0.82, 24)
    if got is None:
        raise ExerciseFailed("the function returned None; return the kept candidates' indices, best first")
    got = [int(i) for i in got]
    expected = f2llm_negatives(scores, 0.82, 24)
    top5 = set(np.argsort(-scores, kind="stable")[:5].tolist())
    if top5 & set(got):
        raise ExerciseFailed("you kept a candidate among the 5 best: F2LLM skips them (likely false negatives)")
    if any(scores[i] >= 0.8 for i in got):
        raise ExerciseFailed("you kept a candidate scoring 0.8 or more: the rule keeps scores below 0.8")
    if any(scores[i] >= 0.95 * 0.82 for i in got):
        raise ExerciseFailed("you kept a candidate scoring at least 95% of the positive's score (0.779 here)")
    if got != expected:
        raise ExerciseFailed(f"kept {len(got)} candidates, expected {len(expected)}: the first k survivors in "
                             "score order, among ranks 6 to 100 only")


def kept_fraction(window_scores: np.ndarray, positive_score: float, relative_margin: float) -> float:
    """Reference for 01.2: the fraction of window candidates that pass the margin and 0.8 tests."""
    window = np.asarray(window_scores, dtype=float)
    ok = (window < (1 - relative_margin) * positive_score) & (window < 0.8)
    return float(ok.mean()) if len(window) else 0.0


def check_kept_fraction(answer) -> None:
    window = np.linspace(0.3, 0.9, 61)
    for margin in (0.0, 0.05, 0.2):
        got = answer(window, 0.85, margin)
        if got is None:
            raise ExerciseFailed("the function returned None; return a fraction between 0 and 1")
        expected = kept_fraction(window, 0.85, margin)
        if abs(float(got) - expected) > 1e-9:
            raise ExerciseFailed(f"with relative_margin {margin}: got {float(got):.3f}, expected {expected:.3f}. "
                                 "A candidate passes when below (1 - margin) x the positive's score and below 0.8")
    if not answer(window, 0.85, 0.2) <= answer(window, 0.85, 0.05):
        raise ExerciseFailed("a larger margin must keep fewer candidates")


EXERCISES = {
    "01.1": ("F2LLM's hard-negative rule", check_f2llm_negatives, f2llm_negatives),
    "01.2": ("what the margin keeps", check_kept_fraction, kept_fraction),
}
