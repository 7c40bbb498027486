"""Verbose comparison helpers (in the style of Liger-Kernel's tests) and per-dtype tolerances."""

from __future__ import annotations

import torch

# (atol, rtol) per dtype, against a float64 ground truth.
from f2llm_lib.losses.tolerances import TOLERANCES  # noqa: F401  (the notebooks use the same numbers)


def assert_verbose_allclose(actual: torch.Tensor, expected: torch.Tensor, atol: float, rtol: float,
                            name: str = "tensor", max_print: int = 5) -> None:
    """Like torch.allclose, but on failure prints the worst mismatches and how many there are."""
    actual, expected = actual.detach().double().cpu(), expected.detach().double().cpu()
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    diff = (actual - expected).abs()
    bad = diff > atol + rtol * expected.abs()
    nonfinite = ~torch.isfinite(actual)
    if bad.any() or nonfinite.any():
        order = torch.argsort((diff - rtol * expected.abs()).flatten(), descending=True)[:max_print]
        lines = [f"  at {tuple(int(x) for x in torch.unravel_index(i, diff.shape))}: actual "
                 f"{actual.flatten()[i]:.8g} expected {expected.flatten()[i]:.8g} diff {diff.flatten()[i]:.3g}"
                 for i in order]
        raise AssertionError(f"{name}: {int(bad.sum())} of {bad.numel()} elements outside atol={atol}, "
                             f"rtol={rtol} (max abs diff {diff.max():.3g}; non-finite: {int(nonfinite.sum())})\n"
                             + "\n".join(lines))


def tokenized_pycode(folder, max_samples: int, max_length: int):
    """A small tokenized pycode set (retrieval: in-batch + gather; clustering) under ``folder/tokenized``, as the
    training tests use it."""
    from f2llm_lib.data.pipeline import curate
    from f2llm_lib.data.recipes import load_recipe
    from f2llm_lib.data.tokenized import write_training_files
    from f2llm_lib.embedder.backbones import smollm2_tokenizer

    recipe = load_recipe("pycode")
    recipe.tasks, recipe.max_samples = ["retrieval", "clustering"], max_samples
    out = folder / "tokenized"
    write_training_files(curate(recipe, show_progress=False).datasets, smollm2_tokenizer(), out, max_length)
    return out


def write_v2_layout(folder, tokenizer, rows: int = 24) -> dict:
    """A folder in F2LLM-v2's training layout, made the way its tokenize script makes it: per dataset, the texts
    tokenized (EOS appended), documents de-duplicated into ``<dataset>_corpus`` with ids ``"<dataset>_<i>"``, the
    query file referring to them; then the corpora concatenated into one ``corpus.parquet``. Three datasets, one of
    each task type (24 negatives for retrieval and clustering, one for classification). Returns what was written."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from f2llm_lib.embedder.tokenization import tokenize_with_eos

    folder.mkdir(parents=True, exist_ok=True)
    corpus_ids, corpus_tokens, written = [], [], {}
    for name, negatives in (("msmarco", 24), ("banking77", 24), ("imdb", 1)):
        queries = [f"Instruct: find it\nQuery: {name} question number {i}" for i in range(rows)]
        positives = [f"{name} answer {i}" for i in range(rows)]
        negative_texts = [[f"{name} distractor {(i + j) % (rows + 5)}" for j in range(1, negatives + 1)]
                          for i in range(rows)]
        texts = sorted(set(positives) | {t for row in negative_texts for t in row})
        doc_id = {text: f"{name}_{i}" for i, text in enumerate(texts)}
        corpus_ids += [doc_id[t] for t in texts]
        corpus_tokens += tokenize_with_eos(tokenizer, texts, 512)
        table = {"query_input_ids": tokenize_with_eos(tokenizer, queries, 512),
                 "passage_input_ids": [doc_id[t] for t in positives]}
        for j in range(negatives):
            table[f"negative_{j + 1}_input_ids"] = [doc_id[row[j]] for row in negative_texts]
        pq.write_table(pa.table(table), folder / f"{name}_query.parquet")
        written[name] = {"queries": queries, "positives": positives, "negatives": negative_texts}
    pq.write_table(pa.table({"doc_id": corpus_ids, "input_ids": corpus_tokens}), folder / "corpus.parquet")
    return written
