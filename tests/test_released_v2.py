"""F2LLM-v2's training layout (already tokenized, documents referenced by id) curates into the tokenized format
with every text intact, trains end to end, and samples negatives per task type as v2 does."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from helpers import write_v2_layout

from f2llm_lib.data.pipeline import run_recipe
from f2llm_lib.data.schema import DataError
from f2llm_lib.data.tokenized import TokenizedData
from f2llm_lib.embedder.backbones import smollm2_tokenizer
from f2llm_lib.train.config import TrainConfig
from f2llm_lib.train.loader import MultitaskLoader
from f2llm_lib.train.trainer import train


def _recipe(tmp_path, folder, **overrides) -> str:
    recipe = {"name": "v2", "task_type": "retrieval", "source": {"kind": "local", "path": str(folder)},
              "build": {"kind": "f2llm_v2_tokenized"}, **overrides}
    path = tmp_path / "v2.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return str(path)


@pytest.fixture(scope="module")
def curated(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("v2")
    written = write_v2_layout(tmp / "layout", smollm2_tokenizer())
    run_recipe(_recipe(tmp, tmp / "layout"), tmp / "out", backbone="tiny-qwen3", max_length=64, show_progress=False)
    return tmp / "out" / "tokenized", written


def test_every_text_arrives_intact_with_its_task_type(curated):
    folder, written = curated
    data, tokenizer = TokenizedData(folder), smollm2_tokenizer()
    assert {name: arrays.task_type for name, arrays in data.datasets.items()} == {
        "msmarco": "retrieval", "banking77": "clustering", "imdb": "classification"}
    for name, arrays in data.datasets.items():
        texts = written[name]
        for row in (0, 5, len(texts["queries"]) - 1):
            decode = lambda ids: tokenizer.decode(ids[:-1])  # noqa: E731 (the last id is the EOS)
            assert arrays.queries[row][-1] == tokenizer.eos_token_id
            assert decode(arrays.queries[row]) == texts["queries"][row]
            assert decode(data.corpus[int(arrays.positive[row])]) == texts["positives"][row]
            assert [decode(data.corpus[int(d)]) for d in arrays.negatives[row]] == texts["negatives"][row]
    assert json.loads((folder / "manifest.json").read_text())["source_layout"].startswith("f2llm-v2")


def test_negatives_are_sampled_per_task_type_as_v2_does(curated):
    folder, written = curated
    tokenizer = smollm2_tokenizer()
    loader = MultitaskLoader(folder, 4, 7, tokenizer.pad_token_id, val_fraction=0.0, sampling="released",
                             clustering_negatives=9)
    seen = {}
    for _ in range(loader.steps_per_epoch()):
        batch = loader.next_batch()
        seen[batch.dataset] = batch.num_negatives
        if batch.dataset == "imdb":  # classification: always its one stored negative (v2: index 0)
            stored = TokenizedData(folder).datasets["imdb"].negatives
            assert [int(d) for d in batch.doc_ids[4:]] == [int(stored[int(r)][0]) for r in batch.query_rows]
    assert seen == {"msmarco": 7, "banking77": 9, "imdb": 1}


def test_the_v2_fixture_curates_and_trains_two_steps(curated, tmp_path):
    folder, _ = curated
    config = TrainConfig.from_dict({"model": "tiny-qwen3", "data_dir": str(folder), "max_steps": 2,
                                    "per_device_batch": 4, "num_negatives": 7, "clustering_negatives": 9,
                                    "sampling": "released", "warmup_steps": 1, "lr": 1e-3, "save_every": 2,
                                    "val_fraction": 0.0, "output_dir": str(tmp_path / "run")})
    result = train(config, export=False)
    assert result["steps"] == 2 and all(np.isfinite(h["loss"]) for h in result["history"])


def test_ids_from_another_tokenizer_and_dangling_doc_ids_are_named(tmp_path):
    layout = tmp_path / "layout"
    write_v2_layout(layout, smollm2_tokenizer(), rows=6)
    with pytest.raises(DataError, match=r"does not end with tiny-qwen3-bpe's EOS"):
        run_recipe(_recipe(tmp_path, layout), tmp_path / "out", backbone="tiny-qwen3-bpe", max_length=64,
                   show_progress=False)
    table = pq.read_table(layout / "imdb_query.parquet").to_pydict()
    table["passage_input_ids"][2] = "imdb_999"
    pq.write_table(pa.table(table), layout / "imdb_query.parquet")
    with pytest.raises(DataError, match=r"imdb_query.parquet:row 2: document id 'imdb_999' is not in corpus.parquet"):
        run_recipe(_recipe(tmp_path, layout), tmp_path / "out", backbone="tiny-qwen3", max_length=64,
                   show_progress=False)
    assert not (tmp_path / "out").exists()


def test_a_v2_folder_is_curated_on_its_own(tmp_path):
    layout = tmp_path / "layout"
    write_v2_layout(layout, smollm2_tokenizer(), rows=6)
    other = tmp_path / "pairs.yaml"
    other.write_text(yaml.safe_dump({"name": "pairs", "task_type": "retrieval",
                                     "source": {"kind": "local", "path": str(tmp_path / "p.jsonl")},
                                     "fields": {"s1": "s1", "s2": "s2"}, "build": {"kind": "pairs"}}))
    with pytest.raises(DataError, match="curated on its own"):
        run_recipe([_recipe(tmp_path, layout), str(other)], tmp_path / "out", backbone="tiny-qwen3",
                   show_progress=False)
