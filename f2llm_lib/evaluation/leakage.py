"""Which evaluation tasks a model saw in training, and means over the tasks it did not see.

An MTEB score is zero-shot only for tasks whose data (any split) the model never trained on. F2LLM's registered mteb
entry lists the training splits of 57 MTEB datasets among its training data, 12 of the 41 tasks of MTEB(eng, v2)
(Banking77Classification, STSBenchmark, FiQA2018, ArguAna, ...): its average over all tasks mixes in-domain and
zero-shot scores. Where the seen tasks come from:

- an export of this library (``f2llm_training.json``): the MTEB tasks its training recipes declare (``mteb_tasks:``
  in ``data_recipes/*.yaml``: a recipe built from the training split of Banking77 names Banking77Classification);
- any other model: mteb's registered training data (``mteb.get_model_meta(name).training_datasets``);
- otherwise unknown (None), never assumed unseen.

Reference: mteb's model metadata (``ModelMeta.training_datasets``); Muennighoff et al., MTEB (arXiv 2210.07316).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..data.recipes import registered_training_tasks

__all__ = ["benchmark_overlap", "leakage_summary", "mark_seen", "registered_training_tasks", "seen_tasks_of"]

TRAINING_RECORD = "f2llm_training.json"


def seen_tasks_of(spec: str | None) -> tuple[set[str] | None, str]:
    """(the MTEB tasks a model saw in training or None if unknown, where that comes from)."""
    if not spec:
        return None, "unknown"
    record = Path(spec) / TRAINING_RECORD
    if record.is_file():
        tasks = json.loads(record.read_text()).get("seen_mteb_tasks")
        if tasks is not None:
            return set(tasks), f"its training recipes ({record})"
    registered = registered_training_tasks(spec)
    if registered is not None:
        return registered, f"mteb's registered training data of {spec}"
    return None, "unknown"


def mark_seen(rows: list[dict], specs: dict[str, str | None]) -> list[dict]:
    """Each row with ``seen_in_training`` (True, False, or None when unknown) and ``seen_from``; ``specs`` maps a
    model's label in ``rows`` to what identifies it (an export folder, a hub name)."""
    known = {label: seen_tasks_of(spec) for label, spec in specs.items()}
    marked = []
    for row in rows:
        tasks, source = known.get(row["model"], (None, "unknown"))
        marked.append({**row, "seen_in_training": None if tasks is None else row["task"] in tasks,
                       "seen_from": source})
    return marked


def leakage_summary(rows: list[dict]) -> dict[str, dict]:
    """Per model: tasks, their mean score, the tasks not seen in training (or of unknown status), and their mean."""
    summary: dict[str, dict] = {}
    for model in dict.fromkeys(row["model"] for row in rows):
        own = [row for row in rows if row["model"] == model]
        unseen = [row for row in own if row.get("seen_in_training") is False]
        unknown = [row for row in own if row.get("seen_in_training") is None]
        summary[model] = {"tasks": len(own), "mean": round(sum(r["score"] for r in own) / len(own), 2),
                          "seen": [r["task"] for r in own if r.get("seen_in_training")],
                          "unseen_tasks": len(unseen), "unknown_tasks": len(unknown),
                          "unseen_mean": round(sum(r["score"] for r in unseen) / len(unseen), 2) if unseen else None}
    return summary


def benchmark_overlap(model: str, benchmark: str = "MTEB(eng, v2)") -> tuple[list[str], int]:
    """The tasks of ``benchmark`` in mteb's registered training data of ``model``, and the benchmark's size."""
    import mteb

    names = [task.metadata.name for task in mteb.get_benchmark(benchmark).tasks]
    seen = registered_training_tasks(model) or set()
    return sorted(n for n in names if n in seen), len(names)
