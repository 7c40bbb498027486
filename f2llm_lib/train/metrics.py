"""Read the trainer's ``metrics.jsonl`` (one JSON object per logged step)."""

from __future__ import annotations

import json
from pathlib import Path


def read_metrics(path: str | Path) -> list[dict]:
    """The logged rows. A last line cut short (the run was killed while writing it) is left out; a broken line
    before it is an error naming the line."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no metrics; did the training run start?")
    return parse_metrics(path.read_text(), path)


def parse_metrics(text: str, where: object) -> list[dict]:
    lines = [line for line in text.split("\n") if line.strip()]
    rows = []
    for number, line in enumerate(lines, start=1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            if number == len(lines) and not text.endswith("\n"):
                break  # cut short while being written: the step it describes was not saved either
            raise ValueError(f"{where}:{number}: not a JSON line ({exc.msg}); the metrics file was altered") from exc
    return rows


def run_summary(metrics: list[dict], window: int = 10) -> dict:
    """What a learner wants from a run's metrics: the smoothed final training loss (mean of the last ``window``
    steps, as the trainer's summary), the last validation losses, mean tokens/s and padding."""
    last = metrics[-window:]
    validations = [m["val"] for m in metrics if m.get("val")]
    return {"final_train_loss": round(sum(m["loss"] for m in last) / len(last), 4),
            "final_val": validations[-1] if validations else {},
            "tokens_per_second": round(sum(m["tokens_per_second"] for m in metrics) / len(metrics), 1),
            "padding_fraction": round(sum(m["padding_fraction"] for m in metrics) / len(metrics), 4)}
