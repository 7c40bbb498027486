"""Gradient caching gives the full batch's parameter gradients: in one process compared gradient by gradient with the
uncached step (retrieval with its in-batch term, and clustering), in two gloo processes through the trainer (the
cached gradient crosses the gather), where the weights after three steps must match the uncached run's."""

from __future__ import annotations

import functools
import os
import subprocess
import sys

import pytest
import torch
import yaml
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from helpers import tokenized_pycode
from safetensors.torch import load_file

from f2llm_lib.embedder.backbones import load_backbone, smollm2_tokenizer
from f2llm_lib.embedder.model import F2LLMEncoder
from f2llm_lib.paths import REPO_ROOT
from f2llm_lib.train.config import ConfigError, TrainConfig
from f2llm_lib.train.grad_cache import cached_step, split_chunks
from f2llm_lib.train.launch import free_port
from f2llm_lib.train.loader import MultitaskLoader
from f2llm_lib.train.trainer import loss_from_embeddings

ACCELERATE = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
              str(REPO_ROOT / "ci" / "accelerate" / "cpu_2proc.yaml")]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tokenized_pycode(tmp_path_factory.mktemp("data"), 48, 48)


def _gradients(encoder) -> dict[str, torch.Tensor]:
    return {name: p.grad.detach().clone() for name, p in encoder.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("rows, mrl", [(1, False), (5, False), (64, False), (5, True)])
def test_cached_gradients_equal_the_full_batch_in_one_process(data_dir, rows, mrl):
    torch.manual_seed(0)
    model, tokenizer = load_backbone("tiny-qwen3", seed=0)
    # accelerate keeps one process-wide state: another test's bf16 Accelerator would otherwise carry over
    AcceleratorState._reset_state(reset_partial_state=True)
    accelerator = Accelerator(cpu=True, mixed_precision="no")
    encoder = accelerator.prepare(F2LLMEncoder(model, tokenizer, max_length=48))
    encoder.train()
    config = TrainConfig.from_dict({"model": "tiny-qwen3", "data_dir": str(data_dir), "num_negatives": 3,
                                    "max_length": 48, "mrl": mrl})  # with MRL: every level's loss through the cache
    loader = MultitaskLoader(data_dir, 6, 3, smollm2_tokenizer().pad_token_id, seed=0)
    seen = set()
    while len(seen) < 2:  # one retrieval batch (in-batch term) and one clustering batch
        batch = loader.next_batch()
        if batch.task_type in seen:
            continue
        seen.add(batch.task_type)
        assert sum(len(p.positions) for p in split_chunks(batch, rows)) == len(batch.texts)
        encoder.zero_grad()
        full = loss_from_embeddings(batch, encoder(chunks=batch.chunks), config)
        accelerator.backward(full)
        expected = _gradients(encoder)
        encoder.zero_grad()
        loss, embeddings = cached_step(accelerator, encoder, batch, rows,
                                       functools.partial(loss_from_embeddings, batch, config=config))
        got = _gradients(encoder)
        torch.testing.assert_close(loss, full.detach(), atol=1e-6, rtol=1e-6)
        assert embeddings.shape == (len(batch.texts), encoder.dim) and set(got) == set(expected)
        scale = max(float(g.abs().max()) for g in expected.values())
        assert scale > 1e-4, "the step must have a gradient to compare"
        for name in expected:  # fp32 sums in another order: 1e-5 of the largest gradient
            torch.testing.assert_close(got[name], expected[name], atol=1e-5 * scale, rtol=1e-4, msg=name)


def _config(tmp_path, data_dir, **overrides) -> str:
    config = {"model": "tiny-qwen3", "data_dir": str(data_dir), "max_steps": 3, "per_device_batch": 4,
              "num_negatives": 3, "warmup_steps": 1, "lr": 1e-3, "max_length": 48, "eval_every": 100,
              "save_every": 1, "val_fraction": 0.0, "seed": 0, "report_to": "none", **overrides}
    path = tmp_path / f"config-{len(list(tmp_path.iterdir()))}.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_two_processes_with_cached_gradients_train_to_the_uncached_weights(tmp_path, data_dir):
    runs = {}
    for name, cached in (("cached", True), ("plain", False)):
        out_dir = tmp_path / name
        config = _config(tmp_path, data_dir, output_dir=str(out_dir), grad_cache=cached, grad_cache_chunk=5)
        out = subprocess.run(ACCELERATE + ["--main_process_port", str(free_port()), "-m", "f2llm_lib.train",
                                           "--config", config, "--no-export"],
                             capture_output=True, text=True, env=dict(os.environ), timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
        assert out.stdout.count('"steps": 3') == 2, "both processes must have run"
        runs[name] = load_file(f"{out_dir}/checkpoints/step_3/model.safetensors")
    metrics = (tmp_path / "cached" / "metrics.jsonl").read_text()
    assert "retrieval" in metrics, "the run must include in-batch steps (the gather)"
    a, b = runs["cached"], runs["plain"]
    # as in test_train's world-size test: ~1e-5 apart through Adam's normalisation, a wrong gradient ~1e-3
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 3e-5


def test_grad_cache_refuses_deepspeed(monkeypatch, tmp_path, data_dir):
    from f2llm_lib.train import trainer

    monkeypatch.setattr(trainer, "start_accelerator", lambda config: (Accelerator(cpu=True), True))
    config = TrainConfig.from_dict({"model": "tiny-qwen3", "data_dir": str(data_dir), "grad_cache": True,
                                    "output_dir": str(tmp_path / "run")})
    with pytest.raises(ConfigError, match="does not run under DeepSpeed"):
        trainer.train(config)
