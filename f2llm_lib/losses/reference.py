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


def false_negative_mask(logits: torch.Tensor, target: torch.Tensor, columns: torch.Tensor, labels: torch.Tensor,
                        margin: float, temperature: float) -> torch.Tensor:
    """Which in-batch logits to drop as likely false negatives: those above the row's positive logit plus
    ``margin / temperature`` (cosine above the positive's cosine plus ``margin``), never the positive itself.
    ``columns`` are the key indices of ``logits``' columns. Qwen3-Embedding's and memeff's rule (off in F2LLM)."""
    above = logits > (target + margin / temperature)[:, None]
    return above & (columns[None, :] != labels[:, None])


def reference_loss(queries: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor | None,
                   keys: torch.Tensor | None, labels: torch.Tensor | None, dims: Sequence[int],
                   weights: Sequence[float], temperature: float, false_negative_margin: float | None = None,
                   stats: dict | None = None) -> torch.Tensor:
    """``keys``/``labels`` are the gathered in-batch keys and each query's positive index (None: no in-batch).
    ``false_negative_margin``: mask in-batch keys scoring above the positive + margin (``stats['masked']``: how
    many, at the last level)."""
    acc = accumulation_dtype(queries.dtype)
    total = queries.new_zeros((), dtype=acc)
    for dim, weight in zip(dims, weights, strict=True):
        q = F.normalize(queries[:, :dim], dim=-1)
        level = 0.0
        if keys is not None:
            k = F.normalize(keys[:, :dim], dim=-1)
            logits = (q @ k.T).to(acc) / temperature
            if false_negative_margin is not None:
                target = logits.gather(1, labels[:, None]).squeeze(1).detach()
                columns = torch.arange(k.shape[0], device=k.device)
                mask = false_negative_mask(logits.detach(), target, columns, labels, false_negative_margin,
                                           temperature)
                logits = logits.masked_fill(mask, float("-inf"))
                if stats is not None:
                    stats["masked"] = int(mask.sum())
            level = level + F.cross_entropy(logits, labels)
        if negatives is not None:
            candidates = F.normalize(torch.cat([positives.unsqueeze(1), negatives], dim=1)[..., :dim], dim=-1)
            logits = (q.unsqueeze(1) * candidates).sum(-1).to(acc) / temperature
            level = level + F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long, device=q.device))
        total = total + weight * level
    return total
