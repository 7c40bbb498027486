"""Verbose comparison helpers (in the style of Liger-Kernel's tests) and per-dtype tolerances."""

from __future__ import annotations

import torch

# (atol, rtol) per dtype, against a float64 ground truth.
from f2llm_lib.losses.tolerances import TOLERANCES  # noqa: F401  (the notebooks use the same numbers)


def assert_verbose_allclose(actual: torch.Tensor, expected: torch.Tensor, atol: float, rtol: float,
                            name: str = "tensor", max_print: int = 5) -> None:
    """Like torch.allclose, but on failure prints the worst mismatches and how many there are."""
    actual, expected = actual.detach().double().cpu(), expected.detach().double().cpu()
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    diff = (actual - expected).abs()
    bad = diff > atol + rtol * expected.abs()
    nonfinite = ~torch.isfinite(actual)
    if bad.any() or nonfinite.any():
        order = torch.argsort((diff - rtol * expected.abs()).flatten(), descending=True)[:max_print]
        lines = [f"  at {tuple(int(x) for x in torch.unravel_index(i, diff.shape))}: actual "
                 f"{actual.flatten()[i]:.8g} expected {expected.flatten()[i]:.8g} diff {diff.flatten()[i]:.3g}"
                 for i in order]
        raise AssertionError(f"{name}: {int(bad.sum())} of {bad.numel()} elements outside atol={atol}, "
                             f"rtol={rtol} (max abs diff {diff.max():.3g}; non-finite: {int(nonfinite.sum())})\n"
                             + "\n".join(lines))


def tokenized_pycode(folder, max_samples: int, max_length: int):
    """A small tokenized pycode set (retrieval: in-batch + gather; clustering) under ``folder/tokenized``, as the
    training tests use it."""
    from f2llm_lib.data.pipeline import curate
    from f2llm_lib.data.recipes import load_recipe
    from f2llm_lib.data.tokenized import write_training_files
    from f2llm_lib.embedder.backbones import smollm2_tokenizer

    recipe = load_recipe("pycode")
    recipe.tasks, recipe.max_samples = ["retrieval", "clustering"], max_samples
    out = folder / "tokenized"
    write_training_files(curate(recipe, show_progress=False).datasets, smollm2_tokenizer(), out, max_length)
    return out
