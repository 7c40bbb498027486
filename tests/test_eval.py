"""MTEB evaluation: mteb's score equals a direct computation; local task errors; no cross-checkpoint cache hits."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.stats

from f2llm_lib.data.readers import read_local
from f2llm_lib.data.schema import DataError
from f2llm_lib.embedder.model import F2LLMEncoder
from f2llm_lib.evaluation.instructions import instruction_for
from f2llm_lib.evaluation.mteb_model import F2LLMMtebModel
from f2llm_lib.evaluation.report import results_table, write_report
from f2llm_lib.evaluation.run import evaluate, f2llm_model
from f2llm_lib.evaluation.tasks import load_beir_folder, load_labelled_folder, load_sts_file, pycode_tasks


def test_sts_through_mteb_equals_direct_spearman(shared_data, tiny, tmp_path):
    path = shared_data / "stsbenchmark" / "dev.jsonl"
    encoder = F2LLMEncoder(*tiny, max_length=64)
    rows = evaluate({"tiny": F2LLMMtebModel(encoder, "tiny")}, [load_sts_file(path, "LocalSTSB")], tmp_path)
    records = [r for _, r in read_local(path)]
    instruction = instruction_for("LocalSTSB", "STS", True)  # symmetric: the instruction on both sides
    a = encoder.encode([r["s1"] for r in records], instruction=instruction)
    b = encoder.encode([r["s2"] for r in records], instruction=instruction)
    cosine = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    direct = scipy.stats.spearmanr(cosine, [float(r["score"]) for r in records]).statistic
    assert abs(rows[0]["score"] / 100 - direct) <= 1e-6 + 0.5e-4  # mteb's score is rounded to 4 decimals here
    from mteb.cache import ResultCache  # and the unrounded score from the cache (the task's own folder), to 1e-6

    from f2llm_lib.evaluation.run import task_cache_key

    folder = tmp_path / task_cache_key(load_sts_file(path, "LocalSTSB"))
    cached = ResultCache(str(folder)).load_results(models=["f2llm-local/tiny"], tasks=["LocalSTSB"])
    score = cached.model_results[0].task_results[0].get_score()
    assert abs(score - direct) <= 1e-6


def _beir(folder, corpus=True, qrels=True, bad_id=False, empty=False):
    folder.mkdir(parents=True, exist_ok=True)
    docs = [] if empty else [{"_id": "d1", "text": "doc one"}, {"_id": "d2", "text": "doc two"}]
    if corpus:
        (folder / "corpus.jsonl").write_text("\n".join(json.dumps(d) for d in docs))
    (folder / "queries.jsonl").write_text(json.dumps({"_id": "q1", "text": "query one"}))
    if qrels:
        (folder / "qrels").mkdir(exist_ok=True)
        (folder / "qrels" / "test.tsv").write_text(f"query-id\tcorpus-id\tscore\nq1\t{'d9' if bad_id else 'd1'}\t1\n")
    return folder


@pytest.mark.parametrize("kwargs, message", [
    ({"qrels": False}, r"missing qrels/test.tsv"),
    ({"corpus": False}, r"missing corpus.jsonl"),
    ({"bad_id": True}, r"test.tsv:2: corpus id 'd9' is not in corpus.jsonl"),
    ({"empty": True}, r"the corpus is empty"),
])
def test_malformed_beir_folders_are_explained(tmp_path, kwargs, message):
    with pytest.raises(DataError, match=message):
        load_beir_folder(_beir(tmp_path / "task", **kwargs))


def test_good_beir_folder_and_other_local_formats(tmp_path):
    task = load_beir_folder(_beir(tmp_path / "beir"), "LocalBeir")
    assert task.metadata.type == "Retrieval" and task.metadata.main_score == "ndcg_at_10"
    (tmp_path / "sts.jsonl").write_text(json.dumps({"s1": "a", "s2": "b"}) + "\n")
    with pytest.raises(DataError, match=r"sts.jsonl:1: missing column 'score'"):
        load_sts_file(tmp_path / "sts.jsonl")
    (tmp_path / "cls").mkdir()
    (tmp_path / "cls" / "test.jsonl").write_text("".join(json.dumps({"text": f"text {i}", "label": i % 3}) + "\n"
                                                         for i in range(12)))
    with pytest.raises(DataError, match=r"missing train.jsonl"):
        load_labelled_folder(tmp_path / "cls")
    assert load_labelled_folder(tmp_path / "cls", kind="clustering").metadata.type == "Clustering"


def test_two_checkpoints_never_share_cached_scores(tmp_path):
    tasks = pycode_tasks(max_queries=60)[:1]
    first = evaluate({"same-name": f2llm_model("tiny-qwen3", "same-name", max_length=64)}, tasks, tmp_path)
    from f2llm_lib.embedder.backbones import load_backbone

    other, tokenizer = load_backbone("tiny-qwen3", seed=1)  # different weights, same label on purpose
    second_model = F2LLMMtebModel(F2LLMEncoder(other, tokenizer, max_length=64), "same-name")
    second = evaluate({"same-name": second_model}, tasks, tmp_path)
    assert first[0]["score"] != second[0]["score"]
    revisions = {p.name for p in tmp_path.rglob("*") if p.is_dir() and p.parent.name.endswith("same-name")}
    assert len(revisions) == 2, f"each checkpoint needs its own cache entry, found {revisions}"


def test_report_table_and_files(tmp_path):
    rows = [{"model": "base", "task": "T1", "type": "Retrieval", "main_score": "ndcg_at_10", "score": 10.0},
            {"model": "tuned", "task": "T1", "type": "Retrieval", "main_score": "ndcg_at_10", "score": 30.0},
            {"model": "base", "task": "T2", "type": "STS", "main_score": "cosine_spearman", "score": 50.0},
            {"model": "tuned", "task": "T2", "type": "STS", "main_score": "cosine_spearman", "score": 70.0}]
    table = results_table(rows)
    assert table.loc["tuned", "avg (tasks)"] == 50.0 and table.loc["base", "avg Retrieval"] == 10.0
    report = write_report(rows, tmp_path, "Demo")
    assert "| tuned |" in report.read_text() and json.loads((tmp_path / "results.json").read_text()) == rows


def test_checkpoint_curve_scores_each_checkpoint_once(tiny, tmp_path, monkeypatch):
    """Checkpoints load into the backbone and are scored by mteb; the base and the last checkpoint (the exported
    model, scored by notebook 04 already) are reused, not scored again."""
    from safetensors.torch import save_file

    from f2llm_lib.evaluation import curve

    run = tmp_path / "run"
    model, _ = tiny
    for step in (2, 4):
        folder = run / "checkpoints" / f"step_{step}"
        folder.mkdir(parents=True)
        save_file({f"backbone.{k}": v.contiguous() for k, v in model.state_dict().items()},
                  str(folder / "model.safetensors"))
        (folder / ".complete").touch()
    (run / "final").mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "step_seconds": 30.0}) + "\n"
                                               for s in (1, 2, 3, 4)))
    scored = []
    real_evaluate = curve.evaluate
    monkeypatch.setattr(curve, "evaluate", lambda models, *a, **k: scored.extend(models) or real_evaluate(
        models, *a, **k))
    task = pycode_tasks(max_queries=20)[2]
    rows = curve.checkpoint_curve(run, "tiny-qwen3", None, 32, [task], tmp_path / "cache", base_score=1.5,
                                  final_score=99.0)
    assert [(r["step"], r["minutes"]) for r in rows] == [(0, 0.0), (2, 1.0), (4, 2.0)]
    assert scored == ["run-step2"]  # only the middle checkpoint went through mteb
    assert rows[0]["score"] == 1.5 and rows[2]["score"] == 99.0 and 0 <= rows[1]["score"] <= 100
    assert {r["task"] for r in rows} == {task.metadata.name}
    with pytest.raises(ValueError, match="one task"):
        curve.checkpoint_curve(run, "tiny-qwen3", None, 32, pycode_tasks(max_queries=20), tmp_path / "cache")


def test_a_task_scores_a_model_the_same_however_often_it_was_evaluated(tmp_path):
    """Clustering subsamples from the task's own generator; evaluate() resets it, so the second model evaluated on a
    task object is scored on the same sets as the first (before: 68.7, 94.5, 82.8 for one model)."""
    tasks = [t for t in pycode_tasks(max_queries=40) if t.metadata.type == "Clustering"]
    model = f2llm_model("tiny-qwen3", "again", max_length=48)
    scores = [evaluate({"again": model}, tasks, tmp_path / str(i), show_progress=False)[0]["score"] for i in range(3)]
    assert scores[0] == scores[1] == scores[2], scores
