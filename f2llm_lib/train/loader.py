"""The multitask loader: one dataset per step, batches read from memory-mapped token arrays.

- Every rank builds the same plan: per epoch, each dataset's training rows are shuffled by an RNG seeded with
  (seed, epoch, dataset), cut into global batches of ``per_device_batch x world_size``, and the order of
  (dataset, batch) is drawn from another (seed, epoch) RNG. Rank r takes the r-th slice of each global batch, so
  N processes with B queries each see exactly the batches of one process with N x B queries.
- ``sampling`` (see docs/F2LLM_REFERENCE.md, Sampling):
  ``per_query`` (default): a dataset's draw probability is proportional to its remaining batches; each query draws
  its own negatives from its stored ones, seeded by (seed, epoch, dataset, row);
  ``released``: as the released F2LLM code: the probabilities are fixed at the epoch's start (proportional to the
  batch counts; an exhausted dataset leaves the draw), and one set of negative indices is drawn per batch and
  shared by all its queries.
- Negatives per task type: ``num_negatives`` for retrieval, ``clustering_negatives`` for clustering (F2LLM-v2: 9),
  always 1 for classification (F2LLM: the one other label).
- ``max_length`` truncates each text as F2LLM's collate does: its first max_length - 1 tokens, then EOS.
- ``padding``: ``sorted`` (default) runs a step's texts in groups of similar length, each padded to its own longest,
  the fewest groups that waste at most ``max_padding`` of the tokens run; ``single`` pads everything to one length,
  as F2LLM's released collate does. The loss is the same; only wasted compute differs.
- Some rows of every dataset (``val_fraction``) are held out for per-dataset validation losses.
- The position (epoch, step in epoch) is the whole state: a resumed run continues mid-epoch exactly.
Nothing is loaded: the corpus and queries stay memory-mapped (``data.tokenized``), so a loader over billions of
tokens starts in milliseconds and each rank's memory holds only its plan (8 bytes per query) and one batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..data.tokenized import TokenizedData, TokenizedDataError
from ..embedder.tokenization import PaddedGroup
from ..typed import check_choice
from .config import Padding, Sampling

Chunk = PaddedGroup  # the loader's name for a group of texts padded together


@dataclass
class Batch:
    """One step's texts, in F2LLM's layout [B queries | B positives | B x k negatives], run in ``chunks``: groups of
    texts of similar length, each padded to its own longest (``padding="sorted"``), or one chunk for everything
    (``"single"``, F2LLM's released collate). Embeddings do not depend on how texts are grouped, so the loss is the
    same either way; only the padding (wasted compute) differs."""

    dataset: str
    task_type: str
    texts: list[np.ndarray]
    chunks: list[Chunk]
    batch_size: int
    num_negatives: int
    pad_id: int = 0
    query_rows: np.ndarray | None = None  # where its texts come from (the teacher's vectors are looked up by these)
    doc_ids: np.ndarray | None = None  # positives, then negatives, in batch order

    @property
    def in_batch(self) -> bool:
        """F2LLM adds the in-batch term for retrieval datasets only."""
        return self.task_type == "retrieval"

    def split(self, embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """This batch's embeddings, in its layout, as (queries ``[B, d]``, positives ``[B, d]``, negatives
        ``[B, k, d]`` or None without negatives)."""
        size, k = self.batch_size, self.num_negatives
        if embeddings.shape[0] != size * (2 + k):
            raise ValueError(f"{embeddings.shape[0]} embeddings for a batch of {size} queries x (2 + {k}) texts")
        negatives = embeddings[2 * size:].view(size, k, -1) if k else None
        return embeddings[:size], embeddings[size:2 * size], negatives

    @property
    def lengths(self) -> torch.Tensor:
        return torch.as_tensor([len(t) for t in self.texts], dtype=torch.long)

    @property
    def tokens(self) -> int:
        return int(sum(len(t) for t in self.texts))

    @property
    def padded_tokens(self) -> int:
        """Tokens the model actually runs: every chunk's rows x its width."""
        return int(sum(c.input_ids.numel() for c in self.chunks))

    @property
    def padding_fraction(self) -> float:
        return 1.0 - self.tokens / self.padded_tokens

    @property
    def input_ids(self) -> torch.Tensor:
        """All texts in batch order, padded to the longest (for inspection and tests; training runs the chunks)."""
        return _pad(self.texts, self.pad_id)[0]

    @property
    def attention_mask(self) -> torch.Tensor:
        return _pad(self.texts, self.pad_id)[1]


def _pad(texts: list[np.ndarray], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    lengths = np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts))
    width = int(lengths.max())
    input_ids = np.full((len(texts), width), pad_id, dtype=np.int64)
    for row, tokens in enumerate(texts):
        input_ids[row, : len(tokens)] = tokens
    lengths_t = torch.from_numpy(lengths)
    mask = (torch.arange(width)[None, :] < lengths_t[:, None]).long()  # from lengths, never from ids
    return torch.from_numpy(input_ids), mask, lengths_t


def length_groups(lengths: np.ndarray, max_padding: float) -> list[np.ndarray]:
    """Split texts into the fewest groups whose padded area wastes at most ``max_padding`` of it, each group padded
    to its own longest text. Sorted by length, the best split into k groups is found by dynamic programming over
    the sorted order (a group is a run of neighbours); k grows until the waste is small enough."""
    order = np.argsort(-lengths, kind="stable")
    ranked = lengths[order].astype(np.int64)
    n, tokens = len(ranked), int(ranked.sum())
    budget = tokens / (1.0 - max_padding)
    positions = np.arange(n)
    best = (positions + 1) * ranked[0]  # one group: every text padded to the longest (best[i]: first i + 1 texts)
    cuts = [np.zeros(n, dtype=np.int64)]  # cuts[k][i]: where the last group starts in the best k + 1 split
    while best[-1] > budget and len(cuts) < n:
        new_best = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
        new_cut = np.zeros(n, dtype=np.int64)
        for i in range(len(cuts), n):  # the last group is texts m..i, m >= 1, padded to ranked[m] (sorted descending)
            m = np.arange(len(cuts), i + 1)
            area = best[m - 1] + (i - m + 1) * ranked[m]
            j = int(np.argmin(area))
            new_best[i], new_cut[i] = area[j], m[j]
        best = new_best
        cuts.append(new_cut)
    groups, end = [], n
    for k in range(len(cuts) - 1, -1, -1):
        start = int(cuts[k][end - 1]) if k else 0
        groups.append(order[start:end])
        end = start
    return groups[::-1]


class MultitaskLoader:
    def __init__(self, data_dir: str | Path, per_device_batch: int, num_negatives: int, pad_id: int,
                 rank: int = 0, world_size: int = 1, seed: int = 0, val_fraction: float = 0.01,
                 max_length: int | None = None, sampling: str = "per_query", clustering_negatives: int = 0,
                 eos_id: int | None = None, padding: str = "sorted", max_padding: float = 0.05) -> None:
        # the same choices as TrainConfig's (one definition), for callers that build a loader directly
        check_choice(sampling, Sampling, "sampling", ValueError)
        check_choice(padding, Padding, "padding", ValueError)
        self.padding, self.max_padding = padding, max_padding
        self.data = TokenizedData(data_dir)
        self.data_dir = Path(data_dir)
        self.max_length = max_length or self.data.max_length
        if self.max_length > self.data.max_length:
            raise TokenizedDataError(f"max_length {self.max_length} is more than the {self.data.max_length} tokens "
                                     f"per text that {self.data_dir} holds (tokenized at that length): lower "
                                     "max_length, or re-tokenize with --max-length")
        if self.max_length < 2:
            raise ValueError(f"max_length must be at least 2 (one token + EOS), got {self.max_length}")
        self.per_device_batch, self.pad_id, self.sampling = per_device_batch, pad_id, sampling
        self.eos_id = self.data.tokenizer["eos_token_id"] if eos_id is None else eos_id
        self.negatives_by_task = {"retrieval": num_negatives, "clustering": clustering_negatives or num_negatives,
                                  "classification": 1}
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.global_batch = per_device_batch * world_size
        self.dataset_index = {name: index for index, name in enumerate(sorted(self.data.datasets))}
        self.train_rows: dict[str, np.ndarray] = {}
        self.val_rows: dict[str, np.ndarray] = {}
        for name, index in self.dataset_index.items():
            n = len(self.data.datasets[name].queries)
            order = np.random.default_rng([seed, 999, index]).permutation(n).astype(np.int32)  # 4 bytes a query
            n_val = int(n * val_fraction) if n * val_fraction >= 1 else 0
            self.val_rows[name], self.train_rows[name] = np.sort(order[:n_val]), order[n_val:]
        self.datasets = [name for name, rows in self.train_rows.items() if len(rows) >= self.global_batch]
        self.skipped = {name: len(rows) for name, rows in self.train_rows.items() if len(rows) < self.global_batch}
        if self.skipped and self.datasets and rank == 0:
            print(f"[loader] never trained on: {', '.join(f'{n} ({k} training rows)' for n, k in self.skipped.items())}"
                  f"; a step needs a global batch of {self.global_batch} queries of one dataset (per_device_batch "
                  f"{per_device_batch} x {world_size} processes). Lower per_device_batch or add data", flush=True)
        if not self.datasets:
            sizes = {name: len(rows) for name, rows in self.train_rows.items()}
            raise TokenizedDataError(f"{self.data_dir}: no dataset has a full global batch of {self.global_batch} "
                                     f"queries (per_device_batch {per_device_batch} x {world_size} processes); "
                                     f"training rows per dataset: {sizes}. Lower per_device_batch or add data")
        self._check_negatives()
        self.epoch, self.step_in_epoch = 0, 0
        self._plan_epoch = -1

    @classmethod
    def from_config(cls, config, tokenizer, rank: int = 0, world_size: int = 1) -> MultitaskLoader:
        """The loader a ``TrainConfig`` describes, for one process of ``world_size``, padding with ``tokenizer``'s
        pad id and ending texts with its EOS."""
        return cls(config.data_dir, config.per_device_batch, config.num_negatives, tokenizer.pad_token_id, rank,
                   world_size, config.seed, config.val_fraction, max_length=config.max_length or None,
                   sampling=config.sampling, clustering_negatives=config.clustering_negatives,
                   eos_id=tokenizer.eos_token_id, padding=config.padding, max_padding=config.max_padding)

    def _check_negatives(self) -> None:
        """Every query must store at least as many negatives as its task type asks for: checked now, not mid-run."""
        for name in self.datasets:
            arrays = self.data.datasets[name]
            needed = self.negatives_by_task[arrays.task_type]
            if needed and len(arrays.negatives):
                fewest = int(arrays.negatives.lengths().min())
                if fewest < needed:
                    raise TokenizedDataError(
                        f"{self.data_dir}: dataset {name!r} ({arrays.task_type}) stores as few as {fewest} negatives "
                        f"for a query, but {needed} are asked for; lower num_negatives (clustering_negatives for "
                        "clustering) or mine more negatives")

    # -- plan -----------------------------------------------------------------------------------------------
    def _plan(self, epoch: int) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
        """The epoch's order, vectorised (a million steps in milliseconds): per step the dataset (index into
        ``self.datasets``) and which of its global batches; and each dataset's batches [n, global_batch] of rows."""
        batches = {}
        for index, name in enumerate(self.datasets):
            rows = self.train_rows[name]
            perm = rows[np.random.default_rng([self.seed, epoch, index]).permutation(len(rows))]
            n = len(perm) // self.global_batch
            batches[name] = perm[: n * self.global_batch].reshape(n, self.global_batch)
        counts = np.array([len(batches[name]) for name in self.datasets])
        rng = np.random.default_rng([self.seed, epoch, 12345])
        if self.sampling == "per_query":
            # drawing a dataset with probability proportional to its remaining batches, step after step, is a
            # uniformly random order of all the epoch's batches
            order = rng.permutation(np.repeat(np.arange(len(counts)), counts))
        else:
            # released: fixed probabilities (the starting counts), an exhausted dataset leaves the draw. Drawing from
            # the fixed distribution and skipping exhausted datasets' draws is exactly that renormalised draw.
            weights = counts / counts.sum()
            kept, seen = [], np.zeros(len(counts), dtype=np.int64)
            while (seen < counts).any():
                draws = rng.choice(len(counts), size=int(counts.sum()), p=weights)
                occurrence = np.zeros(len(draws), dtype=np.int64)
                for d in range(len(counts)):  # each draw's rank among its dataset's draws so far
                    mask = draws == d
                    occurrence[mask] = seen[d] + np.arange(int(mask.sum()))
                keep = occurrence < counts[draws]
                kept.append(draws[keep])
                seen = np.minimum(seen + np.bincount(draws, minlength=len(counts)), counts)
            order = np.concatenate(kept)
        # which batch of its dataset each step takes: the running count of that dataset in the order
        batch_index = np.zeros(len(order), dtype=np.int64)
        for d in range(len(counts)):
            mask = order == d
            batch_index[mask] = np.arange(int(mask.sum()))
        return order, batches, batch_index

    def plan_step(self, step: int) -> tuple[str, np.ndarray]:
        """(dataset, global batch rows) of a step of the current epoch."""
        order, batches, batch_index = self._current_plan
        name = self.datasets[int(order[step])]
        return name, batches[name][int(batch_index[step])]

    def steps_per_epoch(self) -> int:
        return sum(len(self.train_rows[n]) // self.global_batch for n in self.datasets)

    # -- batches --------------------------------------------------------------------------------------------
    def _text(self, tokens: np.ndarray) -> np.ndarray:
        """F2LLM's collate: at most max_length tokens, the last one EOS (the stored EOS, or a forced one)."""
        if len(tokens) <= self.max_length:
            return tokens
        return np.concatenate([tokens[: self.max_length - 1], np.asarray([self.eos_id], tokens.dtype)])

    def _negative_ids(self, name: str, rows: np.ndarray, epoch: int, k: int,
                      shared: tuple[int, int] | None) -> list[int]:
        arrays = self.data.datasets[name]
        if shared is not None:  # released: one draw of k positions for the whole global batch
            step, stored = shared
            picks = np.sort(np.random.default_rng([self.seed, epoch, step, 7]).choice(stored, k, replace=False))
            return [int(arrays.negatives[int(r)][p]) for r in rows for p in picks]
        out = []
        index = self.dataset_index[name]
        for r in rows:
            stored = arrays.negatives[int(r)]
            picks = np.sort(np.random.default_rng([self.seed, epoch, index, int(r), 7]).choice(len(stored), k,
                                                                                             replace=False))
            out += [int(stored[p]) for p in picks]
        return out

    def collate(self, name: str, rows: np.ndarray, epoch: int, shared: tuple[int, int] | None = None) -> Batch:
        """The batch of these rows: queries, their positives, their negatives (``shared``: the released sampling's
        (step, fewest stored negatives in the global batch), so every rank draws the same positions)."""
        arrays = self.data.datasets[name]
        k = self.negatives_by_task[arrays.task_type]
        doc_ids = [int(arrays.positive[int(r)]) for r in rows]
        doc_ids += self._negative_ids(name, rows, epoch, k, shared) if k else []
        texts = [self._text(arrays.queries[int(r)]) for r in rows] + [self._text(self.data.corpus[d]) for d in doc_ids]
        lengths = np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts))
        if lengths.min() == 0:
            raise TokenizedDataError(f"{self.data_dir}: an empty text in dataset {name!r}; re-run the data pipeline")
        groups = length_groups(lengths, self.max_padding) if self.padding == "sorted" else [np.arange(len(texts))]
        chunks = []
        for group in groups:
            input_ids, mask, chunk_lengths = _pad([texts[i] for i in group], self.pad_id)
            chunks.append(Chunk(input_ids, mask, chunk_lengths, torch.from_numpy(np.asarray(group, dtype=np.int64))))
        return Batch(name, arrays.task_type, texts, chunks, len(rows), k, self.pad_id,
                     np.asarray(rows, dtype=np.int64), np.asarray(doc_ids, dtype=np.int64))

    def next_batch(self) -> Batch:
        if self._plan_epoch != self.epoch:
            self._current_plan, self._plan_epoch = self._plan(self.epoch), self.epoch
        if self.step_in_epoch >= len(self._current_plan[0]):
            self.epoch, self.step_in_epoch = self.epoch + 1, 0
            return self.next_batch()
        name, global_rows = self.plan_step(self.step_in_epoch)
        local = global_rows[self.rank * self.per_device_batch:(self.rank + 1) * self.per_device_batch]
        shared = None
        if self.sampling == "released":  # the positions come from the global batch, the same on every rank
            negatives = self.data.datasets[name].negatives
            shared = (self.step_in_epoch, int(min(len(negatives[int(r)]) for r in global_rows)))
        batch = self.collate(name, local, self.epoch, shared)
        self.step_in_epoch += 1
        return batch

    def validation_batches(self, max_batches: int = 0) -> list[Batch]:
        """Per dataset, the held-out rows in batches of per_device_batch (each rank evaluates all of them), at most
        ``max_batches`` per dataset (0: all)."""
        out = []
        for name, rows in self.val_rows.items():
            if len(rows) < 2:
                continue
            chunks = [rows[i:i + max(2, self.per_device_batch)] for i in range(0, len(rows), self.per_device_batch)]
            chunks = [c for c in chunks if len(c) >= 2][: max_batches or None]
            out += [self.collate(name, chunk, 0) for chunk in chunks]
        return out

    # -- checkpointing: plain JSON, never a pickle -----------------------------------------------------------
    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "step_in_epoch": self.step_in_epoch}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.step_in_epoch = int(state["epoch"]), int(state["step_in_epoch"])
