"""Hard-negative mining with F2LLM's rule (sentence-transformers' mine_hard_negatives settings).

For each query, rank the candidates by similarity, skip the first ``range_min`` ranks (likely unlabelled
positives), look no further than rank ``range_max``, keep candidates scoring below ``max_score`` and below
``(1 - relative_margin)`` x the positive's score, and take the top ``num_negatives`` survivors.
F2LLM: range_min=5, range_max=100, max_score=0.8, relative_margin=0.05, num_negatives=24.
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
    window_scores: list[float] = field(default_factory=list)  # candidates in ranks [range_min, range_max)
    kept_scores: list[float] = field(default_factory=list)  # survivors of the margin rule

    @property
    def queries_per_second(self) -> float:
        return self.queries / self.seconds if self.seconds else 0.0

    def summary(self) -> dict:
        return {"queries": self.queries, "queries_per_second": round(self.queries_per_second, 1),
                "short_of_negatives": self.short_before_fill, "filled_randomly": self.filled_randomly,
                "dropped": self.dropped, "config": self.config}


def select_negatives(scores: np.ndarray, positive_score: float, excluded: np.ndarray, config: MiningConfig,
                     bounded: bool = True) -> tuple[list[int], np.ndarray, np.ndarray]:
    """Apply F2LLM's rule to one query's candidate scores; return (kept indices, window scores, kept scores)."""
    masked = np.where(excluded, -np.inf, scores)
    order = np.argsort(-masked, kind="stable")[: config.range_max]
    order = order[np.isfinite(masked[order])]
    window = order[config.range_min:]
    ok = masked[window] < (1.0 - config.relative_margin) * positive_score
    if bounded and config.max_score is not None:
        ok &= masked[window] < config.max_score
    kept = window[ok][: config.num_negatives]
    return kept.tolist(), masked[window], masked[kept]


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
            excluded = np.zeros(len(corpus), dtype=bool)
            excluded[indices_of.get(positives[i], [])] = True
            excluded[indices_of.get(queries[i], [])] = True
            if groups is not None:
                excluded |= groups == query_groups[i]
            if positives[i] not in corpus_index:
                raise DataError(f"mining: the positive of query {i} is not in the corpus; add it (its score is the "
                                "reference for the margin rule)")
            pos_score = float(scores[corpus_index[positives[i]]])
            kept, window, kept_scores = select_negatives(scores, pos_score, excluded, config, scorer.bounded)
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
                    pool = np.flatnonzero(~excluded & ~np.isin(np.arange(len(corpus)), kept))
                    need = min(config.num_negatives - len(kept), len(pool))
                    kept += rng.choice(pool, size=need, replace=False).tolist()
                    report.filled_randomly += 1
            results.append([corpus[j] for j in kept])
    report.queries = len(queries)
    report.seconds = time.perf_counter() - start
    return results, report
