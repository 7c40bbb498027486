"""Benchmark of the contrastive-loss implementations: time, peak memory and (GPU) kernel launches -> CSV + plot.

    python -m f2llm_lib.losses.benchmark --out runs/bench_loss             # CPU: reference, chunked, compiled
    python -m f2llm_lib.losses.benchmark --device cuda --out runs/bench    # GPU: + triton, inf-cl

Regimes (see ../shared/F2LLM_FACTS.md, section 7):
- ``f2llm``: 16 local queries, 512 gathered keys, 7 hard negatives per query, d in {1024, 2560}, all MRL levels;
- ``large``: B queries against B keys (in-batch only, one level), d = 1024, B in {8192, 16384} (+65536 on GPU).
One forward + backward is timed; GPU kernel launches are those of the loss's forward and backward (the seed
gradient of ``backward()`` is made once beforehand, as a training step makes it once for its summed loss).
CPU peak memory is measured in a fresh subprocess per case (peak RSS above the RSS after the inputs exist, with
glibc's mmap threshold fixed at 1 MiB so that freed blocks leave RSS); GPU peak memory is
``max_memory_allocated`` above the inputs. ``workspace_mb`` = peak minus the gradients returned (which
every implementation must hold): the "extra memory" of the fused op's large-batch target.
On a GPU the large regime also runs ``triton-registers`` (the fused op with its small-batch backward forced),
the baseline for its large-batch path in the same run.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path

import torch

from .api import auto_chunk_size, mrl_levels, mrl_weights
from .chunked import chunked_loss
from .reference import reference_loss

TEMPERATURE = 0.05


def _case_inputs(regime: str, batch: int, dim: int, device: str, dtype: torch.dtype):
    gen = torch.Generator(device="cpu").manual_seed(0)
    make = lambda *shape: torch.randn(*shape, generator=gen).to(device=device, dtype=dtype)  # noqa: E731
    if regime == "f2llm":
        keys = make(512, dim)
        q, negatives = make(batch, dim), make(batch, 7, dim)
        pos = keys[:batch]
        dims = mrl_levels(dim)
    else:
        q, keys, negatives, dims = make(batch, dim), make(batch, dim), None, [dim]
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
    if impl.startswith("triton"):
        from .fused import fused_loss
        from .fused_scratch import tile_config

        # "triton": the op's own choice; "triton-registers": its small-batch backward forced (in-run baseline);
        # "triton-scratch@128x64w4s4": the large-batch path with another tile shape (--scratch-tiles)
        name, _, tiles = impl.partition("@")
        strategy = name.partition("-")[2] or "auto"

        def step(q, p, n, k, y, d, w):
            with tile_config(tiles) if tiles else nullcontext():
                return fused_loss(q, p, n, k, y, d, w, TEMPERATURE, strategy=strategy)

        return step
    if impl == "inf-cl":
        if regime != "large":
            raise ValueError("inf-cl has no hard negatives or MRL: large regime only")
        from inf_cl import cal_flash_loss

        def step(q, p, n, k, y, d, w):
            qn = torch.nn.functional.normalize(q, dim=-1)
            kn = torch.nn.functional.normalize(k, dim=-1)
            return cal_flash_loss(qn, kn, y, scale=1.0 / TEMPERATURE).mean()

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
    launches = None
    if device == "cuda":
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            run()
            _sync(device)
        launches = sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA
                       and not e.name.lower().startswith("memcpy"))
    # The gradients themselves are output, not workspace: every implementation has to return them.
    grad_mb = sum(t.grad.numel() * t.grad.element_size() for t in (q, p, k, n) if t is not None
                  and t.grad is not None) / 2**20
    return {"impl": impl, "regime": regime, "batch": batch, "keys": k.shape[0], "dim": dim, "levels": len(dims),
            "hard_negatives": 0 if n is None else n.shape[1], "dtype": str(dtype).replace("torch.", ""),
            "device": device, "time_ms": round(1000 * statistics.median(times), 3), "peak_mb": round(peak_mb, 2),
            "grad_mb": round(grad_mb, 2), "workspace_mb": round(peak_mb - grad_mb, 2), "launches": launches}


def _rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _cases(device: str, quick: bool) -> list[tuple[str, int, int]]:
    cases = [("f2llm", 16, 1024), ("f2llm", 16, 2560)]
    sizes = [1024] if quick else [8192, 16384] + ([65536] if device == "cuda" else [])
    return cases + [("large", size, 1024) for size in sizes]


def _impls(device: str, regime: str, batch: int, scratch_tiles: Sequence[str] = ()) -> list[str]:
    impls = ["reference", "compiled", "chunked"]
    if device == "cuda":
        impls.append("triton")
        if regime == "large":  # the sweep last: a run cut short still has the main figures
            impls += ["triton-registers", "inf-cl"] + [f"triton-scratch@{tiles}" for tiles in scratch_tiles]
        if regime == "large" and batch >= 65536:
            impls = [i for i in impls if i not in ("reference", "compiled")]  # 16 GiB per logits copy
    return impls


def _run_case_isolated(impl, regime, batch, dim, device, dtype, reps) -> dict:
    """CPU peak RSS is per process, so each CPU case runs in a fresh interpreter."""
    cmd = [sys.executable, "-m", "f2llm_lib.losses.benchmark", "--worker", json.dumps(
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
        inf_cl = next((r for r in rows if r["impl"] == "inf-cl" and r["batch"] == row["batch"]
                       and r["dim"] == row["dim"] and "time_ms" in r), None)
        if inf_cl and "time_ms" in row:  # the large-regime target: the fused op beats inf-cl
            row["time_vs_inf_cl"] = round(row["time_ms"] / inf_cl["time_ms"], 3)


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    large = [r for r in rows if r["regime"] == "large" and "time_ms" in r]
    for impl in sorted({r["impl"] for r in large}):
        pts = sorted((r["batch"], r["time_ms"], r["peak_mb"]) for r in large if r["impl"] == impl)
        axes[0].plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=impl)
        axes[1].plot([p[0] for p in pts], [max(p[2], 1e-3) for p in pts], marker="o", label=impl)
    for ax, label in zip(axes, ("time per fwd+bwd (ms)", "peak extra memory (MB)"), strict=True):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("queries = keys (d = 1024)")
        ax.set_ylabel(label)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _write_csv(rows: list[dict], out: Path) -> None:
    _add_ratios(rows)
    out.mkdir(parents=True, exist_ok=True)
    fields = ["device", "dtype", "regime", "impl", "batch", "keys", "dim", "levels", "hard_negatives", "time_ms",
              "peak_mb", "grad_mb", "workspace_mb", "launches", "time_vs_reference", "memory_vs_reference",
              "time_vs_inf_cl", "error"]
    tmp = out / "loss_benchmark.csv.tmp"
    with tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(out / "loss_benchmark.csv")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default=None, help="float32 (CPU default) or bfloat16 (GPU default)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench_loss"))
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="small large-regime size, for tests")
    parser.add_argument("--regime", choices=["f2llm", "large"], help="run only this regime")
    parser.add_argument("--sizes", type=int, nargs="*", help="large-regime B = N values (default: 8192 16384 ...)")
    parser.add_argument("--scratch-tiles", nargs="*", default=[], metavar="MxNwWsS",
                        help="GPU, largest large-regime size: also time the scratch path with these tile shapes "
                        "(e.g. 128x64w4s4)")
    parser.add_argument("--scratch-sweep", action="store_true", help="--scratch-tiles fused_scratch.SWEEP_TILES")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.scratch_sweep or args.scratch_tiles:
        from .fused_scratch import SWEEP_TILES, parse_tiles  # imports triton: only when asked

        args.scratch_tiles += list(SWEEP_TILES) if args.scratch_sweep else []
    for spec in args.scratch_tiles:
        try:
            parse_tiles(spec)
        except ValueError as exc:
            parser.error(f"--scratch-tiles: {exc}")
    if args.worker:
        impl, regime, batch, dim, device, dtype, reps = json.loads(args.worker)
        print(json.dumps(measure(impl, regime, batch, dim, device, getattr(torch, dtype), reps)))
        return 0
    dtype = getattr(torch, args.dtype or ("bfloat16" if args.device == "cuda" else "float32"))
    rows = []
    cases = _cases(args.device, args.quick)
    if args.sizes:
        cases = [c for c in cases if c[0] == "f2llm"] + [("large", size, 1024) for size in args.sizes]
    cases = [c for c in cases if args.regime in (None, c[0])]
    largest = max((batch for regime, batch, _ in cases if regime == "large"), default=0)
    for regime, batch, dim in cases:
        # the tile sweep at the largest size only, where it matters, after that size's main rows
        for impl in _impls(args.device, regime, batch, args.scratch_tiles if batch == largest else ()):
            if args.device == "cpu":
                row = _run_case_isolated(impl, regime, batch, dim, args.device, dtype, args.reps)
            else:
                try:
                    row = measure(impl, regime, batch, dim, args.device, dtype, args.reps)
                except Exception as exc:  # e.g. out of memory: report it, keep going
                    row = {"impl": impl, "regime": regime, "batch": batch, "dim": dim, "device": args.device,
                           "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
                torch.cuda.empty_cache()
            rows.append(row)
            print(json.dumps(row), flush=True)
            _write_csv(rows, args.out)  # after every case, so a run cut short still leaves its figures
    _plot(rows, args.out / "loss_benchmark.png")
    print(f"wrote {args.out / 'loss_benchmark.csv'} and loss_benchmark.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
