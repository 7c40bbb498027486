"""Last-token (EOS) pooling, as F2LLM does it: the hidden state of the last real token of each row."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def last_token_pool(hidden: torch.Tensor, lengths: torch.Tensor, padding_side: str = "right") -> torch.Tensor:
    """Pick ``hidden[row, last real position]`` for each row of a ``[batch, seq, dim]`` tensor.

    Right padding: the last real token sits at ``length - 1``. Left padding: at ``seq - 1`` for every row.
    Taking ``hidden[:, -1]`` under right padding (a common bug) pools a pad token for all but the longest row.
    """
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    if padding_side == "right":
        index = lengths.to(hidden.device) - 1
    elif padding_side == "left":
        index = torch.full_like(rows, hidden.shape[1] - 1)
    else:
        raise ValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
    return hidden[rows, index]


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average over real tokens: a baseline to compare last-token pooling with."""
    mask = attention_mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)


def normalize(embeddings: torch.Tensor) -> torch.Tensor:
    """L2-normalise so that a dot product is a cosine similarity."""
    return F.normalize(embeddings, p=2, dim=-1)
