"""The README's GPU performance section, generated from the committed benchmark CSVs (never typed by hand).

    python -m f2llm_lib.bench.report                  # the section for the newest benchmarks/gpu/<run>/
    python -m f2llm_lib.bench.report --update-readme  # and replace the README block between its markers

A test checks that the README's block equals what this module makes of the committed files.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from ..paths import REPO_ROOT

GPU_DIR = REPO_ROOT / "benchmarks" / "gpu"
README_START, README_END = "<!-- gpu-benchmarks:start -->", "<!-- gpu-benchmarks:end -->"


def latest_gpu_run(root: Path = GPU_DIR) -> Path:
    runs = sorted(p for p in root.iterdir() if (p / "loss_benchmark.csv").exists())
    if not runs:
        raise FileNotFoundError(f"{root}: no <run>/loss_benchmark.csv; run ci/gpu_check.sh on a GPU and copy $OUT")
    return runs[-1]


def _rows(path: Path) -> list[dict]:
    with path.open(newline="") as handle:
        return [row for row in csv.DictReader(handle) if not row.get("error")]


def _find(rows: list[dict], impl: str, regime: str, batch: int, dim: int | None = None) -> dict | None:
    return next((r for r in rows if r["impl"] == impl and r["regime"] == regime and int(r["batch"]) == batch
                 and (dim is None or int(r["dim"]) == dim)), None)


def _ms(row: dict | None) -> str:
    return f"{float(row['time_ms']):,.1f}" if row else "-"


def _ratio(a: dict | None, b: dict | None) -> str:
    return f"{float(a['time_ms']) / float(b['time_ms']):.2f}x" if a and b else "-"


def gpu_comparisons(run: Path | None = None) -> list[dict]:
    """The committed GPU figures as comparisons to read aloud: per regime and size, our time and extra memory
    against each baseline's (``ratio`` < 1: ours is faster), from the newest ``benchmarks/gpu/<run>/``."""
    rows = _rows((run or latest_gpu_run()) / "loss_benchmark.csv")
    out = []
    for regime, baselines in (("f2llm", ("reference", "compiled")), ("large", ("memeff", "inf-cl", "reference")),
                              ("mrl", ("memeff", "reference"))):
        for size in sorted({int(r["batch"]) for r in rows if r["regime"] == regime}):
            for dim in sorted({int(r["dim"]) for r in rows if r["regime"] == regime and int(r["batch"]) == size}):
                ours = _find(rows, "triton", regime, size, dim)
                for baseline in baselines:
                    other = _find(rows, baseline, regime, size, dim)
                    if ours and other:
                        out.append({"regime": regime, "batch": size, "dim": dim, "baseline": baseline,
                                    "ours_ms": float(ours["time_ms"]), "baseline_ms": float(other["time_ms"]),
                                    "ratio": float(ours["time_ms"]) / float(other["time_ms"]),
                                    "ours_mb": float(ours["workspace_mb"]), "baseline_mb": float(other["workspace_mb"]),
                                    "ours_launches": int(ours["launches"]),
                                    "baseline_launches": int(other["launches"])})
    return out


def gpu_section(run: Path | None = None) -> str:
    run = run or latest_gpu_run()
    rows = _rows(run / "loss_benchmark.csv")
    environment = (run / "environment.txt").read_text().strip().splitlines()
    lines = [f"From `benchmarks/gpu/{run.name}/` (`bash ci/gpu_check.sh` on the lent GPU): "
             + "; ".join(line for line in environment[1:] if line), "",
             "F2LLM regime (16 queries, 512 gathered keys, 7 hard negatives, all MRL levels; fwd + bwd, bf16):", "",
             "| d | eager ms | torch.compile ms | ours ms | ours vs eager | ours launches |",
             "|---|---|---|---|---|---|"]
    for dim in sorted({int(r["dim"]) for r in rows if r["regime"] == "f2llm"}):
        eager, compiled, ours = (_find(rows, impl, "f2llm", 16, dim) for impl in ("reference", "compiled", "triton"))
        lines.append(f"| {dim} | {_ms(eager)} | {_ms(compiled)} | {_ms(ours)} | "
                     f"{float(eager['time_ms']) / float(ours['time_ms']):.1f}x faster | {ours['launches']} |")
    titles = {"large": "In-batch only, d = 1024", "mrl": "In-batch only, d = 384, MRL dims 64/128/256/384"}
    for regime, title in titles.items():
        sizes = sorted({int(r["batch"]) for r in rows if r["regime"] == regime})
        if not sizes:
            continue
        lines += ["", f"{title} (B queries x B keys, bf16; time per fwd + bwd, extra memory beyond the gradients):", "",
                  "| B | ours ms | memeff ms | Inf-CL ms | chunked ms | ours / memeff | ours / Inf-CL "
                  "| ours MB | memeff MB |", "|---|---|---|---|---|---|---|---|---|"]
        for size in sizes:
            ours, memeff, inf_cl, chunked = (_find(rows, impl, regime, size)
                                             for impl in ("triton", "memeff", "inf-cl", "chunked"))
            lines.append(f"| {size:,} | {_ms(ours)} | {_ms(memeff)} | {_ms(inf_cl)} | {_ms(chunked)} | "
                         f"{_ratio(ours, memeff)} | {_ratio(ours, inf_cl)} | "
                         f"{float(ours['workspace_mb']):.1f} | {float(memeff['workspace_mb']):.1f} |")
    sweep = [r for r in rows if "@" in r["impl"]]
    if sweep:
        best = min(sweep, key=lambda r: float(r["time_ms"]))
        lines += ["", f"Tile sweep of the large-batch path at {int(best['batch']):,}: "
                  + ", ".join(f"{r['impl'].split('@')[1]} {float(r['time_ms']):.1f} ms" for r in sweep)
                  + f" (the default `triton` row of that run: "
                  f"{_ms(_find(rows, 'triton', 'large', int(best['batch'])))} ms)."]
    train = run / "train_benchmark.csv"
    if train.exists():
        lines += ["", "Trainer, one GPU, bf16, SmolLM2-135M's architecture (30 layers, random weights), 16 queries x "
                  "(1 + 1 + 7) texts, max length 256:", "",
                  "| trainer | tokens/s | step ms | peak memory MB | padding | vs sentence-transformers |",
                  "|---|---|---|---|---|---|"]
        for row in _rows(train):
            lines.append(f"| {row['trainer']} | {float(row['tokens_per_second']):,.0f} | {row['step_ms']} | "
                         f"{float(row['peak_memory_mb']):,.0f} | {float(row['padding_fraction']):.0%} | "
                         f"{row['speed_vs_sentence_transformers']}x |")
    return "\n".join(lines)


CPU_START, CPU_END = "<!-- cpu-benchmarks:start -->", "<!-- cpu-benchmarks:end -->"
TRAIN_CPU = REPO_ROOT / "benchmarks" / "train-cpu-2core" / "train_benchmark.csv"
SCALE_CPU = REPO_ROOT / "benchmarks" / "scale-cpu-2core"


def cpu_section() -> str:
    """The trainer benchmark and the data-scale benchmark of this repository's CPU machine."""
    lines = []
    if TRAIN_CPU.exists():
        rows = _rows(TRAIN_CPU)
        checked = "longest_text" in rows[0]  # benchmarks since the like-for-like check record what each side ran
        lines += [f"Trainer throughput (`f2llm bench train`, {rows[0]['device']}, "
                  f"{rows[0]['precision']}, {rows[0]['batch']} queries x (2 + {rows[0]['negatives']}) texts, max "
                  f"length {rows[0]['max_length']}, {rows[0]['steps']} steps; `benchmarks/train-cpu-2core/`, "
                  "2-core machine" + ("; every trainer ran the same texts per step, cut at the same length: the "
                                      "benchmark checks both" if checked else "") + "):", "",
                  "| model | trainer | real tokens/s | step ms | padding |"
                  + (" longest text | texts/step |" if checked else "") + " vs sentence-transformers |",
                  "|---|---|---|---|---|" + ("---|---|" if checked else "") + "---|"]
        for row in rows:
            seen = f" {row['longest_text']} | {row['texts_per_step']} |" if checked else ""
            lines.append(f"| {row['model']} ({row['layers']} layers) | {row['trainer']} | "
                         f"{float(row['tokens_per_second']):,.0f} | {float(row['step_ms']):,.0f} | "
                         f"{float(row['padding_fraction']):.1%} |{seen} {row['speed_vs_sentence_transformers']}x |")
    largest = TRAIN_CPU.parent / "largest_batch.csv"
    if largest.exists():
        lines += ["", *largest_batch_lines(_rows(largest))]
    fits = json.loads((SCALE_CPU / "scale_fit.json").read_text()) if (SCALE_CPU / "scale_fit.json").exists() \
        else {}
    if (SCALE_CPU / "scale.csv").exists():
        lines += ["", "Tokenized data at scale (`f2llm bench scale`, synthetic F2LLM-shaped "
                  f"tuples of 24 negatives; `benchmarks/scale-cpu-2core/`, fitted write-time exponent "
                  f"{fits.get('write_seconds_exponent', '-')}):", "",
                  "| queries | corpus tokens | write s | writer peak RSS MB | loader start s | loader RSS growth MB "
                  "(private) | ms per batch |", "|---|---|---|---|---|---|---|"]
        for row in _rows(SCALE_CPU / "scale.csv"):
            lines.append(f"| {int(row['tuples']):,} | {int(row['corpus_tokens']):,} | "
                         f"{float(row['write_seconds']):,.1f} | {float(row['write_peak_rss_mb']):,.0f} | "
                         f"{float(row['loader_start_seconds']):.3f} | "
                         f"{float(row['loader_rss_growth_mb']):.1f} ({float(row['loader_anon_growth_mb']):.1f}) | "
                         f"{float(row['batch_ms']):.1f} |")
    if (SCALE_CPU / "curation.csv").exists():
        lines += ["", *curation_lines(_rows(SCALE_CPU / "curation.csv"), fits)]
    return "\n".join(lines)


def largest_batch_lines(rows: list[dict]) -> list[str]:
    """The gradient-caching benchmark: per model and batch tried, the peak memory without and with the cache."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["model"], row["layers"]), []).append(row)
    lines: list[str] = []
    for group in groups.values():
        lines += ([""] if lines else []) + _largest_batch_table(group)
    return lines


def _largest_batch_table(rows: list[dict]) -> list[str]:
    first = rows[0]
    cached = {int(r["batch"]): r for r in rows if r["grad_cache"] == "True"}
    plain = {int(r["batch"]): r for r in rows if r["grad_cache"] == "False"}
    budget = float(first["budget_mb"])

    def peak(table: dict, batch: int) -> str:
        row = table.get(batch)
        return "-" if row is None else f"{float(row['peak_mb']):,.0f}" + ("" if row["fits"] == "True" else " (over)")

    def largest(table: dict) -> str:
        fitting = [b for b, r in table.items() if r["fits"] == "True"]
        capped = fitting and max(fitting) == max(table)
        return f"{max(fitting)}" + (" or more (the search's last)" if capped else "") if fitting else "none"

    layers = 0 if first["layers"] == "all" else first["layers"]  # the command line's spelling of every layer
    command = (f"f2llm bench train --models {first['model']}:{layers} --largest-batch {budget:.0f} "
               f"--negatives {first['negatives']} --max-length {first['max_length']} "
               f"--grad-cache-chunk {first['grad_cache_chunk']} --search-max {max(int(r['batch']) for r in rows)}")
    lines = [f"One device, larger batches (`{command}`; `benchmarks/train-cpu-2core/largest_batch.csv`, "
             f"{first['device']}, {first['precision']}; peak memory of a two-step run in MB, budget {budget:,.0f} MB): "
             "the largest batch that fits is "
             f"{largest(plain)} queries without gradient caching and {largest(cached)} with it.", "",
             "| queries per step | peak MB, plain | peak MB, gradient caching |", "|---|---|---|"]
    for batch in sorted(set(plain) | set(cached)):
        lines.append(f"| {batch} | {peak(plain, batch)} | {peak(cached, batch)} |")
    return lines


def curation_lines(rows: list[dict], fits: dict) -> list[str]:
    """The curation benchmark as a table: each size with the default tokenizing processes, then the sweep."""
    sizes = sorted({int(r["tuples"]) for r in rows})
    by_size = {size: [r for r in rows if int(r["tuples"]) == size] for size in sizes}
    default = min((int(r["workers"]) for r in rows if len(by_size[int(r["tuples"])]) == 1), default=0)
    lines = ["Curation of released-format parquet (`f2llm bench scale --curation`: query, passage, negative_1..24; "
             "decontaminated, validated, de-duplicated, written as tuples and tokenized; fitted time exponent "
             f"{fits.get('curate_seconds_exponent', '-')}; {default} tokenizing process(es) beside the main one by "
             "default here, started once a dataset passes 32k tuples, so none ran at 10k):", "",
             "| tuples | tokenizing processes | curation s | us per tuple | peak RSS MB | worker peak RSS MB | "
             "input MB | speed vs in-process |", "|---|---|---|---|---|---|---|---|"]
    for size in sizes:
        here = next((r for r in by_size[size] if int(r["workers"]) == 0), None)
        for row in sorted(by_size[size], key=lambda r: int(r["workers"])):
            speed = f"{float(here['curate_seconds']) / float(row['curate_seconds']):.2f}x" if here else "-"
            lines.append(f"| {size:,} | {row['workers']} | {float(row['curate_seconds']):,.1f} | "
                         f"{float(row['curate_us_per_tuple']):,.0f} | {float(row['curate_peak_rss_mb']):,.0f} | "
                         f"{float(row['worker_peak_rss_mb']):,.0f} | {float(row['input_mb']):,.0f} | {speed} |")
    return lines


def _replace_block(text: str, start: str, end: str, section: str, readme: Path) -> str:
    if start not in text or end not in text:
        raise ValueError(f"{readme}: add the markers {start} and {end} where the section goes")
    head, rest = text.split(start, 1)
    return head + start + "\n\n" + section + "\n\n" + end + rest.split(end, 1)[1]


def update_readme(readme: Path = REPO_ROOT / "README.md", run: Path | None = None) -> str:
    section = gpu_section(run)
    text = _replace_block(readme.read_text(), README_START, README_END, section, readme)
    text = _replace_block(text, CPU_START, CPU_END, cpu_section(), readme)
    readme.write_text(text)
    return section


def readme_block(readme: Path = REPO_ROOT / "README.md", start: str = README_START, end: str = README_END) -> str:
    text = readme.read_text()
    return text.split(start, 1)[1].split(end, 1)[0].strip()


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--update-readme", action="store_true")
    args = parser.parse_args(argv)
    print(update_readme() if args.update_readme else gpu_section())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
