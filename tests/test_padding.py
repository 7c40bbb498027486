"""Padding under 10%: a step's texts run in groups of similar length; the loss does not change, the waste does."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from helpers import tokenized_pycode

from f2llm_lib.data.pipeline import run_recipe
from f2llm_lib.train.config import TrainConfig
from f2llm_lib.train.loader import MultitaskLoader, length_groups
from f2llm_lib.train.trainer import batch_loss


def _waste(lengths, groups):
    area = sum(len(g) * int(lengths[g].max()) for g in groups)
    return 1 - int(lengths.sum()) / area


@pytest.mark.parametrize("seed", range(5))
def test_groups_partition_the_batch_and_keep_waste_under_the_target(seed):
    lengths = np.random.default_rng(seed).integers(3, 300, size=144)
    groups = length_groups(lengths, 0.05)
    assert sorted(np.concatenate(groups).tolist()) == list(range(144))
    assert _waste(lengths, groups) <= 0.05


def test_groups_are_the_fewest_possible():
    """Brute force over every split of a small sorted batch: no split with fewer groups meets the target."""
    lengths = np.array([90, 85, 60, 58, 31, 30, 29, 7, 6, 5])
    groups = length_groups(lengths, 0.05)
    ranked = np.sort(lengths)[::-1]
    for k in range(1, len(groups)):
        for cuts in itertools.combinations(range(1, len(ranked)), k - 1):
            bounds = (0, *cuts, len(ranked))
            area = sum((b - a) * ranked[a] for a, b in itertools.pairwise(bounds))
            assert 1 - ranked.sum() / area > 0.05


@pytest.fixture(scope="module")
def pycode_data(tmp_path_factory):
    return tokenized_pycode(tmp_path_factory.mktemp("pad"), 64, 128)


def test_sorted_groups_give_the_same_loss_and_gradients_as_one_pad_length(pycode_data, tiny):
    model, tokenizer = tiny
    from f2llm_lib.embedder.model import F2LLMEncoder

    encoder = F2LLMEncoder(model, tokenizer)
    config = TrainConfig.from_dict({"model": "tiny-qwen3", "num_negatives": 3})
    results = {}
    for padding in ("sorted", "single"):
        loader = MultitaskLoader(pycode_data, 8, 3, tokenizer.pad_token_id, padding=padding)
        batch = loader.next_batch()
        encoder.zero_grad()
        loss, _ = batch_loss(encoder, batch, config)
        loss.backward()
        results[padding] = (float(loss.detach()), [p.grad.clone() for p in encoder.parameters()], batch)
    (sorted_loss, sorted_grads, sorted_batch), (single_loss, single_grads, single_batch) = (
        results["sorted"], results["single"])
    assert len(sorted_batch.chunks) > 1 and len(single_batch.chunks) == 1
    assert sorted_batch.padding_fraction < single_batch.padding_fraction
    assert abs(sorted_loss - single_loss) <= 1e-5
    for a, b in zip(sorted_grads, single_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def _mean_padding(data_dir, steps=30, **kw):
    loader = MultitaskLoader(data_dir, 16, 3, 0, **kw)
    batches = [loader.next_batch() for _ in range(steps)]
    return 1 - sum(b.tokens for b in batches) / sum(b.padded_tokens for b in batches)


def test_padding_under_ten_percent_on_pycode(pycode_data):
    assert _mean_padding(pycode_data) <= 0.10
    assert _mean_padding(pycode_data, padding="single") > 0.25  # what one pad length wastes on the same batches


@pytest.mark.parametrize("recipe", ["banking77_local", "stsbenchmark_local"])
def test_padding_under_ten_percent_on_the_local_recipes(shared_data, tmp_path, recipe):
    run_recipe(recipe, tmp_path / recipe, backbone="tiny-qwen3", max_length=128, show_progress=False)
    assert _mean_padding(tmp_path / recipe / "tokenized") <= 0.10
