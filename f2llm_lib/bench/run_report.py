"""The main job's report: ``runs/<timestamp>/report.md`` (+ JSON and plots), and the README's copy of its table.

    python -m f2llm_lib.bench.run_report runs/<timestamp>-cpu     # (re)write that run's report
    python -m f2llm_lib.bench.run_report --update-readme           # put the latest cpu run's table in README.md
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import sys
from pathlib import Path

import pandas as pd

from ..atomic import atomic_write_text
from ..evaluation.report import results_table, to_markdown
from ..paths import REPO_ROOT

README_START, README_END = "<!-- latest-report:start -->", "<!-- latest-report:end -->"


def _machine() -> str:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.machine()} {platform.system()}, {os.cpu_count()} CPU cores, {gpu}, torch {torch.__version__}"


def _load(run_dir: Path, notebook: str) -> dict:
    path = run_dir / notebook / "results.json"
    return json.loads(path.read_text()) if path.exists() else {}


def write_run_report(run_dir: str | Path) -> Path:
    """Collect every notebook's results into report.md / report.json beside them; return the report's path."""
    run_dir = Path(run_dir)
    timings = json.loads((run_dir / "timings.json").read_text()) if (run_dir / "timings.json").exists() else {}
    evaluation, training, data = (_load(run_dir, n) for n in
                                  ("04_mteb_evaluation", "03_multi_gpu_finetuning", "01_data_curation"))
    rows = evaluation.get("rows", [])
    table = results_table(rows) if rows else pd.DataFrame()
    verdict = {}
    if "finetuned" in table.index and "base (untrained)" in table.index:
        tasks = sorted({r["task"] for r in rows})
        verdict = {t: bool(table.loc["finetuned", t] > table.loc["base (untrained)", t]) for t in tasks}
    created = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    report = {"created": created, "machine": _machine(), "profile": timings.get("profile"),
              "notebook_seconds": timings.get("seconds", {}), "backbone": training.get("backbone"),
              "num_layers": training.get("num_layers"), "training_steps": training.get("max_steps"),
              "tuples": data.get("tuples_per_dataset"), "scores": rows, "finetuned_beats_base": verdict}
    lines = [f"# F2LLM main job: {run_dir.name}", "",
             f"Created {created} on {report['machine']}; profile `{report['profile']}`.", "",
             f"Backbone `{report['backbone']}` (first {report['num_layers'] or 'all'} layers), finetuned for "
             f"{report['training_steps']} steps on pycode tuples {report['tuples']}.", "",
             "## Offline evaluation (mteb main scores x 100; held-out pycode modules)", "",
             to_markdown(table) if rows else "(no evaluation results)", ""]
    report["summary"] = []
    if verdict:
        wins = sum(verdict.values())
        report["summary"].append(f"Finetuned beats the untrained backbone on {wins} of {len(verdict)} tasks: "
                                 + ", ".join(f"{t} {'yes' if v else 'NO'}" for t, v in verdict.items()) + ".")
        lines += [report["summary"][-1], ""]
    leakage = evaluation.get("leakage") or {}
    report["leakage"] = leakage  # per model: tasks seen in training, the mean over the unseen ones
    if leakage:
        summary = "Mean over tasks not seen in training (beside the mean over all): " + "; ".join(
            f"{model} {info['unseen_mean'] if info['unseen_mean'] is not None else '- (not recorded)'} "
            f"({info['unseen_tasks']} of {info['tasks']} tasks; all {info['mean']})" for model, info in leakage.items())
        report["summary"].append(summary + ".")
        lines += [report["summary"][-1], ""]
    mrl = evaluation.get("mrl") or {}
    report["mrl"] = mrl.get("rows", [])  # (model, dim, task, score): one model scored at each Matryoshka width
    if report["mrl"]:
        widths = pd.DataFrame(report["mrl"]).pivot_table(index="dim", columns="task", values="score",
                                                         aggfunc="first")
        full = widths.index.max()
        trained = "trained at these widths" if mrl.get("trained_dims") else "NOT trained with MRL levels"
        lines += [f"## Matryoshka: `{mrl.get('model')}` at fewer dimensions ({trained})", "",
                  to_markdown(widths.rename_axis("dim")), ""]
        smallest = [d for d in (64, 8) if d in widths.index and d != full]
        summary = (f"MRL: share of the full {full}-dim score kept " + "; ".join(
            f"at {d} dims " + ", ".join(f"{task} {100 * widths.loc[d, task] / widths.loc[full, task]:.0f}%"
                                        for task in widths.columns if widths.loc[full, task])
            for d in smallest) + ".") if smallest else f"MRL: scored at {list(widths.index)} dims."
        report["summary"].append(summary)
        lines += [summary, ""]
    curve = evaluation.get("curve") or []
    report["curve"] = curve
    if curve:
        task = curve[0]["task"]
        references = {r["model"]: r["score"] for r in rows if r["task"] == task and r["model"] != "finetuned"}
        lines += [f"## Where more compute goes: {task} against training minutes", "",
                  "| step | training minutes | score |", "|---|---|---|"]
        lines += [f"| {r['step']} | {r['minutes']} | {r['score']} |" for r in curve]
        best = max(curve, key=lambda r: r["score"])
        bm25 = references.get("BM25")
        verdict = ("" if bm25 is None else
                   f" BM25 scores {bm25}: the finetuned model {'beats' if best['score'] > bm25 else 'does NOT beat'}"
                   " it within this run's budget.")
        summary = f"Best checkpoint: step {best['step']} ({best['minutes']} minutes), {best['score']}.{verdict}"
        report["summary"].append(summary)
        lines += ["", summary, ""]
    lines += ["## Wall time per notebook", "", "| notebook | seconds |", "|---|---|"]
    lines += [f"| {name} | {seconds} |" for name, seconds in report["notebook_seconds"].items()]
    lines += [f"| total | {round(sum(report['notebook_seconds'].values()), 1)} |", ""]
    for notebook, plot in (("04_mteb_evaluation", "scores.png"), ("04_mteb_evaluation", "curve.png"),
                           ("04_mteb_evaluation", "mrl_dimensions.png"),
                           ("03_multi_gpu_finetuning", "loss_curves.png"),
                           ("01_data_curation", "mining_scores.png")):
        if (run_dir / notebook / plot).exists():
            shutil.copy(run_dir / notebook / plot, run_dir / plot)
            lines += [f"![{plot}]({plot})", ""]
    for name, text in (("report.md", "\n".join(lines)), ("report.json", json.dumps(report, indent=2))):
        atomic_write_text(run_dir / name, text)
    return run_dir / "report.md"


def latest_run(profile: str = "cpu") -> Path | None:
    runs = sorted(p for p in (REPO_ROOT / "runs").glob(f"*-{profile}") if (p / "report.json").exists())
    return runs[-1] if runs else None


def update_readme(run_dir: Path | None = None, readme: Path = REPO_ROOT / "README.md") -> str:
    """Replace the README block between the markers with the run's table, date and machine."""
    run_dir = run_dir or latest_run()
    if run_dir is None:
        raise FileNotFoundError("no runs/*-cpu/report.json yet: run `make run` first")
    report = json.loads((run_dir / "report.json").read_text())
    table = to_markdown(results_table(report["scores"]))
    seconds = round(sum(report["notebook_seconds"].values()))
    times = ["| notebook | seconds |", "|---|---|"] + [f"| `{name.removesuffix('.ipynb')}` | {value} |"
                                                       for name, value in report["notebook_seconds"].items()]
    curve = report.get("curve") or []
    curve_lines = []
    if curve:
        curve_lines = ["", f"{curve[0]['task']} of the finetuned checkpoints against training minutes:", "",
                       "| step | minutes | score |", "|---|---|---|"]
        curve_lines += [f"| {r['step']} | {r['minutes']} | {r['score']} |" for r in curve]
    block = "\n".join([README_START, "", f"From `make run` ({run_dir.name}), {report['created']}, on "
                       f"{report['machine']}; all notebooks took {seconds} s (the `cpu` profile: the notebooks' own "
                       "defaults, which are also the `workshop` profile).", "", table, "",
                       *report.get("summary", [])[:1], "", *times, *curve_lines, "",
                       *[part for line in report.get("summary", [])[1:] for part in (line, "")], README_END])
    text = readme.read_text()
    if README_START not in text or README_END not in text:
        raise ValueError(f"{readme}: add the markers {README_START} and {README_END} where the table goes")
    head, rest = text.split(README_START, 1)
    atomic_write_text(readme, head + block + rest.split(README_END, 1)[1])
    _replace_block(WORKSHOP, WORKSHOP_START, WORKSHOP_END, "\n".join([
        f"Measured by `make run` ({run_dir.name}) on {report['machine']}: what each notebook computes with its "
        "defaults, without the time spent reading and discussing it.", "", *times]))
    return block


WORKSHOP = REPO_ROOT / "docs" / "WORKSHOP.md"
WORKSHOP_START, WORKSHOP_END = "<!-- workshop-times:start -->", "<!-- workshop-times:end -->"


def _replace_block(path: Path, start: str, end: str, body: str) -> None:
    text = path.read_text()
    if start not in text or end not in text:
        raise ValueError(f"{path}: add the markers {start} and {end} where the block goes")
    head, rest = text.split(start, 1)
    atomic_write_text(path, head + start + "\n\n" + body + "\n\n" + end + rest.split(end, 1)[1])


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", nargs="?", type=Path)
    parser.add_argument("--update-readme", action="store_true")
    args = parser.parse_args(argv)
    if args.update_readme:
        from ..teaching.recorded import record

        print(update_readme(args.run_dir))
        # the same run's Triton results, shown by notebook 02 where Triton does not import (e.g. macOS)
        print("recorded:", ", ".join(str(p) for p in record(args.run_dir or latest_run())))
    else:
        if args.run_dir is None:
            parser.error("give a run folder, or --update-readme")
        print(write_run_report(args.run_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
