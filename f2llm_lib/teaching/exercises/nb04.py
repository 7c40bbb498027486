"""Notebook 04's exercises: nDCG@10 by hand, and mean pooling (the baseline to last-token pooling)."""

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
    """Reference for 04.2: the average of each row's real tokens' states."""
    return library_mean_pool(hidden, attention_mask)


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


EXERCISES = {
    "04.1": ("nDCG@10 by hand", check_ndcg, ndcg_at_10),
    "04.2": ("mean pooling, masked", check_mean_pool, mean_pool),
}
