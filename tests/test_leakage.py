"""Leakage-aware scores: which tasks a model saw in training (its export's recipes, or mteb's registry), the mean over
the unseen ones, and the curated data recording the MTEB tasks its recipes share data with."""

from __future__ import annotations

import json

import pytest
import yaml

from f2llm_lib.data.pipeline import run_recipe
from f2llm_lib.data.recipes import load_recipe, seen_mteb_tasks
from f2llm_lib.data.schema import DataError
from f2llm_lib.evaluation.leakage import benchmark_overlap, leakage_summary, mark_seen, seen_tasks_of

ROWS = [{"model": m, "task": t, "score": s} for m, t, s in (
    ("ours", "Banking77Classification", 80.0), ("ours", "SciFact", 60.0), ("ours", "PyCodeRetrieval", 30.0),
    ("theirs", "Banking77Classification", 90.0), ("theirs", "SciFact", 70.0), ("theirs", "PyCodeRetrieval", 20.0),
    ("BM25", "SciFact", 65.0))]


def test_f2llms_registered_training_data_covers_part_of_mteb_eng_v2():
    seen, size = benchmark_overlap("codefuse-ai/F2LLM-0.6B", "MTEB(eng, v2)")
    assert size == 41 and 10 <= len(seen) < 41
    assert {"Banking77Classification", "STSBenchmark"} <= set(seen) and "SciFact" not in seen


def test_rows_are_marked_from_an_export_record_or_the_registry_and_unknown_stays_unknown(tmp_path):
    export = tmp_path / "final"
    export.mkdir()
    (export / "f2llm_training.json").write_text(json.dumps({"seen_mteb_tasks": ["Banking77Classification"]}))
    rows = mark_seen(ROWS, {"ours": str(export), "theirs": "codefuse-ai/F2LLM-0.6B"})
    flags = {(r["model"], r["task"]): r["seen_in_training"] for r in rows}
    assert flags[("ours", "Banking77Classification")] is True and flags[("ours", "SciFact")] is False
    assert flags[("theirs", "Banking77Classification")] is True and flags[("theirs", "PyCodeRetrieval")] is False
    assert flags[("BM25", "SciFact")] is None  # not recorded: never counted as unseen
    summary = leakage_summary(rows)
    assert summary["ours"] == {"tasks": 3, "mean": 56.67, "seen": ["Banking77Classification"], "unseen_tasks": 2,
                               "unknown_tasks": 0, "unseen_mean": 45.0}
    # F2LLM trained on SciFact's training split too (mteb's record): only PyCodeRetrieval is unseen
    assert summary["theirs"]["unseen_mean"] == 20.0 and summary["BM25"]["unseen_mean"] is None
    assert seen_tasks_of(str(tmp_path / "missing")) == (None, "unknown")


def test_curated_data_records_the_mteb_tasks_its_recipes_share_data_with(tmp_path):
    assert seen_mteb_tasks([load_recipe("banking77_local"), load_recipe("stsbenchmark_local")]) == [
        "Banking77Classification", "STSBenchmark"]
    assert seen_mteb_tasks([load_recipe("pycode")]) == []
    assert len(seen_mteb_tasks([load_recipe("f2llm_v1")])) > 40  # the released mix: F2LLM's registered data
    rows = tmp_path / "pairs.jsonl"
    rows.write_text("".join(json.dumps({"s1": f"how do I sort list {i}", "s2": f"call sorted on list {i}"}) + "\n"
                            for i in range(12)))
    recipe = tmp_path / "probe.yaml"
    recipe.write_text(yaml.safe_dump({
        "name": "probe", "task_type": "retrieval", "source": {"kind": "local", "path": str(rows)},
        "fields": {"s1": "s1", "s2": "s2"}, "build": {"kind": "pairs"}, "mteb_tasks": ["STSBenchmark"],
        "mining": {"scorer": "bm25", "num_negatives": 2, "range_min": 0}}))
    result = run_recipe(recipe, tmp_path / "out", backbone="tiny-qwen3", show_progress=False)
    assert result.manifest["mteb_tasks"] == ["STSBenchmark"]
    bad = tmp_path / "bad.yaml"
    bad.write_text(recipe.read_text().replace("STSBenchmark", "registered:nobody/no-such-model"))
    with pytest.raises(DataError, match="mteb has no model of that name"):
        run_recipe(bad, tmp_path / "out2", backbone="tiny-qwen3", show_progress=False)
