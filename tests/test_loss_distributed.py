"""Real multi-process runs (gloo, 2 and 3 processes) of the loss: gradients across processes.

Convention under test: rank r computes the mean loss over its B local queries against keys gathered from all
ranks; the gather's backward sums each key's gradient back to its owner. Averaging over ranks (what DDP does to
parameter gradients) then equals one process computing the mean loss over all R x B queries:
    grad_full = grad_rank / R   for every query, positive, hard and shared negative.
With stop_grad_gather=True the result must equal the released F2LLM code, whose accelerator.gather has no
autograd history.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from helpers import TOLERANCES, assert_verbose_allclose

from f2llm_lib.losses import contrastive_loss
from f2llm_lib.teaching.loss_variants import LOSS_VARIANTS

IMPLS = ("reference", "chunked", "triton", "triton-large-batch")  # the last: the fused op's large-batch path
B, D, K_HARD, M_SHARED = 3, 24, 2, 2


def _data(world: int) -> dict[str, np.ndarray]:
    gen = torch.Generator().manual_seed(world)
    return {"q": torch.randn(world * B, D, generator=gen, dtype=torch.float64).numpy(),
            "p": torch.randn(world * B, D, generator=gen, dtype=torch.float64).numpy(),
            "n": torch.randn(world * B, K_HARD, D, generator=gen, dtype=torch.float64).numpy(),
            "s": torch.randn(world * M_SHARED, D, generator=gen, dtype=torch.float64).numpy()}


def _released_f2llm_loss(q, p, n, temperature=0.05):
    """The released code's two losses (utils.py): accelerator.gather has no autograd history."""
    rank, world = dist.get_rank(), dist.get_world_size()
    gathered = [torch.empty_like(p) for _ in range(world)]
    dist.all_gather(gathered, p.detach())  # what accelerator.gather does in a multi-process run
    keys = F.normalize(torch.cat(gathered), dim=-1)
    qn = F.normalize(q, dim=-1)
    labels = torch.arange(len(q)) + len(q) * rank
    in_batch = F.cross_entropy(qn @ keys.T / temperature, labels)
    cand = F.normalize(torch.cat([p.unsqueeze(1), n], dim=1), dim=-1)
    hard = F.cross_entropy((qn.unsqueeze(1) * cand).sum(-1) / temperature, torch.zeros(len(q), dtype=torch.long))
    return in_batch + hard


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    data = _data(world)
    rows, shared_rows = slice(rank * B, (rank + 1) * B), slice(rank * M_SHARED, (rank + 1) * M_SHARED)
    results = {}
    for impl in IMPLS:
        # full: shared negatives + MRL, correct gather; plain / stop: the released code's setting, both gathers.
        for variant, stop_grad in (("full", False), ("plain", False), ("stop", True)):
            leaves = [torch.tensor(data[k][r], dtype=torch.float32, requires_grad=True)
                      for k, r in (("q", rows), ("p", rows), ("n", rows), ("s", shared_rows))]
            q, p, n, s = leaves
            full = variant == "full"
            loss = contrastive_loss(q, p, n, shared_negatives=s if full else None,
                                    mrl_dims="f2llm_v2" if full else None, stop_grad_gather=stop_grad,
                                    chunk_size=4, **LOSS_VARIANTS[impl])
            loss.backward()
            for name, leaf in zip("qpns", leaves, strict=True):
                if leaf.grad is not None:
                    results[f"{impl}-{variant}-{name}"] = leaf.grad.numpy()
    released = [torch.tensor(data[k][rows], dtype=torch.float32, requires_grad=True) for k in "qpn"]
    _released_f2llm_loss(*released).backward()
    for name, leaf in zip("qpn", released, strict=True):
        results[f"released-{name}"] = leaf.grad.numpy()
    np.savez(os.path.join(out_dir, f"rank{rank}.npz"), **results)
    dist.destroy_process_group()


@pytest.mark.parametrize("world", [2, 3])
def test_multi_process_gradients(world, tmp_path):
    mp.spawn(_worker, args=(world, str(tmp_path / "init"), str(tmp_path)), nprocs=world, join=True)
    ranks = [np.load(tmp_path / f"rank{r}.npz") for r in range(world)]
    data = {k: torch.tensor(v, requires_grad=True) for k, v in _data(world).items()}
    # One process, the whole batch, float64: the ground truth.
    contrastive_loss(data["q"], data["p"], data["n"], shared_negatives=data["s"], mrl_dims="f2llm_v2",
                     impl="reference").backward()
    atol, rtol = TOLERANCES[torch.float32]
    for impl in IMPLS:
        for name in "qpns":
            got = np.concatenate([r[f"{impl}-full-{name}"] for r in ranks]) / world  # DDP's average over ranks
            assert_verbose_allclose(torch.tensor(got), data[name].grad, atol, rtol,
                                    name=f"{impl}, {world} processes, grad of {name}")
        for name in "qpn":  # stop-grad switch == the released code, rank by rank
            for rank, r in enumerate(ranks):
                assert_verbose_allclose(torch.tensor(r[f"{impl}-stop-{name}"]), torch.tensor(r[f"released-{name}"]),
                                        atol, rtol, name=f"{impl} stop-grad, rank {rank}, grad of {name}")
    # The two conventions really differ on the same setting: the released gather gives positives only the
    # hard-loss gradient, while the correct one adds every rank's in-batch gradient.
    for rank in ranks:
        assert not np.allclose(rank["chunked-plain-p"], rank["chunked-stop-p"], atol=1e-4)
        np.testing.assert_allclose(rank["chunked-plain-q"], rank["chunked-stop-q"], atol=1e-5)
