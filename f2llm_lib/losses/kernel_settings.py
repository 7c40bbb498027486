"""Settings of the fused Triton loss, passed as an argument (``contrastive_loss(..., kernel=KernelSettings(...))``).

Plain data, no Triton import: the command line, the benchmark and the notebook build them before choosing a
device. None of them changes a result, only speed and memory; the tests run every strategy against float64.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from ..typed import check, example, rule

Strategy = Literal["auto", "registers", "large_batch"]
_POSITIVE = rule(lambda v: v >= 1, "a positive int")


def _power_of_two(value: int) -> bool:
    return value >= 16 and not value & (value - 1)

_TILE_SPEC = re.compile(r"^(\d+)x(\d+)w(\d+)s(\d+)$")


@dataclass(frozen=True)
class TileShape:
    """Tile of the large-batch path's GEMM-like kernels: ``block_m`` queries x ``block_n`` keys per program."""

    block_m: int = field(default=128, metadata=rule(_power_of_two, "a power of 2 >= 16"))
    block_n: int = field(default=128, metadata=rule(_power_of_two, "a power of 2 >= 16"))
    num_warps: int = field(default=8, metadata=rule(lambda v: v in (1, 2, 4, 8, 16), "1, 2, 4, 8 or 16"))
    # The H200 sweep (benchmarks/gpu/h200-2026-11-27) timed 4 stages at 121.9 ms against 3 stages' 133.0 ms at
    # 65,536 (the forward 33 vs 42 ms), one run each: adopt it once a second run confirms it is not noise.
    num_stages: int = field(default=3, metadata=rule(lambda v: v >= 1, "at least 1"))

    def __post_init__(self) -> None:
        check(self, "TileShape", ValueError)

    @classmethod
    def parse(cls, spec: str) -> TileShape:
        """'128x64w4s3' -> TileShape(128, 64, num_warps=4, num_stages=3): the benchmark's --large-batch-tiles."""
        match = _TILE_SPEC.match(spec)
        if not match:
            raise ValueError(f"tile spec {spec!r}: expected BLOCK_MxBLOCK_NwWARPSsSTAGES, e.g. 128x64w4s3")
        try:
            return cls(*(int(group) for group in match.groups()))
        except ValueError as exc:
            raise ValueError(f"tile spec {spec!r}: {str(exc).removeprefix('TileShape: ')}") from None

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
    segment_levels: with several MRL levels (bf16, fp32), the large-batch backward walks each tile once for all
        levels and multiplies per prefix segment (one full-width GEMM's work in all, but L gradient slots in the
        scratch: smaller chunks, more GEMM launches). Off by default until a GPU confirms it in bf16 and times it
        against the per-level path (the loss benchmark's ``triton-one-pass`` rows); tested against float64 in
        Triton's interpreter and compiled for sm_90.
    """

    strategy: Strategy = "auto"
    large_batch_min_pairs: int = field(default=1 << 22, metadata=_POSITIVE)
    scratch_bytes: int = field(default=32 * 2**20, metadata=_POSITIVE)
    tiles: TileShape = field(default_factory=TileShape, metadata=example("e.g. TileShape.parse('128x64w4s3')"))
    target_programs: int = field(default=512, metadata=_POSITIVE)
    segment_levels: bool = False

    def __post_init__(self) -> None:
        # a wrong type (e.g. a tile spec string) is a TypeError, a wrong value a ValueError
        check(self, "KernelSettings", ValueError, type_error=TypeError)

    def strategy_for(self, has_in_batch: bool, num_queries: int, num_keys: int) -> str:
        """``registers`` (4 launches, every accumulator in registers: F2LLM's 16 x 512 regime) or ``large_batch``
        (one logit recomputation per side through a bounded scratch, see ``fused_large_batch``)."""
        if not has_in_batch:  # hard negatives only: no B x N work, nothing for the large-batch path to do
            return "registers"
        if self.strategy != "auto":
            return self.strategy
        return "large_batch" if num_queries * num_keys >= self.large_batch_min_pairs else "registers"
