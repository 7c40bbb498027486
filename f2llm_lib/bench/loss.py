"""Benchmark of the contrastive-loss implementations: time, peak memory and (GPU) kernel launches -> CSV + plot.

    python -m f2llm_lib.bench.loss --out runs/bench_loss             # CPU: reference, chunked, compiled
    python -m f2llm_lib.bench.loss --device cuda --out runs/bench    # GPU: + triton, memeff, inf-cl

Regimes (see docs/F2LLM_REFERENCE.md, Where a fused loss pays):
- ``f2llm``: 16 local queries, 512 gathered keys, 7 hard negatives per query, d in {1024, 2560}, all MRL levels;
- ``large``: B queries against B keys (in-batch only, one level), d = 1024, B in {8192, 16384} (GPU: 8192 to
  65536), against memeff's Qwen3 loss and Inf-CL on the GPU;
- ``mrl``: the same in-batch problem at d = 384 with 4 MRL dims (64, 128, 256, 384; F2LLM-v2's weights), against
  memeff's fused Matryoshka loss (GPU default; ``--regime mrl`` on the CPU runs reference and chunked).
Baselines are called through ``baselines``, with the settings under which they compute our loss (tested).
One forward + backward is timed; GPU kernel launches are those of the loss's forward and backward (the seed
gradient of ``backward()`` is made once beforehand, as a training step makes it once for its summed loss).
On a GPU, ``model_tflops`` is 6 B N d / time (the three B x N x d products of a forward + backward, d the
largest dim), and ``loss_kernels.csv`` lists the CUDA time per kernel of each implementation at the largest size.
CPU peak memory is measured in a fresh subprocess per case (peak RSS above the RSS after the inputs exist, with
glibc's mmap threshold fixed at 1 MiB so that freed blocks leave RSS); GPU peak memory is
``max_memory_allocated`` above the inputs. ``workspace_mb`` = peak minus the gradients returned (which
every implementation must hold): the "extra memory" of the fused op's large-batch target.
On a GPU the large regime also runs ``triton-registers`` (the fused op with its small-batch backward forced),
the baseline for its large-batch path in the same run, and the mrl regime ``triton-one-pass`` (one backward
tile pass for all MRL levels), the candidate timed against the default per-level path.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from ..atomic import atomic_write_csv
from ..losses.api import auto_chunk_size, mrl_levels, mrl_weights
from ..losses.chunked import chunked_loss
from ..losses.kernel_settings import SWEEP_TILES, KernelSettings, TileShape
from ..losses.reference import reference_loss
from .loss_baselines import NOTES

TEMPERATURE = 0.05
# The MRL regime: memeff's own headline shape (d = 384, 4 dims), dims multiples of 64 as its fused kernels need.
MRL_DIM, MRL_DIMS = 384, (64, 128, 256, 384)
GPU_LARGE_SIZES = (8192, 16384, 32768, 65536)
# Largest B at which the eager reference (B x N fp32 logits, several copies) still runs in the GPU benchmark.
GPU_REFERENCE_MAX = 16384
# The fused op's rows: its own choice, and its small-batch backward forced (the in-run baseline of the large-batch
# path). The tile sweep's rows are "triton-large-batch@<TileShape>" (benchmarks before the rename say
# "triton-scratch@...": the same path).
# "triton-one-pass": the MRL rows' candidate, the large-batch backward walking each tile once for all levels
# (KernelSettings.segment_levels), timed beside the default per-level path before it may become the default.
TRITON_VARIANTS = {"triton": KernelSettings(), "triton-registers": KernelSettings(strategy="registers"),
                   "triton-one-pass": KernelSettings(segment_levels=True)}
LARGE_BATCH_SWEEP = "triton-large-batch"


def _case_inputs(regime: str, batch: int, dim: int, device: str, dtype: torch.dtype):
    gen = torch.Generator(device="cpu").manual_seed(0)
    make = lambda *shape: torch.randn(*shape, generator=gen).to(device=device, dtype=dtype)  # noqa: E731
    if regime == "f2llm":
        keys = make(512, dim)
        q, negatives = make(batch, dim), make(batch, 7, dim)
        pos = keys[:batch]
        dims = mrl_levels(dim)
    else:
        q, keys, negatives = make(batch, dim), make(batch, dim), None
        dims = list(MRL_DIMS) if regime == "mrl" else [dim]
        pos = keys
    labels = torch.arange(batch, device=device)
    leaves = [t.detach().clone().requires_grad_() for t in (q, pos, keys)]
    neg = negatives.detach().clone().requires_grad_() if negatives is not None else None
    return leaves, neg, labels, dims, mrl_weights(dims, dim)


def _step_fn(impl: str, regime: str):
    if impl == "reference":
        return lambda q, p, n, k, y, d, w: reference_loss(q, p, n, k, y, d, w, TEMPERATURE)
    if impl == "compiled":
        compiled = torch.compile(reference_loss, dynamic=False)
        return lambda q, p, n, k, y, d, w: compiled(q, p, n, k, y, d, w, TEMPERATURE)
    if impl == "chunked":
        return lambda q, p, n, k, y, d, w: chunked_loss(q, p, n, k, y, d, w, TEMPERATURE, auto_chunk_size(len(q)))
    if impl in TRITON_VARIANTS or impl.startswith(LARGE_BATCH_SWEEP + "@"):
        from ..losses.fused import fused_loss

        settings = TRITON_VARIANTS.get(impl) or KernelSettings(
            strategy="large_batch", tiles=TileShape.parse(impl.removeprefix(LARGE_BATCH_SWEEP + "@")))
        return lambda q, p, n, k, y, d, w: fused_loss(q, p, n, k, y, d, w, TEMPERATURE, settings)
    if impl == "inf-cl":
        if regime != "large":
            raise ValueError("inf-cl has no hard negatives or MRL: large regime only")
        from .loss_baselines import inf_cl_loss

        baseline = inf_cl_loss(TEMPERATURE)
        return lambda q, p, n, k, y, d, w: baseline(q, k)
    if impl == "memeff":
        if regime == "f2llm":
            raise ValueError("memeff's hard negatives share the in-batch denominator (not F2LLM's loss): "
                             "large and mrl regimes only")
        from .loss_baselines import memeff_loss

        cache: dict[tuple, object] = {}

        def step(q, p, n, k, y, d, w):
            key = (tuple(d), tuple(w))
            if key not in cache:
                cache[key] = memeff_loss(TEMPERATURE, d, w)
            return cache[key](q, k)

        return step
    raise ValueError(f"unknown impl {impl!r}")


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def measure(impl: str, regime: str, batch: int, dim: int, device: str, dtype: torch.dtype, reps: int) -> dict:
    """Median time of forward + backward, peak extra memory, and (CUDA) kernel launches per call."""
    (q, p, k), n, labels, dims, weights = _case_inputs(regime, batch, dim, device, dtype)
    step = _step_fn(impl, regime)

    # On a GPU the seed gradient of backward() is made once, outside the measured calls: in training it belongs
    # to the whole step's summed loss, not to this loss, so its fill kernel is not counted for any impl. On the
    # CPU plain backward(): an explicit seed there adds ~33 MB of RSS outside any tensor (the same for every
    # impl, seen in peak RSS only), which would blur the memory comparison.
    seeds: dict[torch.dtype, torch.Tensor] = {}  # made by the first (warm-up) call, in the loss's own dtype

    def run():
        for t in (q, p, k, n):
            if t is not None:
                t.grad = None
        loss = step(q, p, n, k, labels, dims, weights)
        if device != "cuda":
            loss.backward()
            return
        if loss.dtype not in seeds:
            seeds[loss.dtype] = torch.ones((), device=device, dtype=loss.dtype)
        loss.backward(seeds[loss.dtype])

    # BLAS allocates per-thread work buffers on its first product: a fixed cost of the process, not of the
    # algorithm, so it goes into the baseline (the same for every implementation).
    warm = torch.randn(256, 256, device=device, dtype=dtype)
    (warm @ warm).sum().item()
    baseline_rss = _rss_mb()
    if device != "cuda":
        _reset_peak_rss()
    if device == "cuda":
        run()  # warm-up: compilation and autotuning are not part of the steady state
        for t in (q, p, k, n):
            if t is not None:
                t.grad = None  # the baseline holds the inputs only, not the warm-up's gradients
        _sync(device)
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        run()
        _sync(device)
        peak_mb = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        run()
        peak_mb = _peak_rss_mb() - baseline_rss
    times = []
    for _ in range(reps):
        _sync(device)
        start = time.perf_counter()
        run()
        _sync(device)
        times.append(time.perf_counter() - start)
    launches, kernels = None, []
    if device == "cuda":
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            run()
            _sync(device)
        launches = sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA
                       and not e.name.lower().startswith("memcpy"))
        kernels = kernel_times(prof.events())
    # The gradients themselves are output, not workspace: every implementation has to return them.
    grad_mb = sum(t.grad.numel() * t.grad.element_size() for t in (q, p, k, n) if t is not None
                  and t.grad is not None) / 2**20
    time_ms = 1000 * statistics.median(times)
    row = {"impl": impl, "regime": regime, "batch": batch, "keys": k.shape[0], "dim": dim, "levels": len(dims),
           "mrl_dims": " ".join(str(d) for d in dims), "hard_negatives": 0 if n is None else n.shape[1],
           "dtype": str(dtype).replace("torch.", ""), "device": device, "time_ms": round(time_ms, 3),
           "peak_mb": round(peak_mb, 2), "grad_mb": round(grad_mb, 2), "workspace_mb": round(peak_mb - grad_mb, 2),
           "launches": launches, "model_tflops": round(6 * batch * k.shape[0] * max(dims) / time_ms / 1e9, 2),
           "notes": note(impl, regime)}
    if kernels:
        row["kernels"] = kernels
    return row


def note(impl: str, regime: str) -> str:
    """What an implementation computes, in the CSV beside its figures (semantic differences included)."""
    name, _, tiles = impl.partition("@")
    if name == "memeff" and regime == "mrl":
        return NOTES["memeff-mrl"]
    if tiles:
        return f"ours, large-batch path forced, tile shape {tiles} (tile sweep)"
    return NOTES.get(name, "")


def kernel_times(events) -> list[dict]:
    """CUDA kernels of one profiled call, grouped by name: calls and total milliseconds, longest first."""
    totals: dict[str, list[float]] = {}
    for event in events:
        if event.device_type != torch.autograd.DeviceType.CUDA or event.name.lower().startswith("memcpy"):
            continue
        entry = totals.setdefault(event.name, [0, 0.0])
        entry[0] += 1
        entry[1] += event.time_range.elapsed_us() / 1000  # a kernel event's own start and end on the device
    return [{"kernel": name, "calls": calls, "ms": round(ms, 3)}
            for name, (calls, ms) in sorted(totals.items(), key=lambda item: -item[1][1])]


def device_ceilings(size: int = 8192, copy_mb: int = 2048) -> dict:
    """This GPU's two ceilings, measured on random data (median of 10 after 3 warm-ups, CUDA events): a bf16
    size^3 matrix product in TFLOP/s, and a device-to-device copy in GB/s counting bytes read plus written."""
    def median_ms(fn) -> float:
        for _ in range(3):
            fn()
        times = []
        for _ in range(10):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        return statistics.median(times)

    a, b = (torch.randn(size, size, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    matmul_ms = median_ms(lambda: a @ b)
    src = torch.randn(copy_mb * 2**20 // 4, device="cuda")
    dst = torch.empty_like(src)
    copy_ms = median_ms(lambda: dst.copy_(src))
    return {"gpu": torch.cuda.get_device_name(), "matmul_bf16_tflops": round(2 * size**3 / matmul_ms / 1e9, 1),
            "copy_gb_per_s": round(2 * src.numel() * 4 / copy_ms / 1e6, 1)}


def _rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _reset_peak_rss() -> None:
    """Start the peak-RSS count afresh (Linux: "5" to clear_refs resets VmHWM to the current RSS). Without it the
    peak is the process's lifetime peak, which importing torch already sets above what a small loss uses."""
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")


def _peak_rss_mb() -> float:
    """Peak RSS since the last :func:`_reset_peak_rss` (VmHWM), else since the process started."""
    try:
        with open("/proc/self/status") as handle:
            return next(int(line.split()[1]) for line in handle if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _cases(device: str, quick: bool, sizes: Sequence[int] | None = None) -> list[tuple[str, int, int]]:
    cases = [("f2llm", 16, 1024), ("f2llm", 16, 2560)]
    if sizes is None:
        sizes = [1024] if quick else list(GPU_LARGE_SIZES) if device == "cuda" else [8192, 16384]
    cases += [("large", size, 1024) for size in sizes]
    if device == "cuda":  # memeff runs on CUDA only; on the CPU the mrl regime is asked for with --regime mrl
        cases += [("mrl", size, MRL_DIM) for size in sizes]
    return cases


def _impls(device: str, regime: str, batch: int) -> list[str]:
    if regime == "f2llm":
        return ["reference", "compiled", "chunked"] + (["triton"] if device == "cuda" else [])
    if device != "cuda":
        return ["reference", "compiled", "chunked"]
    # On the GPU the large-batch rows compare the memory-bounded implementations; the eager reference only where
    # its B x N logits are small, and no torch.compile (a recompilation per shape, minutes of a short GPU lease).
    impls = (["reference"] if batch <= GPU_REFERENCE_MAX else []) + ["triton", "memeff"]
    if regime == "large":
        impls += ["inf-cl", "triton-registers"]
    if regime == "mrl":
        impls += ["triton-one-pass"]
    # chunked in the mrl regime only where it takes seconds (2.3 s per call at 32,768 on an H200: 14 s a case)
    return impls + (["chunked"] if regime == "large" or batch <= GPU_REFERENCE_MAX else [])


def _run_case_isolated(impl, regime, batch, dim, device, dtype, reps) -> dict:
    """CPU peak RSS is per process, so each CPU case runs in a fresh interpreter."""
    cmd = [sys.executable, "-m", "f2llm_lib.bench.loss", "--worker", json.dumps(
        [impl, regime, batch, dim, device, str(dtype).replace("torch.", ""), reps])]
    # Large blocks through mmap, so a free returns memory at once and peak RSS measures live memory, not what glibc
    # keeps mapped after frees (applied to every implementation alike).
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(1 << 20)}
    out = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if out.returncode != 0:
        return {"impl": impl, "regime": regime, "batch": batch, "dim": dim, "device": device,
                "error": (out.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def memory_curve(sizes: Sequence[int], impls: Sequence[str] = ("reference", "chunked"), dim: int = 256,
                 device: str = "cpu") -> list[dict]:
    """Peak extra memory of one forward + backward, B queries against B keys, for growing B (fresh processes)."""
    return [_run_case_isolated(impl, "large", size, dim, device, torch.float32, 1) for size in sizes for impl in impls]


def _add_ratios(rows: list[dict]) -> None:
    for row in rows:
        base = next((r for r in rows if r["impl"] == "reference" and r["regime"] == row["regime"]
                     and r["batch"] == row["batch"] and r["dim"] == row["dim"] and "time_ms" in r), None)
        if base and "time_ms" in row:
            row["time_vs_reference"] = round(row["time_ms"] / base["time_ms"], 3)
            row["memory_vs_reference"] = round(row["peak_mb"] / base["peak_mb"], 4) if base["peak_mb"] else None
        for other in ("inf-cl", "memeff"):  # the large-batch targets: the fused op beats both
            base = next((r for r in rows if r["impl"] == other and r["regime"] == row["regime"]
                         and r["batch"] == row["batch"] and r["dim"] == row["dim"] and "time_ms" in r), None)
            if base and "time_ms" in row:
                row[f"time_vs_{other.replace('-', '_')}"] = round(row["time_ms"] / base["time_ms"], 3)


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    regimes = [r for r in ("large", "mrl") if any(row["regime"] == r and "time_ms" in row for row in rows)]
    if not regimes:
        return
    fig, axes = plt.subplots(len(regimes), 2, figsize=(11, 4 * len(regimes)), squeeze=False)
    for ax_row, regime in zip(axes, regimes, strict=True):
        cases = [r for r in rows if r["regime"] == regime and "time_ms" in r and "@" not in r["impl"]]
        for impl in sorted({r["impl"] for r in cases}):
            pts = sorted((r["batch"], r["time_ms"], r["workspace_mb"]) for r in cases if r["impl"] == impl)
            ax_row[0].plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=impl)
            ax_row[1].plot([p[0] for p in pts], [max(p[2], 1e-2) for p in pts], marker="o", label=impl)
        shape = f"d = {cases[0]['dim']}" + (f", MRL dims {cases[0]['mrl_dims']}" if regime == "mrl" else "")
        for ax, label in zip(ax_row, ("time per fwd+bwd (ms)", "extra memory beyond the gradients (MB)"),
                             strict=True):
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel(f"queries = keys ({shape}, {cases[0]['dtype']})")
            ax.set_ylabel(label)
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _write_csv(rows: list[dict], out: Path) -> None:
    _add_ratios(rows)
    out.mkdir(parents=True, exist_ok=True)
    fields = ["device", "dtype", "regime", "impl", "batch", "keys", "dim", "levels", "mrl_dims", "hard_negatives",
              "time_ms", "peak_mb", "grad_mb", "workspace_mb", "launches", "model_tflops", "time_vs_reference",
              "memory_vs_reference", "time_vs_inf_cl", "time_vs_memeff", "notes", "error"]
    _write_rows(out / "loss_benchmark.csv", fields, rows)
    kernels = [{"impl": r["impl"], "regime": r["regime"], "batch": r["batch"], "dim": r["dim"], "time_ms": r["time_ms"],
                **k, "share": round(k["ms"] / r["time_ms"], 3) if r["time_ms"] else None}
               for r in rows if r.get("kernels") for k in r["kernels"]]
    if kernels:
        _write_rows(out / "loss_kernels.csv", list(kernels[0]), kernels)


def _write_rows(path: Path, fields: list[str], rows: list[dict]) -> None:
    """CSV through a temporary file and a rename: a reader never sees half a table."""
    atomic_write_csv(path, rows, fields)


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default=None, help="float32 (CPU default) or bfloat16 (GPU default)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench_loss"))
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="small large-regime size, for tests")
    parser.add_argument("--regime", choices=["f2llm", "large", "mrl"], help="run only this regime")
    parser.add_argument("--sizes", type=int, nargs="*", help="B = N values of the large and mrl regimes (default: "
                        "8192 16384 on the CPU, 8192 to 65536 on a GPU)")
    parser.add_argument("--kernel-profile", choices=["largest", "all", "none"], default="largest",
                        help="GPU: which sizes keep their per-kernel times in loss_kernels.csv")
    parser.add_argument("--large-batch-tiles", nargs="*", default=[], metavar="MxNwWsS",
                        help="GPU, largest large-regime size: also time the large-batch path with these tile shapes "
                        "(e.g. 128x64w4s4)")
    parser.add_argument("--large-batch-sweep", action="store_true",
                        help="--large-batch-tiles kernel_settings.SWEEP_TILES")
    parser.add_argument("--ceilings", action="store_true", help="GPU: measure its bf16 matmul and copy ceilings, "
                        "print them as JSON and stop")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.ceilings:
        print(json.dumps(device_ceilings()))
        return 0
    sweep: list[TileShape] = list(SWEEP_TILES) if args.large_batch_sweep else []
    for spec in args.large_batch_tiles:
        try:
            sweep.append(TileShape.parse(spec))
        except ValueError as exc:
            parser.error(f"--large-batch-tiles: {exc}")
    if args.worker:
        impl, regime, batch, dim, device, dtype, reps = json.loads(args.worker)
        print(json.dumps(measure(impl, regime, batch, dim, device, getattr(torch, dtype), reps)))
        return 0
    dtype = getattr(torch, args.dtype or ("bfloat16" if args.device == "cuda" else "float32"))
    rows = []
    cases = _cases(args.device, args.quick, args.sizes)
    if args.regime == "mrl" and args.device != "cuda":
        sizes = args.sizes or ([1024] if args.quick else [8192, 16384])
        cases += [("mrl", size, MRL_DIM) for size in sizes]
    cases = [c for c in cases if args.regime in (None, c[0])]
    largest = max((batch for regime, batch, _ in cases if regime == "large"), default=0)
    largest_of = {regime: max(b for r, b, _ in cases if r == regime) for regime, _, _ in cases}
    plan = [(regime, batch, dim, impl) for regime, batch, dim in cases for impl in _impls(args.device, regime, batch)]
    # the tile sweep last (a run cut short still has every main figure), at the largest in-batch size only
    plan += [("large", largest, 1024, f"{LARGE_BATCH_SWEEP}@{tiles}") for tiles in sweep if largest]
    for index, (regime, batch, dim, impl) in enumerate(plan):
        if args.device == "cpu":
            row = _run_case_isolated(impl, regime, batch, dim, args.device, dtype, args.reps)
        else:
            try:
                row = measure(impl, regime, batch, dim, args.device, dtype, args.reps)
            except Exception as exc:  # e.g. out of memory: report it, keep going
                row = {"impl": impl, "regime": regime, "batch": batch, "dim": dim, "device": args.device,
                       "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
            torch.cuda.empty_cache()
            keep = args.kernel_profile == "all" or (args.kernel_profile == "largest"
                                                    and (batch == largest_of[regime] or regime == "f2llm"))
            if not keep:
                row.pop("kernels", None)
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k not in ("kernels", "notes")}), flush=True)
        _write_csv(rows, args.out)  # after every case, so a run cut short still leaves its figures
        if index + 1 == len(plan) or plan[index + 1][:2] != (regime, batch):
            _plot(rows, args.out / "loss_benchmark.png")  # and the plot after every size
    print(f"wrote {args.out / 'loss_benchmark.csv'} and loss_benchmark.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
