"""What every checker uses: the failure type and a tensor comparison that explains itself."""

from __future__ import annotations

import torch


class ExerciseFailed(AssertionError):
    """The answer is wrong; the message says how, and hints at the fix."""


def expect_close(actual, expected, what: str, hint: str, atol: float = 1e-6, rtol: float = 1e-5) -> None:
    """Raise ExerciseFailed naming the worst element when ``actual`` is not ``expected``."""
    actual_t, expected_t = torch.as_tensor(actual), torch.as_tensor(expected)
    if actual_t.shape != expected_t.shape:
        raise ExerciseFailed(f"{what} has shape {tuple(actual_t.shape)}, expected {tuple(expected_t.shape)}. {hint}")
    diff = (actual_t.double() - expected_t.double()).abs()
    bad = diff > atol + rtol * expected_t.double().abs()
    if bool(bad.any()):
        index = tuple(int(i) for i in torch.nonzero(bad)[0])
        raise ExerciseFailed(f"{what} differs at {index}: got {float(actual_t[index]):.6g}, expected "
                             f"{float(expected_t[index]):.6g} ({int(bad.sum())} of {bad.numel()} elements wrong). "
                             f"{hint}")
