"""How the tokenized-data path grows with size: write time and memory, loader start and memory, batch assembly.

    python -m f2llm_lib.bench.scale --out runs/scale                    # 10k, 100k, 1M queries
    python -m f2llm_lib.bench.scale --out runs/scale --sizes 1000 5000  # quicker
    python -m f2llm_lib.bench.scale --curation --out runs/scale         # curation of released-format files

Synthetic tuples in the shape of F2LLM's released data (query, passage, negative_1 ... negative_24), with texts of
realistic length built from real English words (the docstrings of the Python standard library): queries of 6-20
words, passages of 30-90 words (MS MARCO's average is about 56 words; here about 80 tokens), negatives drawn from the
other queries' passages as mining draws them from the corpus, so the corpus de-duplicates to about one document per
query. The tuples are generated on demand (a stream, as when reading the released parquet files row group by row group),
tokenized with SmolLM2's tokenizer, and written by the streaming writer. Each measurement runs in a fresh process:
peak RSS is that process's own. Loader memory: RSS growth once started (plan built, first batch), its private
(anonymous) part, and the growth after 50 more batches (pages of the mapped files, shared page cache).
Writes ``scale.csv``, ``scale.png`` (log-log) and ``scale_fit.json`` (fitted exponents of time against size).

``--curation`` measures the step before: the same tuples written as one parquet file in the released F2LLM schema
(``query`` with its instruction, ``passage``, ``negative_1`` ... ``negative_24``; written untimed, in a process of its
own), then curated by the shipped ``f2llm_v1`` recipe's path (``data_files: all`` over a local folder,
decontaminated against pycode's evaluation texts) into tuples and tokenized files, timed with its peak RSS in a fresh
process; then the same at one size with 0, 1 and 2 tokenizing processes. Writes ``curation.csv``, ``curation.png``
and the curation exponent into ``scale_fit.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..atomic import atomic_write_csv

NEGATIVES = 24


class SyntheticF2LLM:
    """Deterministic synthetic tuples: ``tuples(n)`` streams n of them. Text i is a slice of a fixed tape of real
    words (start and length drawn once per text), so a passage is rebuilt on demand instead of being kept."""

    def __init__(self, seed: int = 0, tape_words: int = 4_000_000) -> None:
        from ..data.pycode import pycode_items

        pattern = re.compile(r"[A-Za-z][a-z]{1,14}")
        words = sorted({w for item in pycode_items("train") for w in pattern.findall(item.docstring)})
        self.vocab = np.array(words, dtype=object)
        self.tape = np.random.default_rng(seed).integers(0, len(self.vocab), size=tape_words, dtype=np.int32)
        self.seed = seed

    def _slices(self, count: int, salt: int, low: int, high: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.seed, salt, count])
        lengths = rng.integers(low, high + 1, size=count)
        return rng.integers(0, len(self.tape) - high, size=count), lengths

    def _text(self, starts: np.ndarray, lengths: np.ndarray, index: int) -> str:
        start = int(starts[index])
        return " ".join(self.vocab[self.tape[start:start + int(lengths[index])]])

    def tuples(self, count: int) -> Iterator:
        from ..data.schema import TrainingTuple

        queries = self._slices(count, 0, 6, 20)
        passages = self._slices(count, 1, 30, 90)
        rng = np.random.default_rng([self.seed, 2, count])
        for i in range(count):
            others = rng.integers(0, count - 1, size=NEGATIVES)
            others = others + (others >= i)  # never the query's own passage
            yield TrainingTuple("synthetic", "retrieval", "Given a question, retrieve passages that answer it",
                                self._text(*queries, i), self._text(*passages, i),
                                [self._text(*passages, int(j)) for j in others])


def _rss_mb(kind: str = "VmRSS") -> float:
    """Resident memory now: all of it (VmRSS), or only the private, anonymous part (RssAnon, which excludes pages
    of memory-mapped files: those are the page cache, shared by every process that maps the same data)."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(kind + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(kind)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure_write(count: int, out_dir: Path, max_length: int) -> dict:
    from ..data.tokenized import write_training_files
    from ..embedder.backbones import smollm2_tokenizer

    tokenizer = smollm2_tokenizer()
    source = SyntheticF2LLM()
    base = _peak_rss_mb()
    start = time.perf_counter()
    manifest = write_training_files({"synthetic": source.tuples(count)}, tokenizer, out_dir, max_length)
    seconds = time.perf_counter() - start
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # the tokenizing workers, if any
    return {"tuples": count, "write_seconds": round(seconds, 2), "write_us_per_tuple": round(1e6 * seconds / count, 1),
            "write_peak_rss_mb": round(_peak_rss_mb(), 1), "worker_peak_rss_mb": round(children, 1),
            "write_rss_before_mb": round(base, 1), "corpus_docs": manifest["corpus_size"],
            "corpus_tokens": manifest["corpus_tokens"],
            "query_tokens": manifest["datasets"]["synthetic"]["query_tokens"],
            "data_mb": round(sum(p.stat().st_size for p in out_dir.rglob("*") if p.is_file()) / 2**20, 1)}


def measure_load(data_dir: Path) -> dict:
    import torch  # noqa: F401  (imported before the baseline, as in training: not the loader's memory)

    from ..train.loader import MultitaskLoader

    before, before_anon = _rss_mb(), _rss_mb("RssAnon")
    start = time.perf_counter()
    loader = MultitaskLoader(data_dir, 16, 7, 0, seed=0, val_fraction=0.01)
    loader.next_batch()  # the first batch builds the epoch's plan: part of starting
    start_seconds = time.perf_counter() - start
    started, started_anon = _rss_mb() - before, _rss_mb("RssAnon") - before_anon
    times = []
    for _ in range(50):
        tic = time.perf_counter()
        batch = loader.next_batch()
        times.append(time.perf_counter() - tic)
    return {"loader_start_seconds": round(start_seconds, 3), "loader_rss_growth_mb": round(started, 1),
            "loader_anon_growth_mb": round(started_anon, 1),
            "rss_growth_after_50_batches_mb": round(_rss_mb() - before, 1),
            "batch_ms": round(1000 * statistics.median(times), 3), "batch_texts": int(batch.input_ids.shape[0])}


RELEASED_PREFIX = "Instruct: Given a question, retrieve passages that answer it\nQuery: "  # released queries carry it


def write_released_source(count: int, folder: Path, rows_per_group: int = 8192) -> dict:
    """``count`` synthetic tuples as one file of the released F2LLM mix (named like a retrieval source), written a
    row group at a time."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    columns = ["query", "passage"] + [f"negative_{k}" for k in range(1, NEGATIVES + 1)]
    schema = pa.schema([(name, pa.string()) for name in columns])
    path = folder / "msmarco.parquet"
    stream = SyntheticF2LLM().tuples(count)
    with pq.ParquetWriter(path, schema, compression="zstd") as writer:
        while batch := [t for _, t in zip(range(rows_per_group), stream, strict=False)]:
            table = {"query": [RELEASED_PREFIX + t.query for t in batch], "passage": [t.positive for t in batch]}
            table.update({f"negative_{k + 1}": [t.negatives[k] for t in batch] for k in range(NEGATIVES)})
            writer.write_table(pa.table(table, schema=schema))
    return {"input_mb": round(path.stat().st_size / 2**20, 1)}


def measure_curate(count: int, folder: Path, max_length: int, workers: int | None) -> dict:
    """Curate the released-format folder ``folder / 'source'`` as the f2llm_v1 recipe does, into ``folder / 'out'``."""
    from ..data.pipeline import run_recipe

    recipe = folder / "released_synthetic.yaml"
    recipe.write_text(json.dumps({  # JSON is YAML: the f2llm_v1 recipe, pointed at the local folder
        "name": "released_synthetic", "task_type": "retrieval", "instruction": "",
        "source": {"kind": "local", "path": str(folder / "source"), "data_files": "all"},
        "fields": {"query": "query", "positive": "passage"}, "build": {"kind": "tuples"},
        "decontaminate_against": ["pycode_eval"]}))
    base = _peak_rss_mb()
    start = time.perf_counter()
    result = run_recipe(recipe, folder / "out", backbone="smollm2-135m", max_length=max_length,
                        show_progress=False, workers=workers)
    seconds = time.perf_counter() - start
    manifest = result.manifest
    return {"tuples": count, "workers": result.tokenizing["processes"], "curate_seconds": round(seconds, 2),
            "curate_us_per_tuple": round(1e6 * seconds / count, 1), "curate_peak_rss_mb": round(_peak_rss_mb(), 1),
            "worker_peak_rss_mb": result.tokenizing["worker_peak_rss_mb"], "rss_before_mb": round(base, 1),
            "kept_tuples": sum(manifest["queries_per_dataset"].values()), "corpus_docs": manifest["corpus_size"],
            "corpus_tokens": manifest["corpus_tokens"],
            "tuples_file_mb": round(sum(p.stat().st_size for p in (folder / "out" / "tuples").iterdir()) / 2**20, 1),
            "tokenized_mb": round(sum(p.stat().st_size for p in (folder / "out" / "tokenized").rglob("*")
                                      if p.is_file()) / 2**20, 1)}


def _worker(kind: str, count: int, folder: str, max_length: int, workers: int | None = 0) -> dict:
    if kind == "source":
        return write_released_source(count, Path(folder) / "source")
    if kind == "curate":
        return measure_curate(count, Path(folder), max_length, workers)
    return measure_write(count, Path(folder), max_length) if kind == "write" else measure_load(Path(folder))


def _run_isolated(kind: str, count: int, folder: Path, max_length: int, workers: int | None = 0) -> dict:
    cmd = [sys.executable, "-m", "f2llm_lib.bench.scale", "--worker",
           json.dumps([kind, count, str(folder), max_length, workers])]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{kind} at {count:,} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def fitted_exponent(sizes: list[float], values: list[float]) -> float:
    """Slope of log(value) against log(size): 1.0 is linear growth."""
    return float(np.polyfit(np.log(sizes), np.log(values), 1)[0])


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [r["tuples"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for key, label in (("write_seconds", "write (s)"), ("loader_start_seconds", "loader start (s)"),
                       ("batch_ms", "one batch 16 x (2 + 7) (ms)")):
        axes[0].plot(sizes, [r[key] for r in rows], marker="o", label=label)
    memory = (("write_peak_rss_mb", "writer peak RSS (MB)"), ("loader_rss_growth_mb", "loader RSS growth (MB)"),
              ("data_mb", "data on disk (MB)"))
    for key, label in memory:
        axes[1].plot(sizes, [max(r[key], 0.1) for r in rows], marker="o", label=label)
    for ax in axes:
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(f"queries ({NEGATIVES} negatives each)")
        ax.legend(fontsize=8)
    fig.suptitle(f"tokenized data at scale ({platform.machine()}, {os.cpu_count()} CPUs)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/scale"))
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--work", type=Path, default=None, help="where the data folders go (default: a temp dir)")
    parser.add_argument("--curation", action="store_true", help="measure curation of released-format files instead")
    parser.add_argument("--workers-at", type=int, default=100_000,
                        help="--curation: the size at which 0, 1 and 2 tokenizing processes are compared")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(_worker(*json.loads(args.worker))))
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    if args.curation:
        return run_curation(args)
    work = Path(tempfile.mkdtemp(prefix="f2llm-scale-", dir=args.work))
    rows = []
    try:
        for count in args.sizes:
            folder = work / f"data-{count}"
            row = {"machine": f"{platform.machine()} {platform.system()}, {os.cpu_count()} CPUs",
                   **_run_isolated("write", count, folder, args.max_length)}
            row.update(_run_isolated("load", count, folder, args.max_length))
            rows.append(row)
            print(json.dumps(row), flush=True)
            shutil.rmtree(folder, ignore_errors=True)
            atomic_write_csv(args.out / "scale.csv", rows, list(rows[0]))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    _plot(rows, args.out / "scale.png")
    if len(rows) > 1:
        sizes = [r["tuples"] for r in rows]
        fits = {"write_seconds_exponent": fitted_exponent(sizes, [r["write_seconds"] for r in rows]),
                "corpus_tokens_exponent": fitted_exponent(sizes, [r["corpus_tokens"] for r in rows]),
                "loader_start_exponent": fitted_exponent(sizes, [r["loader_start_seconds"] for r in rows])}
        fits = {key: round(value, 3) for key, value in fits.items()}
        (args.out / "scale_fit.json").write_text(json.dumps(fits, indent=2))
        print(json.dumps(fits))
    print(f"wrote {args.out / 'scale.csv'} and scale.png")
    return 0


def run_curation(args) -> int:
    """Curation at each size with the pipeline's default tokenizing processes, then with 0 and 2 at
    ``--workers-at``; the exponent is fitted on the default rows."""
    work = Path(tempfile.mkdtemp(prefix="f2llm-curation-", dir=args.work))
    machine = f"{platform.machine()} {platform.system()}, {os.cpu_count()} CPUs"
    runs = [(count, None) for count in args.sizes]  # the pipeline's default number of tokenizing processes
    if args.workers_at in args.sizes:
        runs += [(args.workers_at, 0), (args.workers_at, 2)]
    rows: list[dict] = []
    try:
        for count in dict.fromkeys(c for c, _ in runs):
            folder = work / f"curation-{count}"
            source = _run_isolated("source", count, folder, args.max_length)
            for workers in [w for c, w in runs if c == count]:
                row = {"machine": machine, **_run_isolated("curate", count, folder, args.max_length, workers),
                       **source}
                rows.append(row)
                print(json.dumps(row), flush=True)
                atomic_write_csv(args.out / "curation.csv", rows, list(rows[0]))
                shutil.rmtree(folder / "out", ignore_errors=True)
            shutil.rmtree(folder, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    _plot_curation(rows, args.out / "curation.png")
    from ..data.tokenized import default_tokenizing_processes

    default = default_tokenizing_processes()
    in_process = [r for r in rows if r["workers"] == default]
    if len(in_process) > 1:
        fits_path = args.out / "scale_fit.json"
        fits = json.loads(fits_path.read_text()) if fits_path.exists() else {}
        fits["curate_seconds_exponent"] = round(fitted_exponent(
            [r["tuples"] for r in in_process], [r["curate_seconds"] for r in in_process]), 3)
        fits["curate_peak_rss_exponent"] = round(fitted_exponent(
            [r["tuples"] for r in in_process], [r["curate_peak_rss_mb"] for r in in_process]), 3)
        fits_path.write_text(json.dumps(fits, indent=2))
        print(json.dumps(fits))
    print(f"wrote {args.out / 'curation.csv'} and curation.png")
    return 0


def _plot_curation(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..data.tokenized import default_tokenizing_processes

    default = default_tokenizing_processes()
    in_process = [r for r in rows if r["workers"] == default]
    sizes = [r["tuples"] for r in in_process]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    axes[0].plot(sizes, [r["curate_seconds"] for r in in_process], marker="o", label="curation (s)")
    axes[0].plot(sizes, [in_process[0]["curate_seconds"] * size / sizes[0] for size in sizes], ls=":", color="grey",
                 label="linear from the smallest")
    axes[1].plot(sizes, [r["curate_peak_rss_mb"] for r in in_process], marker="o", label="peak RSS (MB)")
    axes[1].plot(sizes, [r["input_mb"] for r in in_process], marker="s", label="input parquet (MB)")
    axes[1].axhline(2048, ls="--", color="red", label="2 GB bound")
    for ax in axes[:2]:
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(f"released-format tuples ({NEGATIVES} negatives each)")
        ax.legend(fontsize=8)
    swept = [r["tuples"] for r in rows if r["workers"] != default]
    sweep = sorted((r for r in rows if swept and r["tuples"] == swept[0]), key=lambda r: r["workers"])
    if sweep:
        axes[2].bar([str(r["workers"]) for r in sweep], [r["curate_seconds"] for r in sweep])
        axes[2].set_xlabel(f"tokenizing processes besides the main one ({sweep[0]['tuples']:,} tuples)")
        axes[2].set_ylabel("curation (s)")
    fig.suptitle(f"curation of released-format data ({platform.machine()}, {os.cpu_count()} CPUs)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    raise SystemExit(main())
