"""Third-party large-batch contrastive losses, called with the settings under which they compute OUR loss.

The benchmark (``losses.benchmark``) times them next to the fused op, and ``tests/test_loss_baselines.py`` checks on
tiny shapes that these exact callables give our loss value and gradients, so the comparison is like for like.

- ``memeff`` (PyPI ``memeff``, Apache-2.0, Triton): its Qwen3-Embedding InfoNCE is a row softmax of each query over
  [its document, the other documents, its hard negatives, optionally q-q / d-d], with a false-negative mask that
  drops any negative scoring above ``s(q_i, d_i) + margin``. With no hard negatives, no q-q / d-d terms and a margin
  of at least 2 (cosines lie in [-1, 1], so nothing exceeds s_ii + 2), that is exactly F2LLM's in-batch loss. Its
  hard negatives would join the same denominator, whereas F2LLM's hard-negative loss has a denominator of its own:
  so only the in-batch loss is compared. Its fused Matryoshka variant sums the per-dim losses with our weights.
- ``inf-cl`` (arXiv 2410.17243): one-sided in-batch cross-entropy over normalised inputs, one level, no MRL.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

# Any margin >= 2 switches memeff's false-negative mask off (cosines are in [-1, 1]); 3 leaves room for rounding.
MEMEFF_MARGIN_OFF = 3.0
# memeff's fused Matryoshka kernels take prefix dims that are multiples of this chunk, ending at the full dim.
MEMEFF_MRL_DIM_MULTIPLE = 64

NOTES = {
    "memeff": "memeff Qwen3 loss, margin 3 (false-negative mask off), no hard negatives, no q-q/d-d, stable=False "
              "(textbook 1/tau gradient scale); F.normalize inside; fixed max 1/tau instead of an online max",
    "memeff-mrl": "memeff fused Matryoshka Qwen3 loss, our MRL weights 1/(n sqrt(d/dim)), margin 3, stable=False; "
                  "dims must be multiples of 64 ending at d",
    "inf-cl": "Inf-CL cal_flash_loss on F.normalize'd inputs, one level, no hard negatives",
    "triton": "ours (fused op, automatic strategy)",
    "triton-registers": "ours, small-batch backward forced (in-run baseline of the large-batch path)",
    "triton-one-pass": "ours, large-batch backward walking each tile once for all MRL levels, one GEMM per prefix "
                       "segment (candidate; the default is one pass and one GEMM per level)",
    "chunked": "ours, pure PyTorch online log-sum-exp",
    "reference": "ours, eager PyTorch (materialises B x N logits)",
    "compiled": "ours, torch.compile of the eager reference",
}


def memeff_loss(temperature: float, dims: Sequence[int], weights: Sequence[float]) -> Callable[..., torch.Tensor]:
    """memeff's module computing F2LLM's in-batch loss (``loss(queries, keys)``, mean over queries), summed over
    MRL levels ``dims`` with ``weights``; one level (``dims = [d]``, weight 1) uses its plain Qwen3 loss."""
    import memeff

    dims, weights = [int(d) for d in dims], [float(w) for w in weights]
    if len(dims) == 1:
        if weights != [1.0]:
            raise ValueError(f"one level takes weight 1.0, got {weights}")
        return memeff.MemoryEfficientQwen3Loss(temperature=temperature, margin=MEMEFF_MARGIN_OFF, stable=False)
    bad = [d for d in dims if d % MEMEFF_MRL_DIM_MULTIPLE]
    if bad:
        raise ValueError(f"memeff's fused Matryoshka loss takes dims that are multiples of "
                         f"{MEMEFF_MRL_DIM_MULTIPLE}; {bad} are not (dims {dims})")
    return memeff.MemoryEfficientMatryoshkaQwen3Loss(dims=dims, weights=weights, temperature=temperature,
                                                     margin=MEMEFF_MARGIN_OFF, stable=False)


def inf_cl_loss(temperature: float) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Inf-CL computing F2LLM's in-batch loss at one level (``loss(queries, keys)``, mean over queries)."""
    from inf_cl import cal_flash_loss

    def loss(queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        labels = torch.arange(queries.shape[0], device=queries.device)
        qn = torch.nn.functional.normalize(queries, dim=-1)
        kn = torch.nn.functional.normalize(keys, dim=-1)
        return cal_flash_loss(qn, kn, labels, scale=1.0 / temperature).mean()

    return loss
