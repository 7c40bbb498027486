"""GPU checks of the Triton loss (skipped without CUDA): bf16/fp32 on F2LLM shapes, via ci/gpu_check.sh."""

from __future__ import annotations

import pytest
import torch
from helpers import TOLERANCES, assert_verbose_allclose

from f2llm_lib.losses import KernelSettings, contrastive_loss

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run ci/gpu_check.sh)")

# (B, N keys, k hard, d, MRL): F2LLM's regime plus ragged shapes.
SHAPES = [(16, 512, 7, 1024, True), (16, 512, 7, 2560, True), (47, 31, 3, 123, False), (17, 33, 1, 576, True),
          (1, 5, 0, 64, False), (300, 1000, 0, 1024, False)]


def _run(impl, tensors, dtype, mrl, in_batch_keys, kernel=None):
    q, p, n, s = [t.to("cuda", dtype).detach().clone().requires_grad_() if t is not None else None for t in tensors]
    loss = contrastive_loss(q, p, n, shared_negatives=s, mrl_dims="f2llm_v2" if mrl else None, impl=impl,
                            kernel=kernel)
    loss.backward()
    return loss.detach(), [t.grad for t in (q, p, n, s) if t is not None]


def _check_against_float64(shape, dtype, kernel=None):
    batch, n_keys, k_hard, dim, mrl = shape
    gen = torch.Generator().manual_seed(0)
    make = lambda *sh: torch.randn(*sh, generator=gen).to(dtype).double()  # noqa: E731  (values exact in dtype)
    tensors = (make(batch, dim), make(batch, dim), make(batch, k_hard, dim) if k_hard else None,
               make(n_keys - batch, dim) if n_keys > batch else None)
    truth, truth_grads = _run("reference", tensors, torch.float64, mrl, True)
    ours, our_grads = _run("triton", tensors, dtype, mrl, True, kernel=kernel)
    atol, rtol = TOLERANCES[dtype]
    assert_verbose_allclose(ours, truth, atol, rtol, name=f"loss {dtype}")
    if dtype == torch.bfloat16:  # and no worse than PyTorch's own bf16 error, plus a small tolerance
        torch_loss, torch_grads = _run("reference", tensors, dtype, mrl, True)
        assert (ours.double() - truth).abs() <= (torch_loss.double() - truth).abs() + atol
        for g, t, e in zip(our_grads, torch_grads, truth_grads, strict=True):
            assert (g.double() - e).abs().max() <= (t.double() - e).abs().max() + atol
    else:
        for index, (g, e) in enumerate(zip(our_grads, truth_grads, strict=True)):
            assert_verbose_allclose(g, e, atol, rtol, name=f"grad {index} {dtype}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}-N{}-k{}-d{}".format(*s[:4]))
def test_triton_on_gpu_matches_float64(shape, dtype):
    _check_against_float64(shape, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape", [SHAPES[2], SHAPES[3], SHAPES[5], (4096, 4200, 0, 1024, False)],
                         ids=lambda s: "B{}-N{}-k{}-d{}".format(*s[:4]))
def test_triton_large_batch_backward_on_gpu_matches_float64(shape, dtype):
    """The large-batch path forced on (the 4096-query case takes it by itself), its scratch cut to 1 MB so that
    the larger shapes walk many chunks on both sides."""
    _check_against_float64(shape, dtype, KernelSettings(strategy="large_batch", scratch_bytes=2**20))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize(("impl", "regime", "batch", "dim"), [
    ("memeff", "large", 1000, 1024), ("inf-cl", "large", 1000, 1024), ("memeff", "mrl", 777, 384)])
def test_benchmark_baselines_compute_our_loss_on_gpu(impl, regime, batch, dim, dtype):
    """memeff and Inf-CL, called exactly as the benchmark calls them, give our in-batch loss and gradients."""
    from f2llm_lib.bench import loss as benchmark
    from f2llm_lib.losses import mrl_weights

    dims = list(benchmark.MRL_DIMS) if regime == "mrl" else [dim]
    weights = mrl_weights(dims, dim)
    gen = torch.Generator().manual_seed(batch)
    base = [torch.randn(batch, dim, generator=gen).to(dtype).double() for _ in range(2)]
    truth, truth_grads = _run_in_batch(lambda q, k: contrastive_loss(
        q, k, mrl_dims=dims, impl="reference"), base, torch.float64)
    torch_loss, torch_grads = _run_in_batch(lambda q, k: contrastive_loss(
        q, k, mrl_dims=dims, impl="reference"), base, dtype)
    # Relative error bounds: both baselines compute fp32 products in TF32 (10-bit mantissa) and bf16 as bf16, so
    # they get twice PyTorch's own error in the dtype, at least 2e-3 (fp32/TF32) or 1e-2 (bf16). A wrong setting
    # (false-negative mask on, the 'stable' gradient scale) is off by far more: 0.1 in the loss, sqrt(B tau) in grads.
    floor = 2e-3 if dtype == torch.float32 else 1e-2
    pytest.importorskip({"memeff": "memeff", "inf-cl": "inf_cl"}[impl])
    if impl == "memeff" and dtype == torch.float32 and dim > 512:
        pytest.skip("memeff's fp32 backward at d = 1024 asks for 640 KB of shared memory, over Hopper's 227 KB "
                    "(OutOfResources on an H200, 2026-11-27); the benchmark runs it in bf16")
    step = benchmark._step_fn(impl, regime)
    loss, grads = _run_in_batch(lambda q, k: step(q, k, None, k, None, dims, weights), base, dtype)
    cases = [("loss", loss, torch_loss, truth)] + [
        (f"grad {i}", g, t, e) for i, (g, t, e) in enumerate(zip(grads, torch_grads, truth_grads, strict=True))]
    for name, ours, theirs, exact in cases:
        error, torch_error = _relative_error(ours, exact), _relative_error(theirs, exact)
        assert error <= max(2 * torch_error, floor), f"{impl} {regime} {dtype} {name}: relative error {error:.2e}"


def _relative_error(actual, expected) -> float:
    actual, expected = actual.detach().double().cpu(), expected.detach().double().cpu()
    return float((actual - expected).norm() / expected.norm().clamp_min(1e-30))


def _run_in_batch(loss_fn, base, dtype):
    q, k = [t.to("cuda", dtype).detach().clone().requires_grad_() for t in base]
    loss = loss_fn(q, k)
    loss.backward()
    return loss.detach().double(), [q.grad, k.grad]


@pytest.mark.parametrize("one_pass", [True, False], ids=["one-pass", "per-level"])
def test_one_pass_mrl_backward_in_bf16_on_gpu(one_pass):
    """The benchmark's mrl regime (d = 384, levels 64/128/256/384) in bf16, the one-pass MRL backward and the
    per-level one, each no worse than PyTorch's own bf16 against float64; 1 MB of scratch, so many chunks."""
    gen = torch.Generator().manual_seed(3)
    base = [torch.randn(2048, 384, generator=gen).to(torch.bfloat16).double() for _ in range(2)]
    dims = [64, 128, 256, 384]
    settings = KernelSettings(strategy="large_batch", scratch_bytes=2**20, segment_levels=one_pass)
    truth, truth_grads = _run_in_batch(lambda q, k: contrastive_loss(q, k, mrl_dims=dims, impl="reference"), base,
                                       torch.float64)
    theirs, their_grads = _run_in_batch(lambda q, k: contrastive_loss(q, k, mrl_dims=dims, impl="reference"), base,
                                        torch.bfloat16)
    ours, our_grads = _run_in_batch(lambda q, k: contrastive_loss(q, k, mrl_dims=dims, impl="triton",
                                                                  kernel=settings), base, torch.bfloat16)
    atol, _ = TOLERANCES[torch.bfloat16]
    assert (ours.double() - truth).abs() <= (theirs.double() - truth).abs() + atol
    for g, t, e in zip(our_grads, their_grads, truth_grads, strict=True):
        assert (g.double() - e).abs().max() <= (t.double() - e).abs().max() + atol
