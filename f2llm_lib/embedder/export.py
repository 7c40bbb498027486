"""Export a trained encoder as a sentence-transformers folder: Transformer -> last-token Pooling -> Normalize.

The saved tokenizer appends EOS itself (a post-processor) and has no chat template, so
``SentenceTransformer(path).encode`` tokenizes exactly as our encoder does; the query prompt
``Instruct: ...\\nQuery: `` is stored in the model's config.
"""

from __future__ import annotations

import copy
import json
import tempfile
from pathlib import Path

from ..atomic import atomic_folder
from .model import F2LLMEncoder
from .prompts import query_prompt


def _tokenizer_appending_eos(tokenizer):
    from tokenizers.processors import TemplateProcessing

    tok = copy.deepcopy(tokenizer)
    tok.chat_template = None  # sentence-transformers 6 would otherwise wrap every text in the chat template
    eos, eos_id = tok.eos_token, tok.eos_token_id
    tok.backend_tokenizer.post_processor = TemplateProcessing(single=f"$A {eos}", pair=f"$A {eos} $B {eos}",
                                                              special_tokens=[(eos, eos_id)])
    return tok


def export_sentence_transformers(encoder: F2LLMEncoder, out_dir: str | Path,
                                 query_instruction: str | None = None) -> Path:
    """Write the folder atomically (temporary name, then rename); return its path."""
    from sentence_transformers import SentenceTransformer

    try:  # sentence-transformers >= 6 moved the modules; keep older releases working too
        from sentence_transformers.sentence_transformer import modules as models
    except ImportError:
        from sentence_transformers import models

    out_dir = Path(out_dir)
    with tempfile.TemporaryDirectory(prefix=f".{out_dir.name}-backbone-", dir=_existing_parent(out_dir)) as scratch, \
            atomic_folder(out_dir) as work:
        backbone_dir = Path(scratch) / "backbone"
        encoder.backbone.save_pretrained(backbone_dir, safe_serialization=True)
        tokenizer = _tokenizer_appending_eos(encoder.tokenizer)
        tokenizer.save_pretrained(backbone_dir)
        (backbone_dir / "chat_template.jinja").unlink(missing_ok=True)
        transformer = models.Transformer(str(backbone_dir), max_seq_length=encoder.max_length)
        pooling = models.Pooling(encoder.dim, pooling_mode="lasttoken")
        prompts = {"query": query_prompt(query_instruction)} if query_instruction else {}
        model = SentenceTransformer(modules=[transformer, pooling, models.Normalize()], prompts=prompts,
                                    similarity_fn_name="cosine", device="cpu")
        model.save(str(work))
        # The export carries the model's real limit (sentence-transformers 6 keeps its truncation length as the
        # tokenizer's), not the training length: with that, every longer text looked like an indexing error, and
        # sentence-transformers cut it at the training length.
        _set_model_max_length(work / "tokenizer_config.json",
                              int(getattr(encoder.backbone.config, "max_position_embeddings", 0) or 0))
    return out_dir


def _existing_parent(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.parent


def _set_model_max_length(path: Path, length: int) -> None:
    if not length or not path.exists():
        return
    settings = json.loads(path.read_text())
    settings["model_max_length"] = length
    path.write_text(json.dumps(settings, indent=2, ensure_ascii=False))
