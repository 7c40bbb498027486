"""Result tables (markdown and JSON), category averages, published reference rows, plots, before/after."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from ..atomic import atomic_write_text

# Published MTEB(eng, v2) category averages (F2LLM report, Qwen3-Embedding card), as summarised in
# docs/F2LLM_REFERENCE.md; shown only when the evaluated tasks include that category's MTEB tasks.
PUBLISHED = {
    "F2LLM-4B": {"Classification": 91.68, "Clustering": 68.54, "PairClassification": 83.75, "Reranking": 50.05,
                 "Retrieval": 59.63, "STS": 84.20, "Summarization": 33.19, "Average": 73.67},
    "F2LLM-1.7B": {"Classification": 90.86, "Clustering": 64.13, "PairClassification": 83.27, "Reranking": 49.84,
                   "Retrieval": 57.83, "STS": 83.90, "Summarization": 29.88, "Average": 72.01},
    "F2LLM-0.6B": {"Classification": 90.56, "Clustering": 60.36, "PairClassification": 81.49, "Reranking": 47.88,
                   "Retrieval": 55.70, "STS": 82.48, "Summarization": 24.54, "Average": 70.03},
    "Qwen3-Embedding-4B": {"Classification": 89.84, "Clustering": 57.51, "PairClassification": 87.01,
                           "Reranking": 50.76, "Retrieval": 68.46, "STS": 88.72, "Summarization": 34.39,
                           "Average": 74.60},
    "Qwen3-Embedding-0.6B": {"Classification": 85.76, "Clustering": 54.05, "PairClassification": 84.37,
                             "Reranking": 48.18, "Retrieval": 61.83, "STS": 86.57, "Summarization": 33.43,
                             "Average": 70.70},
}
MTEB_ENG_V2_TASKS = None  # filled lazily: names of the 41 tasks


def _mteb_eng_v2() -> set[str]:
    global MTEB_ENG_V2_TASKS
    if MTEB_ENG_V2_TASKS is None:
        import mteb

        MTEB_ENG_V2_TASKS = {t.metadata.name for t in mteb.get_benchmark("MTEB(eng, v2)").tasks}
    return MTEB_ENG_V2_TASKS


def to_markdown(table: pd.DataFrame) -> str:
    """A pipe table (no extra dependency); NaN shows as an empty cell."""
    header = [str(table.index.name or "")] + [str(c) for c in table.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for index, row in table.iterrows():
        cells = ["" if pd.isna(v) else (f"{v:.2f}" if isinstance(v, float) else str(v)) for v in row]
        lines.append("| " + " | ".join([str(index), *cells]) + " |")
    return "\n".join(lines)


def results_table(rows: list[dict]) -> pd.DataFrame:
    """Models x tasks (scores x 100), then one column per task type with its average, then the mean."""
    frame = pd.DataFrame(rows)
    table = frame.pivot_table(index="model", columns="task", values="score", aggfunc="first")
    for task_type, names in frame.groupby("type")["task"].unique().items():
        table[f"avg {task_type}"] = table[list(names)].mean(axis=1, skipna=False)
    table["avg (tasks)"] = table[sorted(frame["task"].unique())].mean(axis=1, skipna=False)
    return table.round(2)


def reference_rows(rows: list[dict]) -> pd.DataFrame | None:
    """Published category averages, when the evaluated tasks are MTEB(eng, v2) tasks."""
    evaluated = {r["task"] for r in rows}
    if not evaluated & _mteb_eng_v2():
        return None
    types = sorted({r["type"] for r in rows if r["task"] in _mteb_eng_v2()})
    return pd.DataFrame({name: {f"avg {t}": v for t, v in values.items() if t in types}
                         for name, values in PUBLISHED.items()}).T


def before_after(rows: list[dict], before: str, after: str) -> pd.DataFrame:
    table = pd.DataFrame(rows).pivot_table(index="task", columns="model", values="score", aggfunc="first")
    out = table[[before, after]].copy()
    out["change"] = out[after] - out[before]
    return out.round(2)


def plot_scores(rows: list[dict], path: Path | None = None):

    table = pd.DataFrame(rows).pivot_table(index="task", columns="model", values="score", aggfunc="first")
    ax = table.plot.bar(figsize=(max(6, 1.6 * len(table)), 3.8), rot=0)
    ax.set_ylabel("main score x 100")
    ax.legend(fontsize=7)
    fig = ax.get_figure()
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


def write_report(rows: list[dict], out_dir: Path, title: str, notes: str = "") -> Path:
    """``report.md`` and ``results.json`` (written under temporary names, then renamed)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    table = results_table(rows)
    parts = [f"# {title}", "", notes, "", to_markdown(table), ""]
    reference = reference_rows(rows)
    if reference is not None:
        parts += ["Published MTEB(eng, v2) category averages (for scale):", "", to_markdown(reference), ""]
    for name, text in (("report.md", "\n".join(parts)), ("results.json", json.dumps(rows, indent=2))):
        atomic_write_text(out_dir / name, text)
    return out_dir / "report.md"
