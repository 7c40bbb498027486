"""Notebook 00's exercises: pooling the right token, a mask that keeps the EOS when EOS = PAD, and F2LLM's query
format."""

from __future__ import annotations

import torch

from ...embedder.pooling import last_token_pool
from ...embedder.prompts import format_query
from ._common import ExerciseFailed, expect_close


def last_token(hidden: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Reference for 00.1, worked through.

    Under right padding row r holds ``lengths[r]`` real tokens at positions 0 .. lengths[r] - 1, so its last real
    token (the appended EOS) sits at ``lengths[r] - 1``. Advanced indexing with one row index and one position
    index per row picks exactly those states.
    """
    rows = torch.arange(hidden.shape[0])
    positions = lengths - 1
    return hidden[rows, positions]


def check_last_token(answer) -> None:
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(4, 7, 5, generator=gen)
    lengths = torch.tensor([7, 3, 5, 1])
    got = answer(hidden, lengths)
    if got is None:
        raise ExerciseFailed("the function returned None; return a [batch, dim] tensor")
    if torch.is_tensor(got) and got.shape == (4, 5):
        if torch.allclose(got, hidden[:, -1]):
            raise ExerciseFailed("that is hidden[:, -1]: with right padding the last position is a pad token for "
                                 "every row shorter than the longest (rows 1-3 here). Index each row at lengths - 1")
        if torch.allclose(got[1:], hidden[torch.arange(1, 4), lengths[1:]]):
            raise ExerciseFailed("off by one: positions count from 0, so a row of length L ends at lengths - 1")
    expect_close(got, last_token_pool(hidden, lengths), "the pooled states",
                 "Row r's last real token sits at position lengths[r] - 1")


def attention_mask(input_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Reference for 00.2, worked through.

    The ids cannot tell a pad from an EOS when both have the same id, so they are not used at all: position p of
    row r is real exactly when p < lengths[r]. Comparing a [1, width] row of positions with a [batch, 1] column of
    lengths broadcasts to the [batch, width] mask.
    """
    width = input_ids.shape[1]
    positions = torch.arange(width)[None, :]
    return (positions < lengths[:, None]).long()


def check_attention_mask(answer) -> None:
    eos = pad = 2  # SmolLM2 and Qwen3-Base: the EOS id is the pad id
    input_ids = torch.tensor([[10, 11, 12, eos, pad], [13, eos, pad, pad, pad], [eos, pad, pad, pad, pad]])
    lengths = torch.tensor([4, 2, 1])
    got = answer(input_ids, lengths)
    if got is None:
        raise ExerciseFailed("the function returned None; return a [batch, width] tensor of 0 and 1")
    got = torch.as_tensor(got).long()
    expected = attention_mask(input_ids, lengths)
    if got.shape == expected.shape:
        if torch.equal(got, (input_ids != pad).long()):
            raise ExerciseFailed("that is ids != pad_id: here EOS = PAD = 2, so the mask hides every row's EOS, the "
                                 "very token last-token pooling reads (row 2 is left with no token at all). Build "
                                 "the mask from lengths")
        if torch.equal(got, expected.flip(1)):
            raise ExerciseFailed("that is a left-padding mask; F2LLM pads on the right: real tokens come first")
    expect_close(got, expected, "the mask", "Position p of row r is real when p < lengths[r]")


def query_text(instruction: str, text: str) -> str:
    """Reference for 00.3, worked through: F2LLM writes the task's instruction on one line, then the query on the
    next, each behind its label; the label "Query: " ends with one space. Documents get no instruction (``None``
    or an empty instruction returns the text unchanged)."""
    if not instruction:
        return text
    return "Instruct: " + instruction + "\n" + "Query: " + text


def check_query_text(answer) -> None:
    instruction, text = "Given a question, retrieve code that answers it", "reverse a list"
    got = answer(instruction, text)
    if got is None:
        raise ExerciseFailed("the function returned None; return the formatted string")
    expected = format_query(text, instruction)
    if got != expected:
        hints = [(got.startswith("Instruction:"), "the label is 'Instruct: ', not 'Instruction:'"),
                 ("\n" not in got, "instruction and query go on two lines: a newline between them"),
                 ("Query:" not in got, "the query's line starts with 'Query: '"),
                 (got.endswith("Query:" + text), "'Query: ' ends with a space before the text"),
                 (got.startswith(text), "the instruction comes first, then the query")]
        hint = next((h for wrong, h in hints if wrong), "compare character by character with the expected string")
        raise ExerciseFailed(f"got {got!r}, expected {expected!r}: {hint}. A model trained with one format and "
                             "queried with another loses points on every task")
    for empty in (None, ""):
        if answer(empty, text) != text:
            raise ExerciseFailed("documents (no instruction: None or '') are embedded as they are, without a label")


EXERCISES = {
    "00.1": ("pool the last real token", check_last_token, last_token),
    "00.2": ("a mask that keeps the EOS when EOS = PAD", check_attention_mask, attention_mask),
    "00.3": ("F2LLM's query format", check_query_text, query_text),
}
