"""Export a trained encoder as a sentence-transformers folder: Transformer -> last-token Pooling -> Normalize.

The saved tokenizer appends EOS itself (a post-processor) and has no chat template, so
``SentenceTransformer(path).encode`` tokenizes exactly as our encoder does. The folder carries what a user elsewhere
needs, as sentence-transformers' own exports do (``config_sentence_transformers.json``, ``README.md``):

- prompts: ``Instruct: ...\\nQuery: `` for each dataset and task type of the training data (the instructions the
  data manifest records), ``query`` (retrieval's), and ``document`` (empty: F2LLM gives documents no instruction), so
  ``model.encode(queries, prompt_name="query")`` embeds as training did;
- a model card generated from the run (``f2llm_training.json`` holds its facts): backbone, data, settings, the MRL
  dimensions trained (``SentenceTransformer(path, truncate_dim=256)``), and the run's scores once evaluated.

Reference: sentence-transformers, "Prompts" and "Model cards" (sbert.net); F2LLM, arXiv 2510.02294, section 3.
"""

from __future__ import annotations

import copy
import json
import tempfile
from pathlib import Path
from typing import Any

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


TRAINING_RECORD = "f2llm_training.json"  # the facts the model card is rendered from (scores added by evaluation)
KNOWN_LICENSES = {"smollm2": "apache-2.0", "qwen3": "apache-2.0", "tiny-qwen3": "apache-2.0"}


def training_prompts(manifest: dict) -> dict[str, str]:
    """sentence-transformers prompts for the data a model trained on (a tokenized folder's ``manifest.json``): one
    per dataset (its name), one per task type (its first dataset's), ``query`` (retrieval's, else the first) and
    ``document`` (empty). Datasets without a recorded instruction (queries that carry theirs) add none.

    Example::

        >>> training_prompts({"datasets": {"pycode_retrieval": {"task_type": "retrieval",
        ...                                                     "instruction": "Find the code"}}})["query"]
        'Instruct: Find the code\\nQuery: '
    """
    prompts: dict[str, str] = {}
    by_task: dict[str, str] = {}
    for name, info in manifest.get("datasets", {}).items():
        if info.get("instruction"):
            prompts[name] = query_prompt(info["instruction"])
            by_task.setdefault(info.get("task_type", "retrieval"), prompts[name])
    if by_task:
        prompts.update(by_task)
        prompts["query"] = by_task.get("retrieval", next(iter(by_task.values())))
        prompts["document"] = ""
    return prompts


def training_data_facts(manifest: dict) -> dict[str, Any]:
    """What a model card says about the training data, from a tokenized folder's ``manifest.json``: the recipes, each
    dataset's task type and size, and the MTEB tasks the recipes share data with (None when not recorded)."""
    return {"data": {"recipes": manifest.get("recipes") or [manifest.get("recipe", "")],
                     "datasets": {name: {"task_type": info.get("task_type"), "rows": info.get("rows")}
                                  for name, info in manifest.get("datasets", {}).items()}},
            "seen_mteb_tasks": manifest.get("mteb_tasks")}


def export_sentence_transformers(encoder: F2LLMEncoder, out_dir: str | Path,
                                 query_instruction: str | None = None, prompts: dict[str, str] | None = None,
                                 training: dict[str, Any] | None = None) -> Path:
    """Write the folder atomically (temporary name, then rename); return its path.

    ``query_instruction`` becomes the ``query`` prompt; ``prompts`` (e.g. :func:`training_prompts`) adds named ones;
    ``training`` (backbone, data, settings, mrl_dims, scores: see :func:`model_card`) is stored beside the weights
    and rendered as the folder's ``README.md``."""
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
        prompts = {**(prompts or {}), **({"query": query_prompt(query_instruction)} if query_instruction else {})}
        if prompts:
            prompts.setdefault("document", "")
        model = SentenceTransformer(modules=[transformer, pooling, models.Normalize()], prompts=prompts,
                                    similarity_fn_name="cosine", device="cpu")
        model.save(str(work))
        # The export carries the model's real limit (sentence-transformers 6 keeps its truncation length as the
        # tokenizer's), not the training length: with that, every longer text looked like an indexing error, and
        # sentence-transformers cut it at the training length.
        _set_model_max_length(work / "tokenizer_config.json",
                              int(getattr(encoder.backbone.config, "max_position_embeddings", 0) or 0))
        record = {"dim": encoder.dim, "max_length": encoder.max_length, "prompts": prompts, **(training or {})}
        (work / TRAINING_RECORD).write_text(json.dumps(record, indent=2, ensure_ascii=False))
        (work / "README.md").write_text(model_card(record))
    return out_dir


def model_card(record: dict[str, Any]) -> str:
    """The README.md of an export: what the model is, how to load it with its prompts and MRL dimensions, what it
    was trained on and how, and its scores (when the run's evaluation has added them)."""
    backbone = str(record.get("backbone", "unknown"))
    family = next((key for key in KNOWN_LICENSES if key in backbone.lower()), None)
    license_id = KNOWN_LICENSES.get(family or "", "other")
    prompts = record.get("prompts") or {}
    lines = ["---", "library_name: sentence-transformers", "pipeline_tag: sentence-similarity",
             "tags: [sentence-transformers, feature-extraction, f2llm]", f"license: {license_id}"]
    if "/" in backbone:
        lines.append(f"base_model: {backbone}")
    lines += ["---", "", "# An F2LLM embedding model", "",
              f"`{backbone}` finetuned into an embedding model in one stage on (query, positive, hard negatives) "
              "tuples, as F2LLM does (arXiv 2510.02294): the last token's hidden state (an EOS the tokenizer "
              f"appends), normalised; {record.get('dim')} dimensions, texts up to {record.get('max_length')} tokens "
              "in training. License: " + (f"{license_id}, as the backbone's." if family else
                                          "the backbone's (see its model card)."), "", "## Use", "", "```python",
              "from sentence_transformers import SentenceTransformer", "",
              'model = SentenceTransformer("path/to/this/folder")',
              'queries = model.encode(["how do I sort a list in place"], prompt_name="query")',
              'documents = model.encode(["def sort(items): ..."])  # documents take no instruction',
              "scores = model.similarity(queries, documents)", "```", ""]
    if prompts:
        lines += ["## Prompts", "", "Queries are written `Instruct: {instruction}\\nQuery: {text}`; use the prompt of "
                  "the task (`prompt_name=...`):", "", "| prompt name | prompt |", "|---|---|"]
        lines += [f"| `{name}` | `{text!r}` |" for name, text in prompts.items()]
        lines.append("")
    dims = record.get("mrl_dims")
    lines += ["## Matryoshka dimensions", ""]
    lines.append(f"Trained at every prefix dimension in {dims} (F2LLM-v2's levels and weights): "
                 f"`SentenceTransformer(path, truncate_dim={dims[len(dims) // 2]})` keeps the first "
                 f"{dims[len(dims) // 2]}; cosine similarity renormalises the prefix." if dims else
                 "Not trained with Matryoshka levels: use the full dimension.")
    lines.append("")
    data = record.get("data") or {}
    if data:
        lines += ["## Training data", "", f"Recipes: {', '.join(data.get('recipes', [])) or 'unknown'}.", "",
                  "| dataset | task type | queries |", "|---|---|---|"]
        lines += [f"| {name} | {info.get('task_type', '')} | {info.get('rows', '')} |"
                  for name, info in data.get("datasets", {}).items()]
        lines.append("")
    settings = record.get("settings") or {}
    if settings:
        lines += ["## Training settings", "", *[f"- `{key}`: {value}" for key, value in settings.items()], ""]
    scores = record.get("scores") or []
    lines += ["## Scores", ""]
    if scores:
        lines += ["| task | metric | score |", "|---|---|---|"]
        lines += [f"| {row['task']} | {row.get('metric', '')} | {float(row['score']):.2f} |" for row in scores]
    else:
        lines.append("Not evaluated yet: `f2llm evaluate --model <this folder>` scores it with mteb's evaluators and "
                     "adds the scores here.")
    return "\n".join(lines) + "\n"


def add_scores_to_card(folder: str | Path, scores: list[dict]) -> bool:
    """Record an evaluation's rows (task, metric, score) in an export made by this library and re-render its card;
    False (nothing written) for any other folder."""
    from ..atomic import atomic_file

    path = Path(folder) / TRAINING_RECORD
    if not path.is_file():
        return False
    record = json.loads(path.read_text())
    record["scores"] = [{"task": row["task"], "metric": row.get("metric", ""), "score": float(row["score"])}
                        for row in scores]
    for name, text in ((TRAINING_RECORD, json.dumps(record, indent=2, ensure_ascii=False)),
                       ("README.md", model_card(record))):
        with atomic_file(Path(folder) / name) as tmp:
            Path(tmp).write_text(text)
    return True


def _existing_parent(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.parent


def _set_model_max_length(path: Path, length: int) -> None:
    if not length or not path.exists():
        return
    settings = json.loads(path.read_text())
    settings["model_max_length"] = length
    path.write_text(json.dumps(settings, indent=2, ensure_ascii=False))
