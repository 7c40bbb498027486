"""The README's GPU performance section, generated from the committed benchmark CSVs (never typed by hand).

    python -m f2llm_lib.benchmark_report                  # print the section for the newest benchmarks/gpu/<run>/
    python -m f2llm_lib.benchmark_report --update-readme  # and replace the README block between its markers

A test checks that the README's block equals what this module makes of the committed files.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from .paths import REPO_ROOT

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


def update_readme(readme: Path = REPO_ROOT / "README.md", run: Path | None = None) -> str:
    section = gpu_section(run)
    text = readme.read_text()
    if README_START not in text or README_END not in text:
        raise ValueError(f"{readme}: add the markers {README_START} and {README_END} where the section goes")
    head, rest = text.split(README_START, 1)
    readme.write_text(head + README_START + "\n\n" + section + "\n\n" + README_END + rest.split(README_END, 1)[1])
    return section


def readme_block(readme: Path = REPO_ROOT / "README.md") -> str:
    text = readme.read_text()
    return text.split(README_START, 1)[1].split(README_END, 1)[0].strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--update-readme", action="store_true")
    args = parser.parse_args(argv)
    print(update_readme() if args.update_readme else gpu_section())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
