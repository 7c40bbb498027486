"""Notebook 00's exercises: pooling the right token, and masks built from lengths (the EOS = PAD pitfall)."""

from __future__ import annotations

import torch

from ...embedder.pooling import last_token_pool
from ._common import ExerciseFailed, expect_close


def last_token(hidden: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Reference for 00.1: each row's state at its last real token, under right padding."""
    return hidden[torch.arange(hidden.shape[0]), lengths - 1]


def check_last_token(answer) -> None:
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(4, 7, 5, generator=gen)
    lengths = torch.tensor([7, 3, 5, 1])
    got = answer(hidden, lengths)
    if got is None:
        raise ExerciseFailed("the function returned None; return a [batch, dim] tensor")
    if torch.is_tensor(got) and got.shape == (4, 5) and torch.allclose(got, hidden[:, -1]):
        raise ExerciseFailed("that is hidden[:, -1]: with right padding the last position is a pad token for every "
                             "row shorter than the longest (rows 1-3 here). Index each row at lengths - 1")
    expect_close(got, last_token_pool(hidden, lengths), "the pooled states",
                 "Row r's last real token sits at position lengths[r] - 1")


def mask_from_lengths(lengths: torch.Tensor, width: int) -> torch.Tensor:
    """Reference for 00.2: 1 for the first lengths[r] positions of row r, 0 after (right padding)."""
    return (torch.arange(width)[None, :] < lengths[:, None]).long()


def check_mask_from_lengths(answer) -> None:
    lengths = torch.tensor([4, 2, 1])
    got = answer(lengths, 5)
    if got is None:
        raise ExerciseFailed("the function returned None; return a [batch, width] tensor of 0 and 1")
    expected = mask_from_lengths(lengths, 5)
    got = torch.as_tensor(got).long()
    if got.shape == expected.shape and torch.equal(got, expected.flip(1)):
        raise ExerciseFailed("that is a left-padding mask; F2LLM pads on the right: real tokens come first")
    expect_close(got, expected, "the mask", "Compare torch.arange(width) with each row's length")
    # the pitfall: with EOS = PAD, a mask from ids would hide the pooled EOS
    ids = torch.tensor([[10, 11, 2, 2], [12, 2, 2, 2]])  # EOS = PAD = 2
    if torch.equal((ids != 2).long(), torch.as_tensor(answer(torch.tensor([3, 2]), 4)).long()):
        raise ExerciseFailed("the mask hides the EOS: build it from lengths, not from ids != pad_id")


EXERCISES = {
    "00.1": ("pool the last real token", check_last_token, last_token),
    "00.2": ("a mask from lengths", check_mask_from_lengths, mask_from_lengths),
}
