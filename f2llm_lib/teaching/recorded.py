"""What a notebook shows where this machine cannot compute it: Triton's results, recorded by the latest ``make run``.

Triton ships for Linux only, so on a macOS laptop (or wherever ``import triton`` fails) notebook 02 cannot run its
kernels, even in the interpreter. Its Triton cells then say why and show the results the latest ``make run``
recorded (``docs/recorded/02_fused_contrastive_loss.json``, refreshed by ``make readme-report``) instead of failing.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

from ..atomic import atomic_write_text
from ..paths import REPO_ROOT

RECORDED_DIR = REPO_ROOT / "docs" / "recorded"
EXECUTED_DIR = REPO_ROOT / "docs" / "executed"
# notebook -> the keys of its results.json that need Triton, kept for machines without it
TRITON_RESULTS = {"02_fused_contrastive_loss": ("steps", "accuracy_table", "compiled_kernels_sm90")}


def triton_status() -> tuple[bool, str]:
    """(whether Triton imports here, why not). Importing is the test: a package can be present and still fail."""
    try:
        import triton  # noqa: F401
    except ImportError as exc:
        return False, (f"Triton does not import on this machine ({platform.system()} {platform.machine()}: "
                       f"{str(exc).splitlines()[0][:120]}); Triton ships for Linux only")
    return True, ""


def recorded(notebook: str, key: str, why: str) -> Any:
    """The recorded value of ``key`` from ``notebook``'s results, announced with the reason it is not computed."""
    path = RECORDED_DIR / f"{notebook}.json"
    data = json.loads(path.read_text())
    print(f"[skipped] {why}.\n[recorded] {key} from `make run` {data['run']} ({path.relative_to(REPO_ROOT)}):",
          flush=True)
    return data[key]


def record(run_dir: str | Path) -> list[Path]:
    """Keep what a run shows for later (what ``make readme-report`` calls, with the README's block of the same run):
    the Triton results of its notebooks in ``docs/recorded/``, and its executed notebooks, outputs included, in
    ``docs/executed/`` for teachers to read before a workshop, with this machine's paths made relative."""
    run_dir, written = Path(run_dir), []
    for notebook, keys in TRITON_RESULTS.items():
        results = json.loads((run_dir / notebook / "results.json").read_text())
        kept = {"run": run_dir.name, **{key: results[key] for key in keys}}
        written.append(atomic_write_text(RECORDED_DIR / f"{notebook}.json", json.dumps(kept, indent=1) + "\n"))
    executed = sorted(run_dir.glob("*.ipynb"))
    for path in EXECUTED_DIR.glob("*.ipynb") if EXECUTED_DIR.exists() else []:
        if path.name not in {p.name for p in executed}:
            path.unlink()  # a notebook the run did not execute: not of this run
    for path in executed:
        written.append(atomic_write_text(EXECUTED_DIR / path.name, relative_paths(path.read_text(), run_dir)))
    written.append(atomic_write_text(EXECUTED_DIR / "RUN", run_dir.name + "\n"))
    return written


def relative_paths(text: str, run_dir: Path) -> str:
    """``text`` with the absolute paths of the machine that made ``run_dir`` shown relative to its repository (the
    folder holding ``runs/``), and the home folder as ``~``. The repository's path is read from the text itself:
    the run may come from another clone than this one."""
    import os
    import re

    marker = f"/runs/{run_dir.name}"
    roots = set(re.findall(r"(/[^\s\"'\\:]*?)" + re.escape(marker), text)) | {str(run_dir.resolve().parent.parent)}
    for root in sorted(roots, key=len, reverse=True):
        text = text.replace(root + "/", "").replace(root, ".")
    home = os.path.expanduser("~")
    return text.replace(home + "/", "~/") if home not in ("/", "") else text
