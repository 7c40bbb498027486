"""The benchmark's third-party baselines compute OUR loss: same value and gradients, so timings are like for like.

memeff is pure Triton: on the CPU it runs in Triton's interpreter once its two CUDA-only guards are bypassed (a
device check on the inputs and the GPU generation that picks tile shapes; neither touches the arithmetic). The
callables under test are the benchmark's own (``benchmark._step_fn``), not a copy of its settings.
Inf-CL cannot run here (its kernels use inline PTX, which the interpreter cannot execute): the GPU test checks it.
"""

from __future__ import annotations

import importlib
import os

import pytest
import torch
from helpers import TOLERANCES, assert_verbose_allclose

from f2llm_lib.bench import loss as benchmark
from f2llm_lib.bench.loss_baselines import MEMEFF_MARGIN_OFF, memeff_loss
from f2llm_lib.losses import mrl_weights
from f2llm_lib.losses.reference import reference_loss

MEMEFF_MODULES = ("memeff._common", "memeff.clip_qwen3_loss", "memeff.mrl_qwen3_loss")


@pytest.fixture
def memeff_on_cpu(monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: tests/test_loss_gpu.py checks memeff there")
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("memeff runs on the CPU only in Triton's interpreter (TRITON_INTERPRET=1 before importing triton)")
    pytest.importorskip("memeff", reason="memeff is in the dev extra: pip install -e '.[dev]'")

    def same_shapes(x, y):  # memeff's validate_features without its is_cuda test
        if x.shape != y.shape:
            raise ValueError(f"feature shapes must match, got {tuple(x.shape)} and {tuple(y.shape)}")

    for name in MEMEFF_MODULES:
        module = importlib.import_module(name)
        for attr in ("validate_features", "_validate_features"):
            if hasattr(module, attr):
                monkeypatch.setattr(module, attr, same_shapes)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *args, **kwargs: (9, 0))  # H100 tile table


def _leaves(batch: int, dim: int, seed: int, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    base = [torch.randn(batch, dim, generator=gen, dtype=torch.float64) for _ in range(2)]
    return [t.to(dtype).requires_grad_() for t in base]


def _ours_float64(q, k, dims):
    leaves = [t.detach().double().requires_grad_() for t in (q, k)]
    labels = torch.arange(q.shape[0])
    loss = reference_loss(leaves[0], leaves[1], None, leaves[1], labels, dims, mrl_weights(dims, q.shape[1]), 0.05)
    loss.backward()
    return loss.detach(), [t.grad for t in leaves]


@pytest.mark.parametrize(("regime", "batch", "dim"), [("large", 37, 128), ("large", 70, 96), ("mrl", 45, 384)],
                         ids=["large-B37-d128", "large-B70-d96", "mrl-B45-d384-dims64-128-256-384"])
def test_memeff_as_benchmarked_computes_our_in_batch_loss(memeff_on_cpu, regime, batch, dim):
    q, k = _leaves(batch, dim, seed=batch)
    dims = list(benchmark.MRL_DIMS) if regime == "mrl" else [dim]
    step = benchmark._step_fn("memeff", regime)  # exactly what the benchmark times
    loss = step(q, k, None, k, torch.arange(batch), dims, mrl_weights(dims, dim))
    loss.backward()
    truth, truth_grads = _ours_float64(q, k, dims)
    atol, rtol = TOLERANCES[torch.float32]
    assert_verbose_allclose(loss, truth, atol, rtol, name=f"memeff {regime} loss")
    for grad, expected, name in zip((q.grad, k.grad), truth_grads, ("queries", "keys"), strict=True):
        assert_verbose_allclose(grad, expected, atol, rtol, name=f"memeff {regime} grad of {name}")


def test_memeff_default_margin_is_another_loss(memeff_on_cpu):
    """The settings matter: memeff's default false-negative mask (margin 0.1) drops negatives ours keeps."""
    import memeff

    q, k = _leaves(37, 128, seed=1)
    truth, _ = _ours_float64(q, k, [128])
    masked = memeff.MemoryEfficientQwen3Loss(temperature=0.05)(q, k).detach()
    assert abs(float(masked) - float(truth)) > 0.1, (float(masked), float(truth))
    assert MEMEFF_MARGIN_OFF >= 2  # cosines in [-1, 1]: s_ij <= s_ii + 2 always, so this margin masks nothing


def test_memeff_refuses_what_it_cannot_compare():
    with pytest.raises(ValueError, match="multiples of 64"):
        memeff_loss(0.05, [8, 16, 384], [0.1, 0.2, 1.0])
    with pytest.raises(ValueError, match="weight 1.0"):
        memeff_loss(0.05, [384], [0.5])
    with pytest.raises(ValueError, match="hard negatives share the in-batch denominator"):
        benchmark._step_fn("memeff", "f2llm")
    with pytest.raises(ValueError, match="large regime only"):
        benchmark._step_fn("inf-cl", "mrl")


def test_gpu_benchmark_plan_covers_the_issue():
    """The GPU plan: ours vs memeff vs Inf-CL vs chunked at 8k-64k (d = 1024), the mrl regime at d = 384."""
    cases = benchmark._cases("cuda", quick=False)
    assert [b for r, b, d in cases if r == "large"] == [8192, 16384, 32768, 65536]
    assert {d for r, b, d in cases if r == "large"} == {1024}
    assert [b for r, b, d in cases if r == "mrl"] == [8192, 16384, 32768, 65536]
    assert {d for r, b, d in cases if r == "mrl"} == {384} and benchmark.MRL_DIMS == (64, 128, 256, 384)
    for regime, batch, _ in cases:
        impls = benchmark._impls("cuda", regime, batch)
        if regime == "f2llm":
            assert impls == ["reference", "compiled", "chunked", "triton"]
            continue
        assert {"triton", "memeff"} <= set(impls)
        assert ("chunked" in impls) == (regime == "large" or batch <= benchmark.GPU_REFERENCE_MAX)
        assert ("inf-cl" in impls) == (regime == "large")

