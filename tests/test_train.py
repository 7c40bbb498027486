"""Training: 2 gloo processes == 1 process on the concatenated batch; SIGKILL + resume == uninterrupted; export."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers import tokenized_pycode
from safetensors.torch import load_file

from f2llm_lib.embedder.backbones import smollm2_tokenizer
from f2llm_lib.paths import REPO_ROOT
from f2llm_lib.train.config import ConfigError, TrainConfig
from f2llm_lib.train.launch import free_port
from f2llm_lib.train.loader import MultitaskLoader

# The shipped config, so that the file users copy is the one tested.
ACCELERATE = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
              str(REPO_ROOT / "ci" / "accelerate" / "cpu_2proc.yaml")]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """A small tokenized pycode set: retrieval (in-batch + gather) and clustering."""
    return tokenized_pycode(tmp_path_factory.mktemp("data"), 48, 48)


def _config(tmp_path, data_dir, **overrides) -> str:
    config = {"model": "tiny-qwen3", "data_dir": str(data_dir), "max_steps": 3, "per_device_batch": 4,
              "num_negatives": 3, "warmup_steps": 1, "lr": 1e-3, "max_length": 48, "eval_every": 100,
              "save_every": 1, "val_fraction": 0.0, "seed": 0, **overrides}
    path = tmp_path / f"config-{len(list(tmp_path.iterdir()))}.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def _run(cmd, env=None):
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=600)
    return out


def _weights(output_dir, step):
    return load_file(f"{output_dir}/checkpoints/step_{step}/model.safetensors")


def test_two_gloo_processes_equal_one_process_on_the_concatenated_batch(tmp_path, data_dir):
    two, one = tmp_path / "two", tmp_path / "one"
    out = _run(ACCELERATE + ["--main_process_port", str(free_port()), "-m", "f2llm_lib.train", "--config",
                             _config(tmp_path, data_dir, output_dir=str(two)), "--no-export"])
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count('"steps": 3') == 2, "both processes must have run (a world of 2, not 1)"
    out = _run([sys.executable, "-m", "f2llm_lib.train", "--config",
                _config(tmp_path, data_dir, output_dir=str(one), per_device_batch=8), "--no-export"])
    assert out.returncode == 0, out.stderr[-3000:]
    metrics = [yaml.safe_load(line) for line in (two / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 3, "only the main process logs"
    assert any(m["dataset"].endswith("retrieval") for m in metrics), "the run must include in-batch steps"
    start = {k: v for k, v in load_file(str(_initial(tmp_path))).items()}
    a, b = _weights(two, 3), _weights(one, 3)
    # fp32 sums in another order (gloo all-reduce vs one batch), through Adam's normalisation: ~1e-5 apart, while
    # a wrong gradient (e.g. the stop-gradient gather) moves them ~1e-3 apart at this learning rate
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 3e-5
    assert max(float((a[k] - start[k]).abs().max()) for k in a) > 1e-3, "training must have moved the weights"


def _initial(tmp_path):
    from safetensors.torch import save_file

    from f2llm_lib.embedder.backbones import load_backbone

    model, _ = load_backbone("tiny-qwen3", seed=0)
    path = tmp_path / "initial.safetensors"
    save_file({f"backbone.{k}": v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def test_sigkill_then_resume_equals_uninterrupted(tmp_path, data_dir):
    killed, straight = tmp_path / "killed", tmp_path / "straight"
    config = _config(tmp_path, data_dir, output_dir=str(killed), max_steps=4)
    out = _run([sys.executable, str(Path(__file__).with_name("train_then_sigkill.py")), "--config", config,
                "--step", "2"])
    assert out.returncode == -9, "the first run must die by SIGKILL"
    assert not (killed / "checkpoints" / "step_3").exists()
    out = _run([sys.executable, "-m", "f2llm_lib.train", "--config", config, "--no-export", "--resume"])
    assert out.returncode == 0, out.stderr[-3000:]
    assert "resumed from" in out.stdout + out.stderr
    out = _run([sys.executable, "-m", "f2llm_lib.train", "--config",
                _config(tmp_path, data_dir, output_dir=str(straight), max_steps=4), "--no-export"])
    assert out.returncode == 0, out.stderr[-3000:]
    a, b = _weights(killed, 4), _weights(straight, 4)
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-6


def test_export_loads_in_sentence_transformers_with_equal_embeddings(tmp_path, data_dir):
    from sentence_transformers import SentenceTransformer

    from f2llm_lib.train.trainer import train

    config = TrainConfig.from_dict({"model": "tiny-qwen3", "data_dir": str(data_dir), "max_steps": 2,
                                    "per_device_batch": 4, "num_negatives": 3, "max_length": 48, "save_every": 100,
                                    "eval_every": 100, "val_fraction": 0.0, "output_dir": str(tmp_path / "run")})
    result = train(config)
    texts = ["Return the number of items.", "def f(x):\n    return x + 1", "a " * 200, "short"]
    from f2llm_lib.embedder.backbones import load_backbone
    from f2llm_lib.embedder.model import F2LLMEncoder

    model = SentenceTransformer(result["export"], device="cpu")
    theirs = model.encode(texts, convert_to_numpy=True)
    backbone, tokenizer = load_backbone(result["export"])
    # the export carries the model's real length (4096), not the training length (48): texts are not cut at 48
    assert model.max_seq_length == 4096 == tokenizer.model_max_length
    ours = F2LLMEncoder(backbone, tokenizer, max_length=4096)
    np.testing.assert_allclose(theirs, ours.encode(texts), atol=1e-5)
    # the export carries the training data's prompts: plain sentence-transformers embeds a query as training did
    manifest = json.loads((Path(data_dir) / "manifest.json").read_text())
    instructions = {name: info["instruction"] for name, info in manifest["datasets"].items()}
    retrieval = next(instructions[n] for n, i in manifest["datasets"].items() if i["task_type"] == "retrieval")
    assert model.prompts["query"] == f"Instruct: {retrieval}\nQuery: " and model.prompts["document"] == ""
    assert all(model.prompts[name] == f"Instruct: {text}\nQuery: " for name, text in instructions.items())
    query = ["how do I add one to a number"]
    np.testing.assert_allclose(model.encode(query, prompt_name="query"), ours.encode(query, instruction=retrieval),
                               atol=1e-5)
    card = (Path(result["export"]) / "README.md").read_text()
    assert all(f"| {name} |" in card for name in instructions) and "Not trained with Matryoshka" in card
    assert "`lr`: " in card and "Not evaluated yet" in card


def test_loader_is_identical_across_world_sizes_and_resumable(data_dir):
    pad = smollm2_tokenizer().pad_token_id
    single = MultitaskLoader(data_dir, 8, 3, pad, rank=0, world_size=1)
    ranks = [MultitaskLoader(data_dir, 4, 3, pad, rank=r, world_size=2) for r in range(2)]
    for _ in range(5):
        full = single.next_batch()
        parts = [loader.next_batch() for loader in ranks]
        assert {p.dataset for p in parts} == {full.dataset}
        size = full.batch_size
        queries = [row[: int(n)] for row, n in zip(full.input_ids[:size], full.lengths[:size], strict=True)]
        local = [row[: int(n)] for p in parts for row, n in
                 zip(p.input_ids[:p.batch_size], p.lengths[:p.batch_size], strict=True)]
        assert all(torch.equal(a, b) for a, b in zip(queries, local, strict=True))
    state = single.state_dict()
    expected = single.next_batch()
    again = MultitaskLoader(data_dir, 8, 3, pad)
    again.load_state_dict(state)
    assert torch.equal(again.next_batch().input_ids, expected.input_ids)


def test_config_rejects_unknown_keys_and_wrong_types(tmp_path):
    with pytest.raises(ConfigError, match="unknown key 'learning_rate'"):
        TrainConfig.from_dict({"learning_rate": 1e-4})
    with pytest.raises(ConfigError, match="max_steps must be int, got str"):
        TrainConfig.from_dict({"max_steps": "10"})


def test_precision_follows_the_launcher_unless_the_config_sets_it(tmp_path, data_dir):
    """`accelerate launch --mixed_precision bf16` with no mixed_precision in the config trains in bf16 (the summary
    says so); a config value wins over the launcher and the run says that it did."""
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
              "--mixed_precision", "bf16", "--dynamo_backend", "no", "-m", "f2llm_lib.train", "--no-export"]
    out = _run([*launch, "--config", _config(tmp_path, data_dir, output_dir=str(tmp_path / "launched"),
                                             max_steps=2)])
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.strip().splitlines()[-1])["precision"] == "bf16"
    out = _run([*launch, "--config", _config(tmp_path, data_dir, output_dir=str(tmp_path / "config"), max_steps=2,
                                             mixed_precision="no")])
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.strip().splitlines()[-1])["precision"] == "no"
    assert "the config's 'no' overrides the launcher's 'bf16'" in out.stdout + out.stderr
