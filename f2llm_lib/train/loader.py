"""The multitask loader: one dataset per step, drawn with probability proportional to its remaining batches.

- Every rank builds the same plan: per epoch, each dataset's rows are shuffled by an RNG seeded with
  (seed, epoch), cut into global batches of ``per_device_batch x world_size``, and the order of (dataset, batch)
  is drawn from another (seed, epoch) RNG. Rank r takes the r-th slice of each global batch.
- Negatives: ``num_negatives`` sampled from the stored ones, by an RNG seeded with (seed, epoch, query id), so
  the same query gets the same negatives whatever the world size.
- 1% of every dataset (``val_fraction``) is held out for per-dataset validation losses.
- The position (epoch, step in epoch) is the whole state: a resumed run continues mid-epoch exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from ..tokenization import pad_batch


@dataclass
class Batch:
    dataset: str
    task_type: str
    input_ids: torch.Tensor  # [B + B + B*k, T]: queries, positives, negatives
    attention_mask: torch.Tensor
    lengths: torch.Tensor
    batch_size: int
    num_negatives: int

    @property
    def tokens(self) -> int:
        return int(self.lengths.sum())

    @property
    def padding_fraction(self) -> float:
        return 1.0 - self.tokens / self.input_ids.numel()


class MultitaskLoader:
    def __init__(self, data_dir: str | Path, per_device_batch: int, num_negatives: int, pad_id: int,
                 rank: int = 0, world_size: int = 1, seed: int = 0, val_fraction: float = 0.01) -> None:
        data_dir = Path(data_dir)
        corpus = pq.read_table(data_dir / "corpus.parquet").to_pydict()
        self.corpus = dict(zip(corpus["doc_id"], corpus["input_ids"], strict=True))
        self.per_device_batch, self.num_negatives, self.pad_id = per_device_batch, num_negatives, pad_id
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.global_batch = per_device_batch * world_size
        self.train, self.val = {}, {}
        for path in sorted((data_dir / "queries").glob("*.parquet")):
            rows = pq.read_table(path).to_pylist()
            order = np.random.default_rng([seed, 999]).permutation(len(rows))
            n_val = int(len(rows) * val_fraction) if len(rows) * val_fraction >= 1 else 0
            self.val[path.stem] = [rows[i] for i in order[:n_val]]
            self.train[path.stem] = [rows[i] for i in order[n_val:]]
        self.datasets = [name for name, rows in self.train.items() if len(rows) >= self.global_batch]
        if not self.datasets:
            raise ValueError(f"{data_dir}: no dataset has a full global batch of {self.global_batch} queries")
        self.epoch, self.step_in_epoch = 0, 0
        self._plan_epoch = -1

    # -- plan -----------------------------------------------------------------------------------------------
    def _plan(self, epoch: int) -> list[tuple[str, np.ndarray]]:
        batches = {}
        for index, name in enumerate(self.datasets):
            perm = np.random.default_rng([self.seed, epoch, index]).permutation(len(self.train[name]))
            n = len(perm) // self.global_batch
            batches[name] = [perm[i * self.global_batch:(i + 1) * self.global_batch] for i in range(n)]
        rng = np.random.default_rng([self.seed, epoch, 12345])
        remaining = {name: len(b) for name, b in batches.items()}
        plan, taken = [], dict.fromkeys(batches, 0)
        while any(remaining.values()):
            names = [n for n in self.datasets if remaining[n] > 0]
            weights = np.array([remaining[n] for n in names], dtype=float)
            name = names[rng.choice(len(names), p=weights / weights.sum())]
            plan.append((name, batches[name][taken[name]]))
            taken[name] += 1
            remaining[name] -= 1
        return plan

    def steps_per_epoch(self) -> int:
        return sum(len(self.train[n]) // self.global_batch for n in self.datasets)

    # -- batches --------------------------------------------------------------------------------------------
    def _negatives(self, row: dict, epoch: int, count: int) -> list[int]:
        stored = row["negative_doc_ids"]
        if len(stored) < count:
            raise ValueError(f"query {row['query_id']} has {len(stored)} stored negatives, fewer than {count}; "
                             "lower num_negatives or mine more")
        rng = np.random.default_rng([self.seed, epoch, int(row["query_id"]), 7])
        return [stored[i] for i in sorted(rng.choice(len(stored), count, replace=False))]

    def collate(self, name: str, rows: list[dict], epoch: int) -> Batch:
        task = rows[0]["task_type"]
        k = 1 if task == "classification" else self.num_negatives  # F2LLM: one negative label for classification
        negatives = [doc for r in rows for doc in self._negatives(r, epoch, k)]
        sequences = ([r["input_ids"] for r in rows] + [self.corpus[r["positive_doc_id"]] for r in rows]
                     + [self.corpus[d] for d in negatives])
        input_ids, mask, lengths = pad_batch(sequences, self.pad_id)
        return Batch(name, task, input_ids, mask, lengths, len(rows), k)

    def next_batch(self) -> Batch:
        if self._plan_epoch != self.epoch:
            self._current_plan, self._plan_epoch = self._plan(self.epoch), self.epoch
        if self.step_in_epoch >= len(self._current_plan):
            self.epoch, self.step_in_epoch = self.epoch + 1, 0
            return self.next_batch()
        name, global_rows = self._current_plan[self.step_in_epoch]
        local = global_rows[self.rank * self.per_device_batch:(self.rank + 1) * self.per_device_batch]
        batch = self.collate(name, [self.train[name][i] for i in local], self.epoch)
        self.step_in_epoch += 1
        return batch

    def validation_batches(self) -> list[Batch]:
        """One batch per dataset with held-out rows (each rank evaluates all of them: they are few)."""
        return [self.collate(name, rows, 0) for name, rows in self.val.items() if len(rows) >= 2]

    # -- checkpointing (accelerate's register_for_checkpointing) -------------------------------------------
    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "step_in_epoch": self.step_in_epoch}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.step_in_epoch = int(state["epoch"]), int(state["step_in_epoch"])
