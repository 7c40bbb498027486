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


def shared_data_dir() -> Path | None:
    """The real public test data beside the project (``../shared/data``), or None when absent."""
    path = Path(os.environ.get("F2LLM_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
    return path if path.is_dir() else None


NOTEBOOK_DIR = REPO_ROOT / "notebooks"


def notebook_output_dir(path: str | Path) -> Path:
    """A notebook's output folder, created: a relative ``OUTPUT_DIR`` is relative to the notebooks folder, whatever
    the kernel's working directory (papermill gives it the caller's; JupyterLab the notebook's)."""
    folder = Path(path).expanduser()
    folder = folder if folder.is_absolute() else (NOTEBOOK_DIR / folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def write_results(out_dir: str | Path, results: dict) -> Path:
    """A notebook's results as ``results.json`` in its output folder (through a temporary file and a rename)."""
    import json

    from .atomic import atomic_write_text

    path = atomic_write_text(Path(out_dir) / "results.json", json.dumps(results, indent=2, default=str))
    print(f"wrote {path}")
    return path
