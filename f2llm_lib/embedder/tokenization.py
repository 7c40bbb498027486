"""F2LLM's tokenization rule: no special tokens, truncate, append EOS; masks come from lengths.

The pooled token is the appended EOS. Building ``attention_mask = ids != pad_id`` would mask it out when a
tokenizer's EOS id equals its pad id (SmolLM2, several Qwen checkpoints), so every mask here is built from
the stored sequence lengths.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase


@dataclass
class PaddedGroup:
    """Texts padded together: ``[rows, T]`` ids, a mask built from lengths, the lengths, and where each row goes in
    the batch. A batch runs as several groups of similar length (less padding); the encoder puts them back in order."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    lengths: torch.Tensor
    positions: torch.Tensor


def tokenize_with_eos(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_length: int) -> list[list[int]]:
    """Token ids per text: no special tokens, at most ``max_length`` ids, the last one always EOS."""
    if max_length < 2:
        raise ValueError(f"max_length must be at least 2 (one text token + EOS), got {max_length}")
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"text #{index} is {type(text).__name__}, expected str")
    if not texts:
        return []
    eos = tokenizer.eos_token_id
    backend = getattr(tokenizer, "_tokenizer", None) if getattr(tokenizer, "is_fast", False) else None
    if backend is not None and backend.truncation is None and backend.padding is None:
        # the Rust tokenizer straight away: the same ids as tokenizer(texts, add_special_tokens=False), without
        # transformers' per-text Python conversion (a third of the time when tokenizing millions of texts)
        encoded = [e.ids for e in backend.encode_batch(list(texts), add_special_tokens=False)]
    else:
        encoded = tokenizer(list(texts), add_special_tokens=False, truncation=False)["input_ids"]
    # Truncate to max_length - 1 text tokens, then append EOS: the last token is EOS even after truncation.
    return [ids[: max_length - 1] + [eos] for ids in encoded]


def pad_batch(id_lists: Sequence[Sequence[int]], pad_id: int,
              padding_side: str = "right") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pad to a rectangle; return ``(input_ids, attention_mask, lengths)`` with the mask built from lengths."""
    if padding_side not in ("right", "left"):
        raise ValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
    lengths = torch.tensor([len(ids) for ids in id_lists], dtype=torch.long)
    if len(lengths) == 0 or int(lengths.min()) == 0:
        raise ValueError("every sequence needs at least one token (the EOS)")
    width = int(lengths.max())
    input_ids = torch.full((len(id_lists), width), pad_id, dtype=torch.long)
    positions = torch.arange(width).unsqueeze(0)
    if padding_side == "right":
        attention_mask = positions < lengths.unsqueeze(1)
    else:
        attention_mask = positions >= (width - lengths).unsqueeze(1)
    for row, ids in enumerate(id_lists):
        input_ids[row, attention_mask[row]] = torch.as_tensor(list(ids), dtype=torch.long)
    return input_ids, attention_mask.long(), lengths


def tokenizer_identity(tokenizer: PreTrainedTokenizerBase) -> dict:
    """What data records about the tokenizer that made it: name, size, EOS and pad ids, a hash of the vocabulary."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    return {"name": str(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__),
            "vocab_size": len(tokenizer), "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
            "vocab_sha256": hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode()).hexdigest()}


class TokenizerMismatchError(ValueError):
    """Token ids were made by one tokenizer and are about to be read by a model of another."""


def check_same_tokenizer(data_identity: dict, tokenizer: PreTrainedTokenizerBase, data_where: str,
                         model_name: str) -> None:
    """Refuse token ids from another tokenizer (another vocabulary or EOS id), naming both tokenizers."""
    ours = tokenizer_identity(tokenizer)
    differs = [key for key in ("vocab_sha256", "eos_token_id", "vocab_size") if data_identity.get(key) != ours[key]]
    if differs:
        def describe(identity: dict) -> str:
            return (f"{identity.get('name')!r} (vocabulary {identity.get('vocab_size')}, EOS id "
                    f"{identity.get('eos_token_id')}, vocab hash {str(identity.get('vocab_sha256'))[:12]})")

        raise TokenizerMismatchError(
            f"{data_where} was tokenized with {describe(data_identity)}, but {model_name} uses {describe(ours)} "
            f"({', '.join(differs)} differ): its token ids would mean other tokens to this model. Re-tokenize the "
            f"data with this backbone (python -m f2llm_lib.data.pipeline RECIPE --backbone {model_name} --out DIR).")
