"""Misuse, round 2: nothing deleted that a tool did not write, no stale scores, no mixed runs, no silent corruption,
one line instead of a traceback. Each case asserts the message names the problem (and the fix), and that nothing
partial, stale or foreign was touched. Training cases use tiny-qwen3; curation cases a few dozen local rows."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from helpers import tokenized_pycode

from f2llm_lib.atomic import atomic_folder
from f2llm_lib.data.mining import BM25Scorer
from f2llm_lib.data.pipeline import curate, run_recipe
from f2llm_lib.data.readers import read_local
from f2llm_lib.data.recipes import load_recipe
from f2llm_lib.data.schema import DataError
from f2llm_lib.data.tokenized import TokenizedData, TokenizedDataError
from f2llm_lib.embedder.backbones import BackboneError, load_backbone
from f2llm_lib.evaluation.tasks import load_beir_folder, load_labelled_folder, pycode_tasks
from f2llm_lib.ownership import FILES_RECORD, lock_path, output_lock
from f2llm_lib.tooling.notebook_runner import NotebookParameterError, NotebookRunError, load_profile, run_profile
from f2llm_lib.train.checkpoints import RunFolderError
from f2llm_lib.train.config import ConfigError, TrainConfig
from f2llm_lib.train.trainer import train
from f2llm_lib.typed import SettingsError, load_yaml


# -- helpers ------------------------------------------------------------------------------------------------------
def _recipe(tmp_path, source_file, **overrides):
    recipe = {"name": "probe", "task_type": "retrieval", "source": {"kind": "local", "path": str(source_file)},
              "fields": {"s1": "s1", "s2": "s2"}, "build": {"kind": "pairs"},
              "mining": {"scorer": "bm25", "num_negatives": 2, "range_min": 0}, **overrides}
    recipe = {key: value for key, value in recipe.items() if value is not None}  # None: leave the key out
    path = tmp_path / f"recipe-{len(list(tmp_path.glob('recipe-*')))}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _pairs(tmp_path, n=20, name="pairs.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps({"s1": f"how do I sort list number {i} in place",
                                        "s2": f"use sorted on list {i} or call sort"}) + "\n" for i in range(n)))
    return path


def _curated(tmp_path, name="out"):
    out = tmp_path / name
    run_recipe(_recipe(tmp_path, _pairs(tmp_path)), out, backbone="tiny-qwen3", show_progress=False)
    return out


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _sleeper():
    """A live process that is not this one (a lock holder that is still running)."""
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])


def _dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


def _write_lock(folder: Path, pid: int, host: str | None = None) -> Path:
    path = lock_path(folder)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"pid": pid, "host": host or socket.gethostname(), "command": "f2llm curate probe",
                                "started": time.time()}))
    return path


def _one_line_error(done: subprocess.CompletedProcess, *words: str) -> None:
    assert done.returncode != 0, done.stdout[-1000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    for word in words:
        assert word in done.stderr, done.stderr[-2000:]


# -- 1. own only what you wrote -------------------------------------------------------------------------------------
def test_rerun_refuses_an_out_holding_files_added_since_and_deletes_nothing(tmp_path):
    out = _curated(tmp_path)
    (out / "notes.txt").write_text("my notes")
    (out / "new_source.jsonl").write_text('{"s1": "a", "s2": "b"}\n')
    before = _snapshot(out)
    with pytest.raises(DataError, match=r"did not write \(new_source.jsonl, notes.txt\)"):
        run_recipe(_recipe(tmp_path, _pairs(tmp_path)), out, backbone="tiny-qwen3", show_progress=False)
    assert _snapshot(out) == before


def test_a_file_added_deep_inside_an_out_is_named(tmp_path):
    out = _curated(tmp_path)
    (out / "tuples" / "mine.parquet").write_bytes(b"PAR1")
    with pytest.raises(DataError, match="tuples/mine.parquet"):
        run_recipe(_recipe(tmp_path, _pairs(tmp_path)), out, backbone="tiny-qwen3", show_progress=False)
    assert (out / "tuples" / "mine.parquet").read_bytes() == b"PAR1"


def test_rerun_into_an_own_out_still_replaces_it(tmp_path):
    out = _curated(tmp_path)
    run_recipe(_recipe(tmp_path, _pairs(tmp_path, 25, "b.jsonl"), name="second"), out, backbone="tiny-qwen3",
               show_progress=False)
    assert list(TokenizedData(out / "tokenized").datasets) == ["second"]
    assert json.loads((out / FILES_RECORD).read_text())["files"]


def test_a_trainer_output_dir_inside_a_pipeline_output_is_refused(tmp_path):
    out = _curated(tmp_path)
    config = TrainConfig.from_dict({"model": "tiny-qwen3", "data_dir": str(out / "tokenized"), "max_steps": 1,
                                    "per_device_batch": 2, "num_negatives": 1, "output_dir": str(out / "run")})
    with pytest.raises(RunFolderError, match=r"is inside .*out, a folder another tool wrote as a whole"):
        train(config, export=False)
    assert not (out / "run").exists()


def test_a_curation_into_a_folder_another_live_process_writes_is_refused_naming_it(tmp_path):
    holder = _sleeper()
    try:
        out = tmp_path / "out"
        _write_lock(out, holder.pid)
        live_work = tmp_path / ".out-curating-live"
        live_work.mkdir()
        (live_work / "part.bin").write_bytes(b"x")
        with pytest.raises(DataError, match=f"being written by process {holder.pid} on {socket.gethostname()}"):
            run_recipe(_recipe(tmp_path, _pairs(tmp_path)), out, backbone="tiny-qwen3", show_progress=False)
        assert (live_work / "part.bin").exists(), "the live run's work folder must not be removed"
        assert not out.exists()
    finally:
        holder.kill()


def test_a_lock_left_by_a_dead_process_is_reported_and_taken_over(tmp_path, capsys):
    out = tmp_path / "out"
    dead = _dead_pid()
    lock = _write_lock(out, dead)
    run_recipe(_recipe(tmp_path, _pairs(tmp_path)), out, backbone="tiny-qwen3", show_progress=False)
    assert f"taking over the lock left by process {dead}" in capsys.readouterr().err
    assert not lock.exists() and (out / "tokenized" / "manifest.json").exists()


def test_a_lock_from_another_host_is_refused_with_the_file_to_delete(tmp_path):
    out = tmp_path / "out"
    lock = _write_lock(out, 1, host="node-17.cluster")
    with pytest.raises(DataError, match=f"on another host.*delete {lock}"):
        run_recipe(_recipe(tmp_path, _pairs(tmp_path)), out, backbone="tiny-qwen3", show_progress=False)


def test_two_concurrent_curations_into_one_out_one_is_refused(tmp_path):
    recipe = _recipe(tmp_path, _pairs(tmp_path, 3000))
    command = [sys.executable, "-m", "f2llm_lib.data.pipeline", str(recipe), "--out", str(tmp_path / "out"),
               "--backbone", "tiny-qwen3"]
    runs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outcomes = sorted((run.wait(timeout=300), run.stderr.read()) for run in runs)
    (won, won_err), (lost, lost_err) = outcomes
    assert won == 0, won_err[-2000:]
    assert lost == 1 and "being written by process" in lost_err and "Traceback" not in lost_err, lost_err[-2000:]
    assert list(TokenizedData(tmp_path / "out" / "tokenized").datasets) == ["probe"]
    assert not lock_path(tmp_path / "out").exists()


def test_two_trainers_on_one_output_dir_the_second_is_refused(tmp_path, data_dir):
    holder = _sleeper()
    try:
        run = tmp_path / "run"
        _write_lock(run, holder.pid)
        with pytest.raises(RunFolderError, match=f"being written by process {holder.pid}"):
            train(TrainConfig.from_dict(_config(tmp_path, data_dir)), export=False)
        assert not (run / "metrics.jsonl").exists() and not (run / "checkpoints").exists()
    finally:
        holder.kill()


def test_the_trainer_releases_its_lock_when_done(tmp_path, data_dir):
    train(TrainConfig.from_dict(_config(tmp_path, data_dir, max_steps=1)), export=False)
    assert not lock_path(tmp_path / "run").exists()


def test_runner_run_folders_are_unique_within_one_second(tmp_path, monkeypatch):
    from f2llm_lib.tooling import notebook_runner

    monkeypatch.setattr(notebook_runner, "RUNS_DIR", tmp_path)
    folders = {notebook_runner.new_run_folder("smoke") for _ in range(5)}
    assert len(folders) == 5 and all(f.is_dir() for f in folders)


def test_run_dir_holding_an_earlier_run_is_refused_unless_continued(tmp_path):
    from f2llm_lib.tooling.notebook_runner import all_notebooks

    earlier = tmp_path / "old"
    (earlier / "04_mteb_evaluation").mkdir(parents=True)
    (earlier / "04_mteb_evaluation" / "results.json").write_text('{"rows": []}')
    first = all_notebooks()[0]
    with pytest.raises(NotebookRunError, match=r"holds an earlier run \(04_mteb_evaluation\).*--continue"):
        run_profile("smoke", [first], run_dir=earlier)
    assert not (earlier / first.name).exists()
    run_profile("smoke", [first], run_dir=earlier, continue_run=True, report=False)
    assert (earlier / first.stem / "results.json").exists()


def test_an_export_into_a_folder_with_a_user_file_is_refused(tmp_path, tiny):
    from f2llm_lib.embedder.export import export_sentence_transformers
    from f2llm_lib.embedder.model import F2LLMEncoder

    encoder = F2LLMEncoder(*tiny)
    export_sentence_transformers(encoder, tmp_path / "final")
    (tmp_path / "final" / "MY_README.md").write_text("mine")
    with pytest.raises(FileExistsError, match="MY_README.md"):
        export_sentence_transformers(encoder, tmp_path / "final")
    assert (tmp_path / "final" / "MY_README.md").read_text() == "mine"


def test_atomic_folder_records_its_files_and_replaces_only_its_own(tmp_path):
    with atomic_folder(tmp_path / "f") as work:
        (work / "a.txt").write_text("1")
    assert json.loads((tmp_path / "f" / FILES_RECORD).read_text())["files"] == ["a.txt"]
    with atomic_folder(tmp_path / "f") as work:
        (work / "b.txt").write_text("2")
    assert sorted(p.name for p in (tmp_path / "f").iterdir()) == [FILES_RECORD, "b.txt"]
    (tmp_path / "f" / "user.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="user.txt"), atomic_folder(tmp_path / "f") as work:
        (work / "c.txt").write_text("3")
    assert (tmp_path / "f" / "user.txt").exists() and (tmp_path / "f" / "b.txt").exists()


def test_output_lock_is_exclusive_within_one_process_too(tmp_path):
    with output_lock(tmp_path / "x", "first"), pytest.raises(RuntimeError, match="being written by process"), \
            output_lock(tmp_path / "x", "second"):
        pass
    assert not lock_path(tmp_path / "x").exists()


# -- 2. readers parse the formats as defined ------------------------------------------------------------------------
def test_a_csv_with_a_quoted_newline_keeps_it(tmp_path):
    path = tmp_path / "a.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerows([["s1", "s2"], ["first line\nsecond line", "b"], ["c", "d"]])
    rows = [r for _, r in read_local(path)]
    assert rows == [{"s1": "first line\nsecond line", "s2": "b"}, {"s1": "c", "s2": "d"}]


def test_json_lines_with_a_raw_line_separator_in_a_string_are_valid(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"s1": "a\u2028b", "s2": "c"}\n{"s1": "d", "s2": "e"}\n', encoding="utf-8")
    assert [r["s1"] for _, r in read_local(path)] == ["a\u2028b", "d"]


@pytest.mark.parametrize("suffix", ["csv", "jsonl", "tsv"])
def test_a_utf8_byte_order_mark_is_not_part_of_the_first_column(tmp_path, suffix):
    path = tmp_path / f"a.{suffix}"
    body = {"csv": "s1,s2\na,b\n", "tsv": "s1\ts2\na\tb\n", "jsonl": '{"s1": "a", "s2": "b"}\n'}[suffix]
    path.write_bytes(b"\xef\xbb\xbf" + body.encode())
    assert [r for _, r in read_local(path)] == [{"s1": "a", "s2": "b"}]


def test_qrels_with_a_byte_order_mark_load(tmp_path):
    folder = tmp_path / "beir"
    (folder / "qrels").mkdir(parents=True)
    (folder / "queries.jsonl").write_text('{"_id": "q1", "text": "sort a list"}\n')
    (folder / "corpus.jsonl").write_text('{"_id": "d1", "text": "use sorted"}\n{"_id": "d2", "text": "other"}\n')
    (folder / "qrels" / "test.tsv").write_bytes(b"\xef\xbb\xbfquery-id\tcorpus-id\tscore\nq1\td1\t1\n")
    task = load_beir_folder(folder)
    assert task.dataset["default"]["test"]["relevant_docs"] == {"q1": {"d1": 1}}


def test_an_unquoted_tsv_with_a_quote_character_keeps_every_row(tmp_path):
    path = tmp_path / "a.tsv"
    path.write_text('s1\ts2\nthe "best" way\tb\nc\td\ne\tf\n')
    rows = [r for _, r in read_local(path)]
    assert rows == [{"s1": 'the "best" way', "s2": "b"}, {"s1": "c", "s2": "d"}, {"s1": "e", "s2": "f"}]


def test_a_csv_row_with_missing_fields_names_its_line(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text("s1,s2\na,b\nonly-one\n")
    with pytest.raises(DataError, match=r"a.csv:3: fewer fields than the header has \(no s2\)"):
        list(read_local(path))


def _released(tmp_path, extra: dict) -> Path:
    rows = {"query": [f"query {i}" for i in range(20)], "passage": [f"answer {i}" for i in range(20)],
            "negative_1": [f"wrong {i}" for i in range(20)], **extra}
    path = tmp_path / "released.parquet"
    pq.write_table(pa.table(rows), path)
    return _recipe(tmp_path, path, fields={"query": "query", "positive": "passage"}, build={"kind": "tuples"},
                   mining=None)


def test_a_released_parquet_column_that_looks_like_a_negative_is_refused(tmp_path):
    recipe = _released(tmp_path, {"negative_source": ["bm25"] * 20})
    with pytest.raises(DataError, match=r"\['negative_source'\].*not named negative_<n>"):
        curate(load_recipe(recipe), show_progress=False)


def test_a_released_parquet_extra_column_is_named_and_never_a_negative(tmp_path, capsys):
    recipe = _released(tmp_path, {"source": ["bm25"] * 20})
    tuples = curate(load_recipe(recipe), show_progress=False).datasets["probe"]
    assert all(t.negatives == [f"wrong {t.query.split()[-1]}"] for t in tuples)
    assert "ignoring column(s) ['source']" in capsys.readouterr().err


def test_a_labelled_folder_with_two_test_files_is_refused(tmp_path):
    rows = [{"text": f"text {i}", "label": i % 2} for i in range(10)]
    for name in ("train.jsonl", "test.jsonl"):
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "test.csv").write_text("text,label\nold,0\nolder,1\n")
    with pytest.raises(DataError, match="test.csv and test.jsonl are both the test split"):
        load_labelled_folder(tmp_path)


def test_data_files_all_names_the_files_it_does_not_read(tmp_path, capsys):
    from f2llm_lib.data.recipes import f2llm_mix_files

    folder = tmp_path / "mix"
    folder.mkdir()
    pq.write_table(pa.table({"query": ["q"], "passage": ["p"]}), folder / "retrieval_a.parquet")
    (folder / "retrieval_b.jsonl").write_text('{"query": "q", "passage": "p"}\n')
    recipe = load_recipe(_recipe(tmp_path, folder, source={"kind": "local", "path": str(folder), "data_files": "all"}))
    assert [Path(f).name for f in f2llm_mix_files(recipe)] == ["retrieval_a.parquet"]
    assert "not read: retrieval_b.jsonl" in capsys.readouterr().err


# -- 3. an evaluation cache that cannot go stale ----------------------------------------------------------------------
def _sts(path: Path, flip: bool) -> Path:
    pairs = [("a cat sits on the mat", "a cat is on the mat", 4.8), ("a dog runs", "the market fell", 0.2),
             ("he sorts the list", "the list is sorted by him", 4.5), ("rain today", "a sunny beach", 0.5),
             ("open the file", "the file is opened", 4.0), ("red car", "blue sky", 0.1)]
    path.write_text("".join(json.dumps({"s1": a, "s2": b, "score": (5 - s) if flip else s}) + "\n"
                            for a, b, s in pairs))
    return path


def test_an_sts_file_edited_in_place_is_scored_again(tmp_path, tiny):
    from f2llm_lib.embedder.model import F2LLMEncoder
    from f2llm_lib.evaluation.mteb_model import F2LLMMtebModel
    from f2llm_lib.evaluation.run import evaluate
    from f2llm_lib.evaluation.tasks import load_sts_file

    model = F2LLMMtebModel(F2LLMEncoder(*tiny, max_length=32), "probe")
    path = tmp_path / "sts.jsonl"
    first = evaluate({"m": model}, [load_sts_file(_sts(path, flip=False), "LocalSTS")], tmp_path / "cache")
    second = evaluate({"m": model}, [load_sts_file(_sts(path, flip=True), "LocalSTS")], tmp_path / "cache")
    assert first[0]["score"] == pytest.approx(-second[0]["score"], abs=0.01) and first[0]["score"] != 0


def test_another_query_cap_is_another_cache_entry():
    from f2llm_lib.evaluation.run import task_cache_key

    small, large = pycode_tasks(max_queries=20)[0], pycode_tasks(max_queries=30)[0]
    assert task_cache_key(small) != task_cache_key(large)
    assert task_cache_key(small) == task_cache_key(pycode_tasks(max_queries=20)[0])


@pytest.mark.parametrize("change", ["max_length", "pooling", "instruction"])
def test_every_embedding_setting_changes_the_cached_revision(tiny, monkeypatch, change):
    from f2llm_lib.embedder.model import F2LLMEncoder
    from f2llm_lib.evaluation import instructions
    from f2llm_lib.evaluation.mteb_model import F2LLMMtebModel

    def revision(**encoder_args):
        return F2LLMMtebModel(F2LLMEncoder(*tiny, **encoder_args), "probe").mteb_model_meta.revision

    base = revision(max_length=64)
    if change == "max_length":
        assert revision(max_length=128) != base
    elif change == "pooling":
        assert revision(max_length=64, pooling="mean") != base
    else:
        monkeypatch.setitem(instructions.BY_TYPE, "Retrieval", "A different instruction")
        assert revision(max_length=64) != base
    assert revision(max_length=64) == revision(max_length=64) or change == "instruction"


# -- 4. data checked on open -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tokenized_pycode(tmp_path_factory.mktemp("data"), 48, 48)


def _copy_data(tmp_path, data_dir) -> Path:
    import shutil

    copy = tmp_path / "data"
    shutil.copytree(data_dir, copy)
    return copy


@pytest.mark.parametrize(("cut", "match"), [(8, "cut short or altered"), (3, "incomplete or corrupt"),
                                           ("40%", "cut short or altered")])
def test_a_tokens_file_cut_short_is_refused_on_open(tmp_path, data_dir, cut, match):
    copy = _copy_data(tmp_path, data_dir)
    tokens = copy / "corpus" / "tokens.bin"
    size = tokens.stat().st_size
    keep = int(size * 0.6) // 4 * 4 if cut == "40%" else size - cut
    with tokens.open("r+b") as handle:
        handle.truncate(keep)
    with pytest.raises(TokenizedDataError, match=match):
        TokenizedData(copy)


@pytest.mark.parametrize("name", ["../../outside", "/tmp/absolute", "a/b", ".."])
def test_a_dataset_name_in_a_manifest_must_be_a_plain_name(tmp_path, data_dir, name):
    copy = _copy_data(tmp_path, data_dir)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["datasets"] = {name: next(iter(manifest["datasets"].values()))}
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(TokenizedDataError, match="is not a plain name"):
        TokenizedData(copy)


def test_a_negative_id_outside_the_corpus_is_refused_on_open(tmp_path, data_dir):
    copy = _copy_data(tmp_path, data_dir)
    neg = next((copy / "queries").iterdir()) / "neg_ids.bin"
    ids = np.fromfile(neg, dtype=np.int32)
    ids[0] = 10**6
    ids.tofile(neg)
    with pytest.raises(TokenizedDataError, match="doc ids outside the corpus"):
        TokenizedData(copy)


def test_resume_after_the_data_was_curated_again_is_refused(tmp_path, data_dir):
    copy = _copy_data(tmp_path, data_dir)
    config = _config(tmp_path, copy, max_steps=2, stop_after=1)
    train(TrainConfig.from_dict(config), export=False)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["recipe"] = "curated again"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(RunFolderError, match=r"not the data this run started on \(fingerprint \w+ then, \w+ now"):
        train(TrainConfig.from_dict(config), resume=True, export=False)


# -- 5. runs that survive a cluster's accidents ------------------------------------------------------------------------
def _config(tmp_path, data_dir, **overrides) -> dict:
    return {"model": "tiny-qwen3", "data_dir": str(data_dir), "max_steps": 3, "per_device_batch": 4,
            "num_negatives": 3, "warmup_steps": 1, "lr": 1e-3, "eval_every": 100, "save_every": 1,
            "val_fraction": 0.0, "output_dir": str(tmp_path / "run"), **overrides}


def _cli(tmp_path, config: dict, *extra):
    path = tmp_path / f"cfg-{len(list(tmp_path.glob('cfg-*')))}.yaml"
    path.write_text(yaml.safe_dump(config))
    return subprocess.run([sys.executable, "-m", "f2llm_lib.train", "--config", str(path), "--no-export", *extra],
                          capture_output=True, text=True, timeout=600)


def test_sigterm_saves_a_checkpoint_exits_zero_and_resume_continues(tmp_path, data_dir):
    config = _config(tmp_path, data_dir, max_steps=4, save_every=100)
    path = tmp_path / "term.yaml"
    path.write_text(yaml.safe_dump(config))
    stopped = subprocess.run([sys.executable, str(Path(__file__).with_name("train_then_sigkill.py")), "--config",
                              str(path), "--step", "2", "--signal", "TERM"], capture_output=True, text=True,
                             timeout=600)
    assert stopped.returncode == 0, stopped.stderr[-2000:]
    assert "SIGTERM: stopped after step 2, checkpoint saved" in stopped.stdout + stopped.stderr
    assert "interrupted SIGTERM" in stopped.stdout
    assert (tmp_path / "run" / "checkpoints" / "step_2" / ".complete").exists()
    resumed = _cli(tmp_path, config, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


@pytest.mark.parametrize(("damage", "file"), [("truncate", "model.safetensors"), ("random", "optimizer.bin")])
def test_resume_skips_a_corrupt_newest_checkpoint_saying_why(tmp_path, data_dir, capsys, damage, file):
    train(TrainConfig.from_dict(_config(tmp_path, data_dir, max_steps=2)), export=False)
    target = tmp_path / "run" / "checkpoints" / "step_2" / file
    if damage == "truncate":
        target.write_bytes(target.read_bytes()[:100])
    else:
        target.write_bytes(os.urandom(4096))
    train(TrainConfig.from_dict(_config(tmp_path, data_dir, max_steps=2)), resume=True, export=False)
    text = capsys.readouterr()
    text = text.out + text.err
    assert "step_2: corrupt" in text and "falling back" in text, text[-2000:]
    assert "pickled Python objects" not in text
    assert "resumed from" in text and "step_1" in text.split("resumed from")[1].splitlines()[0]


def test_a_metrics_file_whose_last_line_was_cut_does_not_block_resume(tmp_path, data_dir):
    config = _config(tmp_path, data_dir, max_steps=3, stop_after=2)
    train(TrainConfig.from_dict(config), export=False)
    metrics = tmp_path / "run" / "metrics.jsonl"
    metrics.write_text(metrics.read_text() + '{"step": 3, "loss": 1.2, "data')
    train(TrainConfig.from_dict({**config, "stop_after": 0}), resume=True, export=False)
    assert [json.loads(line)["step"] for line in metrics.read_text().splitlines()] == [1, 2, 3]


def test_a_broken_metrics_line_before_the_last_is_named(tmp_path, data_dir):
    config = _config(tmp_path, data_dir, max_steps=3, stop_after=2)
    train(TrainConfig.from_dict(config), export=False)
    metrics = tmp_path / "run" / "metrics.jsonl"
    lines = metrics.read_text().splitlines()
    metrics.write_text("not json\n" + "\n".join(lines[1:]) + "\n")
    with pytest.raises(RunFolderError, match=r"metrics.jsonl:1: not a JSON line"):
        train(TrainConfig.from_dict({**config, "stop_after": 0}), resume=True, export=False)


# -- 6. bounded parsing ---------------------------------------------------------------------------------------------
LAUGHS = "\n".join(["a: &a [x, x, x, x, x, x, x, x, x, x]"]
                   + [f"{chr(98 + i)}: &{chr(98 + i)} [" + ", ".join([f"*{chr(97 + i)}"] * 10) + "]" for i in range(8)])


def test_a_recipe_of_nested_aliases_is_refused_before_expansion(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(LAUGHS + "\nname: probe\n")
    start = time.perf_counter()
    with pytest.raises(DataError, match=r"bomb.yaml:2: an alias \(\*'a'\)"):
        load_recipe(path)
    assert time.perf_counter() - start < 2.0 and len(path.read_bytes()) < 1000


def test_a_config_with_an_alias_is_refused(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("lr: &r 0.001\nmin_lr: *r\n")
    with pytest.raises(ConfigError, match="an alias"):
        TrainConfig.from_yaml(path)


def test_an_oversized_settings_file_is_refused(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text("name: probe\ndescription: '" + "x" * 300_000 + "'\n")
    with pytest.raises(DataError, match="settings files are limited to"):
        load_recipe(path)


def test_duplicate_keys_in_a_config_are_refused_naming_key_and_line(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("lr: 0.001\nmax_steps: 10\nlr: 0.1\n")
    with pytest.raises(ConfigError, match=r"cfg.yaml:3: the key 'lr' appears twice"):
        TrainConfig.from_yaml(path)


def test_error_messages_do_not_build_an_unbounded_repr():
    with pytest.raises(SettingsError) as caught:
        load_yaml("a: !!python/object:os.system [" + "x, " * 100_000 + "]", "f.yaml")
    assert len(str(caught.value)) < 400


# -- 7. one line, not a traceback ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("key", "value", "words"), [
    ("weight_decay", -0.1, "weight_decay must be 0 or more"),
    ("seed", -1, "seed must be 0 or more"),
    ("lr", "2e-5", "write 2.0e-5"),
    ("mixed_precision", False, "quote the word"),
    ("mixed_precision", "fp16", "fp16 on a CPU"),
    ("lora_rank", 4, "lora_targets ['nope'] are not modules"),
])
def test_config_mistakes_are_one_line_from_the_command(tmp_path, data_dir, key, value, words, capsys):
    overrides = {key: value, "lora_targets": "nope"} if key == "lora_rank" else {key: value}
    if key == "mixed_precision" and value == "fp16":  # starts an accelerator in fp16: its own process
        _one_line_error(_cli(tmp_path, _config(tmp_path, data_dir, **overrides)), words)
    else:  # the command's own entry point, in this process (no interpreter start per case)
        from f2llm_lib.train.__main__ import main

        path = tmp_path / "cfg.yaml"
        path.write_text(yaml.safe_dump(_config(tmp_path, data_dir, **overrides)))
        status = main(["--config", str(path), "--no-export"])
        printed = capsys.readouterr()
        assert status == 2 and "Traceback" not in printed.err and words in printed.err, printed.err[-2000:]
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_an_output_dir_that_is_a_file_is_one_line(tmp_path, data_dir, capsys):
    from f2llm_lib.train.__main__ import main

    (tmp_path / "run").write_text("x")
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(_config(tmp_path, data_dir)))
    assert main(["--config", str(path), "--no-export"]) == 2
    assert "is a file" in capsys.readouterr().err
    assert (tmp_path / "run").read_text() == "x"


def test_out_dot_is_refused_before_curation(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match="is the working directory or above it"):
        run_recipe(_recipe(tmp_path, _pairs(tmp_path)), Path("."), backbone="tiny-qwen3", show_progress=False)
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_bm25_on_texts_without_words(tmp_path):
    scorer = BM25Scorer()
    scorer.fit(["sort a list", "\U0001f642\U0001f642", "read a file"])
    scores = scorer.scores(["\U0001f642", "sort"])
    assert scores.shape == (2, 3) and not scores[0].any() and scores[1, 0] > 0
    with pytest.raises(DataError, match="BM25 finds no words in the 2 candidate texts"):
        BM25Scorer().fit(["\U0001f642", "\U0001f643"])


def _f2llm(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "f2llm_lib.tooling.cli", *args], capture_output=True, text=True,
                          timeout=300, cwd=cwd, errors="replace")


def test_embed_with_a_binary_or_empty_argument_is_one_line():
    # the real command: bytes that are not UTF-8 reach Python's argv as surrogates
    _one_line_error(_f2llm(b"embed", b"ok text", b"\xff\xfe", b"--model", b"tiny-qwen3"), "not UTF-8 text")


def test_embed_with_an_empty_text_or_a_missing_model_is_one_line(tmp_path, capsys):
    from f2llm_lib.tooling.cli import main

    assert main(["embed", "ok text", "   ", "--model", "tiny-qwen3"]) == 2
    assert "is empty" in capsys.readouterr().err
    assert main(["embed", "a text", "--model", str(tmp_path / "no-such-model")]) == 2
    assert "not found locally" in capsys.readouterr().err


def _model_folder(tmp_path, tiny, name="model") -> Path:
    model, tokenizer = tiny
    folder = tmp_path / name
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


def test_a_model_folder_with_custom_code_is_refused(tmp_path, tiny):
    folder = _model_folder(tmp_path, tiny)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "modeling_evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "modeling_evil.py").write_text("import os\nos.system('touch /tmp/pwned')\n")
    with pytest.raises(BackboneError, match=r"comes with its own code \(AutoModel\).*trust_remote_code"):
        load_backbone(str(folder))


def test_a_model_folder_without_config_json_is_named(tmp_path, tiny):
    folder = _model_folder(tmp_path, tiny)
    (folder / "config.json").unlink()
    with pytest.raises(BackboneError, match="no config.json"):
        load_backbone(str(folder))


def test_a_model_folder_with_truncated_weights_is_named(tmp_path, tiny):
    folder = _model_folder(tmp_path, tiny)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(BackboneError, match="model"):
        load_backbone(str(folder))


def test_one_class_classification_and_a_tiny_clustering_set_are_refused(tmp_path):
    for name in ("train.jsonl", "test.jsonl"):
        (tmp_path / name).write_text("".join(json.dumps({"text": f"t{i}", "label": "same"}) + "\n"
                                             for i in range(12)))
    with pytest.raises(DataError, match="every row has the label 'same'.*at least two labels"):
        load_labelled_folder(tmp_path)
    small = tmp_path / "small"
    small.mkdir()
    (small / "test.jsonl").write_text("".join(json.dumps({"text": f"t{i}", "label": i % 2}) + "\n" for i in range(4)))
    with pytest.raises(DataError, match="4 texts; clustering needs at least 10"):
        load_labelled_folder(small, kind="clustering")


# -- silent deviations, now said ---------------------------------------------------------------------------------------
def test_warmup_longer_than_the_run_is_warned(tmp_path, data_dir, capsys):
    train(TrainConfig.from_dict(_config(tmp_path, data_dir, max_steps=2, warmup_steps=5)), export=False)
    assert "warmup_steps 5 >= max_steps 2" in capsys.readouterr().out


def test_texts_longer_than_the_model_positions_are_refused(tmp_path, data_dir, monkeypatch):
    from f2llm_lib.embedder import tiny as tiny_module

    original = tiny_module.tiny_qwen3

    def short_positions(*args, **kwargs):
        model = original(*args, **kwargs)
        model.config.max_position_embeddings = 16
        return model

    monkeypatch.setattr("f2llm_lib.embedder.backbones.tiny_qwen3", short_positions)
    with pytest.raises(ConfigError, match="texts of up to 48 tokens .* has 16 positions"):
        train(TrainConfig.from_dict(_config(tmp_path, data_dir)), export=False)


def test_a_dataset_too_small_for_one_batch_is_named(tmp_path, capsys):
    from f2llm_lib.data.schema import TrainingTuple
    from f2llm_lib.data.tokenized import write_training_files
    from f2llm_lib.embedder.backbones import smollm2_tokenizer
    from f2llm_lib.train.loader import MultitaskLoader

    def tuples(name, n):
        return [TrainingTuple(name, "retrieval", "Find it", f"{name} query {i}", f"{name} answer {i}",
                              [f"{name} other {i}"]) for i in range(n)]

    tokenizer = smollm2_tokenizer()
    write_training_files({"big": tuples("big", 40), "small": tuples("small", 5)}, tokenizer, tmp_path / "t", 32)
    loader = MultitaskLoader(tmp_path / "t", 8, 1, tokenizer.pad_token_id, val_fraction=0.0)
    assert loader.datasets == ["big"]
    assert "never trained on: small (5 training rows)" in capsys.readouterr().out


def test_rows_whose_query_is_the_positive_are_dropped_and_counted(tmp_path, capsys):
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps({"query": f"q{i}", "passage": f"q{i}" if i < 3 else f"p{i}",
                                        "negative_1": f"n{i}"}) + "\n" for i in range(10)))
    recipe = _recipe(tmp_path, path, fields={"query": "query", "positive": "passage"}, build={"kind": "tuples"},
                     mining=None)
    tuples = curate(load_recipe(recipe), show_progress=False).datasets["probe"]
    assert len(tuples) == 7 and all(t.query != t.positive for t in tuples)
    assert "dropped 3 of 10 rows whose query equals its positive" in capsys.readouterr().err


def test_a_misspelt_profile_file_is_refused_with_the_right_name(tmp_path, monkeypatch):
    from f2llm_lib.tooling import notebook_runner

    folder = tmp_path / "params" / "mine"
    folder.mkdir(parents=True)
    (folder / "03_multi_gpu_finetunning.yaml").write_text("MAX_STEPS: 2\n")
    monkeypatch.setattr(notebook_runner, "PARAMS_DIR", tmp_path / "params")
    first = notebook_runner.all_notebooks()[0]
    with pytest.raises(NotebookParameterError, match=r"did you mean 03_multi_gpu_finetuning.yaml\?"):
        load_profile("mine", first)


def test_bf16_on_a_cpu_trains_and_says_so(tmp_path, data_dir):
    done = _cli(tmp_path, _config(tmp_path, data_dir, max_steps=1, mixed_precision="bf16"))
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["precision"] == "bf16" and np.isfinite(summary["final_loss"])


def test_a_csv_read_through_io_with_crlf_line_endings(tmp_path):
    path = tmp_path / "w.csv"
    path.write_bytes(b"s1,s2\r\n\"multi\r\nline\",b\r\nc,d\r\n")
    rows = [r for _, r in read_local(path)]
    assert rows[0]["s1"] == "multi\r\nline" and rows[1] == {"s1": "c", "s2": "d"}


def test_a_cache_a_tool_wrote_inside_another_tools_output_is_not_foreign(tmp_path):
    from f2llm_lib.ownership import foreign_files

    with atomic_folder(tmp_path / "data") as work:
        (work / "manifest.json").write_text("{}")
    with atomic_folder(tmp_path / "data" / "teacher" / "minilm") as work:  # e.g. the distillation teacher's cache
        (work / "embeddings.npy").write_bytes(b"x")
    assert foreign_files(tmp_path / "data") == []
    (tmp_path / "data" / "teacher" / "minilm" / "mine.txt").write_text("a user's file inside the cache")
    assert foreign_files(tmp_path / "data") == ["teacher/minilm/mine.txt"]
