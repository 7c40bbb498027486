"""One entry point for F2LLM's loss: argument checks, MRL levels, the cross-process gather, dispatch."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import torch

from .chunked import chunked_loss
from .distributed import gather_keys, world
from .kernel_settings import KernelSettings
from .reference import reference_loss

IMPLS = ("auto", "reference", "chunked", "triton")


def mrl_levels(hidden_size: int, min_dim: int = 8) -> list[int]:
    """F2LLM-v2's Matryoshka dims: 8, 16, 32, ... below the hidden size, plus the hidden size."""
    dims = []
    dim = min_dim
    while dim < hidden_size:
        dims.append(dim)
        dim *= 2
    return dims + [hidden_size]


def mrl_weights(dims: Sequence[int], hidden_size: int) -> list[float]:
    """Weight 1 / (n * sqrt(hidden / dim)), n = 1 for the largest dim, 2 for the next, ... (F2LLM-v2)."""
    ranked = sorted(dims, reverse=True)
    return [1.0 / ((ranked.index(dim) + 1) * math.sqrt(hidden_size / dim)) for dim in dims]


def auto_chunk_size(batch: int, tile_elements: int = 1 << 21) -> int:
    """Keys per chunk so that one [batch, chunk] fp32 tile stays at 8 MB: memory stays linear in B + N."""
    return int(min(8192, max(64, tile_elements // max(batch, 1))))


def _check(queries, positives, negatives, shared_negatives, in_batch, dims, temperature) -> None:
    if queries.ndim != 2 or positives.shape != queries.shape:
        raise ValueError(f"queries and positives must both be [B, d]; got {tuple(queries.shape)} and "
                         f"{tuple(positives.shape)}")
    if negatives is not None and (negatives.ndim != 3 or negatives.shape[0] != queries.shape[0]
                                  or negatives.shape[2] != queries.shape[1]):
        raise ValueError(f"negatives must be [B, k, d] = [{queries.shape[0]}, k, {queries.shape[1]}]; "
                         f"got {tuple(negatives.shape)}")
    if shared_negatives is not None and (not in_batch or shared_negatives.ndim != 2
                                         or shared_negatives.shape[1] != queries.shape[1]):
        raise ValueError("shared_negatives must be [M, d] and need in_batch=True (they join the in-batch keys)")
    if not in_batch and negatives is None:
        raise ValueError("nothing to compute: in_batch=False and no negatives")
    if not dims or any(not 1 <= d <= queries.shape[1] for d in dims) or list(dims) != sorted(set(dims)):
        raise ValueError(f"mrl_dims must be increasing dims in [1, {queries.shape[1]}]; got {list(dims)}")
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")


def contrastive_loss(
    queries: torch.Tensor,
    positives: torch.Tensor,
    negatives: torch.Tensor | None = None,
    *,
    in_batch: bool = True,
    shared_negatives: torch.Tensor | None = None,
    temperature: float = 0.05,
    mrl_dims: Sequence[int] | str | None = None,
    stop_grad_gather: bool = False,
    impl: str = "auto",
    gather: bool = True,
    chunk_size: int | None = None,
    kernel: KernelSettings | None = None,
    false_negative_margin: float | None = None,
    stats: dict | None = None,
) -> torch.Tensor:
    """F2LLM's loss for one batch of one dataset, summed over MRL levels.

    Args:
        queries: ``[B, d]`` local query embeddings (normalised inside, per MRL level).
        positives: ``[B, d]`` local positives; ``positives[i]`` belongs to ``queries[i]``.
        negatives: ``[B, k, d]`` per-query hard negatives, or None.
        in_batch: add the in-batch loss (retrieval datasets): each query against the positives of every
            process (and the shared negatives), label = its own positive's global index.
        shared_negatives: ``[M, d]`` extra keys for the in-batch denominator (gathered like positives).
        temperature: tau; logits are cosine / tau (F2LLM: 0.05).
        mrl_dims: None (full dim only), ``"f2llm_v2"`` (8, 16, ..., d) or increasing prefix dims.
        stop_grad_gather: reproduce the released code's non-differentiable gather (see ``distributed``).
        impl: ``"auto"`` (triton on CUDA, chunked on CPU), ``"reference"``, ``"chunked"``, ``"triton"``.
        gather: in a multi-process run, gather the keys of every process (training). False keeps this process's
            keys only: validation, where every process holds the same rows.
        chunk_size: keys per chunk for ``chunked`` (None: as many as keep one B x chunk tile at 2M floats).
        kernel: settings of the ``triton`` op (strategy, tile shape, scratch size; see ``KernelSettings``).
            They change speed and memory, never the result; given with another impl they are an error.
        false_negative_margin: None (F2LLM: off), or mask each in-batch key whose cosine with the query is above
            the positive's plus this margin (a likely false negative: a document that answers this query too), as
            Qwen3-Embedding and memeff do; hard negatives are never masked. ``reference`` and ``chunked`` only
            (``auto`` picks ``chunked``); the fused op refuses it.
        stats: a dict that receives ``masked``, the number of in-batch keys masked (last MRL level), when
            ``false_negative_margin`` is set.

    Returns the mean over local queries; in a multi-process run, averaging parameter gradients over ranks
    (as DDP does) gives the gradient of the mean over all queries of all ranks.
    """
    # The loss keeps its own precision (softmax statistics in float32, whatever the inputs): an autocast region
    # around the call (mixed-precision training) must not turn its GEMMs into bf16 / fp16.
    with torch.autocast(device_type=queries.device.type, enabled=False):
        return _contrastive_loss(queries, positives, negatives, in_batch, shared_negatives, temperature, mrl_dims,
                                 stop_grad_gather, impl, gather, chunk_size, kernel, false_negative_margin, stats)


def _contrastive_loss(queries, positives, negatives, in_batch, shared_negatives, temperature, mrl_dims,
                      stop_grad_gather, impl, gather, chunk_size, kernel, margin=None, stats=None) -> torch.Tensor:
    hidden = queries.shape[-1]
    dims = mrl_levels(hidden) if mrl_dims == "f2llm_v2" else list(mrl_dims or [hidden])
    _check(queries, positives, negatives, shared_negatives, in_batch, dims, temperature)
    weights = mrl_weights(dims, hidden)
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if margin is not None and not margin >= 0:
        raise ValueError(f"false_negative_margin must be 0 or more (a cosine margin), got {margin}")
    if margin is not None and impl == "triton":
        raise ValueError("false_negative_margin is not implemented in the fused Triton op; use impl='chunked' (the "
                         "same O(B + N) memory, in PyTorch) or impl='auto', which picks it")
    if impl == "auto":
        impl = "triton" if queries.is_cuda and margin is None else "chunked"
    if kernel is not None and impl != "triton":
        raise ValueError(f"kernel settings apply to impl='triton' only; this call runs impl={impl!r} (pass "
                         "impl='triton', or drop kernel=)")

    keys = labels = None
    if in_batch:
        rank, size = world() if gather else (0, 1)
        # The released code's gather is the identity in one process, so stop-grad only bites when size > 1.
        gathered_pos = gather_keys(positives, stop_grad=stop_grad_gather) if gather else positives
        keys = gathered_pos
        if shared_negatives is not None:
            keys = torch.cat([gathered_pos, gather_keys(shared_negatives, stop_grad=stop_grad_gather)
                              if gather else shared_negatives])
        labels = torch.arange(queries.shape[0], device=queries.device) + rank * queries.shape[0]
        if size > 1 and gathered_pos.shape[0] != size * queries.shape[0]:
            raise ValueError("every rank must hold the same number of queries")

    if impl == "reference":
        return reference_loss(queries, positives, negatives, keys, labels, dims, weights, temperature, margin, stats)
    if impl == "chunked":
        chunk_size = chunk_size or auto_chunk_size(queries.shape[0])
        return chunked_loss(queries, positives, negatives, keys, labels, dims, weights, temperature, chunk_size,
                            margin, stats)
    if not queries.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError("impl='triton' needs a CUDA tensor (or TRITON_INTERPRET=1 set before importing "
                           "triton, for tests on tiny shapes); use impl='chunked' on the CPU")
    from .fused import fused_loss

    return fused_loss(queries, positives, negatives, keys, labels, dims, weights, temperature, kernel)
