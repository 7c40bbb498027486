"""Where the library keeps caches and run outputs."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def cache_dir() -> Path:
    """The cache folder for converted models: ``$F2LLM_CACHE_DIR`` or ``~/.cache/f2llm``."""
    root = os.environ.get("F2LLM_CACHE_DIR") or Path.home() / ".cache" / "f2llm"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


PUBLIC_DATA_ENV = "F2LLM_PUBLIC_DATA"


def public_data_dir() -> Path | None:
    """A local copy of the real public datasets the local recipes and some tests use, named by the
    ``F2LLM_PUBLIC_DATA`` setting (``banking77/train.jsonl``, ``stsbenchmark/train.jsonl`` and ``dev.jsonl``: the
    train and dev splits of two MTEB tasks, as released); None when the setting is empty or the folder is absent,
    and the local recipes then read the same datasets from the hub. CI sets it to the folder it provides."""
    raw = os.environ.get(PUBLIC_DATA_ENV, "").strip()
    path = Path(raw).expanduser() if raw else None
    return path if path is not None and path.is_dir() else None


NOTEBOOK_DIR = REPO_ROOT / "notebooks"


def notebook_output_dir(path: str | Path) -> Path:
    """A notebook's output folder, created: a relative ``OUTPUT_DIR`` is relative to the notebooks folder, whatever
    the kernel's working directory (papermill gives it the caller's; JupyterLab the notebook's)."""
    folder = Path(path).expanduser()
    folder = folder if folder.is_absolute() else (NOTEBOOK_DIR / folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def notebook_path(value: str | Path) -> Path | None:
    """A notebook's path parameter (``DATA_DIR``, ``CHECKPOINT``, ``RUN_DIR``, ``STS_FILE``...) resolved one way: a
    relative path is relative to the notebooks folder, as ``OUTPUT_DIR`` is, so a value means the same in JupyterLab
    (whose kernel starts in ``notebooks/``) and under papermill from any working directory. Empty: None."""
    if not str(value).strip():
        return None
    path = Path(value).expanduser()
    return path if path.is_absolute() else (NOTEBOOK_DIR / path).resolve()


def write_results(out_dir: str | Path, results: dict) -> Path:
    """A notebook's results as ``results.json`` in its output folder (through a temporary file and a rename)."""
    import json

    from .atomic import atomic_write_text

    path = atomic_write_text(Path(out_dir) / "results.json", json.dumps(results, indent=2, default=str))
    print(f"wrote {path}")
    return path
