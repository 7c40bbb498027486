"""Tokenized training data at F2LLM scale: flat token arrays with offsets, memory-mapped, never loaded whole.

Every text is tokenized without special tokens, truncated, and ends with EOS
(``f2llm_lib.embedder.tokenization``); queries are written ``Instruct: {instruction}\\nQuery: {text}``,
documents get no instruction. Positives and negatives are de-duplicated into one corpus keyed by doc id. Layout
of a data folder (format 2):

    manifest.json                    format, tokenizer identity, max_length, per-dataset rows and task type, sizes
    corpus/tokens.bin                int32: every document's ids back to back
    corpus/offsets.bin               int64 [n_docs + 1]: document d is tokens[offsets[d]:offsets[d + 1]]
    queries/<dataset>/tokens.bin     int32, queries/<dataset>/offsets.bin int64 [n + 1]: the formatted queries
    queries/<dataset>/positive.bin   int64 [n]: each query's positive doc id
    queries/<dataset>/neg_ids.bin    int64, queries/<dataset>/neg_offsets.bin int64 [n + 1]: its stored negatives

Readers ``np.memmap`` the files, so every rank of a node shares one copy through the page cache and a loader
starts in milliseconds whatever the size. The writer streams: it holds one batch of tuples, the token arrays of
that batch and a 16-byte digest per distinct document (for de-duplication), never the corpus; it writes into a
hidden sibling folder that is renamed into place at the end, so a reader never sees half a folder.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import re
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..atomic import atomic_folder
from ..embedder.prompts import format_query
from ..embedder.tokenization import check_same_tokenizer, tokenize_with_eos, tokenizer_identity
from .schema import TrainingTuple, validate_tuple

FORMAT_VERSION = 2
LENGTH_BINS = [0, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 1 << 20]
TOKEN_DTYPE, INDEX_DTYPE = np.int32, np.int64
POOL_AFTER_BATCHES = 32  # tokenizing processes start once a write shows itself large (32 batches of tuples)


class TokenizedDataError(ValueError):
    """A data folder is missing, incomplete, of another format, or made with another tokenizer."""


class _RaggedWriter:
    """Appends variable-length int arrays to ``<stem>tokens.bin`` and their end offsets to ``<stem>offsets.bin``."""

    def __init__(self, folder: Path, values: str = "tokens.bin", offsets: str = "offsets.bin",
                 dtype=TOKEN_DTYPE) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.values = (folder / values).open("wb")
        self.offsets = (folder / offsets).open("wb")
        self.dtype = dtype
        self.total = 0
        self.count = 0
        np.zeros(1, INDEX_DTYPE).tofile(self.offsets)

    def extend(self, arrays: list[list[int]]) -> None:
        if not arrays:
            return
        lengths = np.fromiter((len(a) for a in arrays), dtype=INDEX_DTYPE, count=len(arrays))
        np.concatenate([np.asarray(a, dtype=self.dtype) for a in arrays]).tofile(self.values)
        (self.total + np.cumsum(lengths)).astype(INDEX_DTYPE).tofile(self.offsets)
        self.total += int(lengths.sum())
        self.count += len(arrays)

    def close(self) -> None:
        self.values.close()
        self.offsets.close()


def _tokenize_arrays(tokenizer, texts: list[str], max_length: int) -> list[np.ndarray]:
    return [np.asarray(ids, TOKEN_DTYPE) for ids in tokenize_with_eos(tokenizer, texts, max_length)]


class TokenizedWriter:
    """Stream datasets of tuples into a data folder: ``add_dataset(name, tuples)`` per dataset, then ``close()``.

    The main process validates, de-duplicates and assigns doc ids batch by batch; with ``workers`` > 0, tokenization
    runs in that many processes on the batches behind it (for large inputs, on machines with cores to spare), and
    the results are written in order, so the files are the same whatever the number of workers."""

    def __init__(self, out_dir: str | Path, tokenizer, max_length: int, batch_size: int = 1024,
                 manifest_extra: dict | None = None, workers: int | None = None,
                 pool_after: int = POOL_AFTER_BATCHES) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.parent.mkdir(parents=True, exist_ok=True)
        for leftover in self.out_dir.parent.glob(f".{self.out_dir.name}-tokenizing-*"):
            print(f"[tokenized] removing {leftover}, left by a write that was interrupted", flush=True)
            shutil.rmtree(leftover, ignore_errors=True)
        # Entered here, left in close() (the folder moves into place) or abort() (it is removed).
        self._folder = atomic_folder(self.out_dir, prefix="tokenizing-")
        self.tmp = self._folder.__enter__()
        self.tokenizer, self.max_length, self.batch_size = tokenizer, max_length, batch_size
        self.extra = manifest_extra or {}
        self.doc_ids: dict[bytes, int] = {}  # 16-byte digest of a document's text -> doc id
        self.corpus = _RaggedWriter(self.tmp / "corpus")
        self.datasets: dict[str, dict] = {}
        self.histogram = {"queries": np.zeros(len(LENGTH_BINS) - 1, np.int64),
                          "documents": np.zeros(len(LENGTH_BINS) - 1, np.int64)}
        # In-process by default: the Rust tokenizer already spreads a batch over threads. The pipeline asks for
        # processes (default_tokenizing_processes): there the main process also reads, checks and hashes every
        # text, and one worker made a 100k-tuple curation 1.18x faster on 2 cores (benchmarks/scale-cpu-2core).
        self.workers = 0 if workers is None else workers
        self.pool = None
        self.worker_peak_rss_mb = 0.0  # the largest tokenizing process's peak, once closed
        self.pool_after = pool_after
        self.batches_seen = 0
        self.depth = 2 * self.workers + 1  # batches in flight: every worker busy, memory still bounded

    def _submit(self, query_texts: list[str], doc_texts: list[str]):
        self.batches_seen += 1
        if self.pool is None and self.workers > 0 and self.batches_seen > self.pool_after:
            # started only for large inputs, where the start (a fresh process, the tokenizer rebuilt) pays off
            from concurrent.futures import ProcessPoolExecutor
            from multiprocessing import get_context

            from . import tokenize_worker

            state = tokenize_worker.rust_state(self.tokenizer, self.max_length) or \
                ("transformers", self.tokenizer, self.max_length)
            self.pool = ProcessPoolExecutor(self.workers, mp_context=get_context("spawn"),
                                            initializer=tokenize_worker.start, initargs=(state,))
        if self.pool is None:
            return _tokenize_arrays(self.tokenizer, query_texts, self.max_length), \
                _tokenize_arrays(self.tokenizer, doc_texts, self.max_length)
        from .tokenize_worker import job  # a light module: the worker imports it, not this one

        return self.pool.submit(job, query_texts, doc_texts)

    def _doc_ids(self, texts: list[str], new_texts: list[str]) -> list[int]:
        """Doc ids of ``texts``; documents not seen before get the next ids and are added to ``new_texts``."""
        ids = []
        for text in texts:
            key = hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()
            doc_id = self.doc_ids.get(key)
            if doc_id is None:
                doc_id = self.doc_ids[key] = len(self.doc_ids)
                new_texts.append(text)
            ids.append(doc_id)
        return ids

    def _dataset_writers(self, name: str) -> tuple[Path, _RaggedWriter, _RaggedWriter]:
        """A new dataset's folder and its query and negative writers (a name used twice, or not plain, is refused)."""
        if name in self.datasets:
            raise TokenizedDataError(f"dataset {name!r} is written twice; give each dataset its own name")
        check_dataset_name(name, "dataset name")
        folder = self.tmp / "queries" / name
        return folder, _RaggedWriter(folder), _RaggedWriter(folder, "neg_ids.bin", "neg_offsets.bin", INDEX_DTYPE)

    def add_dataset(self, name: str, tuples: Iterable[TrainingTuple], validated: bool = False) -> int:
        """Tokenize and write one dataset, ``batch_size`` tuples at a time; return its number of queries.
        ``validated``: the caller has already checked every tuple (``validate_tuple``), as the pipeline does."""
        folder, queries, negatives = self._dataset_writers(name)
        positives = (folder / "positive.bin").open("wb")
        task_types: set[str] = set()
        instruction = ""
        pending: list[tuple] = []

        def write_oldest() -> None:
            job, positive_ids, negative_ids = pending.pop(0)
            query_tokens, doc_tokens = job.result() if hasattr(job, "result") else job
            self.corpus.extend(doc_tokens)  # new documents, in doc-id order: batches are written in order
            self.histogram["documents"] += np.histogram([len(t) for t in doc_tokens], bins=LENGTH_BINS)[0]
            queries.extend(query_tokens)
            self.histogram["queries"] += np.histogram([len(t) for t in query_tokens], bins=LENGTH_BINS)[0]
            positive_ids.tofile(positives)
            negatives.extend(negative_ids)

        for index, batch in enumerate(_batches(tuples, self.batch_size)):
            for offset, item in enumerate(batch if not validated else ()):  # an error naming the row, before
                validate_tuple(item, f"dataset {name!r}, tuple {index * self.batch_size + offset}")  # tokenizing
            task_types.update(t.task_type for t in batch)
            if index == 0:  # the dataset's query instruction: the export's prompt for it
                instruction = batch[0].instruction
            new_texts: list[str] = []
            positive_ids = np.asarray(self._doc_ids([t.positive for t in batch], new_texts), INDEX_DTYPE)
            flat = self._doc_ids([n for t in batch for n in t.negatives], new_texts)
            starts = np.cumsum([0] + [len(t.negatives) for t in batch])
            job = self._submit([format_query(t.query, t.instruction) for t in batch], new_texts)
            pending.append((job, positive_ids, [flat[starts[i]:starts[i + 1]] for i in range(len(batch))]))
            if len(pending) >= self.depth:
                write_oldest()
        while pending:
            write_oldest()
        queries.close()
        negatives.close()
        positives.close()
        if len(task_types) > 1:
            raise TokenizedDataError(f"dataset {name!r} mixes task types {sorted(task_types)}: one task type per "
                                     "dataset (F2LLM draws one dataset per step and its loss depends on the type)")
        self.datasets[name] = {"rows": queries.count, "task_type": next(iter(task_types), "retrieval"),
                               "instruction": instruction,
                               "query_tokens": queries.total, "negative_refs": negatives.total}
        return queries.count

    def add_documents(self, arrays: list[np.ndarray]) -> None:
        """Append documents that are already token ids (EOS last, at most max_length): the next doc ids, in order.
        For data tokenized elsewhere (F2LLM-v2's layout); text goes through ``add_dataset``."""
        self.corpus.extend(arrays)
        self.histogram["documents"] += np.histogram([len(a) for a in arrays], bins=LENGTH_BINS)[0]

    def add_tokenized_dataset(self, name: str, task_type: str, batches: Iterable[tuple]) -> int:
        """Write one dataset whose queries are token ids and whose positives and negatives are doc ids of documents
        already added: ``batches`` yields (query arrays, positive doc ids, negative doc ids per query)."""
        folder, queries, negatives = self._dataset_writers(name)
        with (folder / "positive.bin").open("wb") as positives:
            for query_arrays, positive_ids, negative_ids in batches:
                queries.extend(query_arrays)
                self.histogram["queries"] += np.histogram([len(q) for q in query_arrays], bins=LENGTH_BINS)[0]
                np.asarray(positive_ids, INDEX_DTYPE).tofile(positives)
                negatives.extend(negative_ids)
        queries.close()
        negatives.close()
        self.datasets[name] = {"rows": queries.count, "task_type": task_type, "query_tokens": queries.total,
                               "negative_refs": negatives.total}
        return queries.count

    def close(self) -> dict:
        """Write the manifest and move the folder into place (replacing an older one); return the manifest."""
        self.corpus.close()
        manifest = {
            "format": FORMAT_VERSION,
            "tokenizer": tokenizer_identity(self.tokenizer),
            "max_length": self.max_length,
            "datasets": self.datasets,
            "queries_per_dataset": {name: info["rows"] for name, info in self.datasets.items()},
            "corpus_size": self.corpus.count,
            "corpus_tokens": self.corpus.total,
            "length_histogram": {"bins": LENGTH_BINS[:-1] + ["inf"],
                                 **{k: v.tolist() for k, v in self.histogram.items()}},
            **self.extra,
        }
        (self.tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
        self.doc_ids.clear()
        self._shutdown()
        self._folder.__exit__(None, None, None)  # replaces an older folder only now, once this one is complete
        return manifest

    def abort(self) -> None:
        self._shutdown()
        self.corpus.close()
        aborted = TokenizedDataError("the write was aborted")
        self._folder.__exit__(type(aborted), aborted, None)  # removes the unfinished folder; out_dir is untouched

    def _shutdown(self) -> None:
        if self.pool is not None:
            # the workers' own peak memory, read before they exit (Linux; ProcessPoolExecutor keeps them by pid)
            self.worker_peak_rss_mb = max((_peak_rss_of(pid) for pid in list(self.pool._processes)), default=0.0)
            self.pool.shutdown(cancel_futures=True)
            self.pool = None


def _peak_rss_of(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as handle:
            return next(int(line.split()[1]) / 1024 for line in handle if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return 0.0


def default_tokenizing_processes() -> int:
    """Tokenizing processes beside the main one when curating: one per spare core, at most 4."""
    return max(0, min(4, (os.cpu_count() or 1) - 1))


def _batches(items: Iterable, size: int) -> Iterator[list]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def write_training_files(datasets: dict[str, Iterable[TrainingTuple]], tokenizer, out_dir: str | Path,
                         max_length: int, manifest_extra: dict | None = None, batch_size: int = 1024,
                         workers: int | None = None) -> dict:
    """Write every dataset (any iterable of tuples: lists, or generators that stream from disk) to ``out_dir``.
    ``workers``: tokenizing processes (None or 0: tokenize in this process)."""
    writer = TokenizedWriter(out_dir, tokenizer, max_length, batch_size, manifest_extra, workers)
    try:
        for name, tuples in datasets.items():
            writer.add_dataset(name, tuples)
        return writer.close()
    except BaseException:
        writer.abort()
        raise


@dataclass
class Ragged:
    """Memory-mapped variable-length rows: row i is ``values[offsets[i]:offsets[i + 1]]``."""

    values: np.ndarray
    offsets: np.ndarray

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, index: int) -> np.ndarray:
        return self.values[self.offsets[index]:self.offsets[index + 1]]

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


def _random_access(array: np.ndarray) -> np.ndarray:
    """Tell the kernel a memory map is read at random (batches of scattered rows): no read-ahead, so a page fault
    maps one page instead of up to 128 KB around it, and the loader's resident memory stays what it reads."""
    handle = getattr(array, "_mmap", None)
    if handle is not None and hasattr(mmap, "MADV_RANDOM"):
        handle.madvise(mmap.MADV_RANDOM)
    return array


DATASET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


def check_dataset_name(name: object, what: str = "dataset name", error: type[Exception] | None = None) -> None:
    """A dataset name is a plain folder name (it becomes ``queries/<name>/`` and the teacher cache's part): no path
    separators, no ``..``, nothing absolute."""
    if not isinstance(name, str) or not DATASET_NAME.fullmatch(name) or ".." in name:
        raise (error or TokenizedDataError)(f"{what} {str(name)[:80]!r} is not a plain name; use letters, digits, "
                                            "_, - and . (it names a folder inside the data folder)")


def _check_ragged(ragged: Ragged, count: object, tokens: object, folder: Path, values: str = "tokens.bin",
                  unit: str = "tokens") -> None:
    offsets = ragged.offsets
    where = folder / values
    if count is not None and len(offsets) != int(count) + 1:
        raise TokenizedDataError(f"{folder}: {len(offsets) - 1} rows in its offsets, the manifest says {count}: "
                                 "the folder is incomplete or corrupt; re-run the data pipeline")
    if len(offsets) == 0 or int(offsets[0]) != 0 or int(offsets[-1]) != len(ragged.values):
        raise TokenizedDataError(f"{where}: holds {len(ragged.values):,} {unit}, its offsets end at "
                                 f"{int(offsets[-1]) if len(offsets) else 0:,}: the file was cut short or altered; "
                                 "re-run the data pipeline")
    if tokens is not None and len(ragged.values) != int(tokens):
        raise TokenizedDataError(f"{where}: {len(ragged.values):,} {unit}, the manifest says {int(tokens):,}: the file "
                                 "was cut short or altered; re-run the data pipeline")
    if len(offsets) > 1 and bool((np.diff(offsets) < (1 if unit == "tokens" else 0)).any()):
        raise TokenizedDataError(f"{folder}: its offsets go backwards (or a text is empty): the folder is corrupt; "
                                 "re-run the data pipeline")


def _ragged(folder: Path, values: str = "tokens.bin", offsets: str = "offsets.bin", dtype=TOKEN_DTYPE) -> Ragged:
    offsets_array = np.fromfile(folder / offsets, dtype=INDEX_DTYPE) if (folder / offsets).stat().st_size < 1 << 16 \
        else _random_access(np.memmap(folder / offsets, dtype=INDEX_DTYPE, mode="r"))
    size = (folder / values).stat().st_size
    values_array = _random_access(np.memmap(folder / values, dtype=dtype, mode="r")) if size else np.zeros(0, dtype)
    return Ragged(values_array, offsets_array)


@dataclass
class DatasetArrays:
    name: str
    task_type: str
    queries: Ragged
    positive: np.ndarray
    negatives: Ragged


class TokenizedData:
    """A data folder opened for reading: memory maps only (milliseconds, a few KB of RSS, whatever the size)."""

    def __init__(self, data_dir: str | Path) -> None:
        self.data_dir = Path(data_dir)
        manifest_path = self.data_dir / "manifest.json"
        if not manifest_path.is_file():
            hint = " (an older format: re-run the data pipeline)" if (self.data_dir / "corpus.parquet").exists() \
                else ""
            raise TokenizedDataError(f"{self.data_dir}: no manifest.json{hint}; this should be the 'tokenized' folder "
                                     "the data pipeline writes (python -m f2llm_lib.data.pipeline RECIPE --out DIR)")
        try:
            self.manifest = json.loads(manifest_path.read_text())
        except json.JSONDecodeError as exc:
            raise TokenizedDataError(f"{manifest_path}: not valid JSON ({exc}); re-run the data pipeline") from exc
        if self.manifest.get("format") != FORMAT_VERSION:
            raise TokenizedDataError(f"{self.data_dir}: data format {self.manifest.get('format')!r}, this library "
                                     f"reads format {FORMAT_VERSION}; re-run the data pipeline")
        try:
            self.corpus = _ragged(self.data_dir / "corpus")
            self.datasets = {}
            for name, info in self.manifest["datasets"].items():
                check_dataset_name(name, f"{manifest_path}: dataset name")
                folder = self.data_dir / "queries" / name
                self.datasets[name] = DatasetArrays(
                    name, info["task_type"], _ragged(folder),
                    _random_access(np.memmap(folder / "positive.bin", dtype=INDEX_DTYPE, mode="r")) if info["rows"]
                    else np.zeros(0, INDEX_DTYPE),
                    _ragged(folder, "neg_ids.bin", "neg_offsets.bin", INDEX_DTYPE))
        except (FileNotFoundError, KeyError, ValueError) as exc:  # ValueError: a file cut short mid-value
            raise TokenizedDataError(f"{self.data_dir}: incomplete or corrupt data folder ({exc}); re-run the data "
                                     "pipeline") from exc
        self._check_against_manifest()

    def _check_against_manifest(self) -> None:
        """Every file's size and offsets against the manifest, before any training step: a file cut short or
        altered would otherwise be read as data (a last text without its EOS, an empty text at some later step)."""
        manifest = self.manifest
        _check_ragged(self.corpus, manifest.get("corpus_size"), manifest.get("corpus_tokens"),
                      self.data_dir / "corpus")
        for name, arrays in self.datasets.items():
            info = manifest["datasets"][name]
            rows = info["rows"]
            folder = self.data_dir / "queries" / name
            if not len(arrays.queries) == len(arrays.positive) == len(arrays.negatives) == rows:
                raise TokenizedDataError(f"{self.data_dir}: dataset {name!r} has inconsistent files (manifest says "
                                         f"{rows} rows); re-run the data pipeline")
            _check_ragged(arrays.queries, rows, info.get("query_tokens"), folder)
            _check_ragged(arrays.negatives, rows, info.get("negative_refs"), folder, "neg_ids.bin", "doc ids")
            corpus_size = len(self.corpus)
            for what, ids in (("positive.bin", arrays.positive), ("neg_ids.bin", arrays.negatives.values)):
                if len(ids) and (int(ids.max()) >= corpus_size or int(ids.min()) < 0):
                    raise TokenizedDataError(f"{folder / what}: doc ids outside the corpus of {corpus_size} "
                                             "documents: the file is corrupt or from another curation; re-run the "
                                             "data pipeline")

    @property
    def max_length(self) -> int:
        return int(self.manifest["max_length"])

    @property
    def tokenizer(self) -> dict:
        return self.manifest["tokenizer"]

    def check_tokenizer(self, tokenizer, model_name: str) -> None:
        """Refuse a model whose tokenizer is not the one this data was tokenized with (raises, naming both)."""
        check_same_tokenizer(self.tokenizer, tokenizer, f"the data in {self.data_dir}", model_name)
