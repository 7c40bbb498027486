"""The fused loss's Triton kernels compile for an H100 (sm_90) on any machine, as the op launches them.

The interpreter that runs the other Triton tests on the CPU never compiles anything, so it cannot see the errors
a GPU compile hits (types of loop-carried values, non-constexpr globals, shared memory over the limit); nor
whether the hot loops are software-pipelined. ``f2llm_lib.losses.kernel_check`` records every launch of the op
under the interpreter and compiles each one ahead of time with Triton's compiler and ptxas (both in the triton
wheel): no GPU needed.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest

from f2llm_lib.losses import fused_scratch


@pytest.fixture(scope="module")
def kernels(tmp_path_factory):
    out = tmp_path_factory.mktemp("kernel_check")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # a real compile, not the interpreter
    run = subprocess.run([sys.executable, "-m", "f2llm_lib.losses.kernel_check", "--out", str(out), "--half", "bf16"],
                         capture_output=True, text=True, env=env, check=False)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    with (out / "kernels.csv").open() as handle:
        return list(csv.DictReader(handle))


def test_every_kernel_compiles_for_sm90(kernels):
    assert {row["kernel"] for row in kernels} == {"_ib_fwd", "_row_fwd", "_bwd_dq", "_bwd_dk", "_prefix_norms",
                                                  "_ib_grad_tile"}
    assert {row["dtype"] for row in kernels} == {"bf16", "fp32"}
    assert not [row for row in kernels if row["error"]], "kernels that failed to compile"
    assert all(int(row["shared"]) <= 227 * 1024 for row in kernels)


def test_large_batch_loops_are_software_pipelined(kernels):
    """In the large-batch path as benchmarked (one level, bf16), the d-loop of the forward and of the gradient
    tiles keeps more than one stage of tiles in shared memory: loads overlap the tensor-core work (with a single
    stage they do not: that was the registers path's state before the loads could vectorise)."""
    large = [row for row in kernels if "large" in row["cases"].split() and row["dtype"] == "bf16"
             and row["kernel"] in ("_ib_fwd", "_ib_grad_tile")]
    assert {row["kernel"] for row in large} == {"_ib_fwd", "_ib_grad_tile"}
    for row in large:
        constexprs = json.loads(row["constexprs"])
        one_stage = (constexprs["BLOCK_M"] + constexprs["BLOCK_N"]) * constexprs["BLOCK_D"] * 2
        assert int(row["shared"]) >= 2 * one_stage, f"{row['kernel']} is not pipelined: {row}"
    assert fused_scratch.GRAD_STAGES >= 2
