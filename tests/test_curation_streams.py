"""Curation in bounded memory: a source already in tuple form (the released F2LLM data) streams from its file through
decontamination, validation and de-duplication into the tuples file and the tokenized writer; the streamed path keeps
the tuples the in-memory one keeps; tokenizing processes write the same bytes as tokenizing in-process.

The memory and time figures at 10k..1M tuples are the curation benchmark's (``python -m f2llm_lib.bench.scale
--curation``, committed under ``benchmarks/scale-cpu-2core/``); these tests hold the properties those figures rest on.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from f2llm_lib.data import recipes
from f2llm_lib.data.pipeline import StoredTuples, curate, curate_stream, run_recipe
from f2llm_lib.data.pycode import pycode_items
from f2llm_lib.data.recipes import build_examples, load_recipe, read_records, stream_tuples
from f2llm_lib.data.schema import TrainingTuple
from f2llm_lib.data.tokenized import TokenizedWriter
from f2llm_lib.embedder.backbones import smollm2_tokenizer

ROWS = 3000


def _released_file(folder: Path, rows: int = ROWS) -> Path:
    """Released-schema rows with every case the filters handle: a repeated (query, positive) pair every 50 rows, a
    query equal to its positive every 97, an evaluation text (pycode's) as a negative every 113."""
    evaluation_text = pycode_items("eval")[0].code
    table: dict[str, list[str]] = {"query": [], "passage": []} | {f"negative_{k}": [] for k in range(1, 4)}
    for i in range(rows):
        base = i - 1 if i % 50 == 0 and i else i
        table["query"].append(f"Instruct: Find the answer\nQuery: question number {base}")
        table["passage"].append(table["query"][-1] if i % 97 == 5 else f"the answer to question {base} is {base * 7}")
        for k in range(1, 4):
            table[f"negative_{k}"].append(evaluation_text if i % 113 == 7 and k == 2
                                          else f"the answer to question {(base + 11 * k) % rows} is {k}")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "msmarco.parquet"
    pq.write_table(pa.table(table), path, row_group_size=500)
    return path


def _recipe(tmp_path: Path, source: Path, **extra) -> Path:
    recipe = {"name": "released", "task_type": "retrieval", "instruction": "",
              "source": {"kind": "local", "path": str(source)}, "fields": {"query": "query", "positive": "passage"},
              "build": {"kind": "tuples"}, "decontaminate_against": ["pycode_eval"], **extra}
    path = tmp_path / f"recipe-{len(list(tmp_path.glob('recipe-*')))}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.fixture(scope="module")
def released(tmp_path_factory) -> Path:
    return _released_file(tmp_path_factory.mktemp("released"))


def test_a_tuple_source_is_read_one_record_at_a_time(released, tmp_path, monkeypatch):
    """Taking the first curated tuple reads a handful of records, not the file: nothing on the way collects it."""
    read = []

    def counting(path, fmt=None):
        for where, record in original(path, fmt):
            read.append(where)
            yield where, record

    original = recipes.read_local
    monkeypatch.setattr(recipes, "read_local", counting)
    name, tuples = next(curate_stream(load_recipe(_recipe(tmp_path, released)), show_progress=False))
    first = next(tuples)
    assert name == "released" and first.query.endswith("question number 0")
    assert 1 <= len(read) <= 2, f"{len(read)} records read for the first tuple"


def test_streamed_tuples_are_the_in_memory_builds_tuples_with_and_without_a_cap(released, tmp_path):
    for cap in (None, 700):
        recipe = load_recipe(_recipe(tmp_path, released, max_samples=cap))
        in_memory = build_examples(recipe, read_records(recipe)).tuples
        streamed = list(stream_tuples(recipe))
        assert streamed == in_memory
        assert len(streamed) == (cap or ROWS - len([i for i in range(ROWS) if i % 97 == 5]))


def test_run_recipe_streams_what_curate_keeps_and_reports_the_same_drops(released, tmp_path, capsys):
    recipe = _recipe(tmp_path, released)
    kept = curate(load_recipe(recipe), show_progress=False)
    written = run_recipe(recipe, tmp_path / "out", backbone="smollm2-135m", max_length=32, show_progress=False)
    stored = written.datasets["released"]
    assert isinstance(stored, StoredTuples)
    assert list(stored) == kept.datasets["released"] and len(stored) == len(kept.datasets["released"])
    assert stored[0] == kept.datasets["released"][0]
    contaminated = len([i for i in range(ROWS) if i % 113 == 7 and i % 97 != 5])
    assert written.decontamination.per_dataset["released"]["dropped"] == contaminated
    assert written.duplicates == kept.duplicates and written.duplicates["released"] > 50
    assert written.manifest["queries_per_dataset"] == {"released": len(stored)}
    reports = json.loads((tmp_path / "out" / "reports.json").read_text())
    assert reports["duplicates_dropped"]["released"] == written.duplicates["released"]
    assert "dropped" in capsys.readouterr().err


def test_a_row_error_in_the_middle_of_a_stream_names_the_row_and_leaves_no_output(released, tmp_path):
    table = pq.read_table(released).to_pydict()
    table["passage"][2345] = "   "
    broken = tmp_path / "broken" / "msmarco.parquet"
    broken.parent.mkdir()
    pq.write_table(pa.table(table), broken, row_group_size=500)
    with pytest.raises(ValueError, match=r"msmarco.parquet:row 2345: field 'passage' is empty"):
        run_recipe(_recipe(tmp_path, broken), tmp_path / "out", backbone="smollm2-135m", max_length=32,
                   show_progress=False)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out-*"))


def _tuples(count: int) -> list[TrainingTuple]:
    words = [item.docstring for item in pycode_items("train")[: count * 3]]
    return [TrainingTuple("d", "retrieval", "Find it", words[3 * i], words[3 * i + 1],
                          [words[3 * i + 2], words[(3 * i + 5) % len(words)]]) for i in range(count)]


@pytest.mark.parametrize("workers", [1, 2])
def test_tokenizing_processes_write_the_same_bytes(tmp_path, workers):
    tuples, tokenizer = _tuples(300), smollm2_tokenizer()
    folders = {}
    for label, processes in (("here", 0), ("pool", workers)):
        writer = TokenizedWriter(tmp_path / label, tokenizer, 48, batch_size=16, workers=processes, pool_after=2)
        writer.add_dataset("d", tuples)
        manifest = writer.close()
        if sys.platform == "linux":  # the pool really ran (its processes' peak memory is read from /proc)
            assert (writer.worker_peak_rss_mb > 0) == (processes > 0)
        folders[label] = (tmp_path / label, manifest)
    files = sorted(p.relative_to(folders["here"][0]) for p in folders["here"][0].rglob("*.bin"))
    assert len(files) == 7
    for file in files:
        assert np.array_equal(np.fromfile(folders["here"][0] / file, np.uint8),
                              np.fromfile(folders["pool"][0] / file, np.uint8)), file
    assert folders["here"][1] == folders["pool"][1]
