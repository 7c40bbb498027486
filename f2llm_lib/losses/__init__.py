"""F2LLM's contrastive loss: hard-negative + in-batch InfoNCE, with Matryoshka (MRL) levels.

Entry point: :func:`contrastive_loss`. Implementations share one semantics:

- ``reference``: plain PyTorch, the statement of the loss (memory grows with B x N);
- ``chunked``: pure PyTorch with an online log-sum-exp over key chunks and recomputation in backward
  (memory linear in B + N): the CPU path;
- ``triton``: one fused op for both losses and all MRL levels (Triton; CUDA, or the interpreter in tests),
  tuned by ``KernelSettings`` (strategy, tiles, scratch) passed as ``contrastive_loss(..., kernel=...)``.
"""

from .api import contrastive_loss, mrl_levels, mrl_weights
from .kernel_settings import KernelSettings, TileShape

__all__ = ["KernelSettings", "TileShape", "contrastive_loss", "mrl_levels", "mrl_weights"]
