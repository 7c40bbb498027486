"""Misuse, probed as users misuse it: each case must end in a message that names the problem (file, row or key and
the fix), or in correct behaviour, and leave nothing partial or stale behind. Training cases use tiny-qwen3."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import tokenized_pycode

from f2llm_lib.data.pipeline import check_output_dir, curate, run_recipe
from f2llm_lib.data.recipes import load_recipe
from f2llm_lib.data.schema import DataError, TrainingTuple
from f2llm_lib.data.tokenized import TokenizedData, TokenizedDataError, write_training_files
from f2llm_lib.embedder.backbones import BackboneError, load_backbone, load_tokenizer, smollm2_tokenizer
from f2llm_lib.evaluation.tasks import load_beir_folder, load_sts_file
from f2llm_lib.tooling.notebook_runner import NotebookRunError, run_profile
from f2llm_lib.train.checkpoints import RunFolderError
from f2llm_lib.train.config import ConfigError, TrainConfig
from f2llm_lib.train.loader import MultitaskLoader
from f2llm_lib.train.trainer import train


# -- data ---------------------------------------------------------------------------------------------------------
def _recipe(tmp_path, source_file, **overrides):
    recipe = {"name": "probe", "task_type": "retrieval", "source": {"kind": "local", "path": str(source_file)},
              "fields": {"s1": "s1", "s2": "s2"}, "build": {"kind": "pairs"},
              "mining": {"scorer": "bm25", "num_negatives": 2, "range_min": 0}, **overrides}
    path = tmp_path / f"recipe-{len(list(tmp_path.glob('recipe-*')))}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _pairs(tmp_path, rows, name="pairs.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _sentences(n, repeat=1):
    base = [{"s1": f"how do I sort list number {i} in place", "s2": f"use sorted on list {i} or call sort"}
            for i in range(n)]
    return [row for row in base for _ in range(repeat)]


def test_duplicate_source_rows_are_dropped_loudly(tmp_path, capsys):
    result = curate(load_recipe(_recipe(tmp_path, _pairs(tmp_path, _sentences(50, repeat=8)))), show_progress=False)
    tuples = result.datasets["probe"]
    assert len(tuples) == 50 and len({(t.query, t.positive) for t in tuples}) == 50
    assert result.duplicates["probe"] == 350
    assert "dropped 350 duplicate (query, positive) rows" in capsys.readouterr().err


def test_an_empty_source_file_is_an_error(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DataError, match="empty.jsonl: no records"):
        curate(load_recipe(_recipe(tmp_path, empty)), show_progress=False)


@pytest.mark.parametrize(("name", "match"), [("/tmp/evil", "becomes a folder and file name"),
                                             ("../up", "becomes a folder and file name"),
                                             (".hidden", "becomes a folder and file name")])
def test_a_recipe_name_must_be_a_safe_file_name(tmp_path, name, match):
    with pytest.raises(DataError, match=match):
        load_recipe(_recipe(tmp_path, _pairs(tmp_path, _sentences(5)), name=name))


@pytest.mark.parametrize(("section", "key", "value", "expected"), [
    ("mining", "num_negatives", "seven", "mining.num_negatives must be int"),
    ("mining", "max_score", "high", r"mining.max_score must be a number \(or null\)"),
    ("mining", "range_min", 1.5, "mining.range_min must be int"),
    ("build", "score_min", "4", "build.score_min must be a number, got str '4' \\(a quoted number is text"),
])
def test_wrong_types_in_mining_and_build_name_the_key(tmp_path, section, key, value, expected):
    overrides = {"mining": {"scorer": "bm25"}, "build": {"kind": "pairs"}}
    overrides[section] = {**overrides[section], key: value}
    with pytest.raises(DataError, match=expected):
        load_recipe(_recipe(tmp_path, _pairs(tmp_path, _sentences(5)), **overrides))


def test_a_parquet_suffix_on_another_format_is_named(tmp_path):
    fake = tmp_path / "data.parquet"
    fake.write_text('{"s1": "a", "s2": "b"}\n')
    with pytest.raises(DataError, match="data.parquet: not a readable parquet file"):
        curate(load_recipe(_recipe(tmp_path, fake)), show_progress=False)


def test_out_that_is_a_file_or_unwritable_is_refused_before_curation(tmp_path):
    a_file = tmp_path / "out"
    a_file.write_text("x")
    with pytest.raises(DataError, match="is a file"):
        run_recipe(_recipe(tmp_path, _pairs(tmp_path, _sentences(20))), a_file, show_progress=False)
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(DataError, match="not a writable folder"):
            check_output_dir(locked / "sub" / "out")


def test_out_with_foreign_files_is_refused(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my own notes")
    with pytest.raises(DataError, match="holds files that this pipeline did not write"):
        run_recipe(_recipe(tmp_path, _pairs(tmp_path, _sentences(20))), out, backbone="tiny-qwen3",
                   show_progress=False)
    assert (out / "notes.txt").read_text() == "my own notes"


def test_rerun_into_the_same_out_replaces_it_whole(tmp_path):
    out = tmp_path / "out"
    first = _recipe(tmp_path, _pairs(tmp_path, _sentences(30)), name="first")
    run_recipe(first, out, backbone="tiny-qwen3", show_progress=False)
    second = _recipe(tmp_path, _pairs(tmp_path, _sentences(25), "b.jsonl"), name="second")
    run_recipe(second, out, backbone="tiny-qwen3", show_progress=False)
    assert sorted(p.name for p in (out / "tuples").iterdir()) == ["second.parquet"]  # no stale first.parquet
    assert list(TokenizedData(out / "tokenized").datasets) == ["second"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_max_length_below_two_is_refused(tmp_path):
    with pytest.raises(DataError, match="--max-length must be at least 2"):
        run_recipe(_recipe(tmp_path, _pairs(tmp_path, _sentences(5))), tmp_path / "o", max_length=1)


def test_leftovers_of_a_killed_run_are_cleaned(tmp_path, capsys):
    (tmp_path / ".out-curating-abc123").mkdir()
    (tmp_path / ".tokenized-tokenizing-xyz").mkdir()
    run_recipe(_recipe(tmp_path, _pairs(tmp_path, _sentences(20))), tmp_path / "out", backbone="tiny-qwen3",
               show_progress=False)
    write_training_files({"d": [TrainingTuple("d", "retrieval", "", "q", "p", ["n"])]}, smollm2_tokenizer(),
                         tmp_path / "tokenized", 16)
    assert not (tmp_path / ".out-curating-abc123").exists() and not (tmp_path / ".tokenized-tokenizing-xyz").exists()
    assert "left by a run that was interrupted" in capsys.readouterr().err


def test_interrupted_pipeline_leaves_the_previous_output_intact(tmp_path):
    out = tmp_path / "out"
    run_recipe(_recipe(tmp_path, _pairs(tmp_path, _sentences(30))), out, backbone="tiny-qwen3", show_progress=False)
    before = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    script = (f"import os, signal\nfrom f2llm_lib.data import tokenized\n"
              f"real = tokenized.TokenizedWriter.close\n"
              f"def die(self):\n    os.kill(os.getpid(), signal.SIGKILL)\n"
              f"tokenized.TokenizedWriter.close = die\n"
              f"from f2llm_lib.data.pipeline import run_recipe\n"
              f"run_recipe({str(_recipe(tmp_path, _pairs(tmp_path, _sentences(12), 'c.jsonl'), name='other'))!r}, "
              f"{str(out)!r}, backbone='tiny-qwen3', show_progress=False)\n")
    killed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == before  # the old output, whole
    assert list(TokenizedData(out / "tokenized").datasets) == ["probe"]


def test_a_tuple_with_a_wrong_type_names_dataset_and_row(tmp_path):
    with pytest.raises(DataError, match="dataset 'x', tuple 1: field 'query' must be text, got int"):
        write_training_files({"x": [TrainingTuple("x", "retrieval", "", "ok", "p", ["n"]),
                                    TrainingTuple("x", "retrieval", "", 7, "p2", ["n"])]},
                             smollm2_tokenizer(), tmp_path / "t", 16)
    assert not (tmp_path / "t").exists()


# -- training -------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tokenized_pycode(tmp_path_factory.mktemp("data"), 48, 48)


def _config(tmp_path, data_dir, **overrides) -> dict:
    return {"model": "tiny-qwen3", "data_dir": str(data_dir), "max_steps": 3, "per_device_batch": 4,
            "num_negatives": 3, "warmup_steps": 1, "lr": 1e-3, "eval_every": 100, "save_every": 1,
            "val_fraction": 0.0, "output_dir": str(tmp_path / "run"), **overrides}


def _train(tmp_path, config: dict, resume: bool = False):
    """In this process (as the notebooks and benchmarks call it): the checks are the trainer's, not the CLI's."""
    return train(TrainConfig.from_dict(dict(config)), resume=resume, export=False)


def _cli(tmp_path, config: dict, *extra, env=None):
    path = tmp_path / f"cfg-{len(list(tmp_path.glob('cfg-*')))}.yaml"
    path.write_text(yaml.safe_dump(config))
    return subprocess.run([sys.executable, "-m", "f2llm_lib.train", "--config", str(path), "--no-export", *extra],
                          capture_output=True, text=True, timeout=600, env={**os.environ, **(env or {})})


@pytest.mark.parametrize(("key", "value", "expected"), [
    ("max_steps", 0, "max_steps must be at least 1"),
    ("lr", 0.0, "lr must be positive"),
    ("lr", -1e-4, "lr must be positive"),
    ("grad_accum", 0, "grad_accum must be at least 1"),
    ("temperature", 0.0, "temperature must be positive"),
    ("per_device_batch", 0, "per_device_batch must be at least 1"),
    ("val_fraction", 1.5, r"val_fraction must be in \[0, 1\)"),
    ("max_length", 1, "max_length must be 0"),
    ("min_lr", 1.0, "min_lr must be between 0 and lr"),
])
def test_config_values_that_train_nothing_are_refused_before_loading(key, value, expected):
    with pytest.raises(ConfigError, match=expected):
        TrainConfig.from_dict({key: value})


def test_missing_config_file_and_yaml_tags_are_named(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        TrainConfig.from_yaml(tmp_path / "nope.yaml")
    tagged = tmp_path / "tagged.yaml"
    tagged.write_text("lr: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not plain YAML"):
        TrainConfig.from_yaml(tagged)


def test_command_line_errors_are_one_line(tmp_path, data_dir):
    out = _cli(tmp_path, _config(tmp_path, data_dir, max_steps=0))
    assert out.returncode == 2 and out.stderr.strip().startswith("error:") and "Traceback" not in out.stderr


def test_training_into_a_used_output_dir_needs_resume(tmp_path, data_dir):
    _train(tmp_path, _config(tmp_path, data_dir, max_steps=2))
    before = (tmp_path / "run" / "metrics.jsonl").read_text()
    with pytest.raises(RunFolderError, match="already holds a run.*--resume"):
        _train(tmp_path, _config(tmp_path, data_dir, max_steps=2))
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == before


def test_resume_with_changed_settings_is_refused_naming_them(tmp_path, data_dir):
    _train(tmp_path, _config(tmp_path, data_dir, max_steps=2))
    with pytest.raises(RunFolderError, match="lr: 0.001 -> 0.0005"):
        _train(tmp_path, _config(tmp_path, data_dir, max_steps=2, lr=5e-4), resume=True)
    _train(tmp_path, _config(tmp_path, data_dir, max_steps=2, eval_every=7), resume=True)  # cadence may change


def test_resume_without_a_checkpoint_says_so(tmp_path, data_dir):
    with pytest.raises(RunFolderError, match="no complete checkpoint"):
        _train(tmp_path, _config(tmp_path, data_dir), resume=True)


def test_resume_skips_a_checkpoint_with_a_missing_file(tmp_path, data_dir, capsys):
    _train(tmp_path, _config(tmp_path, data_dir, max_steps=2))
    (tmp_path / "run" / "checkpoints" / "step_2" / "optimizer.bin").unlink()
    _train(tmp_path, _config(tmp_path, data_dir, max_steps=2), resume=True)
    printed = capsys.readouterr()
    text = printed.out + printed.err
    assert "skipping" in text and "missing optimizer.bin" in text
    assert "step_1" in text.split("resumed from")[1].splitlines()[0]


class _Payload:
    """Unpickling this object writes a marker file: code from the checkpoint would have run."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_planted_in_a_checkpoint_never_runs(tmp_path, data_dir):
    _train(tmp_path, _config(tmp_path, data_dir, max_steps=2))
    marker = tmp_path / "PWNED"
    step = tmp_path / "run" / "checkpoints" / "step_2"
    payload = pickle.dumps(_Payload(str(marker)))
    (step / "custom_checkpoint_0.pkl").write_bytes(payload)  # where accelerate keeps custom objects
    with pytest.raises(RunFolderError, match="unexpected custom_checkpoint_0.pkl"):
        _train(tmp_path, _config(tmp_path, data_dir, max_steps=2), resume=True)
    (step / "custom_checkpoint_0.pkl").unlink()
    (step / "random_states_0.pkl").write_bytes(payload)  # a file accelerate does load (weights_only=True)
    with pytest.raises(RunFolderError, match="refuses to load"):
        _train(tmp_path, _config(tmp_path, data_dir, max_steps=2), resume=True)
    assert not marker.exists(), "code from the checkpoint ran"


def test_divergence_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, data_dir):
    out = _cli(tmp_path, _config(tmp_path, data_dir, lr=1000.0, max_steps=8, warmup_steps=1, grad_clip=0.0,
                                 save_every=1))
    assert out.returncode == 3, out.stderr[-2000:]
    assert "training diverged" in out.stderr and "lower the learning rate" in out.stderr
    step = int(out.stderr.split("step ")[1].split(":")[0])
    saved = sorted(int(p.name.split("_")[1]) for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert saved and max(saved) < step, "the diverged step must not be checkpointed"
    assert not (tmp_path / "run" / "final").exists()


def test_batch_larger_than_the_data_says_how_many_rows(data_dir):
    with pytest.raises(TokenizedDataError, match="no dataset has a full global batch of 1000.*training rows"):
        MultitaskLoader(data_dir, 1000, 3, 0)


def test_missing_empty_or_corrupt_data_folders_are_named(tmp_path, data_dir):
    with pytest.raises(TokenizedDataError, match="no manifest.json"):
        TokenizedData(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TokenizedDataError, match="no manifest.json"):
        TokenizedData(tmp_path / "empty")
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(data_dir, broken)
    next((broken / "queries").iterdir()).joinpath("positive.bin").write_bytes(b"\x00" * 12)
    with pytest.raises(TokenizedDataError, match="corrupt data folder|inconsistent files"):
        TokenizedData(broken)


def test_a_model_smaller_than_the_data_vocabulary_is_refused(tmp_path, data_dir):
    model, tokenizer = load_backbone("tiny-qwen3")
    folder = tmp_path / "small-vocab"
    model.resize_token_embeddings(1000)
    model.config.vocab_size = 1000
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    config = TrainConfig.from_dict({**_config(tmp_path, data_dir), "model": str(folder)})
    with pytest.raises(TokenizedDataError, match="1000 embedding rows, fewer than the 49152 token ids"):
        train(config, export=False)


def test_a_relative_checkpoint_path_that_does_not_exist_is_not_found_locally():
    with pytest.raises(BackboneError, match="not found locally"):
        load_backbone("runs/nowhere/final")
    with pytest.raises(BackboneError, match="is not a folder on this machine"):
        load_tokenizer("nowhere/final")


def test_a_model_folder_without_tokenizer_files_is_named(tmp_path):
    model, _ = load_backbone("tiny-qwen3")
    model.save_pretrained(tmp_path / "weights-only", safe_serialization=True)
    with pytest.raises(BackboneError, match="no tokenizer files"):
        load_backbone(str(tmp_path / "weights-only"))


def test_a_killed_and_resumed_run_logs_each_step_once(tmp_path, data_dir):
    config = _config(tmp_path, data_dir, max_steps=4, save_every=2)
    path = tmp_path / "killed.yaml"
    path.write_text(yaml.safe_dump(config))
    killed = subprocess.run([sys.executable, str(Path(__file__).with_name("train_then_sigkill.py")), "--config",
                             str(path), "--step", "3"], capture_output=True, text=True, timeout=600)
    assert killed.returncode == -9
    resumed = _cli(tmp_path, config, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


# -- evaluation -----------------------------------------------------------------------------------------------------
def _beir(tmp_path, queries, corpus, qrels):
    folder = tmp_path / "beir"
    (folder / "qrels").mkdir(parents=True)
    (folder / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    (folder / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in corpus))
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(
        "\t".join(map(str, row)) + "\n" for row in qrels))
    return folder


def test_duplicate_beir_ids_are_errors(tmp_path):
    folder = _beir(tmp_path, [{"_id": "q1", "text": "a"}, {"_id": "q1", "text": "b"}],
                   [{"_id": "d1", "text": "x"}], [("q1", "d1", 1)])
    with pytest.raises(DataError, match="queries.jsonl:2: duplicate _id 'q1'"):
        load_beir_folder(folder)


def test_duplicate_corpus_ids_are_errors(tmp_path):
    folder = _beir(tmp_path, [{"_id": "q1", "text": "a"}], [{"_id": "d1", "text": "x"}, {"_id": "d1", "text": "y"}],
                   [("q1", "d1", 1)])
    with pytest.raises(DataError, match="corpus.jsonl:2: duplicate _id 'd1'"):
        load_beir_folder(folder)


@pytest.mark.parametrize(("score", "ok"), [("1.0", True), ("2", True), ("0.5", False), ("high", False)])
def test_qrels_scores_are_whole_numbers(tmp_path, score, ok):
    folder = _beir(tmp_path, [{"_id": "q1", "text": "a"}], [{"_id": "d1", "text": "x"}], [("q1", "d1", score)])
    if ok:
        assert load_beir_folder(folder) is not None
    else:
        with pytest.raises(DataError, match="must be a whole number"):
            load_beir_folder(folder)


def test_an_sts_score_of_nan_is_an_error(tmp_path):
    path = tmp_path / "sts.jsonl"
    path.write_text(json.dumps({"s1": "a", "s2": "b", "score": "3"}) + "\n"
                    + json.dumps({"s1": "c", "s2": "d", "score": "NaN"}) + "\n")
    with pytest.raises(DataError, match="sts.jsonl:2: score is 'NaN'"):
        load_sts_file(path)


# -- notebook runner ----------------------------------------------------------------------------------------------
def test_a_notebook_that_does_not_exist_leaves_no_run_folder(tmp_path):
    with pytest.raises(NotebookRunError, match="no such notebook"):
        run_profile("smoke", [tmp_path / "99_missing.ipynb"], run_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_cell_timeout_names_the_cell(tmp_path):
    import nbformat

    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "f2llm", "language": "python",
                                                           "display_name": "Python 3 (f2llm)"},
                                            "language_info": {"name": "python"}})
    nb.cells = [nbformat.v4.new_markdown_cell("# Slow\nA probe."),
                nbformat.v4.new_code_cell('OUTPUT_DIR: str = "."  # where results go',
                                          metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell("import time\ntime.sleep(30)"),
                nbformat.v4.new_code_cell("print('results.json')")]
    path = tmp_path / "50_slow.ipynb"
    nbformat.write(nb, path)
    from f2llm_lib.tooling.notebook_runner import run_notebook

    with pytest.raises(NotebookRunError, match="timed out at .*time.sleep|timed out at .*import time"):
        run_notebook(path, tmp_path / "run", {}, cell_timeout=3)


def test_only_the_newest_checkpoints_are_kept_and_resume_uses_them(tmp_path, data_dir, capsys):
    """F2LLM-scale runs would fill a disk with optimizer states: keep_checkpoints keeps the newest complete ones."""
    config = _config(tmp_path, data_dir, max_steps=6, keep_checkpoints=2)
    _train(tmp_path, {**config, "stop_after": 4})
    folder = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["step_3", "step_4"]
    assert "kept the newest 2 checkpoints; removed step_1" in capsys.readouterr().out
    _train(tmp_path, config, resume=True)  # stop_after is cadence: the same run, continued
    printed = capsys.readouterr()
    assert "resumed from" in printed.out and "step_4" in printed.out.split("resumed from")[1].splitlines()[0]
    assert sorted(p.name for p in folder.iterdir()) == ["step_5", "step_6"]
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_keep_checkpoints_zero_keeps_every_one_and_negative_is_refused(tmp_path, data_dir):
    _train(tmp_path, _config(tmp_path, data_dir, max_steps=4, keep_checkpoints=0))
    assert len(list((tmp_path / "run" / "checkpoints").iterdir())) == 4
    with pytest.raises(ConfigError, match="keep_checkpoints must be 0 \\(keep all\\) or more, got -1"):
        TrainConfig.from_dict({"keep_checkpoints": -1})
