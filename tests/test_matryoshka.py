"""Scores at Matryoshka dimensions: one encoding pass, a name per dimension, and the full dimension unchanged."""

import numpy as np
import torch
import torch.nn.functional as F
from mteb._evaluators.retrieval_metrics import calculate_retrieval_scores
from mteb.types import PromptType

from f2llm_lib.evaluation.matryoshka import PrefixMtebModel, dimension_scores, truncate_embeddings
from f2llm_lib.evaluation.run import evaluate, f2llm_model
from f2llm_lib.evaluation.tasks import pycode_tasks


def test_truncation_is_the_renormalised_prefix():
    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(7, 33)).astype(np.float32)
    for dim in (1, 5, 32, 33):
        expected = F.normalize(torch.as_tensor(embeddings[:, :dim], dtype=torch.float64), dim=-1).numpy()
        np.testing.assert_allclose(truncate_embeddings(embeddings, dim), expected, atol=1e-6)


def test_every_dimension_from_one_pass_each_under_its_own_name(tmp_path):
    tasks = [t for t in pycode_tasks(max_queries=40) if t.metadata.type != "Classification"]  # the slow evaluator
    full = f2llm_model("tiny-qwen3", "tiny", max_length=48)
    embedded = []
    encode = full.model.encode

    def counting_encode(texts, **kwargs):
        embedded.extend(texts)
        return encode(texts, **kwargs)

    full.model.encode = counting_encode
    dims = [8, 16, full.model.dim]
    rows = dimension_scores(full, dims, tasks, tmp_path / "cache", label="tiny")
    assert sorted({r["dim"] for r in rows}) == dims and len(rows) == len(dims) * len(tasks)
    # the backbone embedded each distinct input once, whatever the number of dimensions
    assert len(embedded) == len(set(embedded))
    distinct_inputs = len(embedded)
    full.model.encode = encode

    # at the full dimension the scores are the plain model's (a new cache folder: nothing reused)
    plain = {r["task"]: r["score"] for r in evaluate({"tiny": full}, tasks, tmp_path / "plain")}
    at_full = {r["task"]: r["score"] for r in rows if r["dim"] == full.model.dim}
    assert at_full == plain
    # each dimension its own mteb name: 8 and 16 dims are scored, not handed the full dimension's cached result
    by_dim = {d: tuple(r["score"] for r in rows if r["dim"] == d) for d in dims}
    assert len(set(by_dim.values())) == len(dims), by_dim
    names = {PrefixMtebModel(full, d, {}).mteb_model_meta.name for d in dims}
    assert len(names) == len(dims)

    # retrieval at 8 dims is nDCG@10 of the cosine ranking of the truncated embeddings
    retrieval = next(t for t in tasks if t.metadata.type == "Retrieval")
    split = retrieval.dataset["default"]["test"]
    queries = truncate_embeddings(full.model.encode(full.input_texts(split["queries"]["text"], retrieval.metadata,
                                                                     PromptType.query)), 8)
    documents = truncate_embeddings(full.model.encode(full.input_texts(split["corpus"]["text"], retrieval.metadata,
                                                                       PromptType.document)), 8)
    similarity = queries @ documents.T
    run = {q: dict(zip(split["corpus"]["id"], map(float, row), strict=True))
           for q, row in zip(split["queries"]["id"], similarity, strict=True)}
    by_hand = calculate_retrieval_scores(run, split["relevant_docs"], [10]).all_scores
    mean = 100 * float(np.mean([by_hand[q]["ndcg_cut_10"] for q in split["queries"]["id"]]))
    reported = next(r["score"] for r in rows if r["dim"] == 8 and r["task"] == retrieval.metadata.name)
    assert abs(mean - reported) < 0.01
    assert distinct_inputs >= len(split["queries"]["id"]) + len(split["corpus"]["id"])


def test_a_model_that_keeps_its_embeddings_is_not_run_again(tmp_path):
    tasks = [t for t in pycode_tasks(max_queries=20) if t.metadata.type == "Retrieval"]
    full = f2llm_model("tiny-qwen3", "kept", max_length=32, cache_embeddings=True)
    evaluate({"kept": full}, tasks, tmp_path / "main", show_progress=False)
    embedded = []
    encode = full.model.encode
    full.model.encode = lambda texts, **kwargs: embedded.extend(texts) or encode(texts, **kwargs)
    rows = dimension_scores(full, [8, 16], tasks, tmp_path / "widths", label="kept")
    assert embedded == [] and len(rows) == 2
