"""Gradient caching: F2LLM's batch on one device (GradCache: Gao et al., "Scaling Deep Contrastive Learning Batch Size
under Memory Limited Setup", arXiv 2101.06983; sentence-transformers' ``CachedMultipleNegativesRankingLoss``).

The contrastive loss is cheap and its memory linear in the batch (the chunked and fused losses); what does not fit is
the model's activations for every text of the batch at once (F2LLM's 512 queries x (2 + 7) texts = 4,608 texts).
The loss only sees the embeddings, so the step splits in three:

1. embed every text in pieces of ``grad_cache_chunk`` texts without a graph (activations freed piece by piece),
   remembering each piece's random state;
2. compute the loss once over the whole batch from those embeddings (gathered across processes as usual) and its
   gradient with respect to the embeddings: a ``[texts, d]`` tensor, the cache;
3. run each piece again with its graph, with the same random state, and back-propagate the cached gradient through
   it (a surrogate ``sum(e * cached)``, whose gradient with respect to ``e`` is the cache), then free it.

The parameter gradients equal those of the full batch (up to the order of fp32 sums); the price is a second forward
per piece. Processes synchronise gradients once, on the last piece (``no_sync`` before it).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import replace

import torch

from .loader import Batch


def split_chunks(batch: Batch, rows: int) -> list:
    """The batch's padded groups cut into pieces of at most ``rows`` texts, each trimmed to its own longest text."""
    pieces = []
    for chunk in batch.chunks:
        for start in range(0, len(chunk.positions), rows):
            part = slice(start, start + rows)
            lengths = chunk.lengths[part]
            width = int(lengths.max())
            pieces.append(replace(chunk, input_ids=chunk.input_ids[part, :width],
                                  attention_mask=chunk.attention_mask[part, :width], lengths=lengths,
                                  positions=chunk.positions[part]))
    return pieces


class RandomState:
    """The CPU and current CUDA device's random state, to replay dropout identically in the second forward."""

    def __init__(self, device: torch.device) -> None:
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
        self.device = device

    @contextlib.contextmanager
    def restored(self) -> Iterator[None]:
        devices = [self.device] if self.cuda is not None else []
        with torch.random.fork_rng(devices=devices, device_type=self.device.type):
            torch.set_rng_state(self.cpu)
            if self.cuda is not None:
                torch.cuda.set_rng_state(self.cuda, self.device)
            yield


def cached_step(accelerator, encoder, batch: Batch, rows: int,
                loss_of: Callable[[torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward, loss and backward of one micro-batch with gradient caching; returns (loss, embeddings), detached.
    ``loss_of(embeddings)`` is the micro-batch's loss from its embeddings in batch order."""
    pieces = split_chunks(batch, rows)
    states, parts = [], []
    with torch.no_grad():
        for piece in pieces:
            states.append(RandomState(accelerator.device))
            parts.append(encoder(chunks=[piece]))  # in the order of the piece's positions
    order = [piece.positions.sort().values.to(accelerator.device) for piece in pieces]
    embeddings = torch.empty((len(batch.texts), parts[0].shape[1]), dtype=parts[0].dtype, device=parts[0].device)
    embeddings[torch.cat(order)] = torch.cat(parts)
    del parts
    embeddings.requires_grad_()
    loss = loss_of(embeddings)
    (cache,) = torch.autograd.grad(loss, embeddings)
    for index, (piece, state) in enumerate(zip(pieces, states, strict=True)):
        last = index == len(pieces) - 1
        with (contextlib.nullcontext() if last else accelerator.no_sync(encoder)), state.restored():
            again = encoder(chunks=[piece])
            accelerator.backward((again * cache[order[index]]).sum())
    return loss.detach(), embeddings.detach()
