"""The main job's report collects the notebooks' results: scores, leakage, the Matryoshka widths, the curve."""

import json

from f2llm_lib.bench.run_report import write_run_report


def test_report_carries_leakage_and_matryoshka_rows(tmp_path):
    rows = [{"model": m, "task": t, "type": ty, "score": s, "seen_in_training": False}
            for m, base in (("base (untrained)", 1.0), ("finetuned", 20.0))
            for t, ty, s in (("PyCodeRetrieval", "Retrieval", base), ("PyCodeClustering", "Clustering", 2 * base))]
    mrl_rows = [{"model": "finetuned", "dim": d, "task": t, "type": "x", "score": s * d / 576}
                for d in (8, 64, 576) for t, s in (("PyCodeRetrieval", 20.0), ("PyCodeClustering", 40.0))]
    leakage = {"finetuned": {"tasks": 2, "mean": 30.0, "seen": [], "unseen_tasks": 2, "unseen_mean": 30.0}}
    folder = tmp_path / "04_mteb_evaluation"
    folder.mkdir()
    (folder / "results.json").write_text(json.dumps({"rows": rows, "leakage": leakage, "mrl": {
        "model": "finetuned", "trained_dims": [8, 64, 576], "rows": mrl_rows}}))
    (tmp_path / "timings.json").write_text(json.dumps({"profile": "cpu", "seconds": {"04_mteb_evaluation": 1.0}}))
    write_run_report(tmp_path)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["leakage"] == leakage
    assert [(r["dim"], r["task"], r["score"]) for r in report["mrl"]] == [(r["dim"], r["task"], r["score"])
                                                                          for r in mrl_rows]
    text = (tmp_path / "report.md").read_text()
    assert "## Matryoshka: `finetuned` at fewer dimensions (trained at these widths)" in text
    # 64 of 576 dims keeps 64/576 of each score here: 11%
    assert "at 64 dims PyCodeClustering 11%, PyCodeRetrieval 11%" in " ".join(report["summary"])
