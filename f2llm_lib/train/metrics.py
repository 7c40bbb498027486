"""Read the trainer's ``metrics.jsonl`` (one JSON object per logged step)."""

from __future__ import annotations

import json
from pathlib import Path


def read_metrics(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no metrics; did the training run start?")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
