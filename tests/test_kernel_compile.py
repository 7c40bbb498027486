"""The fused loss's Triton kernels compile for an H100 (sm_90) on any machine, as the op launches them.

The interpreter that runs the other Triton tests on the CPU never compiles anything, so it cannot see the errors
a GPU compile hits (types of loop-carried values, non-constexpr globals, shared memory over the limit); nor
whether the hot loops are software-pipelined. ``f2llm_lib.bench.kernels`` records every launch of the op
under the interpreter and compiles each one ahead of time with Triton's compiler and ptxas (both in the triton
wheel): no GPU needed.
"""

from __future__ import annotations

import json

import pytest

from f2llm_lib.bench.kernels import compile_report
from f2llm_lib.losses.kernel_settings import SWEEP_TILES, TileShape


@pytest.fixture(scope="module")
def kernels(tmp_path_factory):
    return compile_report(tmp_path_factory.mktemp("kernel_check"), arch=90, half="bf16")


def test_every_kernel_compiles_for_sm90(kernels):
    assert {row["kernel"] for row in kernels} == {
        "_in_batch_stats_kernel", "_row_loss_kernel", "_query_grad_kernel", "_key_grad_kernel",
        "_prefix_norms_kernel", "_logit_grad_tile_kernel", "_key_epilogue_kernel", "_segment_grad_tile_kernel",
        "_key_segment_epilogue_kernel"}
    assert {row["dtype"] for row in kernels} == {"bf16", "fp32"}
    # the one-pass MRL backward runs in bf16 on a GPU: compiled for it, not only for the fp32 of the CPU tests
    assert {row["dtype"] for row in kernels if row["kernel"] == "_segment_grad_tile_kernel"} == {"bf16", "fp32"}
    assert not [row for row in kernels if row["error"]], "kernels that failed to compile"
    assert all(int(row["shared"]) <= 227 * 1024 for row in kernels)


def test_large_batch_loops_are_software_pipelined(kernels):
    """In the large-batch path as benchmarked (one level, bf16), the d-loop of the forward and of the gradient
    tiles keeps more than one stage of tiles in shared memory: loads overlap the tensor-core work (with a single
    stage they do not: that was the registers path's state before the loads could vectorise)."""
    def benchmarked(row):  # the large case, with the default tiles or one of the GPU benchmark's sweep
        return any(case == "large" or case.startswith("large@") for case in row["cases"].split())

    large = [row for row in kernels if benchmarked(row) and row["dtype"] == "bf16"
             and row["kernel"] in ("_in_batch_stats_kernel", "_logit_grad_tile_kernel")]
    assert {row["kernel"] for row in large} == {"_in_batch_stats_kernel", "_logit_grad_tile_kernel"}
    swept = {case for row in large for case in row["cases"].split() if case.startswith("large@")}
    assert swept == {f"large@{tiles}" for tiles in SWEEP_TILES}
    for row in large:
        constexprs = json.loads(row["constexprs"])
        one_stage = (constexprs["BLOCK_M"] + constexprs["BLOCK_N"]) * constexprs["BLOCK_D"] * 2
        assert int(row["shared"]) >= 2 * one_stage, f"{row['kernel']} is not pipelined: {row}"
    assert TileShape().num_stages >= 2
