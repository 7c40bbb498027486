"""F2LLM's loss: reference, chunked and Triton (interpreter on CPU) against a float64 ground truth."""

from __future__ import annotations

import pytest
import torch
from helpers import TOLERANCES, assert_verbose_allclose

from f2llm_lib.losses import KernelSettings, TileShape, contrastive_loss, fused_large_batch, mrl_levels, mrl_weights
from f2llm_lib.losses.chunked import chunked_loss
from f2llm_lib.losses.fused import fused_loss
from f2llm_lib.losses.reference import reference_loss
from f2llm_lib.teaching.loss_variants import LOSS_VARIANTS

# triton-large-batch: the fused op with the large-batch path (fused_large_batch) forced on, its scratch cut to one
# 128-row tile so that both sides walk several chunks whenever B or N exceeds 128.
IMPLS = ["reference", "chunked", "triton", "triton-large-batch"]
# (B, d, hard negatives per query, shared negatives, MRL, in-batch): ragged on purpose.
SHAPES = [
    (1, 64, 0, 0, False, True),     # B = 1
    (17, 96, 7, 0, True, True),     # B = 17, F2LLM's k = 7, all MRL levels
    (5, 576, 3, 0, True, True),     # d = 576 (SmolLM2), MRL
    (17, 40, 0, 16, False, True),   # N = 33 keys (17 positives + 16 shared negatives)
    (6, 24, 1, 0, True, False),     # classification: one negative, no in-batch
    (9, 48, 2, 5, True, True),      # everything at once
    (3, 20, 0, 0, False, True),     # d not a multiple of any block
]


def _inputs(batch, dim, k_hard, n_shared, seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    make = lambda *shape: torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype)  # noqa: E731
    return (make(batch, dim), make(batch, dim), make(batch, k_hard, dim) if k_hard else None,
            make(n_shared, dim) if n_shared else None)


def _loss_and_grads(impl, tensors, dtype, mrl, in_batch, temperature=0.05, **kwargs):
    leaves = [t.to(dtype).detach().clone().requires_grad_() if t is not None else None for t in tensors]
    q, p, n, s = leaves
    loss = contrastive_loss(q, p, n, shared_negatives=s, in_batch=in_batch, temperature=temperature,
                            mrl_dims="f2llm_v2" if mrl else None, **LOSS_VARIANTS[impl], **kwargs)
    loss.backward()
    return loss.detach(), [t.grad for t in leaves if t is not None]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}-d{}-k{}-m{}-{}-{}".format(
    s[0], s[1], s[2], s[3], "mrl" if s[4] else "full", "ib" if s[5] else "hard"))
def test_fp32_matches_float64_reference(impl, shape):
    batch, dim, k_hard, n_shared, mrl, in_batch = shape
    tensors = _inputs(batch, dim, k_hard, n_shared)
    truth, truth_grads = _loss_and_grads("reference", tensors, torch.float64, mrl, in_batch)
    loss, grads = _loss_and_grads(impl, tensors, torch.float32, mrl, in_batch, chunk_size=8)
    atol, rtol = TOLERANCES[torch.float32]
    assert_verbose_allclose(loss, truth, atol, rtol, name=f"{impl} loss")
    for index, (grad, expected) in enumerate(zip(grads, truth_grads, strict=True)):
        assert_verbose_allclose(grad, expected, atol, rtol, name=f"{impl} grad of input {index}")


@pytest.mark.parametrize("impl", ["chunked", "triton", "triton-large-batch"])
@pytest.mark.parametrize("shape", [SHAPES[1], SHAPES[5]], ids=["B17-k7-mrl", "B9-shared-mrl"])
def test_fp16_error_no_worse_than_pytorch_fp16(impl, shape):
    batch, dim, k_hard, n_shared, mrl, in_batch = shape
    tensors = _inputs(batch, dim, k_hard, n_shared, seed=1)
    truth, truth_grads = _loss_and_grads("reference", tensors, torch.float64, mrl, in_batch)
    torch_loss, torch_grads = _loss_and_grads("reference", tensors, torch.float16, mrl, in_batch)
    loss, grads = _loss_and_grads(impl, tensors, torch.float16, mrl, in_batch, chunk_size=8)
    assert (loss.double() - truth).abs() <= (torch_loss.double() - truth).abs() + 1e-3
    for ours, theirs, expected in zip(grads, torch_grads, truth_grads, strict=True):
        our_err = (ours.double() - expected).abs().max()
        torch_err = (theirs.double() - expected).abs().max()
        assert our_err <= torch_err + 1e-3, f"{impl}: fp16 grad error {our_err:.2e} vs PyTorch's {torch_err:.2e}"


@pytest.mark.parametrize("impl", ["chunked", "triton", "triton-large-batch"])
@pytest.mark.parametrize("case", ["identical", "zero", "cold"])
def test_degenerate_inputs_stay_finite_in_fp16(impl, case):
    q, p, n, _ = _inputs(8, 32, 3, 0, seed=2)
    temperature = 0.05
    if case == "identical":
        q = p = q[:1].expand(8, -1).clone()
        n = q[:, None].expand(-1, 3, -1).clone()
    elif case == "zero":
        q[2] = 0
        p[5] = 0
        n[1, 1] = 0
    else:
        temperature = 0.01
        q, p = q * 100, p * 100  # large norms, sharp softmax
    loss, grads = _loss_and_grads(impl, (q, p, n, None), torch.float16, True, True, temperature=temperature,
                                  chunk_size=4)
    assert torch.isfinite(loss) and all(torch.isfinite(g).all() for g in grads)
    if case == "zero":
        assert grads[0][2].abs().max() == 0 and grads[1][5].abs().max() == 0  # zero vectors get no gradient


@pytest.mark.parametrize("fn", [chunked_loss, fused_loss], ids=["chunked", "triton"])
def test_positive_at_any_index(fn):
    q, p, n, shared = _inputs(7, 40, 2, 6, seed=3)
    keys = torch.cat([p, shared])
    perm = torch.randperm(len(keys), generator=torch.Generator().manual_seed(0))
    labels = torch.argsort(perm)[:7]  # where each query's positive landed after shuffling
    dims, weights = mrl_levels(40), mrl_weights(mrl_levels(40), 40)
    expected = reference_loss(q, p, n, keys[perm], labels, dims, weights, 0.05)
    got = fn(q.float(), p.float(), n.float(), keys[perm].float(), labels, dims, weights, 0.05)
    assert_verbose_allclose(got, expected, *TOLERANCES[torch.float32], name="loss with shuffled keys")


def test_mrl_levels_and_weights_follow_f2llm_v2():
    assert mrl_levels(576) == [8, 16, 32, 64, 128, 256, 512, 576]
    assert mrl_levels(2560)[-2:] == [2048, 2560] and len(mrl_levels(2560)) == 10
    weights = mrl_weights([8, 512, 1024], 1024)
    assert weights[2] == 1.0  # full dim: n = 1
    assert weights[1] == pytest.approx(1 / (2 * 2 ** 0.5))  # next: n = 2, sqrt(1024 / 512)
    assert weights[0] == pytest.approx(1 / (3 * 128 ** 0.5))


def test_auto_picks_chunked_on_cpu_and_same_value_as_reference():
    q, p, n, _ = _inputs(4, 16, 2, 0, seed=4, dtype=torch.float32)
    assert torch.allclose(contrastive_loss(q, p, n), contrastive_loss(q, p, n, impl="reference"), atol=1e-6)


@pytest.mark.parametrize("kwargs, message", [
    ({"in_batch": False}, "nothing to compute"),
    ({"mrl_dims": [16, 8]}, "increasing"),
    ({"temperature": 0.0}, "temperature"),
    ({"impl": "cuda"}, "impl must be one of"),
])
def test_bad_arguments_are_explained(kwargs, message):
    q, p, _, _ = _inputs(4, 16, 0, 0, dtype=torch.float32)
    with pytest.raises(ValueError, match=message):
        contrastive_loss(q, p, None, **kwargs)
    with pytest.raises(ValueError, match=r"negatives must be \[B, k, d\]"):
        contrastive_loss(q, p, torch.zeros(3, 2, 16))


@pytest.mark.parametrize("target_programs", [1, 2, 3])
def test_triton_key_splits_spanning_several_key_blocks(target_programs):
    """Each forward program merges several key blocks online when the keys are split fewer ways than blocks."""
    tensors = _inputs(5, 24, 2, 300, seed=5)  # 305 keys = 5 key blocks of 64
    truth, truth_grads = _loss_and_grads("reference", tensors, torch.float64, True, True)
    loss, grads = _loss_and_grads("triton", tensors, torch.float32, True, True,
                                  kernel=KernelSettings(target_programs=target_programs))
    atol, rtol = TOLERANCES[torch.float32]
    assert_verbose_allclose(loss, truth, atol, rtol, name="loss")
    for index, (grad, expected) in enumerate(zip(grads, truth_grads, strict=True)):
        assert_verbose_allclose(grad, expected, atol, rtol, name=f"grad of input {index}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_triton_large_batch_backward_over_several_chunks(dtype):
    """B = 133 queries and N = 153 keys: with a one-tile scratch both sides take two chunks, the second ragged."""
    tensors = _inputs(133, 24, 1, 20, seed=6)
    truth, truth_grads = _loss_and_grads("reference", tensors, torch.float64, True, True)
    loss, grads = _loss_and_grads("triton-large-batch", tensors, dtype, True, True)
    if dtype == torch.float32:
        atol, rtol = TOLERANCES[torch.float32]
        assert_verbose_allclose(loss, truth, atol, rtol, name="loss")
        for index, (grad, expected) in enumerate(zip(grads, truth_grads, strict=True)):
            assert_verbose_allclose(grad, expected, atol, rtol, name=f"grad of input {index}")
    else:  # fp16: no worse than PyTorch's own fp16 (the 1 / B factor is applied after the GEMM, in fp32)
        torch_loss, torch_grads = _loss_and_grads("reference", tensors, dtype, True, True)
        assert (loss.double() - truth).abs() <= (torch_loss.double() - truth).abs() + 1e-3
        for ours, theirs, expected in zip(grads, torch_grads, truth_grads, strict=True):
            assert (ours.double() - expected).abs().max() <= (theirs.double() - expected).abs().max() + 1e-3


def test_auto_strategy_switches_at_the_documented_size():
    settings = KernelSettings()
    assert settings.strategy_for(True, 16, 512) == "registers"  # F2LLM's regime: 4 launches
    assert settings.strategy_for(True, 2048, 2048) == "large_batch"
    assert settings.strategy_for(False, 1 << 20, 0) == "registers"  # hard negatives only: no B x N work
    assert KernelSettings(large_batch_min_pairs=16).strategy_for(True, 4, 4) == "large_batch"
    with pytest.raises(ValueError, match="strategy must be one of"):
        KernelSettings(strategy="scratch")
    with pytest.raises(ValueError, match="scratch_bytes must be a positive int"):
        KernelSettings(scratch_bytes=0)
    with pytest.raises(TypeError, match="TileShape.parse"):
        KernelSettings(tiles="128x64w4s4")
    q, p, _, _ = _inputs(4, 16, 0, 0, dtype=torch.float32)
    with pytest.raises(ValueError, match="impl='triton' only"):
        contrastive_loss(q, p, impl="chunked", kernel=KernelSettings())
    with pytest.raises(TypeError, match="KernelSettings"):
        fused_loss(q, p, None, p, torch.arange(4), [16], [1.0], 0.05, settings="large_batch")


def test_large_batch_tile_shape_changes_nothing_but_speed(monkeypatch):
    """Another tile shape (the GPU benchmark's sweep) gives the same loss and gradients, and the backward launches
    with the shape its forward was given. 40 x 50 pairs: several tiles of 16 x 32."""
    launched = []
    for name in ("logit_grad_tiles", "segment_grad_tiles"):  # one pass per level, or one for all levels
        launch = getattr(fused_large_batch, name)
        monkeypatch.setattr(fused_large_batch, name,
                            lambda *a, launch=launch, **k: launched.append(k["tiles"]) or launch(*a, **k))
    tensors = _inputs(40, 24, 0, 10, seed=7)
    truth, truth_grads = _loss_and_grads("reference", tensors, torch.float64, True, True)
    leaves = [t.float().requires_grad_() if t is not None else None for t in tensors]
    settings = KernelSettings(strategy="large_batch", scratch_bytes=1, tiles=TileShape.parse("16x32w4s2"))
    loss = contrastive_loss(leaves[0], leaves[1], shared_negatives=leaves[3], mrl_dims="f2llm_v2", impl="triton",
                            kernel=settings)
    loss.backward()
    assert launched and all(t == TileShape(16, 32, num_warps=4, num_stages=2) for t in launched), launched[:3]
    atol, rtol = TOLERANCES[torch.float32]
    assert_verbose_allclose(loss, truth, atol, rtol, name="loss")
    for index, (grad, expected) in enumerate(zip([leaves[0].grad, leaves[1].grad, leaves[3].grad], truth_grads,
                                                 strict=True)):
        assert_verbose_allclose(grad, expected, atol, rtol, name=f"grad of input {index}")


@pytest.mark.parametrize("spec", ["128x64", "12x64w4s3", "128x64w3s3", "128x64w4s0"])
def test_bad_tile_spec_is_explained(spec):
    with pytest.raises(ValueError, match="tile spec"):
        TileShape.parse(spec)


@pytest.mark.parametrize("impl", ["reference", "chunked"])
def test_the_loss_keeps_float32_inside_an_autocast_region(impl):
    """Mixed-precision training computes the loss near autocast regions: the result and the gradients are the
    float32 ones, not bf16 GEMMs' (and nothing fails on a float32 buffer written with bf16 values)."""
    q, p, n, _ = _inputs(9, 40, 3, 0, dtype=torch.float32)
    q.requires_grad_(True)
    expected = contrastive_loss(q, p, n, impl=impl, mrl_dims="f2llm_v2")
    (grad_q,) = torch.autograd.grad(expected, q)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        loss = contrastive_loss(q, p, n, impl=impl, mrl_dims="f2llm_v2")
        if impl == "chunked":  # its own backward (the trainer's CPU path) keeps float32 even inside the region
            (inside_q,) = torch.autograd.grad(loss, q, retain_graph=True)
            assert torch.equal(inside_q, grad_q)
    # the reference is plain autograd: as PyTorch advises, its backward runs outside the region
    (outside_q,) = torch.autograd.grad(loss, q)
    assert loss.dtype == torch.float32 and torch.equal(loss, expected) and torch.equal(outside_q, grad_q)


def test_grouped_forward_leaves_autocast_as_it_found_it():
    """The encoder runs a step's groups inside one forward without re-entering a mixed-precision wrapper, which left
    autocast switched on after the call (and so the loss in bf16)."""
    from accelerate import Accelerator

    from f2llm_lib.embedder.backbones import load_backbone
    from f2llm_lib.embedder.model import F2LLMEncoder
    from f2llm_lib.embedder.tokenization import PaddedGroup

    model, tokenizer = load_backbone("tiny-qwen3")
    encoder = Accelerator(mixed_precision="bf16", cpu=True).prepare(F2LLMEncoder(model.train(), tokenizer, 32))
    ids = torch.randint(5, 100, (3, 6))
    group = PaddedGroup(ids, torch.ones_like(ids), torch.full((3,), 6), torch.arange(3))
    out = encoder(chunks=[group])
    assert out.dtype == torch.float32 and not torch.is_autocast_enabled("cpu")


@pytest.mark.parametrize("dims", [[8, 24, 40], [5, 13, 30, 72], [72]], ids=["short-of-d", "ragged", "one-level"])
def test_one_pass_mrl_backward_matches_float64_and_the_per_level_path(dims, monkeypatch):
    """The large-batch backward with every MRL level in one tile pass (summed per prefix segment, one GEMM per
    segment, the key normalisation from the tile's own sums) against float64 and against one pass per level:
    B = 37 queries, N = 48 keys, d = 72; levels short of d (no in-batch gradient past the last), of odd widths
    (no vectorisation hint), or one; a one-tile scratch, so both sides walk several chunks; a zero query."""
    calls = []
    launch = fused_large_batch.segment_grad_tiles
    monkeypatch.setattr(fused_large_batch, "segment_grad_tiles", lambda *a, **k: calls.append(1) or launch(*a, **k))
    tensors = list(_inputs(37, 72, 0, 11, seed=11))
    tensors[0][3] = 0.0  # a zero query: no direction, no gradient
    leaves64 = [t.clone().requires_grad_() if t is not None else None for t in tensors]
    truth = contrastive_loss(leaves64[0], leaves64[1], shared_negatives=leaves64[3], mrl_dims=dims, impl="reference")
    truth.backward()
    atol, rtol = TOLERANCES[torch.float32]
    for one_pass in (True, False):
        calls.clear()
        leaves = [t.float().requires_grad_() if t is not None else None for t in tensors]
        settings = KernelSettings(strategy="large_batch", scratch_bytes=1, tiles=TileShape.parse("16x16w4s2"),
                                  segment_levels=one_pass)
        loss = contrastive_loss(leaves[0], leaves[1], shared_negatives=leaves[3], mrl_dims=dims, impl="triton",
                                kernel=settings)
        loss.backward()
        assert bool(calls) == (one_pass and len(dims) > 1)
        assert_verbose_allclose(loss, truth, atol, rtol, name=f"loss, one pass {one_pass}")
        others = torch.arange(37) != 3  # float64's F.normalize gives the zero query a gradient of order 1e12
        assert_verbose_allclose(leaves[0].grad[others], leaves64[0].grad[others], atol, rtol,
                                name=f"grad of the queries, one pass {one_pass}")
        for index in (1, 3):
            assert_verbose_allclose(leaves[index].grad, leaves64[index].grad, atol, rtol,
                                    name=f"grad of input {index}, one pass {one_pass}")
        assert torch.all(leaves[0].grad[3] == 0)


@pytest.mark.parametrize("temperature", [0.05, 0.02], ids=["fixed-max", "online-max"])
def test_both_softmax_maxima_match_float64(temperature):
    """At tau = 0.05 the forward takes 1 / tau as every row's maximum (exp(-2 / tau) = exp(-40) is a normal fp32
    number); at tau = 0.02 (exp(-100) is not) it rescales online. Sharp inputs: queries equal to their positives."""
    from f2llm_lib.losses.fused import fixed_maximum

    assert fixed_maximum(1 / 0.05) and not fixed_maximum(1 / 0.02)
    tensors = list(_inputs(21, 40, 2, 6, seed=12))
    tensors[1][:10] = tensors[0][:10]  # cosine 1: the logit reaches the fixed maximum exactly
    truth, truth_grads = _loss_and_grads("reference", tensors, torch.float64, True, True, temperature=temperature)
    atol, rtol = TOLERANCES[torch.float32]
    for impl in ("triton", "triton-large-batch"):
        loss, grads = _loss_and_grads(impl, tensors, torch.float32, True, True, temperature=temperature)
        assert_verbose_allclose(loss, truth, atol, rtol, name=f"{impl} loss")
        for index, (grad, expected) in enumerate(zip(grads, truth_grads, strict=True)):
            assert_verbose_allclose(grad, expected, atol, rtol, name=f"{impl} grad of input {index}")
