"""The gradient-caching benchmark's search: doubling batches until the peak passes the budget, then its table."""

import argparse

from f2llm_lib.bench import report, train


def test_search_stops_at_the_first_batch_over_the_budget_and_reports_the_last_that_fit(monkeypatch, tmp_path):
    # 100 MB of model plus 10 MB per query without the cache; with it, 100 MB plus one query's worth per step
    def peak(config, device):
        per_query = 10.0 if not config["grad_cache"] else 10.0 / config["per_device_batch"]
        return 100.0 + per_query * config["per_device_batch"]

    monkeypatch.setattr(train, "peak_memory_of_training", peak)
    args = argparse.Namespace(search_start=4, search_max=64, largest_batch=300.0, grad_cache_chunk=16, steps=2,
                              batch=8, negatives=3, max_length=64, precision="fp32", device="cpu")
    trials = train.largest_batches("tiny-qwen3", 0, tmp_path, tmp_path, args)
    plain = [(t["batch"], t["fits"]) for t in trials if not t["grad_cache"]]
    cached = [(t["batch"], t["fits"]) for t in trials if t["grad_cache"]]
    assert plain == [(4, True), (8, True), (16, True), (32, False)]  # 420 MB at 32: over, and the search stops
    assert cached == [(4, True), (8, True), (16, True), (32, True), (64, True)]
    rows = [{"model": "tiny-qwen3", "layers": "all", "device": "cpu", "precision": "fp32", "negatives": 3,
             "max_length": 64, "budget_mb": 300.0, "grad_cache_chunk": 16,
             **{k: str(v) for k, v in t.items()}} for t in trials]
    text = "\n".join(report.largest_batch_lines(rows))
    assert "is 16 queries without gradient caching and 64 or more (the search's last) with it" in text
    assert "| 32 | 420 (over) | 110 |" in text
