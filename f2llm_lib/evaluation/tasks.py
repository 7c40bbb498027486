"""Offline evaluation tasks built on mteb's own task classes (and so scored by mteb's own evaluators).

- ``pycode_tasks()``: the held-out pycode modules as Retrieval (nDCG@10), Clustering (V-measure) and
  Classification (accuracy) tasks;
- ``load_beir_folder``, ``load_sts_file``, ``load_labelled_folder``: local files -> an mteb task: a BEIR folder
  (corpus.jsonl, queries.jsonl, qrels/test.tsv) -> Retrieval; a jsonl/tsv file with s1, s2, score -> STS; a folder
  with train and test files of text and label -> Classification (or Clustering with ``kind="clustering"``).
  Named after a registered MTEB task, a local copy keeps that task's settings and replaces only the data.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
from pathlib import Path

from datasets import Dataset, DatasetDict
from mteb.abstasks.classification import AbsTaskClassification
from mteb.abstasks.clustering import AbsTaskClustering
from mteb.abstasks.retrieval import AbsTaskRetrieval
from mteb.abstasks.retrieval_dataset_loaders import RetrievalSplitData
from mteb.abstasks.sts import AbsTaskSTS
from mteb.abstasks.task_metadata import TaskMetadata

from ..data.readers import read_local
from ..data.schema import DataError, check_text

_COMMON = {
    "reference": "https://github.com/embeddings-benchmark/mteb",
    "category": "t2t", "eval_splits": ["test"], "eval_langs": ["eng-Latn"], "date": ("2024-01-01", "2026-11-26"),
    "dialect": ["Written"], "domains": [], "task_subtypes": [], "license": "not specified",
    "annotations_creators": "derived", "modalities": ["text"], "sample_creation": "found", "bibtex_citation": "",
}


def _metadata(name: str, task_type: str, main_score: str, description: str, source: str) -> TaskMetadata:
    revision = hashlib.sha1(source.encode()).hexdigest()[:12]
    return TaskMetadata(name=name, type=task_type, main_score=main_score, description=description,
                        dataset={"path": source, "revision": revision}, **_COMMON)


def registered_task(name: str):
    """mteb's registered task of that name (metadata only, nothing downloaded), or None."""
    import mteb

    try:
        return mteb.get_task(name)
    except (KeyError, ValueError):
        return None


def data_digest(dataset) -> str:
    """A digest of a local task's data (every split, text and label): an edit to the data, or another query cap,
    gives another digest, and so another cache entry (``run.evaluate``)."""
    digest = hashlib.sha1()

    def visit(value) -> None:
        if isinstance(value, dict):
            for key in sorted(value, key=str):
                digest.update(f"<{key}>".encode())
                visit(value[key])
        elif hasattr(value, "to_dict") and hasattr(value, "column_names"):  # a datasets.Dataset
            visit(value.to_dict())
        elif isinstance(value, list | tuple):
            digest.update(json.dumps(value, sort_keys=True, default=str).encode())
        else:
            digest.update(repr(value).encode())

    visit(dataset)
    return digest.hexdigest()[:16]


def _task(base, metadata: TaskMetadata, dataset, **attributes):
    """An instance of a one-off subclass of an mteb task class, with its data already loaded.

    A local copy of a registered MTEB task (a folder or file named after it, e.g. AmazonCounterfactualClassification)
    subclasses that task's own class instead: its metadata and evaluation settings (samples_per_label, n_experiments,
    score range, ...) stay mteb's and only the data is ours, so it scores like the hub task on the same data. The
    evaluated splits are those the local data has; a multilingual task is evaluated on its English subset."""
    metadata = metadata.model_copy(update={"dataset": {**metadata.dataset, "revision": data_digest(dataset)}})
    registered = registered_task(metadata.name)
    if registered is None:
        cls = type(metadata.name, (base,), {"metadata": metadata, "load_data": lambda self, **kw: None, **attributes})
        task = cls()
        task.dataset, task.data_loaded = dataset, True
        return task
    if not isinstance(registered, base):
        raise DataError(f"{metadata.name} is a registered {registered.metadata.type} task in mteb, but the local "
                        f"data is {metadata.type}; rename the folder or give it that task's files")
    splits = _splits(dataset)
    reg_meta = registered.metadata
    eval_splits = [s for s in reg_meta.eval_splits if s in splits]
    if not eval_splits:
        raise DataError(f"{metadata.name}: mteb evaluates its {reg_meta.eval_splits} split(s); the local data has "
                        f"{sorted(splits)}")
    subset = "default"
    if reg_meta.is_multilingual:
        languages = reg_meta.eval_langs
        subset = "en" if "en" in languages else next(k for k, v in languages.items() if "eng-Latn" in v)
        dataset = {subset: dataset["default"] if isinstance(dataset, dict) and "default" in dataset else dataset}
    local_meta = reg_meta.model_copy(update={"eval_splits": eval_splits, "dataset": metadata.dataset})
    cls = type(metadata.name, (type(registered),), {"metadata": local_meta, "load_data": lambda self, **kw: None})
    task = cls()
    if reg_meta.is_multilingual:
        task.hf_subsets = [subset]
    task.dataset, task.data_loaded = dataset, True
    return task


def _splits(dataset) -> set[str]:
    if isinstance(dataset, dict) and "default" in dataset and isinstance(dataset["default"], dict):
        return set(dataset["default"])
    return set(dataset.keys())


def retrieval_task(name: str, queries: dict[str, str], corpus: dict[str, str], qrels: dict[str, dict[str, int]],
                   source: str, description: str = "Retrieval") -> AbsTaskRetrieval:
    split = RetrievalSplitData(
        queries=Dataset.from_dict({"id": list(queries), "text": list(queries.values())}),
        corpus=Dataset.from_dict({"id": list(corpus), "text": list(corpus.values()), "title": [""] * len(corpus)}),
        relevant_docs=qrels, top_ranked=None)
    return _task(AbsTaskRetrieval, _metadata(name, "Retrieval", "ndcg_at_10", description, source),
                 {"default": {"test": split}})


def sts_task(name: str, s1: list[str], s2: list[str], scores: list[float], source: str,
             min_score: float = 0.0, max_score: float = 5.0) -> AbsTaskSTS:
    data = DatasetDict({"test": Dataset.from_dict({"sentence1": s1, "sentence2": s2, "score": scores})})
    return _task(AbsTaskSTS, _metadata(name, "STS", "cosine_spearman", "STS", source), data,
                 min_score=min_score, max_score=max_score)


def classification_task(name: str, train: tuple[list[str], list[str]], test: tuple[list[str], list[str]],
                        source: str) -> AbsTaskClassification:
    labels = sorted(set(train[1]) | set(test[1]))
    index = {label: i for i, label in enumerate(labels)}
    data = DatasetDict({split: Dataset.from_dict({"text": texts, "label": [index[y] for y in ys]})
                        for split, (texts, ys) in (("train", train), ("test", test))})
    return _task(AbsTaskClassification, _metadata(name, "Classification", "accuracy", "Classification", source),
                 data)


def clustering_task(name: str, texts: list[str], labels: list[str], source: str) -> AbsTaskClustering:
    data = DatasetDict({"test": Dataset.from_dict({"sentences": texts, "labels": labels})})
    return _task(AbsTaskClustering, _metadata(name, "Clustering", "v_measure", "Clustering", source), data,
                 max_document_to_embed=None, max_documents_per_cluster=min(len(texts), 2048), n_clusters=5)


# -- pycode ----------------------------------------------------------------------------------------------------------
def pycode_tasks(max_queries: int = 400, seed: int = 0) -> list:
    """The held-out pycode modules (never seen in training) as three mteb tasks."""
    import random

    from ..data.pycode import pycode_items

    items = pycode_items("eval")
    rng = random.Random(seed)
    by_code = {}
    for item in items:
        by_code.setdefault(item.code, item)
    docs = {f"d{i}": code for i, code in enumerate(by_code)}
    doc_of = {code: doc_id for doc_id, code in docs.items()}
    unique = list(by_code.values())
    picked = rng.sample(unique, min(max_queries, len(unique)))
    queries = {f"q{i}": item.summary for i, item in enumerate(picked)}
    qrels = {f"q{i}": {doc_of[item.code]: 1} for i, item in enumerate(picked)}
    retrieval = retrieval_task("PyCodeRetrieval", queries, docs, qrels, "pycode/eval",
                               "Docstring summary -> code, on held-out Python modules")
    docstrings = {}
    for item in items:
        docstrings.setdefault(item.docstring, item)
    texts = list(docstrings)
    clustering = clustering_task("PyCodeClustering", texts, [docstrings[t].module for t in texts], "pycode/eval")
    train = [t for t in texts if int(hashlib.sha1(t.encode()).hexdigest(), 16) % 2 == 0]
    test = [t for t in texts if int(hashlib.sha1(t.encode()).hexdigest(), 16) % 2 == 1]
    classification = classification_task(
        "PyCodeClassification", (train, [docstrings[t].package for t in train]),
        (test, [docstrings[t].package for t in test]), "pycode/eval")
    return [retrieval, clustering, classification]


# -- local files -----------------------------------------------------------------------------------------------------
def _jsonl_texts(path: Path, id_key: str = "_id") -> dict[str, str]:
    out = {}
    for where, record in read_local(path):
        if id_key not in record:
            raise DataError(f"{where}: missing '{id_key}'")
        text = " ".join(x for x in (record.get("title") or "", record.get("text") or "") if x)
        key = str(record[id_key])
        if key in out:
            raise DataError(f"{where}: duplicate {id_key} {key!r} (an earlier line has it); ids must be unique, or "
                            "one text would silently replace the other")
        out[key] = check_text(text, where, "text")
    return out


def load_beir_folder(folder: Path, name: str | None = None) -> AbsTaskRetrieval:
    folder = Path(folder)
    for required in ("corpus.jsonl", "queries.jsonl", "qrels/test.tsv"):
        if not (folder / required).is_file():
            raise DataError(f"{folder}: missing {required}; a BEIR folder has corpus.jsonl, queries.jsonl and "
                            "qrels/test.tsv")
    corpus = _jsonl_texts(folder / "corpus.jsonl")
    if not corpus:
        raise DataError(f"{folder / 'corpus.jsonl'}: the corpus is empty")
    queries = _jsonl_texts(folder / "queries.jsonl")
    qrels: dict[str, dict[str, int]] = {}
    with (folder / "qrels" / "test.tsv").open(encoding="utf-8-sig") as handle:  # -sig: a BOM is not a query id
        reader = csv.reader(handle, delimiter="\t")
        for number, row in enumerate(reader, start=1):
            if number == 1 and row[:1] == ["query-id"]:
                continue
            where = f"{folder / 'qrels' / 'test.tsv'}:{number}"
            if len(row) != 3:
                raise DataError(f"{where}: expected query-id, corpus-id, score (tab-separated)")
            query_id, doc_id, raw_score = row
            try:
                value = float(raw_score)
            except ValueError:
                value = float("nan")
            if not math.isfinite(value) or value != int(value):
                raise DataError(f"{where}: relevance score {raw_score!r} must be a whole number (0, 1, 2, ...)")
            score = int(value)
            if query_id not in queries:
                raise DataError(f"{where}: query id {query_id!r} is not in queries.jsonl")
            if doc_id not in corpus:
                raise DataError(f"{where}: corpus id {doc_id!r} is not in corpus.jsonl")
            qrels.setdefault(query_id, {})[doc_id] = score
    if not qrels:
        raise DataError(f"{folder / 'qrels' / 'test.tsv'}: no relevance judgements")
    queries = {q: t for q, t in queries.items() if q in qrels}
    return retrieval_task(name or folder.name, queries, corpus, qrels, str(folder))


def load_sts_file(path: Path, name: str | None = None, max_score: float = 5.0) -> AbsTaskSTS:
    s1, s2, scores = [], [], []
    for where, record in read_local(Path(path)):
        for key in ("s1", "s2", "score"):
            if key not in record:
                raise DataError(f"{where}: missing column '{key}' (an STS file has s1, s2, score)")
        s1.append(check_text(record["s1"], where, "s1"))
        s2.append(check_text(record["s2"], where, "s2"))
        try:
            score = float(record["score"])
        except (TypeError, ValueError) as exc:
            raise DataError(f"{where}: score must be a number, got {record['score']!r}") from exc
        if not math.isfinite(score):
            raise DataError(f"{where}: score is {record['score']!r}; every pair needs a finite score "
                            f"(0 to {max_score:g}), or the main score comes out NaN")
        scores.append(score)
    if not s1:
        raise DataError(f"{path}: no pairs")
    return sts_task(name or Path(path).stem, s1, s2, scores, str(path), max_score=max_score)


def load_labelled_folder(folder: Path, kind: str = "classification", name: str | None = None):
    """``train.jsonl`` and ``test.jsonl`` (or .tsv/.csv) with text and label -> Classification or Clustering."""
    folder = Path(folder)
    splits = {}
    for split in ("train", "test"):
        files = sorted(p for p in folder.glob(f"{split}.*") if p.suffix.lower() in (".jsonl", ".json", ".tsv", ".csv"))
        if len(files) > 1:
            raise DataError(f"{folder}: {' and '.join(p.name for p in files)} are both the {split} split; keep one "
                            "(which one this evaluates must not depend on file names)")
        if not files:
            if split == "train" and kind == "clustering":
                continue
            raise DataError(f"{folder}: missing {split}.jsonl (or .tsv/.csv) with text and label")
        texts, labels = [], []
        for where, record in read_local(files[0]):
            if "text" not in record or "label" not in record:
                raise DataError(f"{where}: needs columns 'text' and 'label'")
            texts.append(check_text(record["text"], where, "text"))
            labels.append(str(record["label"]))
        splits[split] = (texts, labels)
        if len(set(labels)) < 2:
            raise DataError(f"{files[0]}: every row has the label {labels[0]!r}; {kind} needs at least two labels "
                            "(check the label column)")
    if kind == "clustering" and len(splits["test"][0]) < 10:
        raise DataError(f"{folder}: {len(splits['test'][0])} texts; clustering needs at least 10 (mteb clusters "
                        "bootstrapped subsets of them)")
    if kind == "clustering":
        return clustering_task(name or folder.name, *splits["test"], str(folder))
    return classification_task(name or folder.name, splits["train"], splits["test"], str(folder))
