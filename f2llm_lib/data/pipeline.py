"""One recipe end to end: read -> build tuples -> decontaminate -> mine hard negatives -> tokenize -> manifest.

    python -m f2llm_lib.data.pipeline pycode --out runs/data/pycode --scorer bm25
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from .decontaminate import DecontaminationReport, Decontaminator
from .mining import BM25Scorer, EncoderScorer, MiningConfig, MiningReport, mine_hard_negatives
from .recipes import (
    Recipe,
    build_examples,
    build_pycode_examples,
    f2llm_mix_files,
    infer_task_type,
    load_recipe,
    read_records,
    resolve_path,
)
from .schema import DataError, TrainingTuple, validate_tuple
from .tokenized import write_training_files


@dataclass
class CurationResult:
    datasets: dict[str, list[TrainingTuple]]
    mining: dict[str, MiningReport] = field(default_factory=dict)
    decontamination: DecontaminationReport = field(default_factory=DecontaminationReport)
    manifest: dict[str, Any] = field(default_factory=dict)


def eval_texts(names: list[str], recipe: Recipe | None = None) -> list[str]:
    """Texts of the evaluation sets a recipe is decontaminated against (label names are not texts)."""
    texts: list[str] = []
    for name in names:
        if name == "pycode_eval":
            from .pycode import pycode_items

            for item in pycode_items("eval"):
                texts += [item.summary, item.docstring, item.code]
        elif name == "stsbenchmark_dev":
            from .readers import read_local

            path = resolve_path("${SHARED_DATA}/stsbenchmark/dev.jsonl", recipe) if recipe else None
            texts += [r[k] for _, r in read_local(path) for k in ("s1", "s2")]
        else:
            raise DataError(f"unknown evaluation set {name!r} in decontaminate_against; "
                            "known: pycode_eval, stsbenchmark_dev")
    return texts


def make_scorer(spec: str, num_layers: int | None = None, instruction: str | None = None):
    """'bm25'; 'st:<name or folder>' for a sentence-transformers model; or any model spec the library loads
    (smollm2-135m, tiny-qwen3, a hub id, a local folder), used as an F2LLM encoder."""
    if spec == "bm25":
        return BM25Scorer()
    if spec.startswith("st:"):
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(spec[3:], trust_remote_code=False)

        def encode(texts, instruction=None, batch_size=32):
            prompt = f"Instruct: {instruction}\nQuery: " if instruction else None
            return model.encode(texts, prompt=prompt, batch_size=batch_size, normalize_embeddings=True)

        return EncoderScorer(encode, instruction=instruction)
    from ..backbones import load_backbone
    from ..model import F2LLMEncoder

    model, tokenizer = load_backbone(spec, num_layers=num_layers)
    encoder = F2LLMEncoder(model, tokenizer, max_length=256)
    return EncoderScorer(encoder.encode, instruction=instruction)


def curate(recipe: Recipe, scorer_spec: str | None = None, num_layers: int | None = None,
           show_progress: bool = True) -> CurationResult:
    """Build, decontaminate and mine every dataset of a recipe (nothing is written)."""
    if recipe.source["kind"] == "pycode":
        built = build_pycode_examples(recipe, "train")
    elif recipe.source.get("data_files") == "all":  # the released F2LLM mix: one dataset per file
        built = []
        for file in f2llm_mix_files(recipe):
            local = recipe.source["kind"] == "local"
            part = replace(recipe, name=Path(file).stem, task_type=infer_task_type(file),
                           source={**recipe.source, **({"path": file, "data_files": None} if local
                                                       else {"data_files": file})})
            built.append(build_examples(part, read_records(part)))
    else:
        built = [build_examples(recipe, read_records(recipe))]
    decontaminator = Decontaminator(eval_texts(recipe.decontaminate_against, recipe)) \
        if recipe.decontaminate_against else None
    result = CurationResult(datasets={})
    config = MiningConfig(**{k: v for k, v in recipe.mining.items() if k != "scorer"})
    spec = scorer_spec or recipe.mining.get("scorer", "bm25")
    scorer = None
    for tuples, info in built:
        if not tuples:
            continue
        name = tuples[0].dataset
        if decontaminator is not None:
            keep = set(map(id, decontaminator.filter(tuples, result.decontamination)[0]))
            mask = [id(t) in keep for t in tuples]
            tuples = [t for t, k in zip(tuples, mask, strict=True) if k]
            if "query_groups" in info:
                info["query_groups"] = [g for g, k in zip(info["query_groups"], mask, strict=True) if k]
        if info["mine"]:
            corpus = info["corpus"]
            if decontaminator is not None:  # mined negatives must not be evaluation texts either
                corpus_keep = [not decontaminator.matches(t) or t in {x.positive for x in tuples} for t in corpus]
                if "corpus_groups" in info:
                    info["corpus_groups"] = [g for g, k in zip(info["corpus_groups"], corpus_keep, strict=True) if k]
                corpus = [t for t, k in zip(corpus, corpus_keep, strict=True) if k]
            if scorer is None:  # one model for every dataset of the recipe; only the instruction changes
                scorer = make_scorer(spec, num_layers)
            scorer.instruction = tuples[0].instruction or None
            negatives, report = mine_hard_negatives(
                [t.query for t in tuples], [t.positive for t in tuples], corpus, scorer, config,
                query_groups=info.get("query_groups"), corpus_groups=info.get("corpus_groups"), seed=recipe.seed,
                show_progress=show_progress)
            result.mining[name] = report
            tuples = [TrainingTuple(t.dataset, t.task_type, t.instruction, t.query, t.positive, n)
                      for t, n in zip(tuples, negatives, strict=True) if n is not None]
        result.datasets[name] = [validate_tuple(t, f"{recipe.path}: dataset {name}, tuple {i}")
                                 for i, t in enumerate(tuples)]
    return result


def write_tuples(result: CurationResult, out_dir: Path) -> None:
    """The unified tuples as parquet, one file per dataset (columns query, passage, negative_1..n, ...)."""
    (out_dir / "tuples").mkdir(parents=True, exist_ok=True)
    for name, tuples in result.datasets.items():
        width = max((len(t.negatives) for t in tuples), default=0)
        table = pa.Table.from_pylist([t.as_row(width) for t in tuples])
        tmp = out_dir / "tuples" / f".{name}.parquet.tmp"
        pq.write_table(table, tmp)
        tmp.replace(out_dir / "tuples" / f"{name}.parquet")


def run_recipe(recipe_path: str | Path, out_dir: str | Path, backbone: str = "smollm2-135m",
               scorer_spec: str | None = None, max_length: int = 256, num_layers: int | None = None,
               show_progress: bool = True) -> CurationResult:
    """Curate one recipe and write tuples, tokenized files (with ``backbone``'s own tokenizer), reports and the
    manifest to ``out_dir``."""
    from ..backbones import load_tokenizer

    tokenizer = load_tokenizer(backbone)  # before curation: a wrong spec fails in seconds, not after mining
    recipe = load_recipe(recipe_path)
    result = curate(recipe, scorer_spec, num_layers, show_progress)
    out_dir = Path(out_dir)
    reports = {"mining": {k: v.summary() for k, v in result.mining.items()},
               "decontamination": result.decontamination.per_dataset}
    result.manifest = write_training_files(result.datasets, tokenizer, out_dir / "tokenized", max_length,
                                           {"recipe": recipe.name, "recipe_sha1": recipe.digest,
                                            "backbone": backbone, **reports})
    write_tuples(result, out_dir)
    (out_dir / "reports.json").write_text(json.dumps(reports, indent=2))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Curate one data recipe into F2LLM training files.")
    parser.add_argument("recipe", help="a recipe name in data_recipes/ or a path to a .yaml file")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--scorer", default=None, help="bm25 or a model spec (default: the recipe's)")
    parser.add_argument("--num-layers", type=int, default=0, help="layer-pruned scorer for speed (0: all)")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--backbone", default="smollm2-135m",
                        help="the model the data is for: its tokenizer tokenizes (smollm2-135m, a hub id, a folder)")
    args = parser.parse_args(argv)
    try:
        result = run_recipe(args.recipe, args.out, backbone=args.backbone, scorer_spec=args.scorer,
                            max_length=args.max_length, num_layers=args.num_layers or None)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"datasets": {k: len(v) for k, v in result.datasets.items()},
                      "mining": {k: v.summary() for k, v in result.mining.items()},
                      "out": str(args.out)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
