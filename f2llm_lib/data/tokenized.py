"""Tokenized training files: one de-duplicated corpus table keyed by doc_id, one query table per dataset.

Queries are written ``Instruct: {instruction}\\nQuery: {text}``; documents get no instruction. Every text is
tokenized without special tokens, truncated, and ends with EOS (see ``f2llm_lib.tokenization``). Lengths are
stored so that masks are built from them. Files are written to a temporary folder that is renamed at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..model import format_query
from ..tokenization import tokenize_with_eos
from .schema import TrainingTuple


def write_training_files(datasets: dict[str, Sequence[TrainingTuple]], tokenizer, out_dir: Path, max_length: int,
                         manifest_extra: dict | None = None, batch_size: int = 512) -> dict:
    """Write ``corpus.parquet``, ``queries/<dataset>.parquet`` and ``manifest.json``; return the manifest."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        doc_ids: dict[str, int] = {}
        for tuples in datasets.values():
            for item in tuples:
                for text in (item.positive, *item.negatives):
                    doc_ids.setdefault(text, len(doc_ids))
        docs = list(doc_ids)
        doc_tokens = []
        for start in range(0, len(docs), batch_size):
            doc_tokens += tokenize_with_eos(tokenizer, docs[start:start + batch_size], max_length)
        lengths = [len(ids) for ids in doc_tokens]
        pq.write_table(pa.table({"doc_id": pa.array(range(len(docs)), pa.int64()),
                                 "input_ids": pa.array(doc_tokens, pa.list_(pa.int32())),
                                 "length": pa.array(lengths, pa.int32())}), tmp / "corpus.parquet")
        (tmp / "queries").mkdir()
        counts, query_lengths = {}, []
        for name, tuples in datasets.items():
            texts = [format_query(t.query, t.instruction) for t in tuples]
            q_tokens = []
            for start in range(0, len(texts), batch_size):
                q_tokens += tokenize_with_eos(tokenizer, texts[start:start + batch_size], max_length)
            query_lengths += [len(ids) for ids in q_tokens]
            table = pa.table({
                "query_id": pa.array(range(len(tuples)), pa.int64()),
                "task_type": pa.array([t.task_type for t in tuples]),
                "input_ids": pa.array(q_tokens, pa.list_(pa.int32())),
                "length": pa.array([len(ids) for ids in q_tokens], pa.int32()),
                "positive_doc_id": pa.array([doc_ids[t.positive] for t in tuples], pa.int64()),
                "negative_doc_ids": pa.array([[doc_ids[n] for n in t.negatives] for t in tuples],
                                             pa.list_(pa.int64())),
            })
            pq.write_table(table, tmp / "queries" / f"{name}.parquet")
            counts[name] = len(tuples)
        bins = [0, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192]
        manifest = {
            "tokenizer": getattr(tokenizer, "name_or_path", type(tokenizer).__name__),
            "vocab_size": len(tokenizer), "eos_token_id": tokenizer.eos_token_id, "max_length": max_length,
            "queries_per_dataset": counts, "corpus_size": len(docs),
            "length_histogram": {
                "bins": bins,
                "queries": np.histogram(query_lengths, bins=bins)[0].tolist(),
                "documents": np.histogram(lengths, bins=bins)[0].tolist(),
            },
            **(manifest_extra or {}),
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.rename(tmp, out_dir)
        return manifest
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
