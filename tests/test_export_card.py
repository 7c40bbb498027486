"""The export travels: prompts from the training data, MRL dimensions usable through ``truncate_dim``, a model card
rendered from the run (scores added by ``f2llm evaluate``), and ``--push-to-hub --dry-run`` listing the upload.
The trainer's own export (prompts equal to the data's instructions) is checked in ``test_train.py``."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import tokenized_pycode

from f2llm_lib.embedder.backbones import load_backbone
from f2llm_lib.embedder.export import add_scores_to_card, export_sentence_transformers, training_prompts
from f2llm_lib.embedder.model import F2LLMEncoder
from f2llm_lib.losses.api import mrl_levels
from f2llm_lib.tooling.cli_steps import export_main

TEXTS = ["Return the number of items.", "def f(x):\n    return x + 1", "sort a list in place"]


@pytest.fixture(scope="module")
def encoder():
    model, tokenizer = load_backbone("tiny-qwen3")
    return F2LLMEncoder(model, tokenizer, max_length=64)


def test_training_prompts_name_each_dataset_and_task_type_and_leave_documents_plain():
    manifest = {"datasets": {"code": {"task_type": "retrieval", "instruction": "Find the code"},
                             "modules": {"task_type": "clustering", "instruction": "Identify the module"},
                             "released": {"task_type": "retrieval", "instruction": ""}}}
    prompts = training_prompts(manifest)
    assert prompts == {"code": "Instruct: Find the code\nQuery: ", "modules": "Instruct: Identify the module\nQuery: ",
                       "retrieval": "Instruct: Find the code\nQuery: ",
                       "clustering": "Instruct: Identify the module\nQuery: ",
                       "query": "Instruct: Find the code\nQuery: ", "document": ""}
    assert training_prompts({"datasets": {"released": {"task_type": "retrieval", "instruction": ""}}}) == {}


def test_truncate_dim_gives_the_trained_prefix_and_the_card_says_how(encoder, tmp_path):
    from sentence_transformers import SentenceTransformer

    dims = mrl_levels(encoder.dim)
    folder = export_sentence_transformers(encoder, tmp_path / "model", query_instruction="Find the code",
                                          training={"backbone": "tiny-qwen3", "mrl_dims": dims})
    full = encoder.encode(TEXTS)
    for dim in dims[:-1]:
        truncated = SentenceTransformer(str(folder), device="cpu", truncate_dim=dim).encode(TEXTS)
        np.testing.assert_allclose(truncated, full[:, :dim], atol=1e-5)
        # cosine on the truncated vectors is the MRL embedding's (the prefix, renormalised)
        ours = encoder.encode(TEXTS, convert_to="torch")[:, :dim]
        mrl = (ours / ours.norm(dim=1, keepdim=True)).numpy()
        np.testing.assert_allclose(truncated / np.linalg.norm(truncated, axis=1, keepdims=True), mrl, atol=1e-5)
    card = (folder / "README.md").read_text()
    assert f"truncate_dim={dims[len(dims) // 2]}" in card and str(dims) in card
    assert "license: apache-2.0" in card and "prompt_name=\"query\"" in card
    st = SentenceTransformer(str(folder), device="cpu")
    np.testing.assert_allclose(st.encode(["sort a list"], prompt_name="query"),
                               encoder.encode(["sort a list"], instruction="Find the code"), atol=1e-5)
    np.testing.assert_allclose(st.encode(TEXTS, prompt_name="document"), full, atol=1e-5)


def test_scores_are_added_to_the_card_of_an_export_only(encoder, tmp_path):
    folder = export_sentence_transformers(encoder, tmp_path / "model", training={"backbone": "tiny-qwen3"})
    assert "Not evaluated yet" in (folder / "README.md").read_text()
    assert add_scores_to_card(folder, [{"task": "PyCodeRetrieval", "metric": "ndcg_at_10", "score": 26.24}])
    card = (folder / "README.md").read_text()
    assert "| PyCodeRetrieval | ndcg_at_10 | 26.24 |" in card and "Not evaluated yet" not in card
    assert json.loads((folder / "f2llm_training.json").read_text())["scores"][0]["score"] == 26.24
    other = tmp_path / "not-ours"
    other.mkdir()
    assert not add_scores_to_card(other, [{"task": "t", "score": 1.0}]) and not any(other.iterdir())


def test_export_command_takes_prompts_from_the_data_and_a_dry_run_lists_the_upload(tmp_path, capsys):
    data = tokenized_pycode(tmp_path / "data", 24, 32)
    code = export_main(["--model", "tiny-qwen3", "--max-length", "32", "--out", str(tmp_path / "model"),
                        "--data", str(data), "--push-to-hub", "someone/f2llm-tiny", "--dry-run"])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    upload = printed["upload"]
    assert upload["repo"] == "someone/f2llm-tiny" and upload["dry_run"] is True
    assert {"README.md", "model.safetensors", "config_sentence_transformers.json", "f2llm_training.json"} <= set(
        upload["files"])
    config = json.loads((tmp_path / "model" / "config_sentence_transformers.json").read_text())
    manifest = json.loads((data / "manifest.json").read_text())
    assert config["prompts"]["document"] == "" and all(
        config["prompts"][name] == f"Instruct: {info['instruction']}\nQuery: "
        for name, info in manifest["datasets"].items())
    card = (tmp_path / "model" / "README.md").read_text()
    assert all(f"| {name} | {info['task_type']} | {info['rows']} |" in card
               for name, info in manifest["datasets"].items())
    assert export_main(["--model", "tiny-qwen3", "--out", str(tmp_path / "m2"), "--data", str(tmp_path)]) == 1
    assert "manifest.json" in capsys.readouterr().err
