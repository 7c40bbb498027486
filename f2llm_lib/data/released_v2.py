"""F2LLM-v2's training layout, read as the official v2 code reads it, into this library's tokenized format.

F2LLM-v2 switched to "a more disk-efficient data format" (its README). Followed here: ``F2LLM/tokenize_data_qwen.py``
and ``F2LLM/run.py`` of codefuse-ai/CodeFuse-Embeddings (the "F2LLM-v2 (#43)" commit). A v2 training folder holds

- ``<dataset>_query.parquet`` per dataset: ``query_input_ids`` (the query's token ids, EOS last),
  ``passage_input_ids`` (the positive's *document id*, a string such as ``"msmarco_17"``) and
  ``negative_1_input_ids`` ... ``negative_24_input_ids`` (document ids; one negative for classification data);
- one ``corpus.parquet``: ``doc_id`` and ``input_ids`` (the document's token ids, EOS last), the per-dataset corpus
  files concatenated.

The texts are already tokenized, by the tokenizer of the model they were made for (Qwen3's for the released models),
so the recipe names that backbone and the ids are checked against it: every sequence must end with its EOS and
every id must be inside its vocabulary. As v2's collate does, a text longer than ``max_length`` is cut and its last
token forced to EOS. Each dataset's task type comes from its name (:func:`recipes.infer_task_type`; v2 keeps the
same three lists); queries already carry their instruction (v2 tokenizes the formatted query). Negatives are
sampled per step by the trainer: 7 of the 24 for retrieval, ``clustering_negatives`` (9 in v2) for clustering, the
stored one for classification (``TrainConfig.sampling``).
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np

from .recipes import Recipe, infer_task_type, resolve_path
from .schema import DataError
from .tokenized import INDEX_DTYPE, TokenizedWriter, check_dataset_name

QUERY_SUFFIX = "_query.parquet"
CORPUS_FILE = "corpus.parquet"
READ_ROWS = 8192  # parquet rows per read: memory stays one batch of token lists, whatever the file's size


def v2_files(folder: Path) -> tuple[dict[str, Path], Path]:
    """The dataset files (name -> path) and the corpus of a v2 training folder; errors name what is missing."""
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder; a v2 training folder holds <dataset>{QUERY_SUFFIX} files and "
                        f"{CORPUS_FILE}")
    corpus = folder / CORPUS_FILE
    if not corpus.is_file():
        raise DataError(f"{folder}: no {CORPUS_FILE}; F2LLM-v2's tokenize script writes <dataset>_corpus.parquet "
                        f"files, which its README concatenates into one {CORPUS_FILE}")
    datasets = {p.name[: -len(QUERY_SUFFIX)]: p for p in sorted(folder.glob(f"*{QUERY_SUFFIX}"))}
    if not datasets:
        raise DataError(f"{folder}: no <dataset>{QUERY_SUFFIX} files")
    for name in datasets:
        check_dataset_name(name, f"{folder}: dataset name", DataError)
    return datasets, corpus


def _fit(ids, max_length: int, eos: int) -> np.ndarray:
    """At most ``max_length`` ids, the last one EOS (v2's collate: cut, then force EOS)."""
    ids = np.asarray(ids, dtype=np.int64)[:max_length]
    if ids[-1] != eos:
        ids = np.append(ids[: max_length - 1], eos)
    return ids.astype(np.int32)


def _check_ids(ids, where: str, eos: int, vocab: int, backbone: str) -> None:
    if len(ids) == 0:
        raise DataError(f"{where}: an empty token list")
    if ids[-1] != eos:
        raise DataError(f"{where}: does not end with {backbone}'s EOS (id {eos}, found {ids[-1]}): these ids were not "
                        f"made by {backbone}'s tokenizer as v2's tokenize script makes them; give the backbone whose "
                        "tokenizer made the data (--backbone)")
    top = int(np.max(ids))
    if top >= vocab or int(np.min(ids)) < 0:
        raise DataError(f"{where}: token id {top} is outside {backbone}'s vocabulary of {vocab}; give the backbone "
                        "whose tokenizer made the data (--backbone)")


def import_v2(recipe: Recipe, tokenizer, backbone: str, out_dir: Path, max_length: int,
              manifest_extra: dict) -> dict:
    """Write the v2 folder of ``recipe.source.path`` as tokenized data in ``out_dir`` (a new folder); return the
    manifest. ``recipe.max_samples`` caps each dataset (a seeded random sample, as v2's script samples)."""
    import pyarrow.parquet as pq

    folder = resolve_path(recipe.source.path, recipe)
    datasets, corpus_path = v2_files(folder)
    eos, vocab = tokenizer.eos_token_id, len(tokenizer)
    writer = TokenizedWriter(out_dir, tokenizer, max_length, manifest_extra=manifest_extra)
    try:
        doc_index: dict[str, int] = {}
        corpus = pq.ParquetFile(corpus_path)
        missing = {"doc_id", "input_ids"} - set(corpus.schema_arrow.names)
        if missing:
            raise DataError(f"{corpus_path}: no column(s) {sorted(missing)}; v2's corpus has doc_id and input_ids")
        row = 0
        for batch in corpus.iter_batches(batch_size=READ_ROWS, columns=["doc_id", "input_ids"]):
            ids_column = batch.column("input_ids").to_pylist()
            for offset, (doc_id, ids) in enumerate(zip(batch.column("doc_id").to_pylist(), ids_column, strict=True)):
                _check_ids(ids, f"{corpus_path}:row {row + offset} (doc {doc_id})", eos, vocab, backbone)
                if doc_id in doc_index:
                    raise DataError(f"{corpus_path}:row {row + offset}: doc_id {doc_id!r} appears twice")
                doc_index[doc_id] = len(doc_index)
            writer.add_documents([_fit(ids, max_length, eos) for ids in ids_column])
            row += batch.num_rows
        rng = random.Random(recipe.seed)
        for name, path in datasets.items():
            writer.add_tokenized_dataset(name, infer_task_type(name),
                                         _dataset_batches(path, doc_index, recipe.max_samples, rng, max_length, eos,
                                                          vocab, backbone))
        return writer.close()
    except BaseException:
        writer.abort()
        raise


def _dataset_batches(path: Path, doc_index: dict[str, int], cap: int | None, rng: random.Random, max_length: int,
                     eos: int, vocab: int, backbone: str):
    """Batches of (query token arrays, positive doc indices, negatives' doc indices per query) of one dataset file."""
    import pyarrow.parquet as pq

    table = pq.ParquetFile(path)
    columns = table.schema_arrow.names
    negatives = sorted((c for c in columns if c.startswith("negative_") and c.endswith("_input_ids")),
                       key=lambda c: int(c.split("_")[1]) if c.split("_")[1].isdigit() else 10**6)
    missing = [c for c in ("query_input_ids", "passage_input_ids") if c not in columns]
    if missing or not negatives:
        raise DataError(f"{path}: no column(s) {missing or ['negative_1_input_ids']}; a v2 query file has "
                        "query_input_ids, passage_input_ids and negative_<n>_input_ids")
    rows = table.metadata.num_rows
    keep = None if not cap or cap >= rows else set(rng.sample(range(rows), cap))
    row = 0
    for batch in table.iter_batches(batch_size=READ_ROWS, columns=["query_input_ids", "passage_input_ids",
                                                                      *negatives]):
        data = batch.to_pydict()
        queries, positives, negative_lists = [], [], []
        for offset in range(batch.num_rows):
            index = row + offset
            if keep is not None and index not in keep:
                continue
            where = f"{path}:row {index}"
            query = data["query_input_ids"][offset]
            _check_ids(query, where + " (query)", eos, vocab, backbone)
            try:
                positives.append(doc_index[data["passage_input_ids"][offset]])
                negative_lists.append([doc_index[data[c][offset]] for c in negatives if data[c][offset] is not None])
            except KeyError as exc:
                raise DataError(f"{where}: document id {exc.args[0]!r} is not in {CORPUS_FILE}; the corpus and the "
                                "query files come from different tokenizations") from None
            queries.append(_fit(query, max_length, eos))
        row += batch.num_rows
        if queries:
            yield queries, np.asarray(positives, INDEX_DTYPE), negative_lists
