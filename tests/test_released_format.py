"""The released F2LLM data's format, offline: a fixture in exactly the schema of the codefuse-ai/F2LLM parquet files
(one file per source dataset, named after it; columns query, passage, negative_1 ... negative_24, or negative_1 alone
for classification, as the released tokenize_data_qwen.py reads them) through the f2llm_v1 recipe, tokenization and
two training steps."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from f2llm_lib.data.pipeline import curate
from f2llm_lib.data.pycode import pycode_items
from f2llm_lib.data.recipes import SourceSpec, load_recipe
from f2llm_lib.data.tokenized import TokenizedData, write_training_files
from f2llm_lib.embedder.backbones import smollm2_tokenizer
from f2llm_lib.train.config import TrainConfig
from f2llm_lib.train.trainer import train

INSTRUCTION = "Instruct: Given a question, retrieve passages that answer the question\nQuery: "  # released queries
# carry their instruction already


def _write(path, rows):
    pq.write_table(pa.Table.from_pylist(rows), path)


@pytest.fixture(scope="module")
def released_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("F2LLM")
    items = pycode_items("train")[:400]
    docs = list(dict.fromkeys(i.code for i in items))
    retrieval = [{"query": INSTRUCTION + item.summary, "passage": item.code,
                  **{f"negative_{k + 1}": docs[(index + 7 * (k + 1)) % len(docs)] for k in range(24)}}
                 for index, item in enumerate(items[:40]) if item.code == docs[index]]
    _write(folder / "msmarco.parquet", retrieval)
    _write(folder / "amazon_polarity.parquet", [
        {"query": f"Instruct: Classify the sentiment\nQuery: review {i}", "passage": ["positive", "negative"][i % 2],
         "negative_1": ["negative", "positive"][i % 2]} for i in range(24)])
    by_module: dict[str, list[str]] = {}
    for item in items:
        by_module.setdefault(item.module, []).append(item.docstring)
    groups = [texts for texts in by_module.values() if len(texts) >= 2]
    clustering = []
    for g, texts in enumerate(groups[:20]):
        others = [t for h, other in enumerate(groups) if h != g for t in other][:24]
        clustering.append({"query": "Instruct: Identify the module\nQuery: " + texts[0], "passage": texts[1],
                           **{f"negative_{k + 1}": others[k] for k in range(24)}})
    _write(folder / "banking77.parquet", clustering)
    return folder


def test_fixture_has_the_released_columns(released_folder):
    retrieval = pq.read_schema(released_folder / "msmarco.parquet").names
    assert retrieval == ["query", "passage"] + [f"negative_{i}" for i in range(1, 25)]
    assert pq.read_schema(released_folder / "amazon_polarity.parquet").names == ["query", "passage", "negative_1"]


def test_released_files_through_the_recipe_tokenizer_and_two_training_steps(released_folder, tmp_path):
    recipe = load_recipe("f2llm_v1")  # the shipped recipe; only its source points at the local copy
    recipe.source = SourceSpec(kind="local", path=str(released_folder), data_files="all")
    result = curate(recipe, show_progress=False)
    assert {name: tuples[0].task_type for name, tuples in result.datasets.items()} == {
        "msmarco": "retrieval", "amazon_polarity": "classification", "banking77": "clustering"}
    assert all(len(t.negatives) == 24 for t in result.datasets["msmarco"])
    assert all(len(t.negatives) == 1 for t in result.datasets["amazon_polarity"])
    assert result.datasets["msmarco"][0].query.startswith("Instruct: ")  # kept as released, not instructed twice
    write_training_files(result.datasets, smollm2_tokenizer(), tmp_path / "tokenized", 64)
    data = TokenizedData(tmp_path / "tokenized")
    assert data.manifest["datasets"]["amazon_polarity"]["task_type"] == "classification"
    out = train(TrainConfig.from_dict({"model": "tiny-qwen3", "data_dir": str(tmp_path / "tokenized"),
                                       "max_steps": 2, "per_device_batch": 4, "num_negatives": 7, "val_fraction": 0.0,
                                       "save_every": 100, "eval_every": 100, "output_dir": str(tmp_path / "run")}),
                export=False)
    assert len(out["history"]) == 2
