"""Data curation: bad input gets clear errors, F2LLM's mining rule, decontamination, tokenized files, pycode."""

from __future__ import annotations

import numpy as np
import pytest

from f2llm_lib.data.decontaminate import Decontaminator, normalize_text
from f2llm_lib.data.mining import MiningConfig, mine_hard_negatives, select_negatives
from f2llm_lib.data.pipeline import curate, run_recipe
from f2llm_lib.data.pycode import pycode_items
from f2llm_lib.data.readers import read_local
from f2llm_lib.data.recipes import build_examples, load_recipe, read_records
from f2llm_lib.data.schema import DataError, TrainingTuple, validate_tuple
from f2llm_lib.data.tokenized import write_training_files

GOOD = """
name: demo
task_type: retrieval
instruction: Find the answer
source: {kind: local, path: PATH}
fields: {s1: q, s2: a}
build: {kind: pairs}
"""


def _recipe(tmp_path, text: str, rows: str | bytes | None = None, suffix: str = "jsonl"):
    data = tmp_path / f"data.{suffix}"
    if rows is not None:
        data.write_bytes(rows if isinstance(rows, bytes) else rows.encode())
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(text.replace("PATH", str(data)))
    return recipe


def _curate_bad(tmp_path, text, rows, suffix="jsonl"):
    recipe = load_recipe(_recipe(tmp_path, text, rows, suffix))
    return build_examples(recipe, read_records(recipe))


@pytest.mark.parametrize("text, rows, suffix, message", [
    ("name: [unclosed", None, "jsonl", r"recipe.yaml:1: not plain YAML"),
    (GOOD + "max_sample: 3\n", None, "jsonl", r"recipe.yaml: unknown key 'max_sample' \(did you mean max_samples\?\)"),
    (GOOD.replace("kind: pairs", "kind: pairz"), None, "jsonl",
     r"build.kind must be one of tuples, pairs, .*, got str 'pairz'"),
    (GOOD.replace("task_type: retrieval", "task_type: clustering"), None, "jsonl",
     r"task_type must be one that fits build.kind 'pairs'"),
    (GOOD + "max_samples: many\n", None, "jsonl", r"max_samples must be int \(or null\), got str"),
    (GOOD.replace("fields: {s1: q, s2: a}", "fields: {s1: q}"), None, "jsonl",
     r"fields must be a mapping of \['s2'\] to source columns"),
    (GOOD, '{"q": "hello there", "b": "x"}\n', "jsonl", r"data.jsonl:1: missing column 'a'"),
    (GOOD, '{"q": "hi", "a": "yo"}\n{"q": "   ", "a": "x"}\n', "jsonl", r"data.jsonl:2: field 'q' is empty"),
    (GOOD, '{"q": 42, "a": "x"}\n', "jsonl", r"data.jsonl:1: field 'q' must be text, got int"),
    (GOOD, b'{"q": "caf\xe9", "a": "x"}\n', "jsonl", r"data.jsonl:1: not valid UTF-8 \(byte 0xe9\)"),
    (GOOD, '{"q": "a", "a": "b"}\n{"q": "broken\n', "jsonl", r"data.jsonl:2: not valid JSON"),
    (GOOD, '{"q": "' + "x" * 100_001 + '", "a": "b"}\n', "jsonl", r"has 100,001 characters"),
    (GOOD, "q,a\nhello,world,extra\n", "csv", r"data.csv:2: more fields than the header"),
    (GOOD, None, "jsonl", r"data.jsonl: file not found"),
    (GOOD, "q,a\n", "xlsx", r"data.xlsx: cannot tell the format from the suffix '.xlsx'"),
    (GOOD.replace("fields: {s1: q, s2: a}", "fields: {s1: q, s2: a, score: s}"), '{"q": "a", "a": "b", "s": "hi"}\n',
     "jsonl", r"field 's' must be a number, got 'hi'"),
])
def test_bad_input_is_explained(tmp_path, text, rows, suffix, message):
    with pytest.raises(DataError, match=message):
        _curate_bad(tmp_path, text, rows, suffix)


def test_bad_tuples_are_explained():
    with pytest.raises(DataError, match="task_type 'ranking'"):
        validate_tuple(TrainingTuple("d", "ranking", "", "q", "p"), "here")
    with pytest.raises(DataError, match="positive is also listed as a negative"):
        validate_tuple(TrainingTuple("d", "retrieval", "", "q", "p", ["n", "p"]), "here")
    with pytest.raises(DataError, match="here: expected 3 negatives, found 1"):
        validate_tuple(TrainingTuple("d", "retrieval", "", "q", "p", ["n"]), "here", expected_negatives=3)


def test_label_needs_two_classes(tmp_path):
    text = GOOD.replace("task_type: retrieval", "task_type: classification").replace(
        "fields: {s1: q, s2: a}", "fields: {text: q, label: a}").replace("kind: pairs", "kind: label_verbalisation")
    with pytest.raises(DataError, match=r"needs at least two labels, found \['x'\]"):
        _curate_bad(tmp_path, text, '{"q": "one", "a": "x"}\n{"q": "two", "a": "x"}\n')


def test_mining_rule_on_a_constructed_example():
    # Candidate scores in rank order; the positive scores 0.84 -> margin threshold 0.84 - 0.05 x 0.84 = 0.798.
    scores = np.array([0.99, 0.97, 0.95, 0.93, 0.91, 0.85, 0.81, 0.799,  # above 0.8 or the margin: filtered out
                       0.797, 0.79, 0.5, 0.4, 0.3])
    excluded = np.zeros(len(scores), dtype=bool)
    config = MiningConfig(range_min=2, range_max=100, max_score=0.8, relative_margin=0.05, num_negatives=3)
    kept, pool, kept_scores = select_negatives(scores, 0.84, excluded, config)
    # survivors 0.797, 0.79, 0.5, 0.4, 0.3; the 2 best survivors are skipped (filters first, then the skip)
    assert kept == [10, 11, 12]
    assert len(pool) == 13 and kept_scores.tolist() == [0.5, 0.4, 0.3]
    config.range_max = 11  # only the 11 best are looked at: survivors 0.797, 0.79, 0.5
    assert select_negatives(scores, 0.84, excluded, config)[0] == [10]
    excluded[9] = True  # an excluded candidate (the query's own text, its cluster) is never taken
    config.range_max = 100
    assert select_negatives(scores, 0.84, excluded, config)[0] == [11, 12]
    config.range_min = 5  # five survivors skipped: none left
    assert select_negatives(scores, 0.84, np.zeros(len(scores), bool), config)[0] == []


class _FixedScorer:
    bounded = True

    def __init__(self, table):
        self.table = table

    def fit(self, corpus):
        pass

    def scores(self, queries):
        return np.stack([self.table[q] for q in queries])


def test_mining_excludes_positive_and_own_cluster_and_reports_shortfall():
    corpus = ["pos", "a1", "b1", "b2", "b3"]
    scorer = _FixedScorer({"q": np.array([0.9, 0.5, 0.4, 0.3, 0.2])})
    config = MiningConfig(range_min=0, num_negatives=3, on_shortfall="keep")
    negatives, report = mine_hard_negatives(["q"], ["pos"], corpus, scorer, config, query_groups=["a"],
                                            corpus_groups=["a", "a", "b", "b", "b"], show_progress=False)
    assert negatives == [["b1", "b2", "b3"]]
    config.num_negatives = 4
    negatives, report = mine_hard_negatives(["q"], ["pos"], corpus, scorer, config, query_groups=["a"],
                                            corpus_groups=["a", "a", "b", "b", "b"], show_progress=False)
    assert negatives == [["b1", "b2", "b3"]] and report.short_before_fill == 1
    config.on_shortfall = "drop"
    negatives, report = mine_hard_negatives(["q"], ["pos"], corpus, scorer, config, query_groups=["a"],
                                            corpus_groups=["a", "a", "b", "b", "b"], show_progress=False)
    assert negatives == [None] and report.dropped == 1


def test_decontamination_removes_planted_overlaps():
    eval_texts = ["What is the capital of France?", "A quick brown fox jumps over the lazy dog near the river bank"]
    clean = TrainingTuple("d", "retrieval", "", "unrelated question", "unrelated answer", ["neg"])
    planted_query = TrainingTuple("d", "retrieval", "", "  what is the CAPITAL of   france? ", "Paris", ["neg"])
    planted_negative = TrainingTuple("e", "retrieval", "", "q2", "p2", ["what is the capital of france?"])
    planted_ngram = TrainingTuple("e", "retrieval", "", "so a quick brown fox jumps over the lazy dog near", "p", [])
    kept, report = Decontaminator(eval_texts).filter([clean, planted_query, planted_negative, planted_ngram])
    assert kept == [clean, planted_ngram] and report.per_dataset == {"d": {"checked": 2, "dropped": 1},
                                                                     "e": {"checked": 2, "dropped": 1}}
    kept, _ = Decontaminator(eval_texts, ngram=8).filter([clean, planted_ngram])
    assert kept == [clean]


def test_tokenized_files_dedupe_corpus_and_end_with_eos(tiny, tmp_path):
    from f2llm_lib.data.tokenized import TokenizedData
    from f2llm_lib.embedder.tokenization import tokenizer_identity

    _, tokenizer = tiny
    datasets = {"a": [TrainingTuple("a", "retrieval", "Find it", "q1 " * 400, "shared doc", ["neg one", "neg two"]),
                      TrainingTuple("a", "retrieval", "Find it", "q2", "other doc", ["shared doc", "neg one"])],
                "b": [TrainingTuple("b", "clustering", "Group it", "q3", "neg two", ["shared doc"])]}
    manifest = write_training_files(datasets, tokenizer, tmp_path / "out", max_length=32, batch_size=1)
    data = TokenizedData(tmp_path / "out")
    assert len(data.corpus) == 4 and manifest["corpus_size"] == 4  # shared doc, neg one, neg two, other doc
    a = data.datasets["a"]
    assert len(a.queries[0]) == 32  # truncated ...
    for tokens in [data.corpus[d] for d in range(4)] + [a.queries[0], a.queries[1]]:
        assert int(tokens[-1]) == tokenizer.eos_token_id  # ... and still ending in EOS
    assert int(a.negatives[1][0]) == int(a.positive[0])  # same text, same doc_id (across batches of one tuple)
    assert tokenizer.decode(a.queries[1][:-1].tolist()).startswith("Instruct: Find it\nQuery: q2")
    assert [len(a.negatives[i]) for i in range(2)] == [2, 2] and len(data.datasets["b"].negatives[0]) == 1
    assert manifest["queries_per_dataset"] == {"a": 2, "b": 1}
    assert manifest["datasets"]["b"]["task_type"] == "clustering"
    assert data.tokenizer == tokenizer_identity(tokenizer) and data.max_length == 32
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left behind
    assert isinstance(data.corpus.values, np.memmap)  # read through the page cache, not loaded


def test_tokenized_writer_streams_generators_and_replaces_atomically(tiny, tmp_path):
    from f2llm_lib.data.tokenized import TokenizedData

    _, tokenizer = tiny

    def stream(n):  # a generator: the writer must not need a list
        for i in range(n):
            yield TrainingTuple("s", "retrieval", "", f"query {i}", f"doc {i}", [f"doc {(i + 1) % n}"])

    write_training_files({"s": stream(50)}, tokenizer, tmp_path / "out", max_length=16, batch_size=7)
    assert len(TokenizedData(tmp_path / "out").datasets["s"].queries) == 50
    with pytest.raises(DataError):  # a failure mid-way leaves the previous folder whole and no temporary one
        write_training_files({"s": stream(20), "bad": [TrainingTuple("bad", "retrieval", "", 5, "x", [])]},
                             tokenizer, tmp_path / "out", max_length=16)
    assert len(TokenizedData(tmp_path / "out").datasets["s"].queries) == 50
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_pycode_train_and_eval_share_no_module_and_no_text():
    train, evaluation = pycode_items("train"), pycode_items("eval")
    assert len(train) > 1000 and len(evaluation) > 200
    assert not {i.module for i in train} & {i.module for i in evaluation}
    result = curate(load_recipe("pycode"), show_progress=False)
    eval_norm = {normalize_text(t) for i in evaluation for t in (i.summary, i.docstring, i.code)}
    for tuples in result.datasets.values():
        for item in tuples:
            for text in (item.query, item.positive, *item.negatives):
                assert normalize_text(text) not in eval_norm
    assert set(result.datasets) == {"pycode_retrieval", "pycode_clustering", "pycode_classification"}
    assert pycode_items("eval") == evaluation  # deterministic


@pytest.mark.parametrize("name, dataset, task", [("banking77_local", "banking77_local", "clustering"),
                                                 ("stsbenchmark_local", "stsbenchmark_local", "retrieval")])
def test_local_recipes_on_shared_data(shared_data, tmp_path, name, dataset, task):
    result = run_recipe(name, tmp_path / name, show_progress=False)
    tuples = result.datasets[dataset]
    recipe = load_recipe(name)
    assert len(tuples) > 500 and all(t.task_type == task for t in tuples)
    assert all(len(t.negatives) == recipe.mining.num_negatives for t in tuples)
    if task == "clustering":  # negatives come from other intents
        label_of = {r["text"]: r["label"] for _, r in read_local(shared_data / "banking77" / "train.jsonl")}
        assert all(label_of[n] != label_of[t.query] for t in tuples[:200] for n in t.negatives)
        assert all(label_of[t.positive] == label_of[t.query] for t in tuples)
    else:  # only pairs scored >= 4
        scores = {(r["s1"], r["s2"]): float(r["score"])
                  for _, r in read_local(shared_data / "stsbenchmark" / "train.jsonl")}
        assert all(scores[(t.query, t.positive)] >= 4.0 for t in tuples)
    assert (tmp_path / name / "tokenized" / "manifest.json").exists()
    assert (tmp_path / name / "tuples" / f"{dataset}.parquet").exists()


def test_f2llm_mix_task_types_follow_the_released_sources():
    from f2llm_lib.data.recipes import infer_task_type

    assert infer_task_type("amazon_polarity.parquet") == "classification"
    assert infer_task_type("banking77.parquet") == "clustering"
    assert infer_task_type("arxiv_clustering_p2p.parquet") == "clustering"
    assert infer_task_type("msmarco.parquet") == "retrieval"
    recipe = load_recipe("f2llm_v1")
    assert recipe.source.data_files == "all" and recipe.max_samples == 20000


def test_a_mix_curates_into_one_folder_with_one_corpus(shared_data, tmp_path, capsys):
    import subprocess
    import sys

    from f2llm_lib.data.tokenized import TokenizedData

    run_recipe("local_mix", tmp_path / "mix", backbone="tiny-qwen3", max_length=64, show_progress=False)
    data = TokenizedData(tmp_path / "mix" / "tokenized")
    assert set(data.datasets) == {"banking77_local", "stsbenchmark_local"}
    assert data.manifest["recipes"] == ["banking77_local", "stsbenchmark_local"]
    # one corpus: every dataset's positives and negatives index the same table
    for arrays in data.datasets.values():
        assert int(arrays.positive.max()) < len(data.corpus)
    # the mining rule's shortfall on Banking77 (BM25 over 77 intents) is said out loud, with the policy
    assert "WARNING dataset banking77_local" in capsys.readouterr().err
    out = subprocess.run([sys.executable, "-m", "f2llm_lib.data.pipeline", "banking77_local", "stsbenchmark_local",
                          "--out", str(tmp_path / "cli"), "--backbone", "tiny-qwen3", "--max-length", "64"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    cli = TokenizedData(tmp_path / "cli" / "tokenized")
    assert cli.manifest["queries_per_dataset"] == data.manifest["queries_per_dataset"]
    assert cli.manifest["corpus_size"] == data.manifest["corpus_size"]


def test_a_mix_refuses_two_datasets_of_one_name(tmp_path):
    with pytest.raises(DataError, match="also come from an earlier recipe"):
        run_recipe(["pycode", "pycode"], tmp_path / "twice", backbone="tiny-qwen3", show_progress=False)


def test_without_the_public_data_setting_a_local_recipe_reads_the_same_split_from_the_hub(monkeypatch, capsys):
    """The hub's columns are renamed to the recipe's own (offline here: the hub reader is replaced by rows in the
    hub's schema, which is what the fallback must map)."""
    from f2llm_lib.data import recipes

    monkeypatch.delenv("F2LLM_PUBLIC_DATA", raising=False)
    asked = {}

    def hub_rows(hub_id, config, split, data_files=None):
        asked.update(hub_id=hub_id, split=split)
        yield f"{hub_id}[{split}]:row 0", {"sentence1": "a cat sits", "sentence2": "a cat is sitting", "score": 4.6}

    monkeypatch.setattr(recipes, "read_hub", hub_rows)
    records = recipes.read_records(recipes.load_recipe("stsbenchmark_local"))
    assert asked == {"hub_id": "mteb/stsbenchmark-sts", "split": "train"}
    assert records == [("mteb/stsbenchmark-sts[train]:row 0", {"s1": "a cat sits", "s2": "a cat is sitting",
                                                                "score": 4.6})]
    assert "F2LLM_PUBLIC_DATA is not set; reading mteb/stsbenchmark-sts (train split) from the hub" in \
        capsys.readouterr().out


def test_a_public_data_path_without_the_setting_or_a_fallback_names_the_setting(monkeypatch, tmp_path):
    from f2llm_lib.data.recipes import load_recipe, read_records

    monkeypatch.delenv("F2LLM_PUBLIC_DATA", raising=False)
    recipe = tmp_path / "mine.yaml"
    recipe.write_text("name: mine\ntask_type: clustering\nsource: {kind: local, path: '${PUBLIC_DATA}/x.jsonl'}\n"
                      "fields: {text: text, label: label}\nbuild: {kind: same_cluster}\n")
    with pytest.raises(DataError, match="F2LLM_PUBLIC_DATA"):
        read_records(load_recipe(recipe))


def test_a_recipe_accepts_every_mining_setting_and_types_it(tmp_path):
    """The recipe's mining section is MiningConfig plus the scorer (batch_size was once missing from a hand-kept
    list of keys)."""
    from dataclasses import fields

    from f2llm_lib.data.recipes import MiningSpec

    assert {f.name for f in fields(MiningSpec)} == {f.name for f in fields(MiningConfig)} | {"scorer"}
    recipe = tmp_path / "r.yaml"
    base = "name: r\ntask_type: clustering\nsource: {kind: pycode}\nbuild: {kind: pycode}\ntasks: [clustering]\n"
    recipe.write_text(base + "mining: {batch_size: 16, max_score: 1}\n")
    mining = load_recipe(recipe).mining
    assert (mining.batch_size, mining.max_score, mining.config().batch_size) == (16, 1.0, 16)
    recipe.write_text(base + "mining: {batch_size: '16'}\n")
    with pytest.raises(DataError, match="mining.batch_size must be int, got str '16'"):
        load_recipe(recipe)
