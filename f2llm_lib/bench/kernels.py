"""Compile every Triton kernel of the fused loss for a GPU, without a GPU, exactly as the op launches them.

    python -m f2llm_lib.bench.kernels [--arch 90] [--out runs/kernel_check]
    TRITON_INTERPRET=1 python -m f2llm_lib.bench.kernels --record > launches.json   # then, with another
    PYTHONPATH=<other triton> python -m f2llm_lib.bench.kernels --launches launches.json   # Triton version

1. Record (a subprocess with ``TRITON_INTERPRET=1``): run the op through its public entry point on small CPU
   inputs, for each strategy, dtype and regime (d = 1024 and 2560, with and without in-batch and hard negatives),
   and record the arguments of every kernel launch. A recorded launch is not run: what the op passes to its
   kernels depends on shapes and settings, never on what an earlier kernel wrote (running them all under the
   interpreter took a minute; the loss tests run them). The interpreter has no bf16, so fp16 launches are
   recorded and compiled for both fp16 and bf16.
2. Compile (no interpreter, one process per CPU core): each distinct launch ahead of time for ``sm_<arch>`` with
   Triton's own compiler and ptxas (shipped in the triton wheel), then read registers, spills and shared memory
   with cuobjdump.

Compile errors that the interpreter cannot see (types of loop-carried values, non-constexpr globals, shared
memory over the chip's limit) show up here on any machine; ``spill_bytes > 0`` flags a tile shape that does
not fit the register file. Writes ``kernels.csv`` (one row per compiled variant). Exit status 1 if any variant
fails to compile or needs more shared memory than ``--max-shared`` (an H100 gives a block at most 227 KiB).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import csv
import json
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from ..atomic import atomic_write_csv

KERNELS = {"fused": ("_in_batch_stats_kernel", "_row_loss_kernel", "_query_grad_kernel", "_key_grad_kernel"),
           "fused_large_batch": ("_prefix_norms_kernel", "_logit_grad_tile_kernel", "_key_epilogue_kernel",
                                 "_segment_grad_tile_kernel", "_key_segment_epilogue_kernel")}
# name: (strategy, dtype, B, extra keys, hard negatives, d, MRL, in-batch): every launch configuration the op uses.
# MRL: True for F2LLM-v2's levels (8, 16, ..., d), False for d alone, or the prefix dims themselves.
CASES = {
    "f2llm-d1024": ("registers", "float16", 16, 16, 7, 1024, True, True),  # F2LLM's regime (0.6B model)
    "f2llm-d2560": ("registers", "float16", 16, 16, 7, 2560, True, True),  # 4B model
    "f2llm-fp32": ("registers", "float32", 16, 16, 7, 1024, True, True),
    "wide-query-block": ("registers", "float16", 33, 0, 0, 1024, False, True),  # 32 < B: BLOCK_M = 64
    "hard-only": ("registers", "float16", 8, 0, 3, 1024, True, False),  # classification and clustering data
    "narrow-d": ("registers", "float16", 3, 0, 0, 24, False, True),  # d <= 32: the narrow feature block
    "large-batch-everything": ("large_batch", "float16", 16, 16, 7, 1024, True, True),  # all switched on
    "large": ("large_batch", "float16", 16, 16, 0, 1024, False, True),  # ... as benchmarked (in-batch, one level)
    "large-fp32": ("large_batch", "float32", 16, 16, 0, 1024, False, True),
    # the benchmark's mrl regime (d = 384, dims 64 ... 384): large-batch path, and the small-batch one of its GPU test
    "mrl-384": ("large_batch", "float16", 16, 16, 0, 384, (64, 128, 256, 384), True),
    "mrl-384-registers": ("registers", "float16", 16, 16, 0, 384, (64, 128, 256, 384), True),
    # the one-pass MRL backward (bf16 and fp32 only: recorded in fp32, and in fp16 with its factor folding forced
    # on, which the bf16 compile then stands for)
    "mrl-384-one-pass": ("large_batch", "float32", 16, 16, 0, 384, (64, 128, 256, 384), True),
    "mrl-384-one-pass-half": ("large_batch", "float16", 16, 16, 0, 384, (64, 128, 256, 384), True),
}


def _describe(value) -> object:
    """A launch argument as Triton's JIT sees it: its type and specialisation (16-divisible ints and 16-byte
    aligned pointers get tt.divisibility, which decides vectorisation and software pipelining; 1 is a constant)."""
    import torch
    from triton._C.libtriton import native_specialize_impl
    from triton.backends.compiler import BaseBackend

    if isinstance(value, torch.Tensor):
        kind, spec = native_specialize_impl(BaseBackend, value, False, True, True)
        return {"type": kind, "aligned": spec == "D"}
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, (int, float)):
        kind, spec = native_specialize_impl(BaseBackend, value, False, True, True)
        return {"type": kind, "aligned": spec == "D", "value": value}
    raise TypeError(f"unexpected kernel argument {value!r}")


def record() -> list[dict]:
    """Run the op on every case with its kernels replaced by recorders; return each launch's kernel, arguments
    and options."""
    import torch

    from ..losses import fused, fused_large_batch
    from ..losses.api import contrastive_loss
    from ..losses.kernel_settings import SWEEP_TILES, KernelSettings

    launches: list[dict] = []
    current = {"case": ""}

    class Recorder:
        def __init__(self, name):
            self.name = name

        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                launches.append({"kernel": self.name, "case": current["case"], "args": [_describe(a) for a in args],
                                 "kwargs": {k: _describe(v) for k, v in kwargs.items()}})
                return None  # recorded, not run (see the module docstring)

            return launch

    for module_name, names in KERNELS.items():
        module = fused if module_name == "fused" else fused_large_batch
        for name in names:
            setattr(module, name, Recorder(name))
    runs = [(case, spec, KernelSettings(strategy=spec[0], segment_levels="one-pass" in case))
            for case, spec in CASES.items()]
    # the tile shapes the GPU benchmark sweeps (--large-batch-sweep), on the benchmarked case
    runs += [(f"large@{tiles}", CASES["large"], KernelSettings(strategy="large_batch", tiles=tiles))
             for tiles in SWEEP_TILES]
    folds = fused_large_batch.folds
    for case, (_strategy, dtype, batch, extra, k_hard, dim, mrl, in_batch), settings in runs:
        current["case"] = case
        fused_large_batch.folds = (lambda dtype: True) if case.endswith("one-pass-half") else folds
        gen = torch.Generator().manual_seed(0)

        def make(*shape, gen=gen, dtype=dtype):
            return torch.randn(*shape, generator=gen).to(getattr(torch, dtype)).requires_grad_()

        q, p = make(batch, dim), make(batch, dim)
        negatives = make(batch, k_hard, dim) if k_hard else None
        shared = make(extra, dim) if extra else None
        loss = contrastive_loss(q, p, negatives, shared_negatives=shared, in_batch=in_batch, impl="triton",
                                mrl_dims="f2llm_v2" if mrl is True else list(mrl) if mrl else None, kernel=settings)
        loss.backward()
    return launches


def count_launches(batch: int, dim: int, dims: Sequence[int], dtype: str = "bfloat16",
                   segment_levels: bool = False) -> dict:
    """Launches of one forward + backward of the fused op's large-batch path with B = N = ``batch`` in-batch pairs
    (no hard negatives), counted without running anything: Triton kernels are recorded, GEMMs (every one goes
    through ``fused_large_batch._product_into`` in bf16 and fp32) counted and skipped. Buffer zeroing and
    allocations are not counted. Run it with ``TRITON_INTERPRET=1`` (``--count-launches``): any size fits a CPU.
    ``segment_levels``: the one-pass MRL backward (True) or one pass per level (False, the default path)."""
    import torch

    from ..losses import fused, fused_large_batch
    from ..losses.api import contrastive_loss
    from ..losses.kernel_settings import KernelSettings

    if dtype not in ("bfloat16", "float32"):
        raise ValueError(f"counting covers the bf16 and fp32 paths (their GEMMs all go through one function), "
                         f"not {dtype}")
    counts: dict[str, int] = {}

    class Counter:
        def __init__(self, name):
            self.name = name

        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                counts[self.name] = counts.get(self.name, 0) + 1

            return launch

    def gemm(out, a, b, accumulate):
        counts["gemm"] = counts.get("gemm", 0) + 1

    for module_name, names in KERNELS.items():
        module = fused if module_name == "fused" else fused_large_batch
        for name in names:
            setattr(module, name, Counter(name))
    fused_large_batch._product_into = gemm
    q = torch.zeros(batch, dim, dtype=getattr(torch, dtype), requires_grad=True)
    p = torch.zeros(batch, dim, dtype=getattr(torch, dtype), requires_grad=True)
    loss = contrastive_loss(q, p, impl="triton", mrl_dims=list(dims),
                            kernel=KernelSettings(strategy="large_batch", segment_levels=segment_levels))
    loss.backward()
    return {"batch": batch, "dim": dim, "dims": list(dims), "dtype": dtype, "one_pass": segment_levels,
            "kernels": counts,
            "total": sum(counts.values())}


def _signature(fn, launch: dict, half: str) -> tuple[dict, dict, dict, dict]:
    """Triton's (signature, constexprs, attrs, options) for one recorded launch, fp16 pointers retyped to half."""
    names = fn.arg_names
    values = dict(zip(names, launch["args"], strict=False))
    options = {}
    for key, value in launch["kwargs"].items():
        if key in names:
            values[key] = value
        else:
            options[key] = value["value"] if isinstance(value, dict) else value  # num_warps, num_stages
    signature, constexprs, attrs = {}, {}, {}
    for index, param in enumerate(fn.params):
        value = values[param.name] if param.name in values else param.default
        if param.is_constexpr or not isinstance(value, dict) or value["type"] == "constexpr":
            signature[param.name] = "constexpr"
            constexprs[param.name] = value["value"] if isinstance(value, dict) else value
            continue
        signature[param.name] = value["type"].replace("fp16", half)
        if value["aligned"]:
            attrs[(index,)] = [["tt.divisibility", 16]]
    return signature, constexprs, attrs, options


def _resources(cubin: bytes) -> dict:
    import triton

    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "kernel.cubin"
        path.write_bytes(cubin)
        text = subprocess.run([str(tool), "--dump-resource-usage", str(path)], capture_output=True, text=True,
                              check=True).stdout
    usage = dict(re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", text))
    return {"registers": int(usage.get("REG", 0)), "spill_bytes": int(usage.get("LOCAL", 0)),
            "static_shared": int(usage.get("SHARED", 0))}


def _kernel(name: str):
    """The JIT function of one of the op's kernels, by name (``KERNELS``)."""
    from ..losses import fused, fused_large_batch

    return getattr(fused if name in KERNELS["fused"] else fused_large_batch, name)


def _compile_variant(job: tuple[str, tuple[dict, dict, dict, dict], int]) -> dict:
    """Compile one variant (a worker process's task): Triton's compiler, then ptxas's resource counts."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    name, (signature, constexprs, attrs, options), arch = job
    try:
        src = ASTSource(fn=_kernel(name), signature=signature, constexprs=constexprs, attrs=attrs)
        compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)
        return {**_resources(compiled.asm["cubin"]), "shared": compiled.metadata.shared,
                "num_warps": compiled.metadata.num_warps, "num_stages": compiled.metadata.num_stages}
    except Exception as exc:  # report every failing variant, not only the first
        return {"error": f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1][:300]}"}


def compile_all(launches: list[dict], arch: int, halves: Sequence[str] = ("fp16", "bf16"),
                workers: int | None = None) -> list[dict]:
    """Compile each distinct launch for sm_<arch>; one row per (kernel, constexprs, options, dtype). Distinct
    variants compile in ``workers`` processes (default: one per CPU core), each a fresh interpreter."""
    import triton

    rows, seen, jobs = [], {}, []
    for launch in launches:
        fn = _kernel(launch["kernel"])
        has_half = any(isinstance(a, dict) and a["type"] == "*fp16" for a in launch["args"])
        for half in (halves if has_half else ("fp32",)):
            signature, constexprs, attrs, options = _signature(fn, launch, half)
            key = json.dumps([launch["kernel"], signature, constexprs, sorted(attrs), options], sort_keys=True)
            if key in seen:  # the same compiled variant serves several cases
                seen[key]["cases"] = " ".join(sorted(set(seen[key]["cases"].split()) | {launch["case"]}))
                continue
            row = seen[key] = {"kernel": launch["kernel"], "cases": launch["case"], "dtype": half,
                               "arch": f"sm_{arch}", "triton": triton.__version__,
                               "constexprs": json.dumps(constexprs, sort_keys=True),
                               "options": json.dumps(options)}
            rows.append(row)
            jobs.append((launch["kernel"], (signature, constexprs, attrs, options), arch))
    workers = max(1, min(len(jobs), workers or os.cpu_count() or 1))
    if workers == 1:
        results = [_compile_variant(job) for job in jobs]
    else:  # spawn: each worker imports Triton afresh (no interpreter flag, no forked compiler state)
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
            results = list(pool.map(_compile_variant, jobs))
    for row, result in zip(rows, results, strict=True):
        row.update(result)
    return rows


def compile_report(out: Path, arch: int = 90, half: str = "bf16") -> list[dict]:
    """Run this check in a fresh process (no interpreter, whatever this process has imported) and return the
    rows of its ``kernels.csv``; raises with the check's output if any variant failed. Notebook 02 and the tests
    call this."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, "-m", "f2llm_lib.bench.kernels", "--out", str(out), "--arch",
                          str(arch), "--half", half], capture_output=True, text=True, env=env, check=False)
    if run.returncode != 0:
        raise RuntimeError(f"kernel_check failed:\n{run.stdout[-3000:]}{run.stderr[-3000:]}")
    with (Path(out) / "kernels.csv").open() as handle:
        return list(csv.DictReader(handle))


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", type=int, default=90, help="compute capability x 10 (90: H100/H200)")
    parser.add_argument("--out", type=Path, default=Path("runs/kernel_check"))
    parser.add_argument("--max-shared", type=int, default=227 * 1024, help="shared memory per block, bytes")
    parser.add_argument("--half", default="fp16,bf16", help="16-bit dtypes to compile the fp16 launches for")
    parser.add_argument("--record", action="store_true", help="only record the launches: JSON on stdout")
    parser.add_argument("--launches", type=Path, help="compile launches recorded earlier (--record) instead, e.g.\n"
                        "with another Triton on PYTHONPATH: the one a GPU machine runs")
    parser.add_argument("--count-launches", type=int, metavar="B",
                        help="count the launches of one large-batch forward + backward at B x B\n"
                        "(with TRITON_INTERPRET=1)")
    parser.add_argument("--dim", type=int, default=384, help="with --count-launches: the feature dimension")
    parser.add_argument("--dims", default="64,128,256,384", help="with --count-launches: the MRL prefix dims")
    parser.add_argument("--one-pass", action="store_true",
                        help="with --count-launches: the one-pass MRL backward (KernelSettings.segment_levels)")
    args = parser.parse_args(argv)
    if args.count_launches:
        print(json.dumps(count_launches(args.count_launches, args.dim, [int(d) for d in args.dims.split(",")],
                                        segment_levels=args.one_pass)))
        return 0
    if args.record:
        print(json.dumps(record()))
        return 0
    if args.launches:
        recorded = args.launches.read_text()
    else:
        env = {**os.environ, "TRITON_INTERPRET": "1"}
        out = subprocess.run([sys.executable, "-m", "f2llm_lib.bench.kernels", "--record"],
                             capture_output=True, text=True, env=env, check=False)
        if out.returncode != 0:
            print(out.stderr, file=sys.stderr)
            return 1
        recorded = out.stdout
    os.environ.pop("TRITON_INTERPRET", None)
    rows = compile_all(json.loads(recorded.strip().splitlines()[-1]), args.arch, args.half.split(","))
    fields = ["kernel", "cases", "dtype", "arch", "triton", "registers", "spill_bytes", "shared", "static_shared",
              "num_warps", "num_stages", "constexprs", "options", "error"]
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_csv(args.out / "kernels.csv", rows, fields)
    bad = [r for r in rows if "error" in r or r.get("shared", 0) > args.max_shared]
    for row in rows:
        status = row.get("error") or (f"{row['registers']} regs, {row['spill_bytes']} B spilled, "
                                      f"{row['shared']} B shared")
        print(f"{row['kernel']:14s} {row['dtype']:9s} {row['constexprs'][:70]:70s} {status}")
    import triton

    print(f"{len(rows)} variants compiled for sm_{args.arch} with Triton {triton.__version__}, {len(bad)} failed; "
          f"wrote {args.out / 'kernels.csv'}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
