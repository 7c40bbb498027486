"""Where more compute goes: a training run's checkpoints scored against the minutes of training that made them."""

from __future__ import annotations

import json
from pathlib import Path

from ..train.checkpoints import complete_checkpoints, load_checkpoint_encoder
from .mteb_model import F2LLMMtebModel
from .run import evaluate


def training_minutes(run_dir: Path) -> dict[int, float]:
    """Cumulative training minutes at each logged step (from the run's metrics.jsonl)."""
    minutes, total = {}, 0.0
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        total += row.get("step_seconds", 0.0) / 60
        minutes[int(row["step"])] = round(total, 2)
    return minutes


def checkpoint_curve(run_dir: str | Path, backbone: str, num_layers: int | None, max_length: int, tasks: list,
                     cache_dir: str | Path, batch_size: int = 32, base_score: float | None = None,
                     final_score: float | None = None) -> list[dict]:
    """Score every complete checkpoint of ``run_dir`` on one task; rows of (step, minutes, task, score). The
    checkpoint's weights load into the backbone they were trained from (safetensors only).

    Scores already measured are not measured again: ``base_score`` (the untrained backbone) becomes the row of step
    0, and ``final_score`` (the run's exported model) the row of its last checkpoint, which holds the same weights
    (the trainer saves it at the end of training, then exports from that state).
    """
    if len(tasks) != 1:
        raise ValueError(f"checkpoint_curve scores one task, got {len(tasks)}: {[t.metadata.name for t in tasks]}")
    run_dir = Path(run_dir)
    task = tasks[0].metadata.name
    minutes = training_minutes(run_dir)
    rows = [] if base_score is None else [{"step": 0, "minutes": 0.0, "task": task, "score": base_score}]
    checkpoints = complete_checkpoints(run_dir)
    last_step = max(minutes, default=None)
    for checkpoint in checkpoints:
        step = int(checkpoint.name.split("_")[1])
        if final_score is not None and step == last_step and (run_dir / "final").exists():
            rows.append({"step": step, "minutes": minutes.get(step), "task": task, "score": final_score})
            continue
        encoder = load_checkpoint_encoder(checkpoint, backbone, num_layers, max_length)
        label = f"{run_dir.name}-step{step}"
        for row in evaluate({label: F2LLMMtebModel(encoder, label, batch_size=batch_size)}, tasks, cache_dir):
            rows.append({"step": step, "minutes": minutes.get(step), "task": row["task"], "score": row["score"]})
    return rows
