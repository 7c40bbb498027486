"""The tokenizing processes of the tokenized writer: the Rust tokenizer alone, so that one starts in a fraction of
a second.

A worker gets the tokenizer as its serialised JSON (``tokenizers.Tokenizer.to_str``) when the writer would call the
Rust tokenizer directly anyway (a fast tokenizer without truncation or padding set, as
``f2llm_lib.embedder.tokenization.tokenize_with_eos`` checks), and applies the same rule: no special tokens, at most
``max_length - 1`` text tokens, then EOS. Any other tokenizer is sent whole and tokenized by ``tokenize_with_eos``
itself (which imports transformers and torch in the worker: seconds, once). Either way the ids equal the in-process
ones; ``tests/test_data.py`` compares the files byte for byte.
"""

from __future__ import annotations

import os

import numpy as np

TOKEN_DTYPE = np.int32
_STATE: tuple | None = None


def rust_state(tokenizer, max_length: int) -> tuple | None:
    """What a worker needs to tokenize with the Rust tokenizer alone, or None when the writer would not use it."""
    backend = getattr(tokenizer, "_tokenizer", None) if getattr(tokenizer, "is_fast", False) else None
    if backend is None or backend.truncation is not None or backend.padding is not None:
        return None
    return ("rust", backend.to_str(), tokenizer.eos_token_id, max_length)


def start(state: tuple) -> None:
    """Process initialiser: one thread per worker (the processes are the parallelism), the tokenizer built once."""
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    global _STATE
    if state[0] == "rust":
        from tokenizers import Tokenizer

        _STATE = ("rust", Tokenizer.from_str(state[1]), state[2], state[3])
    else:
        _STATE = state


def tokenize(texts: list[str]) -> list[np.ndarray]:
    kind, tokenizer, *rest = _STATE
    if kind == "rust":
        eos, max_length = rest
        encoded = [e.ids for e in tokenizer.encode_batch(texts, add_special_tokens=False)] if texts else []
        return [np.asarray(ids[: max_length - 1] + [eos], TOKEN_DTYPE) for ids in encoded]
    from ..embedder.tokenization import tokenize_with_eos

    return [np.asarray(ids, TOKEN_DTYPE) for ids in tokenize_with_eos(tokenizer, texts, rest[0])]


def job(query_texts: list[str], doc_texts: list[str]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """One batch: its formatted queries and its new documents."""
    return tokenize(query_texts), tokenize(doc_texts)
