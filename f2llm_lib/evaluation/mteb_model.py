"""Our encoder as an mteb model, with a name and revision unique to each checkpoint.

mteb caches results by model name and revision. A finetuned checkpoint evaluated under its base model's name would
silently get the base model's cached scores, so the revision here is a hash of the weights themselves.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch
from mteb.models.abs_encoder import AbsEncoder
from mteb.models.model_meta import ModelMeta, ScoringFunction
from mteb.types import PromptType

from ..model import F2LLMEncoder
from .instructions import instruction_for


def weights_revision(model: torch.nn.Module) -> str:
    """A short hash of every parameter's bytes: different weights, different revision."""
    digest = hashlib.sha1()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


class F2LLMMtebModel(AbsEncoder):
    """Instruction on queries only for retrieval/reranking, on every input for symmetric tasks; EOS pooling."""

    def __init__(self, encoder: F2LLMEncoder, name: str, batch_size: int = 32, revision: str | None = None) -> None:
        self.model = encoder
        self.batch_size = batch_size
        self.mteb_model_meta = ModelMeta.create_empty({
            "name": f"f2llm-local/{name}", "revision": revision or weights_revision(encoder.backbone),
            "embed_dim": encoder.dim, "max_tokens": encoder.max_length, "similarity_fn_name": ScoringFunction.COSINE,
            "use_instructions": True, "framework": ["PyTorch"], "open_weights": True,
            "n_parameters": sum(p.numel() for p in encoder.parameters()),
        })

    def encode(self, inputs, *, task_metadata, hf_split: str, hf_subset: str, prompt_type: PromptType | None = None,
               **kwargs) -> np.ndarray:
        texts = [text for batch in inputs for text in batch["text"]]
        is_query = prompt_type in (None, PromptType.query)
        instruction = instruction_for(task_metadata.name, task_metadata.type, is_query)
        return self.model.encode(texts, instruction=instruction, batch_size=self.batch_size)
