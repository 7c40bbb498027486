"""Data follows the backbone: its own tokenizer everywhere, identity recorded and checked, F2LLM's max_length, the
released sampling, negatives per task type. The second backbone (tiny-qwen3-bpe) shares nothing with SmolLM2's
tokenizer: another vocabulary (4,096), another EOS id (3), and EOS = PAD as in Qwen3-Base checkpoints."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

from f2llm_lib.data.pipeline import curate, run_recipe
from f2llm_lib.data.recipes import load_recipe
from f2llm_lib.data.schema import TrainingTuple
from f2llm_lib.data.tokenized import TokenizedData, TokenizedDataError, write_training_files
from f2llm_lib.embedder.backbones import load_backbone, load_tokenizer, smollm2_tokenizer
from f2llm_lib.embedder.tokenization import TokenizerMismatchError, pad_batch, tokenizer_identity
from f2llm_lib.train.config import ConfigError, TrainConfig
from f2llm_lib.train.loader import MultitaskLoader
from f2llm_lib.train.trainer import train


@pytest.fixture(scope="module")
def tuples():
    recipe = load_recipe("pycode")
    recipe.tasks, recipe.max_samples = ["retrieval", "clustering", "classification"], 40
    return curate(recipe, show_progress=False).datasets


@pytest.fixture(scope="module")
def smollm2_data(tuples, tmp_path_factory):
    out = tmp_path_factory.mktemp("smollm2") / "tokenized"
    write_training_files(tuples, smollm2_tokenizer(), out, 64)
    return out


def test_second_backbone_has_its_own_tokenizer_with_eos_equal_to_pad():
    bpe, smol = load_tokenizer("tiny-qwen3-bpe"), smollm2_tokenizer()
    assert len(bpe) == 4096 != len(smol)
    assert bpe.eos_token_id == 3 != smol.eos_token_id
    assert bpe.pad_token_id == bpe.eos_token_id  # kept: no distinct pad token exists (Qwen3-Base's case)
    model, tokenizer = load_backbone("tiny-qwen3-bpe")
    assert model.config.vocab_size == len(tokenizer) == 4096
    assert tokenizer_identity(bpe)["vocab_sha256"] != tokenizer_identity(smol)["vocab_sha256"]


def test_eos_equal_to_pad_still_pools_the_eos_because_masks_come_from_lengths():
    tokenizer = load_tokenizer("tiny-qwen3-bpe")
    ids = [[10, 11, tokenizer.eos_token_id], [12, tokenizer.eos_token_id]]
    input_ids, mask, lengths = pad_batch(ids, tokenizer.pad_token_id)
    assert mask.tolist() == [[1, 1, 1], [1, 1, 0]]  # the second row's EOS is kept though it equals the pad id
    assert int(input_ids[1, 1]) == int(input_ids[1, 2]) == tokenizer.eos_token_id


def test_curate_and_train_end_to_end_with_the_second_backbone(tmp_path):
    run_recipe("pycode", tmp_path / "bpe", backbone="tiny-qwen3-bpe", max_length=48, show_progress=False)
    data = TokenizedData(tmp_path / "bpe" / "tokenized")
    assert data.tokenizer["vocab_size"] == 4096 and data.tokenizer["eos_token_id"] == 3
    assert int(np.asarray(data.corpus.values).max()) < 4096  # ids of its vocabulary, not SmolLM2's
    result = train(TrainConfig.from_dict({
        "model": "tiny-qwen3-bpe", "data_dir": str(tmp_path / "bpe" / "tokenized"), "max_steps": 2,
        "per_device_batch": 4, "num_negatives": 2, "val_fraction": 0.0, "save_every": 100, "eval_every": 100,
        "output_dir": str(tmp_path / "run")}), export=False)
    assert len(result["history"]) == 2 and all(np.isfinite(h["loss"]) for h in result["history"])


def test_data_of_another_tokenizer_is_refused_naming_both(smollm2_data, tmp_path):
    config = TrainConfig.from_dict({"model": "tiny-qwen3-bpe", "data_dir": str(smollm2_data), "max_steps": 1,
                                    "per_device_batch": 4, "num_negatives": 2, "output_dir": str(tmp_path / "x")})
    with pytest.raises(TokenizerMismatchError) as error:
        train(config, export=False)
    message = str(error.value)
    assert "vocabulary 49152" in message and "vocabulary 4096" in message and "EOS id 2" in message
    assert "EOS id 3" in message and "tiny-qwen3-bpe" in message and "--backbone" in message
    assert not (tmp_path / "x" / "checkpoints").exists()


def test_the_data_refuses_a_model_of_another_tokenizer(smollm2_data, tiny):

    TokenizedData(smollm2_data).check_tokenizer(tiny[1], "tiny-qwen3")  # tiny-qwen3 uses SmolLM2's tokenizer: accepted
    with pytest.raises(TokenizerMismatchError, match="vocabulary 4096"):
        TokenizedData(smollm2_data).check_tokenizer(load_tokenizer("tiny-qwen3-bpe"), "tiny-qwen3-bpe")


def test_training_max_length_truncates_and_forces_eos(smollm2_data):
    loader = MultitaskLoader(smollm2_data, 4, 3, 0, max_length=32)
    eos = smollm2_tokenizer().eos_token_id
    longest_stored = max(int(TokenizedData(smollm2_data).corpus.lengths().max()), 33)
    assert longest_stored > 32, "the data must hold texts longer than the training length"
    for _ in range(6):
        batch = loader.next_batch()
        assert batch.input_ids.shape[1] <= 32
        last = batch.input_ids[torch.arange(len(batch.lengths)), batch.lengths - 1]
        assert bool((last == eos).all()), "every text must end in EOS after truncation"


def test_training_max_length_above_the_data_is_an_error_naming_both(smollm2_data):
    with pytest.raises(TokenizedDataError, match="max_length 128 is more than the 64 tokens"):
        MultitaskLoader(smollm2_data, 4, 3, 0, max_length=128)


def _texts(batch, rows):
    return [batch.input_ids[i, : int(batch.lengths[i])] for i in rows]


def test_released_sampling_shares_negative_positions_and_is_world_size_independent(smollm2_data):
    single = MultitaskLoader(smollm2_data, 8, 3, 0, sampling="released")
    ranks = [MultitaskLoader(smollm2_data, 4, 3, 0, rank=r, world_size=2, sampling="released") for r in range(2)]
    retrieval_steps = 0
    for _ in range(8):
        full, parts = single.next_batch(), [r.next_batch() for r in ranks]
        # world-size independence: the two ranks' queries, positives and negatives are the full batch's, in order
        for section in (0, 1):  # queries, then positives
            whole = _texts(full, range(section * full.batch_size, (section + 1) * full.batch_size))
            halves = [t for p in parts for t in _texts(p, range(section * p.batch_size, (section + 1) * p.batch_size))]
            assert all(torch.equal(a, b) for a, b in zip(whole, halves, strict=True))
        negatives_full = _texts(full, range(2 * full.batch_size, full.input_ids.shape[0]))
        negatives_parts = [t for p in parts for t in _texts(p, range(2 * p.batch_size, p.input_ids.shape[0]))]
        assert all(torch.equal(a, b) for a, b in zip(negatives_full, negatives_parts, strict=True))
        if full.task_type != "retrieval":
            continue
        retrieval_steps += 1
        name, rows = single.plan_step(single.step_in_epoch - 1)
        arrays = single.data.datasets[name]
        stored = min(len(arrays.negatives[int(r)]) for r in rows)
        chosen = single._negative_ids(name, rows, single.epoch, 3, (single.step_in_epoch - 1, stored))
        positions = {tuple(list(arrays.negatives[int(r)]).index(d) for d in chosen[3 * i: 3 * i + 3])
                     for i, r in enumerate(rows)}
        assert len(positions) == 1, "released: one draw of negative positions shared by the whole batch"
    assert retrieval_steps


def test_per_query_sampling_draws_negatives_per_query(smollm2_data):
    loader = MultitaskLoader(smollm2_data, 8, 3, 0, sampling="per_query")
    name = next(n for n in loader.datasets if loader.data.datasets[n].task_type == "retrieval")
    rows = loader.train_rows[name][:8]
    arrays = loader.data.datasets[name]
    chosen = loader._negative_ids(name, rows, 0, 3, None)
    positions = {tuple(list(arrays.negatives[int(r)]).index(d) for d in chosen[3 * i: 3 * i + 3])
                 for i, r in enumerate(rows)}
    assert len(positions) > 1


def test_released_dataset_weights_are_fixed_at_the_epoch_start(smollm2_data):
    released = MultitaskLoader(smollm2_data, 4, 3, 0, sampling="released", val_fraction=0.0)
    per_query = MultitaskLoader(smollm2_data, 4, 3, 0, sampling="per_query", val_fraction=0.0)
    plans = [loader._plan(0) for loader in (released, per_query)]
    for order, batches, batch_index in plans:  # both visit every batch of every dataset exactly once per epoch
        assert len(order) == released.steps_per_epoch()
        for d, name in enumerate(released.datasets):
            assert sorted(batch_index[order == d].tolist()) == list(range(len(batches[name])))
    assert plans[0][0].tolist() != plans[1][0].tolist()


def test_both_orders_draw_datasets_at_their_share_and_visit_every_batch():
    """9,000 batches of one dataset and 1,000 of another: in the first half of the epoch the small one is drawn at
    its 10% share under both samplings (a plan that front-loads or starves it fails), and every batch comes once."""
    from f2llm_lib.train.loader import MultitaskLoader as Loader

    loader = Loader.__new__(Loader)
    loader.datasets, loader.seed, loader.global_batch = ["big", "small"], 0, 1
    loader.train_rows = {"big": np.arange(9000, dtype=np.int32), "small": np.arange(1000, dtype=np.int32)}
    for sampling in ("released", "per_query"):
        loader.sampling = sampling
        order, _, _ = loader._plan(0)
        assert abs((order[: len(order) // 2] == 1).mean() - 0.1) < 0.02
        assert (order == 1).sum() == 1000 and (order == 0).sum() == 9000


def test_negatives_per_task_type(smollm2_data):
    loader = MultitaskLoader(smollm2_data, 4, 2, 0, clustering_negatives=5)
    seen = {}
    for _ in range(12):
        batch = loader.next_batch()
        seen[batch.task_type] = batch.num_negatives
        assert batch.input_ids.shape[0] == batch.batch_size * (2 + batch.num_negatives)
    assert seen.get("retrieval") == 2 and seen.get("clustering") == 5 and seen.get("classification") == 1


def test_more_negatives_than_stored_is_refused_before_training(smollm2_data):
    with pytest.raises(TokenizedDataError, match="stores as few as .* negatives .* but 30 are asked"):
        MultitaskLoader(smollm2_data, 4, 30, 0)


def test_config_validates_sampling():
    with pytest.raises(ConfigError, match="sampling must be per_query or released"):
        TrainConfig.from_dict({"sampling": "random"})


def test_pipeline_command_line_takes_the_backbone(tmp_path):
    out = subprocess.run([sys.executable, "-m", "f2llm_lib.data.pipeline", "pycode", "--out", str(tmp_path / "p"),
                          "--backbone", "tiny-qwen3-bpe", "--max-length", "32"], capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    manifest = yaml.safe_load((tmp_path / "p" / "tokenized" / "manifest.json").read_text())
    assert manifest["tokenizer"]["vocab_size"] == 4096 and manifest["backbone"] == "tiny-qwen3-bpe"


def test_tuples_keep_their_text_schema():
    item = TrainingTuple("d", "retrieval", "", "q", "p", ["n1"])
    assert item.as_row(2) == {"dataset": "d", "task_type": "retrieval", "instruction": "", "query": "q",
                              "passage": "p", "negative_1": "n1", "negative_2": ""}
