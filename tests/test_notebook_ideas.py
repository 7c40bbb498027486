"""Each notebook writes its core mechanism in cells tagged ``idea``; here those very cells, imported from the
notebook, are held to the library on the same inputs, so the notebook's version and the library's cannot drift."""

from __future__ import annotations

import importlib.util
import math
import sys

import nbformat
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from f2llm_lib.paths import NOTEBOOK_DIR
from f2llm_lib.tooling.notebook_runner import all_notebooks


def idea_module(stem: str, tmp_path, **globals_):
    """The notebook's ``idea`` cells as an importable module (a file: Triton reads a kernel's source from it)."""
    nb = nbformat.read(NOTEBOOK_DIR / f"{stem}.ipynb", as_version=4)
    cells = [c.source for c in nb.cells if c.cell_type == "code" and "idea" in c.metadata.get("tags", [])]
    assert cells, f"{stem}: no code cell tagged 'idea'"
    preamble = "".join(f"{name} = {value!r}\n" for name, value in globals_.items())
    path = tmp_path / f"idea_{stem}.py"
    path.write_text(preamble + "\n\n".join(cells) + "\n")
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("path", all_notebooks(), ids=lambda p: p.stem)
def test_every_notebook_writes_its_mechanism_in_tagged_cells(path):
    nb = nbformat.read(path, as_version=4)
    ideas = [c.source for c in nb.cells if c.cell_type == "code" and "idea" in c.metadata.get("tags", [])]
    assert ideas and all("def " in source for source in ideas), f"{path.stem}: an idea cell defines the mechanism"
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    if path.stem.startswith("02"):
        assert "@triton.jit" in "\n".join(ideas), "notebook 02 writes a Triton kernel in a cell"
    if path.stem.startswith("03"):
        assert all(s in code for s in ("loss.backward()", "optimizer.step()", "for step in range(")), \
            "notebook 03 runs a training loop: forward, loss, backward, optimizer step"


def test_00_masks_pooling_and_embedding_agree_with_the_library(tmp_path, tiny):
    from f2llm_lib.embedder.backbones import load_backbone
    from f2llm_lib.embedder.model import F2LLMEncoder
    from f2llm_lib.embedder.pooling import last_token_pool
    from f2llm_lib.embedder.tokenization import pad_batch

    idea = idea_module("00_foundation_to_feature", tmp_path)
    lengths = torch.tensor([5, 1, 3])
    _, library_mask, _ = pad_batch([[1] * int(n) for n in lengths], pad_id=0)
    assert torch.equal(idea.mask_from_lengths(lengths, 5), library_mask)
    hidden = torch.randn(3, 5, 4)
    assert torch.equal(idea.pool_last_token(hidden, lengths), last_token_pool(hidden, lengths))
    texts = ["a short one", "a somewhat longer text about reversing a list in Python", "x", "def f(): pass"]
    for model, tokenizer in (tiny, load_backbone("tiny-qwen3-bpe")):  # the second has EOS = PAD
        ours = idea.embed(model, tokenizer, texts, 16)
        library = torch.as_tensor(F2LLMEncoder(model, tokenizer, max_length=16).encode(texts))
        torch.testing.assert_close(ours, library, atol=1e-5, rtol=1e-4)


def test_01_mining_by_hand_and_decontamination_agree_with_the_library(tmp_path):
    from f2llm_lib.data.decontaminate import Decontaminator
    from f2llm_lib.data.mining import MiningConfig, select_negatives

    idea = idea_module("01_data_curation", tmp_path)
    rng = np.random.default_rng(0)
    for trial in range(30):
        size = int(rng.integers(3, 250))
        scores = rng.uniform(0, 1, size) if trial % 2 else rng.gamma(2.0, 3.0, size)  # cosine-like, BM25-like
        positive = int(rng.integers(size))
        bounded = bool(trial % 2)
        _, _, kept = idea.mine_by_hand(scores, positive, k=7, max_score=0.8 if bounded else None)
        is_positive = np.zeros(size, bool)
        is_positive[positive] = True
        library, _, _ = select_negatives(scores, float(scores[positive]), np.zeros(size, bool),
                                         MiningConfig(num_negatives=7), bounded=bounded, positive=is_positive)
        assert kept == library, (trial, kept, library)
    train = ["Return the sum.", "return  the SUM.", "Open a file", "Return the sum. And more.", "x"]
    held_out = ["Return the sum.", "x "]
    decontaminator = Decontaminator(held_out)
    assert idea.find_contaminated(train, held_out) == [i for i, t in enumerate(train) if decontaminator.matches(t)]


def test_02_online_lse_and_the_notebook_kernel_agree_with_the_library_and_float64(tmp_path):
    from f2llm_lib.losses.tolerances import TOLERANCES
    from f2llm_lib.teaching import kernel_steps
    from f2llm_lib.teaching.loss_variants import online_logsumexp

    idea = idea_module("02_fused_contrastive_loss", tmp_path, HAS_TRITON=True)
    logits = torch.randn(5, 301, dtype=torch.float64) * 7 + 900
    torch.testing.assert_close(idea.online_lse(logits, 64), online_logsumexp(logits, 64)[0], atol=0, rtol=0)
    torch.testing.assert_close(idea.online_lse(logits, 64), torch.logsumexp(logits, 1), atol=1e-10, rtol=1e-12)
    atol, rtol = TOLERANCES[torch.float32]
    for batch, keys, dim in ((1, 1, 8), (17, 23, 96), (5, 40, 33)):  # odd shapes: ragged tiles, d not a power of 2
        q = F.normalize(torch.randn(batch, dim, dtype=torch.float64), dim=-1)
        k = F.normalize(torch.randn(keys, dim, dtype=torch.float64), dim=-1)
        truth_lse = torch.logsumexp(q @ k.T / 0.05, 1)
        truth = (truth_lse - (q * k[:batch]).sum(-1) / 0.05).mean()
        loss, lse = idea.in_batch_forward(q.float(), k.float(), 0.05)
        library_loss, library_lse = kernel_steps.in_batch_forward(q.float(), k.float(), 0.05)
        torch.testing.assert_close(lse.double(), truth_lse, atol=atol, rtol=rtol)
        torch.testing.assert_close(loss.double(), truth, atol=atol, rtol=rtol)
        torch.testing.assert_close(lse, library_lse, atol=atol, rtol=rtol)


def test_03_training_step_pieces_agree_with_the_library(tmp_path, tiny):
    from f2llm_lib.embedder.model import F2LLMEncoder
    from f2llm_lib.embedder.tokenization import pad_batch, tokenize_with_eos
    from f2llm_lib.losses import contrastive_loss

    idea = idea_module("03_multi_gpu_finetuning", tmp_path)
    model, tokenizer = tiny
    ids = tokenize_with_eos(tokenizer, ["query one", "a much longer positive text for the query", "neg", "x y z"], 32)
    input_ids, mask, lengths = pad_batch(ids, tokenizer.pad_token_id)
    with torch.no_grad():
        torch.testing.assert_close(idea.embed_batch(model, input_ids, lengths),
                                   F2LLMEncoder(model, tokenizer)(input_ids, mask, lengths), atol=1e-6, rtol=1e-5)
    gen = torch.Generator().manual_seed(0)
    q, p = (torch.randn(6, 24, generator=gen, dtype=torch.float64) for _ in range(2))
    n = torch.randn(6, 3, 24, generator=gen, dtype=torch.float64)
    for in_batch in (True, False):
        ours = idea.f2llm_loss(F.normalize(q, dim=-1), F.normalize(p, dim=-1), F.normalize(n, dim=-1), 0.05, in_batch)
        library = contrastive_loss(q, p, n, in_batch=in_batch, temperature=0.05, impl="reference")
        torch.testing.assert_close(ours, library, atol=1e-12, rtol=1e-12)


def test_04_ndcg_and_ranking_agree_with_mteb(tmp_path):
    from mteb._evaluators.retrieval_metrics import calculate_retrieval_scores

    idea = idea_module("04_mteb_evaluation", tmp_path)
    rng = np.random.default_rng(1)
    doc_ids = [f"d{i}" for i in range(40)]
    for trial in range(20):
        scores = rng.normal(size=40)
        relevant = {doc_ids[int(i)]: int(rng.integers(1, 3)) for i in rng.choice(40, int(rng.integers(1, 4)),
                                                                                    replace=False)}
        ranking = [doc_ids[int(i)] for i in np.argsort(-scores)]
        mteb_score = calculate_retrieval_scores({"q": dict(zip(doc_ids, scores.tolist(), strict=True))},
                                                {"q": relevant}, [10]).all_scores["q"]["ndcg_cut_10"]
        assert math.isclose(idea.ndcg_at_10(ranking, relevant), mteb_score, abs_tol=1e-4), trial
    q = F.normalize(torch.randn(3, 8), dim=-1)
    d = F.normalize(torch.randn(40, 8), dim=-1)
    expected = [[doc_ids[int(i)] for i in torch.argsort(q[r] @ d.T, descending=True)[:10]] for r in range(3)]
    assert idea.rank_corpus(q, d, doc_ids) == expected
    from f2llm_lib.evaluation.matryoshka import truncate_embeddings

    wide = F.normalize(torch.randn(5, 37), dim=-1)
    for dim in (1, 8, 36, 37):  # the notebook's cut equals the one mteb is handed
        torch.testing.assert_close(idea.truncate(wide, dim), torch.as_tensor(truncate_embeddings(wide.numpy(), dim)))


@pytest.mark.parametrize("path", all_notebooks(), ids=lambda p: p.stem)
def test_prose_cells_render_as_prose(path):
    """Markdown cells hold Markdown: the notebook's title is its only level-1 heading. A cell whose lines all start
    with '# ' (a script's comment block pasted as Markdown) renders every line as a title."""
    nb = nbformat.read(path, as_version=4)
    markdown = [c.source for c in nb.cells if c.cell_type == "markdown"]
    titles = [(i, line) for i, source in enumerate(markdown) for line in source.splitlines()
              if line.startswith("# ") or line == "#"]
    assert titles == [(0, markdown[0].splitlines()[0])], f"{path.stem}: level-1 headings beside the title: {titles[:3]}"
    assert markdown[0].startswith(f"# {path.stem[:2]} · ")
