"""Score one model at each Matryoshka (MRL) dimension with mteb, from one encoding pass.

Why: F2LLM-v2 trains the contrastive loss on every prefix of the embedding (8, 16, 32, ... dims, each prefix
renormalised, weighted by ``mrl_weights``), so that a user may keep only the first ``dim`` coordinates: a 64-dim
index is a ninth of a 576-dim one. Whether that works is read off a curve of score against dimension.

How: :class:`PrefixMtebModel` is an mteb model that answers every ``encode`` with the first ``dim`` coordinates of
the full embeddings, renormalised (what the loss trained and what sentence-transformers' ``truncate_dim`` does). The
models for all dimensions share one cache of full embeddings keyed by the exact input string, so the backbone runs
once per text whatever the number of dimensions; mteb's own evaluators then score each dimension. Each dimension has
its own mteb name and revision (``...-dim64``), so mteb's result cache never hands one dimension another's score.

References: Kusupati et al., Matryoshka Representation Learning (arXiv 2205.13147); F2LLM-v2's levels and weights
(``f2llm_lib.losses.api.mrl_levels`` / ``mrl_weights``).

Example::

    full = f2llm_model("runs/.../final", "finetuned")
    rows = dimension_scores(full, [64, 128, 576], pycode_tasks(), "mteb_cache")
    # [{"model": "finetuned", "dim": 64, "task": "PyCodeRetrieval", "score": ...}, ...]
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from mteb.models.abs_encoder import AbsEncoder
from mteb.types import PromptType

from .leakage import TRAINING_RECORD
from .mteb_model import F2LLMMtebModel

__all__ = ["PrefixMtebModel", "dimension_scores", "trained_dimensions", "truncate_embeddings"]


def truncate_embeddings(embeddings: np.ndarray, dim: int) -> np.ndarray:
    """[n, d] embeddings -> their first ``dim`` coordinates, each row renormalised to unit length."""
    prefix = np.asarray(embeddings, dtype=np.float32)[:, :dim]
    return prefix / np.clip(np.linalg.norm(prefix, axis=1, keepdims=True), 1e-12, None)


def trained_dimensions(folder: str | Path | None) -> list[int] | None:
    """The MRL dimensions an export of this library was trained at (``f2llm_training.json``), or None (not an
    export, or trained at the full dimension only)."""
    record = Path(folder) / TRAINING_RECORD if folder else None
    if record is None or not record.is_file():
        return None
    dims = json.loads(record.read_text()).get("mrl_dims")
    return [int(d) for d in dims] if dims else None


class PrefixMtebModel(AbsEncoder):
    """``full``'s embeddings cut to their first ``dim`` coordinates and renormalised, for mteb.

    Args:
        full: the model at its full dimension (its prompts, encoder and batch size are used as they are).
        dim: how many leading coordinates to keep (1 .. full dimension).
        cache: full embeddings by input string, shared by the models of one pass (filled on demand).
    """

    def __init__(self, full: F2LLMMtebModel, dim: int, cache: dict[str, np.ndarray]) -> None:
        if not 1 <= dim <= full.model.dim:
            raise ValueError(f"dim must be between 1 and the model's {full.model.dim} dimensions, got {dim}")
        self.full, self.dim, self.cache = full, dim, cache
        meta = full.mteb_model_meta
        self.mteb_model_meta = meta.model_copy(update={"name": f"{meta.name}-dim{dim}",
                                                       "revision": f"{meta.revision}-dim{dim}", "embed_dim": dim})

    def encode(self, inputs, *, task_metadata, hf_split: str, hf_subset: str, prompt_type: PromptType | None = None,
               **kwargs) -> np.ndarray:
        texts = self.full.input_texts([text for batch in inputs for text in batch["text"]], task_metadata,
                                      prompt_type)
        return truncate_embeddings(self.full.cached_embeddings(texts, self.cache), self.dim)


def dimension_scores(full: F2LLMMtebModel, dims: list[int], tasks: list, cache_dir: str | Path,
                     label: str = "finetuned", show_progress: bool = False) -> list[dict]:
    """Rows (model, dim, task, type, main_score, score x 100) for each dimension in ``dims`` and each task, from one
    encoding pass: the backbone embeds each distinct input once, every dimension reuses it (none at all when
    ``full`` was made with ``cache_embeddings=True`` and has been evaluated on these tasks)."""
    from .run import evaluate

    # the full model's own cache when it keeps one (its main evaluation then embedded every text already)
    cache: dict[str, np.ndarray] = full.embedding_cache if full.embedding_cache is not None else {}
    rows = []
    for dim in sorted(set(dims)):
        for row in evaluate({label: PrefixMtebModel(full, dim, cache)}, tasks, cache_dir,
                            show_progress=show_progress):
            rows.append({**row, "dim": dim})
    return rows
