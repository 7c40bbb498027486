"""LoRA adapters (peft) and distillation from a frozen teacher (F2LLM-v2), on tiny-qwen3."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import tokenized_pycode
from safetensors.torch import load_file

from f2llm_lib.embedder.backbones import load_backbone, smollm2_tokenizer
from f2llm_lib.embedder.model import F2LLMEncoder
from f2llm_lib.train import distill
from f2llm_lib.train.config import TrainConfig
from f2llm_lib.train.trainer import train

pytest.importorskip("peft")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tokenized_pycode(tmp_path_factory.mktemp("data"), 40, 48)


def _config(tmp_path, data_dir, name, **overrides):
    return TrainConfig.from_dict({"model": "tiny-qwen3", "data_dir": str(data_dir), "max_steps": 4,
                                  "per_device_batch": 4, "num_negatives": 3, "warmup_steps": 1, "lr": 5e-3,
                                  "eval_every": 100, "save_every": 2, "val_fraction": 0.0,
                                  "output_dir": str(tmp_path / name), **overrides})


def test_lora_trains_only_adapters_and_exports_the_merged_model(tmp_path, data_dir):
    result = train(_config(tmp_path, data_dir, "lora", lora_rank=4))
    saved = load_file(str(tmp_path / "lora" / "checkpoints" / "step_4" / "model.safetensors"))
    adapters = [k for k in saved if "lora_" in k]
    assert adapters, "the checkpoint holds the adapters"
    base, tokenizer = load_backbone("tiny-qwen3", seed=0)
    base_weights = {k.split("base_model.model.")[-1].replace(".base_layer", ""): v for k, v in saved.items()
                    if "lora_" not in k}
    for name, tensor in base.state_dict().items():  # the frozen base is unchanged
        torch.testing.assert_close(base_weights[name], tensor)
    exported, exported_tokenizer = load_backbone(result["export"])
    assert not any("lora" in name for name, _ in exported.named_parameters())  # merged: a plain model
    texts = ["Return the number of items.", "def f(x):\n    return x + 1"]
    ours = F2LLMEncoder(exported, exported_tokenizer, max_length=48).encode(texts)

    from f2llm_lib.train.trainer import add_lora

    reference = add_lora(load_backbone("tiny-qwen3", seed=0)[0], _config(tmp_path, data_dir, "x", lora_rank=4))
    reference.load_state_dict({k.removeprefix("backbone."): v for k, v in saved.items()})
    theirs = F2LLMEncoder(reference, tokenizer, max_length=48).encode(texts)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_lora_resume_is_exact(tmp_path, data_dir):
    straight = _config(tmp_path, data_dir, "straight", lora_rank=4)
    train(straight, export=False)
    halted = _config(tmp_path, data_dir, "halted", lora_rank=4, stop_after=2)
    train(halted, export=False)
    train(_config(tmp_path, data_dir, "halted", lora_rank=4), resume=True, export=False)
    a = load_file(str(tmp_path / "straight" / "checkpoints" / "step_4" / "model.safetensors"))
    b = load_file(str(tmp_path / "halted" / "checkpoints" / "step_4" / "model.safetensors"))
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-6


def test_teacher_cache_is_computed_once_and_reused(tmp_path, data_dir, monkeypatch):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(data_dir, data)
    calls = []
    real = distill.teacher_model
    monkeypatch.setattr(distill, "teacher_model", lambda spec: calls.append(spec) or real(spec))
    first = distill.teacher_cache(data, "minilm", smollm2_tokenizer())
    second = distill.teacher_cache(data, "minilm", smollm2_tokenizer())
    assert first == second and calls == ["minilm"]
    vectors = distill.TeacherEmbeddings(first)
    assert vectors.dim == 384 and vectors.corpus.dtype == np.float16
    norms = np.linalg.norm(np.asarray(vectors.corpus, dtype=np.float32), axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=2e-3)


def test_distillation_term_has_the_right_gradient():
    gen = torch.Generator().manual_seed(0)
    student = torch.randn(5, 12, generator=gen, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(5, 8, generator=gen, dtype=torch.float64)
    for kind in ("mse", "kl"):
        assert torch.autograd.gradcheck(lambda s, kind=kind: distill.distill_loss(s, teacher, kind, 0.5), (student,))
    # at the teacher itself (student's prefix = teacher direction) the MSE term and its gradient vanish
    at_teacher = torch.cat([teacher, torch.randn(5, 4, generator=gen, dtype=torch.float64)], dim=1)
    at_teacher[:, 8:] = 0
    at_teacher.requires_grad_()
    loss = distill.distill_loss(at_teacher, teacher, "mse")
    loss.backward()
    assert float(loss) < 1e-12 and float(at_teacher.grad.abs().max()) < 1e-6


def test_training_with_a_teacher_adds_the_term(tmp_path, data_dir):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(data_dir, data)
    plain = train(_config(tmp_path, data, "plain", max_steps=2), export=False)["history"]
    with_teacher = train(_config(tmp_path, data, "teacher", max_steps=2, teacher="minilm", distill_weight=5.0),
                         export=False)["history"]
    assert with_teacher[0]["loss"] > plain[0]["loss"]  # the same first batch, plus a positive distillation term
