"""Notebook 02's kernel steps (``f2llm_lib.teaching.kernel_steps``) against float64 on ragged shapes (fp32
tolerances)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import TOLERANCES, assert_verbose_allclose

from f2llm_lib.losses import contrastive_loss, mrl_levels, mrl_weights
from f2llm_lib.teaching import kernel_steps as steps

SHAPES = [(1, 1, 8), (5, 23, 33), (17, 17, 40), (19, 35, 96)]  # (B, N, d): none a multiple of the tiles
TAU = 0.05


def _float64_truth(batch: int, keys: int, dim: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    q = F.normalize(torch.randn(batch, dim, generator=gen, dtype=torch.float64), dim=-1).requires_grad_()
    k = F.normalize(torch.randn(keys, dim, generator=gen, dtype=torch.float64), dim=-1).requires_grad_()
    loss = F.cross_entropy(q @ k.T / TAU, torch.arange(batch))  # key i is query i's positive
    loss.backward()
    return q.detach(), k.detach(), loss.detach(), q.grad, k.grad


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_step0_chunked_bridge_matches_float64(shape):
    q, k, loss, dq, dk = _float64_truth(*shape)
    got_loss, got_dq, got_dk = steps.chunked_in_batch(q, k, TAU, chunk=7)
    for name, got, want in (("loss", got_loss, loss), ("dq", got_dq, dq), ("dk", got_dk, dk)):
        assert_verbose_allclose(got, want, 1e-12, 1e-10, name=name)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_steps_1_and_2_triton_match_float64(shape):
    q, k, loss, dq, dk = _float64_truth(*shape)
    atol, rtol = TOLERANCES[torch.float32]
    forward_loss, _ = steps.in_batch_forward(q.float(), k.float(), TAU)
    assert_verbose_allclose(forward_loss, loss, atol, rtol, name="step 1 loss")
    q32, k32 = q.float().requires_grad_(), k.float().requires_grad_()
    got = steps.in_batch_loss(q32, k32, TAU)
    (2.0 * got).backward()  # an incoming gradient other than 1 reaches both kernels
    assert_verbose_allclose(got, loss, atol, rtol, name="step 2 loss")
    assert_verbose_allclose(q32.grad, 2 * dq, atol, rtol, name="step 2 dq")
    assert_verbose_allclose(k32.grad, 2 * dk, atol, rtol, name="step 2 dk")


@pytest.mark.parametrize("shape", SHAPES[1:], ids=str)
def test_step3_all_mrl_levels_in_one_pass_match_float64(shape):
    batch, keys, dim = shape
    gen = torch.Generator().manual_seed(1)
    q = torch.randn(batch, dim, generator=gen, dtype=torch.float64)
    k = torch.randn(keys, dim, generator=gen, dtype=torch.float64)
    dims = mrl_levels(dim)
    weights = mrl_weights(dims, dim)
    assert len(dims) > 1
    want = sum(w * F.cross_entropy(F.normalize(q[:, :d], dim=-1) @ F.normalize(k[:, :d], dim=-1).T / TAU,
                                   torch.arange(batch)) for d, w in zip(dims, weights, strict=True))
    if keys == batch:  # the same definition as the library's reference
        assert_verbose_allclose(contrastive_loss(q, k, None, temperature=TAU, mrl_dims=dims, impl="reference"),
                                want, 1e-12, 1e-10, name="reference")
    got = steps.mrl_in_batch_forward(q.float(), k.float(), dims, weights, TAU)
    assert_verbose_allclose(got, want, *TOLERANCES[torch.float32], name="step 3 loss")


@pytest.mark.parametrize("step", [0, 1, 2, 3])
def test_check_step_as_the_notebook_runs_it(step):
    row = steps.check_step(step, 17, 23, 40)
    assert row["within_tolerance"], row
    assert row["levels"] == (4 if step == 3 else 1)


def test_check_step_refuses_an_unknown_step():
    with pytest.raises(ValueError, match="step must be"):
        steps.check_step(4, 3, 3, 8)
