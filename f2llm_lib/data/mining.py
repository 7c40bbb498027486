"""Hard-negative mining with F2LLM's rule: sentence-transformers' ``mine_hard_negatives``, in its order.

F2LLM's mining is sentence-transformers' ``mine_hard_negatives`` with range_min=5, range_max=100, max_score=0.8,
relative_margin=0.05, num_negatives=24 (docs/F2LLM_REFERENCE.md), so reproducing it means applying that function's
order (sentence-transformers 6.2, ``util/hard_negatives.py``), for each query:

1. the pool: the ``range_max`` best candidates by score, plus one slot per positive (the positive takes its place
   in the ranking, then leaves the pool);
2. filter: drop every candidate scoring above the positive's score minus ``relative_margin`` x |positive's score|
   (a likely false negative: as relevant as the answer) and, for bounded scorers, above ``max_score``;
3. of the survivors, best first (at most ``range_max``), skip the first ``range_min`` (likely unlabelled positives
   that passed the filters) and take the next ``num_negatives``.

Skipping first and filtering after (ranks 6-100, then the filters) reads the rule's prose literally but gives other
negatives: the five ranks it skips are often ones the margin removes anyway, so it keeps the five best survivors,
which ``mine_hard_negatives`` skips: harder negatives, and more false ones. ``tests/test_mining_parity.py``
checks that ours equals ``mine_hard_negatives`` with the same model and settings.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np
from tqdm.auto import tqdm

from ..typed import check, rule
from .schema import DataError


@dataclass
class MiningConfig:
    """F2LLM's mining rule (sentence-transformers' ``mine_hard_negatives`` settings); checked when built."""

    range_min: int = field(default=5, metadata=rule(lambda v: v >= 0, "0 or more"))  # ranks skipped at the top
    range_max: int = field(default=100, metadata=rule(lambda v: v >= 1, "at least 1"))  # ranks considered
    max_score: float | None = 0.8  # candidates must score below this (bounded scorers only)
    # candidates must score below (1 - relative_margin) x the positive's score
    relative_margin: float = field(default=0.05, metadata=rule(lambda v: 0 <= v < 1, "in [0, 1)"))
    num_negatives: int = field(default=24, metadata=rule(lambda v: v >= 1, "at least 1"))
    batch_size: int = field(default=64, metadata=rule(lambda v: v >= 1, "at least 1"))  # queries scored at once
    # random_fill: top up with random candidates; keep: fewer negatives; drop: drop the query
    on_shortfall: Literal["random_fill", "keep", "drop"] = "random_fill"

    def __post_init__(self) -> None:
        check(self, "mining", DataError)

    def cross_checks(self):
        yield self.range_min < self.range_max, "range_max", f"more than range_min ({self.range_min})"


class EncoderScorer:
    """Cosine similarity from any encoder with ``encode(texts, instruction=...) -> unit-norm array``."""

    bounded = True

    def __init__(self, encode: Callable[..., np.ndarray], instruction: str | None = None, batch_size: int = 32):
        self.encode, self.instruction, self.batch_size = encode, instruction, batch_size

    def fit(self, corpus: Sequence[str]) -> None:
        self.corpus_emb = np.asarray(self.encode(list(corpus), batch_size=self.batch_size))

    def scores(self, queries: Sequence[str]) -> np.ndarray:
        q = np.asarray(self.encode(list(queries), instruction=self.instruction, batch_size=self.batch_size))
        return q @ self.corpus_emb.T


class BM25Scorer:
    """Model-free fallback: BM25 (bm25s). Scores are unbounded, so ``max_score`` is not applied."""

    bounded = False
    instruction = None  # BM25 reads raw text

    def fit(self, corpus: Sequence[str]) -> None:
        import bm25s

        tokens = bm25s.tokenize(list(corpus), stopwords="en", show_progress=False)
        if not tokens.vocab:
            example = next((t for t in corpus if t.strip()), "")[:40]
            raise DataError(f"BM25 finds no words in the {len(corpus)} candidate texts (e.g. {example!r}): it scores "
                            "by shared words. Mine with an embedding scorer instead (--scorer smollm2-135m, or "
                            "mining: {scorer: ...} in the recipe)")
        self.size = len(corpus)
        self.retriever = bm25s.BM25()
        self.retriever.index(tokens, show_progress=False)

    def scores(self, queries: Sequence[str]) -> np.ndarray:
        import bm25s

        tokens = bm25s.tokenize(list(queries), stopwords="en", return_ids=False, show_progress=False)
        # a query with no words (emoji only, punctuation) matches nothing: every candidate scores 0
        return np.stack([self.retriever.get_scores(t) if t else np.zeros(self.size, np.float32)
                         for t in tokens]).astype(np.float32)


@dataclass
class MiningReport:
    queries: int = 0
    short_before_fill: int = 0
    filled_randomly: int = 0
    dropped: int = 0
    seconds: float = 0.0
    config: dict = field(default_factory=dict)
    positive_scores: list[float] = field(default_factory=list)
    window_scores: list[float] = field(default_factory=list)  # the pool: the range_max best candidates
    kept_scores: list[float] = field(default_factory=list)  # the negatives kept

    @property
    def queries_per_second(self) -> float:
        return self.queries / self.seconds if self.seconds else 0.0

    def summary(self) -> dict:
        return {"queries": self.queries, "queries_per_second": round(self.queries_per_second, 1),
                "short_of_negatives": self.short_before_fill, "filled_randomly": self.filled_randomly,
                "dropped": self.dropped, "config": self.config}


def select_negatives(scores: np.ndarray, positive_score: float, excluded: np.ndarray, config: MiningConfig,
                     bounded: bool = True, positive: np.ndarray | None = None,
                     ) -> tuple[list[int], np.ndarray, np.ndarray]:
    """F2LLM's rule (see the module's docstring) for one query's candidate scores; return (kept indices, the pool's
    scores, the kept scores). ``excluded``: never candidates (the query's own text, its cluster's members);
    ``positive``: the positive's indices, which hold a place in the pool's ranking and are never kept."""
    candidates = np.where(excluded, -np.inf, scores)
    slots = config.range_max + (int(positive.sum()) if positive is not None else 0)
    pool = np.argsort(-candidates, kind="stable")[:slots]
    pool = pool[np.isfinite(candidates[pool])]
    if positive is not None:
        pool = pool[~positive[pool]]
    pool_scores = candidates[pool]
    passes = pool_scores <= positive_score - abs(positive_score) * config.relative_margin
    if bounded and config.max_score is not None:
        passes &= pool_scores <= config.max_score
    survivors = pool[passes][: config.range_max]
    kept = survivors[config.range_min:][: config.num_negatives]
    return kept.tolist(), pool_scores, candidates[kept]


def mine_hard_negatives(queries: Sequence[str], positives: Sequence[str], corpus: Sequence[str], scorer,
                        config: MiningConfig | None = None, query_groups: Sequence | None = None,
                        corpus_groups: Sequence | None = None, seed: int = 0,
                        show_progress: bool = True) -> tuple[list[list[str] | None], MiningReport]:
    """Negatives per query (None where dropped). Candidates equal to the query or its positive are never taken;
    with groups (clustering), candidates from the query's own group are excluded too."""
    config = config or MiningConfig()
    if len(queries) != len(positives):
        raise DataError(f"mining: {len(queries)} queries but {len(positives)} positives")
    if (query_groups is None) != (corpus_groups is None):
        raise DataError("mining: give both query_groups and corpus_groups, or neither")
    corpus = list(corpus)
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    scorer.fit(corpus)
    # every index of each text (a text may repeat: the same docstring in two modules), looked up per query
    # instead of comparing the query's strings with the whole corpus
    indices_of: dict[str, list[int]] = {}
    for i, text in enumerate(corpus):
        indices_of.setdefault(text, []).append(i)
    corpus_index = {text: found[0] for text, found in indices_of.items()}
    groups = np.asarray(corpus_groups) if corpus_groups is not None else None
    report = MiningReport(config=asdict(config))
    results: list[list[str] | None] = []
    for begin in tqdm(range(0, len(queries), config.batch_size), desc="mining", disable=not show_progress):
        batch_q = list(queries[begin:begin + config.batch_size])
        batch_scores = scorer.scores(batch_q)
        for row, scores in enumerate(batch_scores):
            i = begin + row
            positive = np.zeros(len(corpus), dtype=bool)
            positive[indices_of.get(positives[i], [])] = True
            excluded = np.zeros(len(corpus), dtype=bool)
            excluded[indices_of.get(queries[i], [])] = True
            if groups is not None:
                excluded |= groups == query_groups[i]
            excluded &= ~positive  # a clustering positive is of the query's own group: it keeps its place
            if positives[i] not in corpus_index:
                raise DataError(f"mining: the positive of query {i} is not in the corpus; add it (its score is the "
                                "reference for the margin rule)")
            pos_score = float(scores[corpus_index[positives[i]]])
            kept, window, kept_scores = select_negatives(scores, pos_score, excluded, config, scorer.bounded,
                                                         positive=positive)
            report.positive_scores.append(pos_score)
            report.window_scores.extend(window.tolist())
            report.kept_scores.extend(kept_scores.tolist())
            if len(kept) < config.num_negatives:
                report.short_before_fill += 1
                if config.on_shortfall == "drop":
                    report.dropped += 1
                    results.append(None)
                    continue
                if config.on_shortfall == "random_fill":
                    pool = np.flatnonzero(~excluded & ~positive & ~np.isin(np.arange(len(corpus)), kept))
                    need = min(config.num_negatives - len(kept), len(pool))
                    kept += rng.choice(pool, size=need, replace=False).tolist()
                    report.filled_randomly += 1
            results.append([corpus[j] for j in kept])
    report.queries = len(queries)
    report.seconds = time.perf_counter() - start
    return results, report
