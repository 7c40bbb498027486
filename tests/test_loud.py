"""Loud where it matters: speed and a smoothed loss in the bar and the summary, honest exported lengths, evaluation
free of third-party warning floods (silenced at their source only)."""

from __future__ import annotations

import json
import warnings

import pytest

from f2llm_lib.data.pipeline import curate
from f2llm_lib.data.recipes import load_recipe
from f2llm_lib.data.tokenized import write_training_files
from f2llm_lib.embedder.backbones import smollm2_tokenizer
from f2llm_lib.evaluation.run import quiet_evaluators
from f2llm_lib.train.config import TrainConfig
from f2llm_lib.train.trainer import SMOOTHING, train


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    recipe = load_recipe("pycode")
    recipe.tasks, recipe.max_samples = ["retrieval"], 48
    root = tmp_path_factory.mktemp("loud")
    write_training_files(curate(recipe, show_progress=False).datasets, smollm2_tokenizer(), root / "data", 48)
    config = TrainConfig.from_dict({"model": "tiny-qwen3", "data_dir": str(root / "data"), "max_steps": 12,
                                    "per_device_batch": 4, "num_negatives": 2, "eval_every": 100,
                                    "save_every": 100, "val_fraction": 0.0, "output_dir": str(root / "run")})
    return root, train(config)


def test_summary_loss_is_smoothed_over_the_last_steps(run):
    _, result = run
    losses = [h["loss"] for h in result["history"]]
    assert result["final_loss"] == pytest.approx(sum(losses[-SMOOTHING:]) / SMOOTHING)
    assert result["final_loss"] != losses[-1]


def test_progress_bar_shows_speed_and_smoothed_loss(tmp_path, run, capfd):
    root, _ = run
    config = TrainConfig.from_dict({"model": "tiny-qwen3", "data_dir": str(root / "data"), "max_steps": 2,
                                    "per_device_batch": 4, "num_negatives": 2, "eval_every": 100,
                                    "save_every": 100, "val_fraction": 0.0, "output_dir": str(tmp_path / "bar")})
    train(config, export=False)
    printed = capfd.readouterr().err
    assert "tok_s=" in printed and "smoothed=" in printed


def test_exported_tokenizer_keeps_the_models_real_length(run):
    root, result = run
    settings = json.loads((root / "run" / "final" / "tokenizer_config.json").read_text())
    assert settings["model_max_length"] == 4096  # tiny-qwen3's max_position_embeddings, not the training length 48


def test_evaluation_warnings_are_silenced_at_their_source_only():
    import datasets
    import numpy as np
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.metrics import precision_score

    def flood():  # what a weak model's classification task raises: a label it never predicts
        precision_score(np.array([0, 1, 2, 2]), np.array([0, 0, 0, 0]), average="macro")
        warnings.warn("lbfgs failed to converge", ConvergenceWarning, stacklevel=1)

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with quiet_evaluators():
            flood()
            warnings.warn("something of ours", UserWarning, stacklevel=1)
            assert not datasets.is_progress_bar_enabled()
        flood()
    assert datasets.is_progress_bar_enabled()  # restored after the call
    messages = [(w.category.__name__, str(w.message)[:20]) for w in seen]
    assert ("UserWarning", "something of ours") in messages
    # only the ones raised outside the evaluation call show
    assert [name for name, _ in messages if name != "UserWarning"] == ["UndefinedMetricWarning",
                                                                     "ConvergenceWarning"], messages
