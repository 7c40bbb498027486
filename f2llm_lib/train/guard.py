"""The divergence guard: stop a run whose loss is not finite or whose embeddings have collapsed.

A diverged run otherwise exits 0 and exports a model that maps every text to the same (or a zero) vector. The guard
checks every step, on statistics reduced over all processes so that every rank stops together, and raises before
the step is checkpointed: the last checkpoint on disk is the last good one.

Collapse, on the batch's unit-normalised embeddings: more than half of them are zero vectors (their pooled state
had no direction: zero or not finite), or all of them point the same way (mean pairwise cosine above
``COLLAPSED_COSINE``) for ``PATIENCE`` steps in a row. A raw decoder LM is anisotropic (cosines of 0.8 to 0.99
between unrelated texts), so the cosine threshold sits far above that.
"""

from __future__ import annotations

import math

import torch

ZERO_NORM = 0.5  # a unit-normalised embedding shorter than this is a zero vector (no direction)
COLLAPSED_COSINE = 0.9999
PATIENCE = 3


class TrainingDiverged(RuntimeError):
    """The loss is not finite or the embeddings collapsed; the message names the step and what to change."""


def batch_statistics(embeddings: torch.Tensor) -> torch.Tensor:
    """[fraction of zero vectors, mean pairwise cosine] of one batch's embeddings (this process's)."""
    emb = embeddings.detach().float()
    norms = emb.norm(dim=1)
    zero = (norms < ZERO_NORM) | ~torch.isfinite(norms)
    unit = torch.nn.functional.normalize(torch.nan_to_num(emb), dim=1)
    n = unit.shape[0]
    cosine = ((unit.sum(0).pow(2).sum() - (unit * unit).sum()) / max(n * (n - 1), 1)) if n > 1 else unit.new_ones(())
    return torch.stack([zero.float().mean(), cosine])


class DivergenceGuard:
    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.collapsed_steps = 0

    def check(self, step: int, loss: float, stats: torch.Tensor, lr: float) -> None:
        """``loss`` and ``stats`` already reduced over processes (the same on every rank)."""
        if not self.enabled:
            return
        zero_fraction, cosine = (float(x) for x in stats)
        hint = (f"(lr {lr:g}); lower the learning rate or raise warmup_steps, then resume from the last checkpoint "
                "or restart; set divergence_guard: false to train on regardless")
        if not math.isfinite(loss):
            raise TrainingDiverged(f"step {step}: the loss is {loss} {hint}")
        if zero_fraction > 0.5:
            raise TrainingDiverged(f"step {step}: {zero_fraction:.0%} of the batch's embeddings are zero vectors: "
                                   f"the model collapsed {hint}")
        self.collapsed_steps = self.collapsed_steps + 1 if cosine > COLLAPSED_COSINE else 0
        if self.collapsed_steps >= PATIENCE:
            raise TrainingDiverged(f"step {step}: every embedding of the batch points the same way (mean cosine "
                                   f"{cosine:.5f}) for {PATIENCE} steps: the model collapsed {hint}")
