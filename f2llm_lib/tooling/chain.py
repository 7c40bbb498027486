"""Notebooks chained by their results: each takes its inputs from the ``results.json`` of the notebook before it.

The headless runner (``make run``) passes them as parameters. In JupyterLab a learner runs the notebooks one by one
with their defaults, where those inputs are empty: :func:`take_from_previous` then reads the same ``results.json``
from the sibling folder of the earlier notebook (``runs/interactive/<notebook>/``, where each notebook's default
``OUTPUT_DIR`` writes) and says which values it took. A value the learner set is kept.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# notebook -> parameter -> (earlier notebook, key of its results.json). The first parameter of each notebook is its
# primary input: the others are taken with it, from the same results, so that they belong together (data and the
# backbone whose tokenizer made it; a checkpoint, its run and the backbone and layer count it was trained from).
CHAIN: dict[str, dict[str, tuple[str, str]]] = {
    "03_multi_gpu_finetuning": {"DATA_DIR": ("01_data_curation", "tokenized_dir"),
                                "BACKBONE": ("01_data_curation", "backbone")},
    "04_mteb_evaluation": {"CHECKPOINT": ("03_multi_gpu_finetuning", "checkpoint"),
                           "RUN_DIR": ("03_multi_gpu_finetuning", "run_dir"),
                           "BACKBONE": ("03_multi_gpu_finetuning", "backbone"),
                           "NUM_LAYERS": ("03_multi_gpu_finetuning", "num_layers")},
}


def previous_results(notebook: str, out_dir: str | Path) -> tuple[Path, dict] | None:
    """(path, content) of the results.json of the notebook ``notebook`` chains from, beside ``out_dir``; None when
    that notebook has not run there yet."""
    sources = {source for source, _ in CHAIN[notebook].values()}
    (source,) = sources
    path = Path(out_dir).parent / source / "results.json"
    if not path.is_file():
        return None
    return path, json.loads(path.read_text())


def take_from_previous(notebook: str, out_dir: str | Path, **values: Any) -> dict[str, Any]:
    """``values`` (the notebook's chained parameters, by name) with the earlier notebook's results filled in when the
    primary one is empty, saying which it took and from where; unchanged when it is set or there is nothing earlier.

    Example, in notebook 04::

        inputs = take_from_previous("04_mteb_evaluation", out_dir, CHECKPOINT=CHECKPOINT, RUN_DIR=RUN_DIR,
                                    BACKBONE=BACKBONE, NUM_LAYERS=NUM_LAYERS)
    """
    chain = CHAIN[notebook]
    primary = next(iter(chain))
    if values.get(primary):
        return values
    found = previous_results(notebook, out_dir)
    if found is None:
        source = next(iter(chain.values()))[0]
        print(f"{primary} is empty and {source} has no results beside {Path(out_dir)} yet: run {source} first, or "
              f"set {primary}", flush=True)
        return values
    path, results = found
    taken = {param: results[key] for param, (_, key) in chain.items() if key in results}
    changed = {k: (values.get(k), v) for k, v in taken.items() if k != primary and values.get(k) != v}
    print(f"{primary} is empty: taking {', '.join(f'{k}={v!r}' for k, v in taken.items())} from {path}", flush=True)
    for key, (mine, theirs) in changed.items():
        print(f"  {key}: this notebook's {mine!r} replaced by {theirs!r}, which {primary} was made with", flush=True)
    return {**values, **taken}
