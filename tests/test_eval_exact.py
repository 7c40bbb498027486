"""MTEB-exact evaluation: the F2LLM authors' registered prompts, and local copies that keep a task's settings."""

from __future__ import annotations

import json

import mteb
import pytest
from mteb.models.instruct_wrapper import InstructSentenceTransformerModel
from mteb.types import PromptType

from f2llm_lib.embedder.model import F2LLMEncoder
from f2llm_lib.evaluation.mteb_model import REGISTERED_ENTRY, F2LLMMtebModel
from f2llm_lib.evaluation.run import evaluate
from f2llm_lib.evaluation.tasks import load_labelled_folder, pycode_tasks


def _registered_wrapper() -> InstructSentenceTransformerModel:
    """mteb's own wrapper class with the F2LLM entry's settings, without loading any model: its prompt logic."""
    wrapper = object.__new__(InstructSentenceTransformerModel)
    settings = REGISTERED_ENTRY.loader_kwargs
    wrapper.instruction_template = settings["instruction_template"]
    wrapper.prompts_dict = settings["prompts_dict"]
    wrapper.apply_instruction_to_passages = settings["apply_instruction_to_passages"]
    assert settings["add_eos_token"] is True  # ours appends EOS to every text as well (tokenize_with_eos)
    return wrapper


def _what_mteb_embeds(wrapper, task_metadata, prompt_type, text: str) -> str:
    """As InstructSentenceTransformerModel.encode: the task instruction, none on documents, then
    SentenceTransformer.encode(prompt=instruction) writes the prompt before the text."""
    instruction = wrapper.get_task_instruction(task_metadata, prompt_type)
    if not wrapper.apply_instruction_to_passages and prompt_type == PromptType.document:
        instruction = None
    return (instruction or "") + text


@pytest.fixture(scope="module")
def ours(tiny):
    return F2LLMMtebModel(F2LLMEncoder(*tiny), "exactness", revision="fixed")


def test_every_mteb_eng_v2_task_embeds_the_strings_f2llm_registered(ours):
    tasks = mteb.get_benchmark("MTEB(eng, v2)").tasks
    assert len(tasks) == 41
    wrapper = _registered_wrapper()
    text = "An example input, with punctuation."
    for task in tasks:
        for prompt_type in (PromptType.query, PromptType.document, None):
            expected = _what_mteb_embeds(wrapper, task.metadata, prompt_type, text)
            assert ours.input_texts([text], task.metadata, prompt_type) == [expected], (task.metadata.name,
                                                                                        prompt_type)
    arguana = mteb.get_task("ArguAna").metadata
    assert ours.input_texts(["x"], arguana, PromptType.query) == [
        "Instruct: Given a claim, find documents that refute the claim.\nQuery: x"]
    assert ours.input_texts(["x"], arguana, PromptType.document) == ["x"]


def test_encode_embeds_those_strings(ours, monkeypatch):
    seen = []
    monkeypatch.setattr(ours.model, "encode", lambda texts, **kw: seen.extend(texts) or [])
    task = mteb.get_task("STSBenchmark")
    ours.encode([{"text": ["a cat sits"]}], task_metadata=task.metadata, hf_split="test", hf_subset="default",
                prompt_type=None)
    assert seen == ["Instruct: Retrieve semantically similar text.\nQuery: a cat sits"]


def test_our_rule_stays_for_tasks_without_a_registered_prompt(ours):
    retrieval = pycode_tasks(max_queries=5)[0].metadata
    assert ours.input_texts(["q"], retrieval, PromptType.query)[0].startswith(
        "Instruct: Given a description of Python functionality")
    assert ours.input_texts(["d"], retrieval, PromptType.document) == ["d"]


def test_local_copy_of_a_registered_task_keeps_its_settings_and_scores(tmp_path, ours):
    folder = tmp_path / "AmazonCounterfactualClassification"
    folder.mkdir()
    for split, count in (("train", 40), ("test", 12)):
        rows = [{"text": f"{'I wish it had been' if i % 2 else 'It is'} item number {i}", "label": i % 2}
                for i in range(count)]
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = load_labelled_folder(folder)
    registered = mteb.get_task("AmazonCounterfactualClassification")
    assert isinstance(task, type(registered))
    assert task.samples_per_label == registered.samples_per_label == 32  # mteb's setting, not the default 8
    assert task.metadata.main_score == registered.metadata.main_score
    assert task.metadata.eval_splits == ["test"] and task.hf_subsets == ["en"]
    rows = evaluate({"tiny": ours}, [task], tmp_path / "cache")
    assert rows and rows[0]["task"] == "AmazonCounterfactualClassification" and 0 <= rows[0]["score"] <= 100
