"""Settings of the fused Triton loss, passed as an argument (``contrastive_loss(..., kernel=KernelSettings(...))``).

Plain data, no Triton import: the command line, the benchmark and the notebook build them before choosing a
device. None of them changes a result, only speed and memory; the tests run every strategy against float64.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

STRATEGIES = ("auto", "registers", "large_batch")
_TILE_SPEC = re.compile(r"^(\d+)x(\d+)w(\d+)s(\d+)$")


@dataclass(frozen=True)
class TileShape:
    """Tile of the large-batch path's GEMM-like kernels: ``block_m`` queries x ``block_n`` keys per program."""

    block_m: int = 128
    block_n: int = 128
    num_warps: int = 8
    # The H200 sweep (benchmarks/gpu/h200-2026-11-27) timed 4 stages at 121.9 ms against 3 stages' 133.0 ms at
    # 65,536 (the forward 33 vs 42 ms), one run each: adopt it once a second run confirms it is not noise.
    num_stages: int = 3

    def __post_init__(self) -> None:
        if any(b & (b - 1) or b < 16 for b in (self.block_m, self.block_n)):
            raise ValueError(f"tile spec {self}: blocks must be powers of 2 >= 16")
        if self.num_warps not in (1, 2, 4, 8, 16) or self.num_stages < 1:
            raise ValueError(f"tile spec {self}: warps must be 1, 2, 4, 8 or 16 and stages >= 1")

    @classmethod
    def parse(cls, spec: str) -> TileShape:
        """'128x64w4s3' -> TileShape(128, 64, num_warps=4, num_stages=3): the benchmark's --large-batch-tiles."""
        match = _TILE_SPEC.match(spec)
        if not match:
            raise ValueError(f"tile spec {spec!r}: expected BLOCK_MxBLOCK_NwWARPSsSTAGES, e.g. 128x64w4s3")
        return cls(*(int(group) for group in match.groups()))

    def __str__(self) -> str:
        return f"{self.block_m}x{self.block_n}w{self.num_warps}s{self.num_stages}"


# Alternatives the GPU benchmark times next to the default (--large-batch-sweep); kernel_check compiles each of them.
SWEEP_TILES = tuple(TileShape.parse(spec) for spec in ("128x64w4s4", "64x128w4s4", "128x128w8s4", "64x64w4s4"))


@dataclass(frozen=True)
class KernelSettings:
    """How the fused op computes F2LLM's loss.

    strategy: ``auto`` picks ``registers`` below ``large_batch_min_pairs`` query-key pairs (or without an in-batch
        loss) and ``large_batch`` from there on; either can be forced (tests, benchmark, notebook 02).
    large_batch_min_pairs: the switch point of ``auto`` (2,048^2 pairs).
    scratch_bytes: the large-batch backward's scratch of gradient tiles (tests cut it to 1 byte, i.e. one tile
        per chunk, so that small shapes walk several chunks).
    tiles: the large-batch path's tile shape.
    target_programs: programs the forward grid aims for (a few per SM on an H100); tests lower it so that one
        program merges several key blocks.
    """

    strategy: str = "auto"
    large_batch_min_pairs: int = 1 << 22
    scratch_bytes: int = 32 * 2**20
    tiles: TileShape = field(default_factory=TileShape)
    target_programs: int = 512

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        if not isinstance(self.tiles, TileShape):
            raise TypeError(f"tiles must be a TileShape (e.g. TileShape.parse('128x64w4s3')), got {self.tiles!r}")
        for name in ("large_batch_min_pairs", "scratch_bytes", "target_programs"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"KernelSettings.{name} must be a positive int, got {getattr(self, name)!r}")

    def strategy_for(self, has_in_batch: bool, num_queries: int, num_keys: int) -> str:
        """``registers`` (4 launches, every accumulator in registers: F2LLM's 16 x 512 regime) or ``large_batch``
        (one logit recomputation per side through a bounded scratch, see ``fused_large_batch``)."""
        if not has_in_batch:  # hard negatives only: no B x N work, nothing for the large-batch path to do
            return "registers"
        if self.strategy != "auto":
            return self.strategy
        return "large_batch" if num_queries * num_keys >= self.large_batch_min_pairs else "registers"
