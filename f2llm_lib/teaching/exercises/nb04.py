"""Notebook 04's exercises: nDCG@10 by hand, mean pooling (the baseline to last-token pooling), and ranking a
corpus by cosine."""

from __future__ import annotations

import math

import torch

from ...embedder.pooling import mean_pool as library_mean_pool
from ._common import ExerciseFailed, expect_close


def ndcg_at_10(ranking: list[str], relevant: dict[str, int]) -> float:
    """Reference for 04.1: DCG of the top 10 (gain / log2(rank + 1)) over the ideal DCG."""
    dcg = sum(relevant.get(doc, 0) / math.log2(rank + 2) for rank, doc in enumerate(ranking[:10]))
    ideal = sum(gain / math.log2(rank + 2) for rank, gain in enumerate(sorted(relevant.values(), reverse=True)[:10]))
    return dcg / ideal if ideal else 0.0


def check_ndcg(answer) -> None:
    cases = [(["d3", "d1", "d9"], {"d1": 1}), (["d1", "d2"], {"d1": 1}), ([f"x{i}" for i in range(12)] + ["d1"],
                                                                          {"d1": 1}),
             (["a", "b", "c", "d"], {"b": 2, "d": 1})]
    for ranking, relevant in cases:
        got = answer(ranking, relevant)
        if got is None:
            raise ExerciseFailed("the function returned None; return a number between 0 and 1")
        expected = ndcg_at_10(ranking, relevant)
        if abs(float(got) - expected) > 1e-9:
            raise ExerciseFailed(f"for ranking {ranking[:4]}... and judgements {relevant}: got {float(got):.4f}, "
                                 f"expected {expected:.4f}. Rank 1 is discounted by log2(2), rank r by log2(r + 1); "
                                 "only the top 10 count; divide by the best possible DCG")


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Reference for 04.2, worked through: zero the pad positions' states by multiplying with the mask (one more
    axis so it broadcasts over dim), sum over positions, then divide by each row's number of real tokens, not by
    the padded width."""
    mask = attention_mask.to(hidden.dtype)[:, :, None]
    summed = (hidden * mask).sum(dim=1)
    real_tokens = mask.sum(dim=1)
    return summed / real_tokens


def check_mean_pool(answer) -> None:
    gen = torch.Generator().manual_seed(4)
    hidden = torch.randn(3, 6, 4, generator=gen)
    mask = (torch.arange(6)[None, :] < torch.tensor([6, 2, 4])[:, None]).long()
    got = answer(hidden, mask)
    if got is None:
        raise ExerciseFailed("the function returned None; return a [batch, dim] tensor")
    if torch.is_tensor(got) and got.shape == (3, 4) and torch.allclose(got, hidden.mean(1)):
        raise ExerciseFailed("that averages the pad positions too: weight by the mask and divide by each row's "
                             "number of real tokens")
    expect_close(got, library_mean_pool(hidden, mask), "the pooled states",
                 "sum(hidden x mask) over positions / sum(mask)")


def rank_documents(query: torch.Tensor, documents: torch.Tensor, doc_ids: list[str], k: int) -> list[str]:
    """Reference for 04.3, worked through: what a dense retriever does. Normalise the query and every document so
    that a dot product is a cosine; one matrix-vector product scores the whole corpus; the k highest scores, best
    first, are the ranking nDCG@10 reads."""
    q = query / query.norm()
    docs = documents / documents.norm(dim=1, keepdim=True)
    scores = docs @ q
    best = torch.argsort(scores, descending=True)[:k]
    return [doc_ids[int(i)] for i in best]


def check_rank_documents(answer) -> None:
    gen = torch.Generator().manual_seed(8)
    documents = torch.randn(30, 6, generator=gen, dtype=torch.float64)
    documents[:10] *= 50.0  # long vectors: a raw dot product prefers them whatever their direction
    query = torch.randn(6, generator=gen, dtype=torch.float64)
    ids = [f"doc{i}" for i in range(30)]
    got = answer(query, documents, ids, 10)
    if got is None:
        raise ExerciseFailed("the function returned None; return the k best document ids, best first")
    got = list(got)
    expected = rank_documents(query, documents, ids, 10)
    raw = [ids[int(i)] for i in torch.argsort(documents @ query, descending=True)[:10]]
    if got == raw and raw != expected:
        raise ExerciseFailed("that ranks by raw dot product: long documents win whatever their direction. Normalise "
                             "both sides (cosine), as the embedder's Normalize module does")
    if got == expected[::-1] or got == rank_documents(-query, documents, ids, 10):
        raise ExerciseFailed("that is the worst-first order: sort the scores descending")
    if got != expected:
        raise ExerciseFailed(f"got {got[:3]}..., expected {expected[:3]}...: cosine of the query with every "
                             "document, the k largest, best first")


EXERCISES = {
    "04.1": ("nDCG@10 by hand", check_ndcg, ndcg_at_10),
    "04.2": ("mean pooling, masked", check_mean_pool, mean_pool),
    "04.3": ("rank a corpus by cosine", check_rank_documents, rank_documents),
}
