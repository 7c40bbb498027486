"""Small helpers for notebook 02: the online log-sum-exp, a float64 comparison table, a memory curve."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..losses.api import contrastive_loss
from ..losses.kernel_settings import KernelSettings
from ..losses.tolerances import TOLERANCES

# Implementations the notebook and the tests compare, by name: each is the keyword arguments of contrastive_loss.
# "triton-large-batch": the fused op with its large-batch path forced on and its scratch cut to one tile, so that
# small shapes walk several chunks on both sides.
LOSS_VARIANTS: dict[str, dict] = {
    "reference": {"impl": "reference"},
    "chunked": {"impl": "chunked"},
    "triton": {"impl": "triton"},
    "triton-large-batch": {"impl": "triton", "kernel": KernelSettings(strategy="large_batch", scratch_bytes=1)},
}


def online_logsumexp(logits: torch.Tensor, chunk: int) -> tuple[torch.Tensor, list[float]]:
    """Log-sum-exp of each row, reading ``chunk`` columns at a time; also the running value of row 0.

    Keeps a running max m and a running sum l of exp(x - m); when a chunk raises the max, the old sum is
    rescaled by exp(m_old - m_new). Only two numbers per row survive between chunks.
    """
    run_max = torch.full(logits.shape[:1], float("-inf"), dtype=logits.dtype)
    run_sum = torch.zeros(logits.shape[:1], dtype=logits.dtype)
    history = []
    for start in range(0, logits.shape[1], chunk):
        tile = logits[:, start:start + chunk]
        new_max = torch.maximum(run_max, tile.max(dim=1).values)
        run_sum = run_sum * torch.exp(run_max - new_max) + torch.exp(tile - new_max[:, None]).sum(dim=1)
        run_max = new_max
        history.append(float(run_max[0] + torch.log(run_sum[0])))
    return run_max + torch.log(run_sum), history


def compare_to_float64(shapes: Sequence[tuple[int, int, int, int, bool, bool]], impls: Sequence[str],
                       dtype: torch.dtype = torch.float32, seed: int = 0) -> list[dict]:
    """Max abs error of loss and gradients against the float64 reference, per shape and implementation, and
    whether all of them are within the dtype's (atol, rtol) of ``tolerances.TOLERANCES`` (the tests' numbers).

    A shape is (B, d, hard negatives per query, shared negatives, MRL, in-batch). ``impls`` are
    names of ``LOSS_VARIANTS`` (``contrastive_loss`` arguments).
    """
    unknown = [impl for impl in impls if impl not in LOSS_VARIANTS]
    if unknown:
        raise ValueError(f"unknown loss variants {unknown}: choose from {list(LOSS_VARIANTS)}")
    rows = []
    for batch, dim, k_hard, n_shared, mrl, in_batch in shapes:
        gen = torch.Generator().manual_seed(seed)
        base = [torch.randn(*shape, generator=gen, dtype=torch.float64) if all(shape) else None
                for shape in ((batch, dim), (batch, dim), (batch, k_hard, dim), (n_shared, dim))]

        def run(impl, dt, base=base, mrl=mrl, in_batch=in_batch):
            leaves = [t.to(dt).clone().requires_grad_() if t is not None else None for t in base]
            q, p, n, s = leaves
            loss = contrastive_loss(q, p, n, shared_negatives=s, in_batch=in_batch,
                                    mrl_dims="f2llm_v2" if mrl else None, chunk_size=8,
                                    **LOSS_VARIANTS[impl])
            loss.backward()
            return loss.detach().double(), [t.grad.double() for t in leaves if t is not None]

        truth, truth_grads = run("reference", torch.float64)
        atol, rtol = TOLERANCES[dtype]
        for impl in impls:
            loss, grads = run(impl, dtype)
            close = torch.allclose(loss, truth, atol=atol, rtol=rtol) and all(
                torch.allclose(g, t, atol=atol, rtol=rtol) for g, t in zip(grads, truth_grads, strict=True))
            rows.append({"B": batch, "d": dim, "k": k_hard, "shared": n_shared, "mrl": mrl, "in_batch": in_batch,
                         "impl": impl, "loss": round(float(truth), 5),
                         "loss_err": float((loss - truth).abs()),
                         "grad_err": max(float((g - t).abs().max()) for g, t in zip(grads, truth_grads, strict=True)),
                         "within_tolerance": close})
    return rows
