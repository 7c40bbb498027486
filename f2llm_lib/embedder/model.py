"""The F2LLM encoder: decoder backbone + last-token (EOS) pooling + L2 normalisation + query instructions."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .pooling import last_token_pool, mean_pool, normalize
from .prompts import format_query
from .tokenization import PaddedGroup, pad_batch, tokenize_with_eos


class F2LLMEncoder(torch.nn.Module):
    """Maps token batches (or raw texts, through :meth:`encode`) to unit-norm embeddings."""

    def __init__(self, backbone: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, max_length: int = 512,
                 pooling: str = "last_token") -> None:
        super().__init__()
        if pooling not in ("last_token", "mean"):
            raise ValueError(f"pooling must be 'last_token' or 'mean', got {pooling!r}")
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.pooling = pooling

    @property
    def device(self) -> torch.device:
        return next(self.backbone.parameters()).device

    @property
    def dim(self) -> int:
        return int(self.backbone.config.hidden_size)

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                lengths: torch.Tensor | None = None, chunks: Sequence[PaddedGroup] | None = None) -> torch.Tensor:
        """Embeddings of a right-padded batch, ``[batch, dim]``, L2-normalised, in float32. Or of ``chunks``
        (groups of texts padded to their own length, with their positions in the batch): run one after another
        inside this one call (one DDP forward, one backward), returned in batch order."""
        if chunks is not None:
            device = self.device
            # Each group through _embed, not self(...): a call back into forward would re-enter the wrapper that
            # mixed precision puts around it (accelerate's autocast), which then stays switched on after this
            # call returns and runs the loss in bf16.
            embeddings = torch.cat([self._embed(c.input_ids.to(device), c.attention_mask.to(device),
                                                c.lengths.to(device)) for c in chunks])
            positions = torch.cat([c.positions for c in chunks]).to(device)
            return embeddings[torch.argsort(positions)]
        return self._embed(input_ids, attention_mask, lengths)

    def _embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if self.pooling == "last_token":
            pooled = last_token_pool(hidden, lengths)
        else:
            pooled = mean_pool(hidden, attention_mask)
        return normalize(pooled.float())

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        return tokenize_with_eos(self.tokenizer, texts, self.max_length)

    @torch.no_grad()
    def encode(self, texts: Sequence[str], *, instruction: str | None = None, batch_size: int = 32,
               show_progress: bool = False, convert_to: str = "numpy") -> np.ndarray | torch.Tensor:
        """Embed texts in batches sorted by length (less padding), returned in the input order."""
        if convert_to not in ("numpy", "torch"):
            raise ValueError(f"convert_to must be 'numpy' or 'torch', got {convert_to!r}")
        formatted = [format_query(text, instruction) for text in texts]
        ids = self.tokenize(formatted)
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
        out = torch.empty(len(ids), self.dim, dtype=torch.float32)
        was_training = self.training
        self.eval()
        starts = range(0, len(order), batch_size)
        for start in tqdm(starts, desc="encode", disable=not show_progress):
            rows = order[start:start + batch_size]
            input_ids, mask, lengths = pad_batch([ids[i] for i in rows], self.tokenizer.pad_token_id)
            emb = self(input_ids.to(self.device), mask.to(self.device), lengths.to(self.device))
            out[torch.tensor(rows)] = emb.cpu()
        self.train(was_training)
        return out.numpy() if convert_to == "numpy" else out
