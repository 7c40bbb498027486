"""F2LLM's loss in plain PyTorch, level by level, exactly as the released code computes it.

For one MRL level (prefix dim m), with every vector cut to its first m dims and re-normalised:
- hard-negative loss: for each query, softmax cross-entropy over [its positive, its own k negatives], label 0;
- in-batch loss (retrieval): each local query against all gathered keys, label = its positive's global index.
Total = sum over levels of weight x (in-batch + hard). Each part is a mean over the local queries.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """Softmax statistics in float32 (float64 when the inputs are float64, for ground truths)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def safe_normalize(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """L2-normalise in the accumulation dtype; a vector of norm below ``eps`` maps to 0 with zero gradient.

    F.normalize in float16 clamps the norm with an eps that underflows to 0 (0 / 0 = NaN for a zero vector),
    and gives a zero vector a gradient of order 1 / eps. The chunked and Triton paths use this convention.
    """
    acc = accumulation_dtype(x.dtype)
    norm = x.to(acc).norm(dim=-1, keepdim=True)
    inverse = torch.where(norm >= eps, 1.0 / norm.clamp_min(eps), torch.zeros_like(norm))
    return (x.to(acc) * inverse).to(x.dtype)


def reference_loss(queries: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor | None,
                   keys: torch.Tensor | None, labels: torch.Tensor | None, dims: Sequence[int],
                   weights: Sequence[float], temperature: float) -> torch.Tensor:
    """``keys``/``labels`` are the gathered in-batch keys and each query's positive index (None: no in-batch)."""
    acc = accumulation_dtype(queries.dtype)
    total = queries.new_zeros((), dtype=acc)
    for dim, weight in zip(dims, weights, strict=True):
        q = F.normalize(queries[:, :dim], dim=-1)
        level = 0.0
        if keys is not None:
            k = F.normalize(keys[:, :dim], dim=-1)
            level = level + F.cross_entropy((q @ k.T).to(acc) / temperature, labels)
        if negatives is not None:
            candidates = F.normalize(torch.cat([positives.unsqueeze(1), negatives], dim=1)[..., :dim], dim=-1)
            logits = (q.unsqueeze(1) * candidates).sum(-1).to(acc) / temperature
            level = level + F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long, device=q.device))
        total = total + weight * level
    return total
