"""How the tokenized-data path grows with size: write time and memory, loader start and memory, batch assembly.

    python -m f2llm_lib.bench.scale --out runs/scale                    # 10k, 100k, 1M queries
    python -m f2llm_lib.bench.scale --out runs/scale --sizes 1000 5000  # quicker

Synthetic tuples in the shape of F2LLM's released data (query, passage, negative_1 ... negative_24), with texts of
realistic length built from real English words (the docstrings of the Python standard library): queries of 6-20
words, passages of 30-90 words (MS MARCO's average is about 56 words; here about 80 tokens), negatives drawn from the
other queries' passages as mining draws them from the corpus, so the corpus de-duplicates to about one document per
query. The tuples are generated on demand (a stream, as when reading the released parquet files row group by row group),
tokenized with SmolLM2's tokenizer, and written by the streaming writer. Each measurement runs in a fresh process:
peak RSS is that process's own. Loader memory: RSS growth once started (plan built, first batch), its private
(anonymous) part, and the growth after 50 more batches (pages of the mapped files, shared page cache).
Writes ``scale.csv``, ``scale.png`` (log-log) and ``scale_fit.json`` (fitted exponents of time against size).
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


def _worker(kind: str, count: int, folder: str, max_length: int) -> dict:
    return measure_write(count, Path(folder), max_length) if kind == "write" else measure_load(Path(folder))


def _run_isolated(kind: str, count: int, folder: Path, max_length: int) -> dict:
    cmd = [sys.executable, "-m", "f2llm_lib.bench.scale", "--worker",
           json.dumps([kind, count, str(folder), max_length])]
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
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        kind, count, folder, max_length = json.loads(args.worker)
        print(json.dumps(_worker(kind, count, folder, max_length)))
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
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


if __name__ == "__main__":
    raise SystemExit(main())
