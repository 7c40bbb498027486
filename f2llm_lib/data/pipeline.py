"""Recipes end to end: read -> build tuples -> decontaminate -> mine hard negatives -> tokenize -> manifest.

    python -m f2llm_lib.data.pipeline pycode --out runs/data/pycode --scorer bm25
    python -m f2llm_lib.data.pipeline banking77_local stsbenchmark_local --out runs/data/mix   # one corpus
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import shutil
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from ..atomic import atomic_folder
from ..embedder.prompts import query_prompt
from ..ownership import check_replaceable, output_lock
from .decontaminate import DecontaminationReport, Decontaminator
from .mining import BM25Scorer, EncoderScorer, MiningReport, mine_hard_negatives
from .recipes import (
    BuiltDataset,
    Recipe,
    build_examples,
    build_pycode_examples,
    expand_mix,
    f2llm_mix_files,
    mix_file_recipe,
    read_records,
    resolve_path,
    seen_mteb_tasks,
    stream_tuples,
)
from .schema import DataError, TrainingTuple, validate_tuple
from .tokenized import TokenizedDataError, TokenizedWriter, default_tokenizing_processes


@dataclass
class CurationResult:
    """What curation made: per dataset its tuples (lists from :func:`curate`; from :func:`run_recipe`, the tuples
    file it wrote, read on demand: :class:`StoredTuples`), and the reports."""

    datasets: dict[str, Sequence[TrainingTuple]]
    mining: dict[str, MiningReport] = field(default_factory=dict)
    decontamination: DecontaminationReport = field(default_factory=DecontaminationReport)
    manifest: dict[str, Any] = field(default_factory=dict)
    duplicates: dict[str, int] = field(default_factory=dict)  # per dataset: repeated (query, positive) rows dropped
    tokenizing: dict[str, float] = field(default_factory=dict)  # processes used, their peak RSS (run_recipe)


TUPLE_SCHEMA = pa.schema([("dataset", pa.string()), ("task_type", pa.string()), ("instruction", pa.string()),
                          ("query", pa.string()), ("passage", pa.string()), ("negatives", pa.list_(pa.string()))])


class StoredTuples(Sequence):
    """A curated dataset as written to ``tuples/<name>.parquet``: its length from the file's metadata, its tuples
    read a parquet batch at a time when iterated (indexing reads the whole file: for small data)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def __len__(self) -> int:
        return pq.ParquetFile(self.path).metadata.num_rows

    def __iter__(self) -> Iterator[TrainingTuple]:
        for batch in pq.ParquetFile(self.path).iter_batches(batch_size=4096):
            for row in batch.to_pylist():
                yield TrainingTuple(row["dataset"], row["task_type"], row["instruction"], row["query"],
                                    row["passage"], row["negatives"])

    def __getitem__(self, index):
        return list(self)[index]

    def __repr__(self) -> str:
        return f"StoredTuples({str(self.path)!r}, {len(self)} tuples)"


class TupleFileWriter:
    """Writes a dataset's tuples to one parquet file as they stream past (``passing``), a batch at a time."""

    def __init__(self, path: Path, batch_size: int = 1024) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.writer = pq.ParquetWriter(path, TUPLE_SCHEMA, compression="zstd")
        self.batch_size = batch_size

    def passing(self, tuples: Iterable[TrainingTuple]) -> Iterator[TrainingTuple]:
        batch: list[TrainingTuple] = []
        for item in tuples:
            batch.append(item)
            if len(batch) == self.batch_size:
                self._write(batch)
                yield from batch
                batch = []
        if batch:
            self._write(batch)
            yield from batch

    def _write(self, batch: list[TrainingTuple]) -> None:
        columns = {"dataset": [t.dataset for t in batch], "task_type": [t.task_type for t in batch],
                   "instruction": [t.instruction for t in batch], "query": [t.query for t in batch],
                   "passage": [t.positive for t in batch], "negatives": [t.negatives for t in batch]}
        self.writer.write_table(pa.table(columns, schema=TUPLE_SCHEMA))

    def close(self) -> None:
        self.writer.close()


def eval_texts(names: list[str], recipe: Recipe | None = None) -> list[str]:
    """Texts of the evaluation sets a recipe is decontaminated against (label names are not texts)."""
    texts: list[str] = []
    for name in names:
        if name == "pycode_eval":
            from .pycode import pycode_items

            for item in pycode_items("eval"):
                texts += [item.summary, item.docstring, item.code]
        elif name == "stsbenchmark_dev":
            texts += stsbenchmark_dev_texts(recipe)
        else:
            raise DataError(f"unknown evaluation set {name!r} in decontaminate_against; "
                            "known: pycode_eval, stsbenchmark_dev")
    return texts


def stsbenchmark_dev_texts(recipe: Recipe | None) -> list[str]:
    """STS Benchmark's dev sentences: from the ``F2LLM_PUBLIC_DATA`` folder, else from the hub (the same split)."""
    from ..paths import public_data_dir
    from .readers import read_hub, read_local

    if public_data_dir() is not None:
        records = read_local(resolve_path("${PUBLIC_DATA}/stsbenchmark/dev.jsonl", recipe))
        return [r[k] for _, r in records for k in ("s1", "s2")]
    print("[curate] F2LLM_PUBLIC_DATA is not set; reading STS Benchmark's dev split from the hub "
          "(mteb/stsbenchmark-sts, validation)", flush=True)
    return [r[k] for _, r in read_hub("mteb/stsbenchmark-sts", None, "validation") for k in ("sentence1", "sentence2")]


def make_scorer(spec: str, num_layers: int | None = None, instruction: str | None = None):
    """'bm25'; 'st:<name or folder>' for a sentence-transformers model; or any model spec the library loads
    (smollm2-135m, tiny-qwen3, a hub id, a local folder), used as an F2LLM encoder."""
    if spec == "bm25":
        return BM25Scorer()
    if spec.startswith("st:"):
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(spec[3:], trust_remote_code=False)

        def encode(texts, instruction=None, batch_size=32):
            prompt = query_prompt(instruction) if instruction else None
            return model.encode(texts, prompt=prompt, batch_size=batch_size, normalize_embeddings=True)

        return EncoderScorer(encode, instruction=instruction)
    from ..embedder.backbones import load_backbone
    from ..embedder.model import F2LLMEncoder

    model, tokenizer = load_backbone(spec, num_layers=num_layers)
    encoder = F2LLMEncoder(model, tokenizer, max_length=256)
    return EncoderScorer(encoder.encode, instruction=instruction)


def curate(recipe: Recipe, scorer_spec: str | None = None, num_layers: int | None = None,
           show_progress: bool = True) -> CurationResult:
    """Build, decontaminate and mine every dataset of a recipe, in memory (nothing is written): for small data and
    for looking at the tuples. :func:`run_recipe` streams the same tuples to disk instead."""
    result = CurationResult(datasets={})
    for name, tuples in curate_stream(recipe, scorer_spec, num_layers, show_progress, result):
        kept = list(tuples)
        if kept:
            result.datasets[name] = kept
    return result


def curate_stream(recipe: Recipe, scorer_spec: str | None = None, num_layers: int | None = None,
                  show_progress: bool = True, result: CurationResult | None = None,
                  ) -> Iterator[tuple[str, Iterator[TrainingTuple]]]:
    """Each dataset of a recipe as ``(name, tuples)``, the tuples a stream to be consumed before the next dataset.

    Rows already in tuple form (``build.kind: tuples``, the released F2LLM data) stream from the file through
    decontamination, validation and de-duplication with bounded state: the evaluation texts' hashes and a 16-byte
    digest per kept (query, positive) pair. Datasets whose negatives are mined need their candidate corpus in memory
    (the scorer ranks all of it), so they are built whole, then streamed. ``result`` collects the reports as the
    streams are consumed."""
    result = result if result is not None else CurationResult(datasets={})
    decontaminator = Decontaminator(eval_texts(recipe.decontaminate_against, recipe)) \
        if recipe.decontaminate_against else None
    scorer = None
    for source in _dataset_sources(recipe):
        if isinstance(source, Recipe):  # streamed
            tuples = stream_tuples(source)
            if decontaminator is not None:
                tuples = decontaminator.filter_stream(tuples, result.decontamination)
            yield source.name, _checked(source.name, tuples, result, recipe)
            continue
        dataset = source
        if not dataset.tuples:
            continue
        name = dataset.name
        if decontaminator is not None:
            kept = set(map(id, decontaminator.filter(dataset.tuples, result.decontamination)[0]))
            dataset = dataset.keep([id(t) in kept for t in dataset.tuples])
            if dataset.mine:  # mined negatives must not be evaluation texts either
                positives = {t.positive for t in dataset.tuples}
                dataset = dataset.keep_corpus([not decontaminator.matches(t) or t in positives
                                               for t in dataset.corpus])
        tuples = dataset.tuples
        if dataset.mine and tuples:
            if scorer is None:  # one model for every dataset of the recipe; only the instruction changes
                scorer = make_scorer(scorer_spec or recipe.mining.scorer, num_layers)
            scorer.instruction = tuples[0].instruction or None
            negatives, report = mine_hard_negatives(
                [t.query for t in tuples], [t.positive for t in tuples], dataset.corpus, scorer,
                recipe.mining.config(), query_groups=dataset.query_groups, corpus_groups=dataset.corpus_groups,
                seed=recipe.seed, show_progress=show_progress)
            result.mining[name] = report
            warn_shortfall(name, report)
            tuples = [TrainingTuple(t.dataset, t.task_type, t.instruction, t.query, t.positive, n)
                      for t, n in zip(tuples, negatives, strict=True) if n is not None]
        yield name, _checked(name, iter(tuples), result, recipe)


def _dataset_sources(recipe: Recipe) -> Iterator[Recipe | BuiltDataset]:
    """A recipe's datasets, lazily: a recipe to stream (rows in tuple form), or a dataset built in memory."""
    if recipe.source.kind == "pycode":
        yield from build_pycode_examples(recipe, "train")
        return
    parts = [mix_file_recipe(recipe, file) for file in f2llm_mix_files(recipe)] \
        if recipe.source.data_files == "all" else [recipe]  # the released F2LLM mix: one dataset per file
    for part in parts:
        yield part if part.build.kind == "tuples" else build_examples(part, read_records(part))


def _checked(name: str, tuples: Iterable[TrainingTuple], result: CurationResult,
             recipe: Recipe) -> Iterator[TrainingTuple]:
    """Validate each tuple (an error names the recipe, the dataset and the tuple) and keep the first of each
    (query, positive) pair: repeated pairs would be false in-batch negatives of each other."""
    seen: set[bytes] = set()
    dropped = count = 0
    for count, item in enumerate(tuples, start=1):
        validate_tuple(item, f"{recipe.path}: dataset {name}, tuple {count - 1}")
        query = item.query.encode()
        digest = hashlib.blake2b(len(query).to_bytes(8, "little") + query + item.positive.encode(),
                                 digest_size=16).digest()
        if digest in seen:
            dropped += 1
            continue
        seen.add(digest)
        yield item
    result.duplicates[name] = dropped
    if dropped:
        print(f"[curate] WARNING dataset {name}: dropped {dropped} duplicate (query, positive) rows of {count}: "
              "repeated pairs become false in-batch negatives of each other", file=sys.stderr, flush=True)


SHORTFALL_WARNING = 0.10  # warn when more than this share of a dataset's queries lacked mined negatives


def warn_shortfall(name: str, report) -> None:
    """Say it loudly when F2LLM's mining rule found too few negatives for many queries, and what was done."""
    if report.queries and report.short_before_fill / report.queries > SHORTFALL_WARNING:
        policy = {"random_fill": f"filled with random candidates ({report.filled_randomly} queries)",
                  "keep": "kept with fewer negatives", "drop": f"dropped ({report.dropped} queries)"}
        print(f"[curate] WARNING dataset {name}: {report.short_before_fill} of {report.queries} queries "
              f"({report.short_before_fill / report.queries:.0%}) had fewer than {report.config.get('num_negatives')} "
              f"negatives passing the mining rule; {policy[report.config.get('on_shortfall', 'random_fill')]}. A "
              "scorer that separates the data better (an embedding model) or a wider range_max gives real hard "
              "negatives", file=sys.stderr, flush=True)


OUTPUT_MARKER = ".f2llm-pipeline.json"  # marks a folder this pipeline wrote (and may replace)


def check_output_dir(out_dir: Path) -> None:
    """Before any work: --out must be a folder we may write and replace: new, empty, or an earlier output of this
    pipeline holding only the files it wrote. Called with the folder's lock held (one writer at a time), so a
    hidden work folder beside it can only be a leftover of a run that died: it is removed, saying so."""
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"--out {out_dir} is a file; give a folder for the pipeline's output")
    if out_dir.name in ("", ".", "..") or Path.cwd().resolve().is_relative_to(out_dir.resolve()):
        raise DataError(f"--out {out_dir} is the working directory or above it; the pipeline replaces its output "
                        "folder as a whole, so give it a folder of its own (e.g. --out data/mine)")
    parent = out_dir.parent if out_dir.parent != Path("") else Path(".")
    existing = next((p for p in [parent, *parent.parents] if p.exists()), None)
    if existing is None or not existing.is_dir() or not os.access(existing, os.W_OK):
        raise DataError(f"--out {out_dir}: cannot create it ({existing} is not a writable folder); choose another")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not (out_dir / OUTPUT_MARKER).exists():
            raise DataError(f"--out {out_dir} holds files that this pipeline did not write; it replaces its output "
                            "as a whole, so give it a new or empty folder (nothing was written)")
        check_replaceable(out_dir, DataError, "this pipeline")
    for leftover in parent.glob(f".{out_dir.name}-curating-*") if parent.exists() else []:
        print(f"[pipeline] removing {leftover}, left by a run that was interrupted", file=sys.stderr)
        shutil.rmtree(leftover, ignore_errors=True)


def run_recipe(recipe_path: str | Path | list, out_dir: str | Path, backbone: str = "smollm2-135m",
               scorer_spec: str | None = None, max_length: int = 256, num_layers: int | None = None,
               show_progress: bool = True, max_samples: int | None = None,
               workers: int | None = None) -> CurationResult:
    """Curate one recipe, a mix recipe (``mix: [recipe, ...]``) or a list of recipes, and write tuples, tokenized
    files (one corpus for all, with ``backbone``'s own tokenizer), reports and the manifest to ``out_dir``, as a
    whole: everything is written to a hidden sibling folder that replaces ``out_dir`` only once complete, so an
    interrupted run leaves the previous output intact and never a mix of two runs. ``max_samples`` caps every
    dataset, overriding the recipes' own caps; ``workers``: tokenizing processes beside this one (None: one per spare
    core, at most 4, started once a dataset passes 32k tuples; 0: tokenize in this process).

    Memory stays bounded whatever the size of a source in tuple form (the released F2LLM data): see
    :func:`curate_stream`. The result's ``datasets`` read the written tuples files on demand."""
    out_dir = Path(out_dir)
    if max_length < 2:
        raise DataError(f"--max-length must be at least 2 (one token and the EOS), got {max_length}")
    with output_lock(out_dir, "f2llm curate", DataError):  # one curation per folder at a time
        check_output_dir(out_dir)  # before anything expensive
        return _curate_into(recipe_path, out_dir, backbone, scorer_spec, max_length, num_layers, show_progress,
                            max_samples, workers)


def _curate_into(recipe_path, out_dir: Path, backbone: str, scorer_spec: str | None, max_length: int,
                 num_layers: int | None, show_progress: bool, max_samples: int | None,
                 workers: int | None = None) -> CurationResult:
    from ..embedder.backbones import load_tokenizer

    tokenizer = load_tokenizer(backbone)  # a wrong spec fails in seconds, not after mining
    specs = recipe_path if isinstance(recipe_path, list | tuple) else [recipe_path]
    recipes = [r for spec in specs for r in expand_mix(spec)]  # all parsed before any is curated
    if any(r.build.kind == "f2llm_v2_tokenized" for r in recipes):
        if len(recipes) > 1:
            raise DataError(f"{', '.join(str(r.path) for r in recipes)}: an F2LLM-v2 training folder is curated on its "
                            "own (it is tokenized already, and its datasets are its files); curate other recipes "
                            "into another folder")
        return _import_v2_into(recipes[0], out_dir, tokenizer, backbone, max_length, max_samples)
    if max_samples is not None:  # a cap per dataset that overrides every recipe's own (notebooks, quick runs)
        if max_samples < 1:
            raise DataError(f"max_samples must be positive, got {max_samples}")
        for recipe in recipes:
            recipe.max_samples = max_samples
    result = CurationResult(datasets={})
    names = [r.name for r in recipes]
    recipe = recipes[0] if len(recipes) == 1 else None
    provenance = {"recipe": recipe.name if recipe else "+".join(names), "recipes": names,
                  "recipe_sha1": {r.name: r.digest for r in recipes}, "backbone": backbone,
                  "mteb_tasks": seen_mteb_tasks(recipes)}  # what a model trained on this has seen
    with atomic_folder(out_dir, prefix="curating-") as work:
        # Every dataset streams from its source through the tuples file and into the tokenized writer, one batch at a
        # time; the writer keeps one digest per document, never the texts.
        workers = default_tokenizing_processes() if workers is None else workers
        writer = TokenizedWriter(work / "tokenized", tokenizer, max_length, workers=workers)
        try:
            rows: dict[str, int] = {}
            for part in recipes:
                for name, tuples in curate_stream(part, scorer_spec, num_layers, show_progress, result):
                    if name in rows:
                        raise DataError(f"{part.path}: dataset name(s) {[name]} also come from an earlier recipe of "
                                        "the mix; give each recipe its own name")
                    first = next(tuples, None)
                    if first is None:  # nothing survived the filters: no empty dataset in the output
                        continue
                    tuple_file = TupleFileWriter(work / "tuples" / f"{name}.parquet")
                    try:
                        bar = tqdm(itertools.chain([first], tuples), desc=f"[curate] {name}", unit=" tuples",
                                   disable=not show_progress, mininterval=5)
                        rows[name] = writer.add_dataset(name, tuple_file.passing(bar), validated=True)
                    finally:
                        tuple_file.close()
            if not any(rows.values()):
                raise DataError(f"{', '.join(str(r.path) for r in recipes)}: no tuples survived curation; check the "
                                "sources and the recipes' filters")
            reports = {"mining": {k: v.summary() for k, v in result.mining.items()},
                       "decontamination": result.decontamination.per_dataset, "duplicates_dropped": result.duplicates}
            writer.extra = {**provenance, **reports}
            result.manifest = writer.close()
            result.tokenizing = {"processes": workers, "started": writer.batches_seen > writer.pool_after,
                                 "worker_peak_rss_mb": round(writer.worker_peak_rss_mb, 1)}
        except BaseException:
            writer.abort()
            raise
        (work / "reports.json").write_text(json.dumps(reports, indent=2))
        (work / OUTPUT_MARKER).write_text(json.dumps(provenance))
    result.datasets = {name: StoredTuples(out_dir / "tuples" / f"{name}.parquet") for name in rows}
    return result


def _import_v2_into(recipe: Recipe, out_dir: Path, tokenizer, backbone: str, max_length: int,
                    max_samples: int | None) -> CurationResult:
    """F2LLM-v2's training layout (already tokenized) into ``out_dir``, as a whole (``released_v2``)."""
    from .released_v2 import import_v2

    if max_samples is not None:
        recipe.max_samples = max_samples
    provenance = {"recipe": recipe.name, "recipes": [recipe.name], "recipe_sha1": {recipe.name: recipe.digest},
                  "backbone": backbone, "source_layout": "f2llm-v2 (already tokenized)",
                  "mteb_tasks": seen_mteb_tasks([recipe])}
    with atomic_folder(out_dir, prefix="curating-") as work:
        manifest = import_v2(recipe, tokenizer, backbone, work / "tokenized", max_length, provenance)
        (work / "reports.json").write_text(json.dumps({"imported": manifest["queries_per_dataset"]}, indent=2))
        (work / OUTPUT_MARKER).write_text(json.dumps(provenance))
    return CurationResult(datasets={}, manifest=manifest)


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    from ..embedder.backbones import BackboneError

    parser = argparse.ArgumentParser(
        prog=prog, description="Curate data recipes into one folder of F2LLM training files.")
    parser.add_argument("recipes", nargs="+", help="recipe names in data_recipes/ or paths to .yaml files (a mix: "
                        "all curated into one corpus); a recipe with 'mix:' lists others")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--scorer", default=None, help="bm25 or a model spec (default: the recipe's)")
    parser.add_argument("--num-layers", type=int, default=0, help="layer-pruned scorer for speed (0: all)")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--workers", type=int, default=None,
                        help="tokenizing processes beside this one (default: one per spare core, at most 4; 0: "
                        "tokenize in this process). They start once a dataset passes 32k tuples")
    parser.add_argument("--backbone", default="smollm2-135m",
                        help="the model the data is for: its tokenizer tokenizes (smollm2-135m, a hub id, a folder)")
    args = parser.parse_args(argv)
    try:
        result = run_recipe(args.recipes, args.out, backbone=args.backbone, scorer_spec=args.scorer,
                            max_length=args.max_length, num_layers=args.num_layers or None, workers=args.workers)
    except (DataError, BackboneError, TokenizedDataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"datasets": {k: len(v) for k, v in result.datasets.items()} or
                      result.manifest.get("queries_per_dataset", {}),
                      "mining": {k: v.summary() for k, v in result.mining.items()},
                      "out": str(args.out)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
