"""Our encoder as an mteb model: F2LLM's own registered prompts, and a name and revision unique to each checkpoint.

Prompts: the F2LLM authors registered their models in mteb (``mteb/models/model_implementations/codefuse_models.py``:
``prompts_dict`` for the 41 tasks of MTEB(eng, v2), ``instruction_template``, ``add_eos_token=True``, no instruction
on documents). Scores are comparable with the published ones only with exactly those strings, so the text embedded
for a task in that table is built by mteb's own code path (``AbsEncoder.get_task_instruction`` with the registered
entry's settings); our own rule (``instructions.instruction_for``) is kept only for tasks the entry has no prompt
for (the offline pycode tasks, other local tasks). EOS: our encoder appends it to every text, as the entry's
``add_eos_token`` does.

Caching: mteb caches results by model name and revision. A finetuned checkpoint evaluated under its base model's name
would silently get the base model's cached scores, so the revision here is a hash of the weights themselves.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import torch
from mteb.models.abs_encoder import AbsEncoder
from mteb.models.model_implementations.codefuse_models import F2LLM_0B6
from mteb.models.model_meta import ModelMeta, ScoringFunction
from mteb.types import PromptType

from ..embedder.model import F2LLMEncoder
from ..embedder.prompts import query_prompt
from .instructions import instruction_for

# The F2LLM authors' registered entry (the same settings for 0.6B, 1.7B and 4B).
REGISTERED_ENTRY = F2LLM_0B6
REGISTERED_SETTINGS = REGISTERED_ENTRY.loader_kwargs
# F2LLM's evaluation length in mteb (the gpu profile uses it; CPU profiles a shorter one).
F2LLM_EVAL_MAX_LENGTH = int(REGISTERED_SETTINGS.get("max_seq_length", 8192))


def weights_revision(model: torch.nn.Module) -> str:
    """A short hash of every parameter's bytes: different weights, different revision."""
    digest = hashlib.sha1()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


class F2LLMMtebModel(AbsEncoder):
    """F2LLM's registered prompts for MTEB tasks, our rule for the others; EOS pooling."""

    def __init__(self, encoder: F2LLMEncoder, name: str, batch_size: int = 32, revision: str | None = None,
                 cache_embeddings: bool = False) -> None:
        self.model = encoder
        self.batch_size = batch_size
        # embeddings by exact input string, kept when asked: later passes over the same texts (the scores at each
        # Matryoshka width, ``matryoshka.dimension_scores``) then run no forward pass
        self.embedding_cache: dict[str, np.ndarray] | None = {} if cache_embeddings else None
        self.instruction_template = REGISTERED_SETTINGS["instruction_template"]
        self.prompts_dict = dict(REGISTERED_SETTINGS["prompts_dict"])
        self.apply_instruction_to_passages = REGISTERED_SETTINGS.get("apply_instruction_to_passages", True)
        self.mteb_model_meta = ModelMeta.create_empty({
            "name": f"f2llm-local/{name}", "revision": revision or self.settings_revision(encoder),
            "embed_dim": encoder.dim, "max_tokens": encoder.max_length, "similarity_fn_name": ScoringFunction.COSINE,
            "use_instructions": True, "framework": ["PyTorch"], "open_weights": True,
            "n_parameters": sum(p.numel() for p in encoder.parameters()),
        })

    def settings_revision(self, encoder: F2LLMEncoder) -> str:
        """The weights' hash plus everything else that changes an embedding: max length, pooling, the prompts (the
        registered entry's and our rule's). mteb caches results by model name and revision: a change to any of
        these is a new revision, never a stale cached score."""
        from . import instructions

        settings = json.dumps({"max_length": encoder.max_length, "pooling": encoder.pooling,
                               "template": self.instruction_template, "prompts": self.prompts_dict,
                               "passages": self.apply_instruction_to_passages, "by_type": instructions.BY_TYPE,
                               "by_task": instructions.BY_TASK}, sort_keys=True, default=str)
        return f"{weights_revision(encoder.backbone)}-{hashlib.sha1(settings.encode()).hexdigest()[:8]}"

    def input_prefix(self, task_metadata, prompt_type: PromptType | None) -> str:
        """What is written before every text of this task and side (the registered entry's rule where it has a
        prompt for the task, as mteb's InstructSentenceTransformerModel.encode builds it; ours elsewhere)."""
        if task_metadata.name in self.prompts_dict:
            instruction = self.get_task_instruction(task_metadata, prompt_type)
            if not self.apply_instruction_to_passages and prompt_type == PromptType.document:
                instruction = None
            return instruction or ""
        ours = instruction_for(task_metadata.name, task_metadata.type, prompt_type in (None, PromptType.query))
        return query_prompt(ours) if ours else ""

    def input_texts(self, texts: list[str], task_metadata, prompt_type: PromptType | None) -> list[str]:
        """The exact strings embedded (EOS is appended to their token ids)."""
        prefix = self.input_prefix(task_metadata, prompt_type)
        return [prefix + text for text in texts]

    def encode(self, inputs, *, task_metadata, hf_split: str, hf_subset: str, prompt_type: PromptType | None = None,
               **kwargs) -> np.ndarray:
        texts = self.input_texts([text for batch in inputs for text in batch["text"]], task_metadata, prompt_type)
        if self.embedding_cache is None:
            return self.model.encode(texts, batch_size=self.batch_size)
        return self.cached_embeddings(texts)

    def cached_embeddings(self, texts: list[str], cache: dict[str, np.ndarray] | None = None) -> np.ndarray:
        """[len(texts), d] full embeddings of these exact input strings, each embedded once into ``cache`` (the
        model's own when None)."""
        cache = self.embedding_cache if cache is None else cache
        missing = [text for text in dict.fromkeys(texts) if text not in cache]
        if missing:
            cache.update(zip(missing, self.model.encode(missing, batch_size=self.batch_size), strict=True))
        return np.stack([cache[text] for text in texts])
