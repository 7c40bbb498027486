"""Per-dtype (atol, rtol) for comparing a loss implementation with the float64 reference.

The tests and notebook 02 use these same numbers. fp16/bf16 bounds are for values of order one (losses, and
gradients scaled by 1 / B); on a GPU the tests also require never being worse than PyTorch's own low-precision
error.
"""

from __future__ import annotations

import torch

TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float32: (1e-5, 5e-4),
    torch.float16: (1e-3, 1e-2),
    torch.bfloat16: (5e-3, 5e-2),
}
