"""ZeRO-2 as released: DeepSpeed through accelerate (its CPU accelerator over gloo here), the micro batch set before
prepare, and our gathered-key gradient intact: 2 ZeRO-2 processes train exactly as one process on the concatenated
batch, which test_train shows 2 DDP processes do too."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml
from helpers import tokenized_pycode
from safetensors.torch import load_file

from f2llm_lib.paths import REPO_ROOT
from f2llm_lib.train.launch import free_port

pytest.importorskip("deepspeed", reason="DeepSpeed is the optional extra: pip install -e '.[deepspeed]'")
ACCELERATE = [sys.executable, "-m", "accelerate.commands.launch", "--config_file"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tokenized_pycode(tmp_path_factory.mktemp("data"), 48, 48)


def _config(tmp_path, data_dir, name: str, **overrides):
    config = {"model": "tiny-qwen3", "data_dir": str(data_dir), "max_steps": 3, "per_device_batch": 4,
              "num_negatives": 3, "warmup_steps": 1, "lr": 1e-3, "max_length": 48, "eval_every": 100,
              "save_every": 3, "val_fraction": 0.0, "seed": 0, "output_dir": str(tmp_path / name), **overrides}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _launch(tmp_path, data_dir, name: str, launcher: str, **overrides):
    path = _config(tmp_path, data_dir, name, **overrides)
    out = subprocess.run(ACCELERATE + [str(REPO_ROOT / "ci" / "accelerate" / launcher), "--main_process_port",
                                       str(free_port()), "-m", "f2llm_lib.train", "--config", str(path), "--no-export"],
                         capture_output=True, text=True, timeout=900, env={**os.environ})
    assert out.returncode == 0, out.stderr[-4000:]
    return tmp_path / name


def test_zero2_on_two_processes_trains_as_one_process_does(tmp_path, data_dir):
    zero2 = _launch(tmp_path, data_dir, "zero2", "cpu_2proc_zero2.yaml")
    one = tmp_path / "one"
    out = subprocess.run([sys.executable, "-m", "f2llm_lib.train", "--config",
                          str(_config(tmp_path, data_dir, "one", per_device_batch=8)), "--no-export"],
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-4000:]
    # DeepSpeed really ran: its sharded optimizer state, one file per rank
    shards = sorted(p.name for p in (zero2 / "checkpoints" / "step_3").rglob("*optim_states.pt"))
    assert len(shards) == 2, shards
    # both ranks logged as ranks 0 and 1 (accelerate alone would call each of them rank 0 of 1 on CPUs)
    metrics = (zero2 / "metrics.jsonl").read_text().splitlines()
    assert len(metrics) == 3
    assert any('"dataset": "pycode_retrieval"' in line for line in metrics), "the gathered in-batch loss must run"
    ours = load_file(str(one / "checkpoints" / "step_3" / "model.safetensors"))
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    theirs = get_fp32_state_dict_from_zero_checkpoint(str(zero2 / "checkpoints" / "step_3"), tag="pytorch_model")
    assert set(theirs) == set(ours)
    assert max(float((theirs[k].detach() - ours[k]).abs().max()) for k in ours) <= 3e-5


def test_trainer_fills_deepspeed_batch_settings_before_prepare():
    from accelerate.utils import DeepSpeedPlugin

    from f2llm_lib.train.config import TrainConfig
    from f2llm_lib.train.trainer import configure_deepspeed

    shipped = yaml.safe_load((REPO_ROOT / "ci" / "accelerate" / "gpu_8_zero2.yaml").read_text())["deepspeed_config"]
    plugin = DeepSpeedPlugin(zero_stage=shipped["zero_stage"], gradient_clipping=shipped["gradient_clipping"],
                             gradient_accumulation_steps=shipped["gradient_accumulation_steps"])
    assert plugin.deepspeed_config["train_micro_batch_size_per_gpu"] == "auto"  # what accelerate cannot resolve

    class FakeState:
        deepspeed_plugin = plugin

    class FakeAccelerator:
        state = FakeState()

    config = TrainConfig.from_dict({"per_device_batch": 16, "grad_accum": 2, "grad_clip": 1.0})
    ds = configure_deepspeed(FakeAccelerator(), config)
    assert ds["train_micro_batch_size_per_gpu"] == 16 and ds["gradient_accumulation_steps"] == 2
    assert ds["gradient_clipping"] == 1.0 and ds["zero_optimization"]["stage"] == 2


def test_the_zero2_launch_configs_bf16_reaches_deepspeeds_config(tmp_path):
    """`accelerate launch --config_file ci/accelerate/gpu_8_zero2.yaml`, with the config's mixed_precision unset:
    the launch file's bf16 must reach the DeepSpeed config our trainer hands to DeepSpeed (not fp32, as when the
    config's own default overrode the launcher). Launched here on the CPU twin of that file with the GPU file's
    precision, one process: the accelerator as the trainer starts it, then its DeepSpeed config."""
    gpu = yaml.safe_load((REPO_ROOT / "ci" / "accelerate" / "gpu_8_zero2.yaml").read_text())
    assert gpu["distributed_type"] == "DEEPSPEED" and gpu["mixed_precision"] == "bf16"
    script = tmp_path / "probe.py"
    script.write_text(
        "import json\n"
        "from f2llm_lib.train.config import TrainConfig\n"
        "from f2llm_lib.train.trainer import configure_deepspeed, start_accelerator\n"
        "config = TrainConfig.from_dict({'per_device_batch': 4})\n"
        "accelerator, deepspeed = start_accelerator(config)\n"
        "ds = configure_deepspeed(accelerator, config)\n"
        "print('PROBE', json.dumps({'deepspeed': deepspeed, 'precision': accelerator.mixed_precision,\n"
        "                           'bf16': ds.get('bf16', {}), 'fp16': ds.get('fp16', {})}))\n")
    out = subprocess.run(ACCELERATE + [str(REPO_ROOT / "ci" / "accelerate" / "cpu_2proc_zero2.yaml"),
                                       "--num_processes", "1", "--mixed_precision", gpu["mixed_precision"],
                                       "--main_process_port", str(free_port()), str(script)],
                         capture_output=True, text=True, timeout=600, env={**os.environ}, cwd=str(REPO_ROOT))
    assert out.returncode == 0, out.stderr[-4000:]
    probe = json.loads(next(line for line in out.stdout.splitlines() if line.startswith("PROBE"))[6:])
    assert probe["deepspeed"] and probe["precision"] == "bf16"
    assert probe["bf16"].get("enabled") is True and not probe["fp16"].get("enabled", False), probe
