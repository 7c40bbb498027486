"""The large-batch backward of the fused loss: one recomputation per side and a bounded scratch of gradient tiles.

The register backward of ``fused`` keeps each program's accumulator in registers, so it recomputes every
logit tile once per 256 feature columns: 4x the logit work at d = 1024, which dominates at 65,536 x 65,536.
Here the logits are recomputed once per side instead and their gradients go through a bounded scratch:

- query side, per chunk of R queries: ``_ib_grad_tile`` writes G[R, N] = (p - y) b_j / tau (the logit
  gradient times the key's inverse norm, in the input dtype), then one GEMM G @ K gives the chunk's raw-dot
  gradient; the query's own factor a_i w / B is applied after it in fp32, so fp16 never sees the 1 / B that
  would underflow at large B;
- key side, per chunk of C keys: the transposed tile G'[C, B] = (p - y) a_i / tau, then G' @ Q, times
  b_j w / B; the key-normalisation term needs sum_i dL/ds_ij s_ij = k_j . (G'Q)_j (times the factors),
  which the GEMM result already holds, so no column sums are accumulated anywhere.

R and C are chosen so the scratch stays at ``SCRATCH_BYTES`` (when one row of it fits), whatever B and N are:
the extra memory is that scratch, one [R, d] fp32 accumulator and the per-row statistics.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import triton
import triton.language as tl

from .fused_common import EPS, dot, load_pair

SCRATCH_BYTES = 32 * 2**20
EPILOGUE_ROWS = 16  # keys per program of the key-side epilogue (a row-wise pass over [rows, d])
# Tile shape of the GEMM-like kernels of this path (a standard Hopper GEMM tile; the forward uses BLOCK_M
# with 64 keys per tile). ``tile_config`` swaps it for a block: the benchmark's --scratch-tiles sweep.
GRAD_BLOCKS = {"BLOCK_M": 128, "BLOCK_N": 128}
# The H200 sweep (benchmarks/gpu/h200-2026-11-27) timed 128x128w8s4 at 121.9 ms against this default's 133.0 ms at
# 65,536 (the forward 33 vs 42 ms), one run each: adopt it once a second run confirms it is not noise.
GRAD_WARPS, GRAD_STAGES = 8, 3
# Alternatives the GPU benchmark times next to the default (--scratch-sweep); kernel_check compiles each of them.
SWEEP_TILES = ("128x64w4s4", "64x128w4s4", "128x128w8s4", "64x64w4s4")
_TILE_SPEC = re.compile(r"^(\d+)x(\d+)w(\d+)s(\d+)$")


def parse_tiles(spec: str) -> tuple[int, int, int, int]:
    """'128x64w4s3' -> (BLOCK_M, BLOCK_N, warps, stages)."""
    match = _TILE_SPEC.match(spec)
    if not match:
        raise ValueError(f"tile spec {spec!r}: expected BLOCK_MxBLOCK_NwWARPSsSTAGES, e.g. 128x64w4s3")
    block_m, block_n, warps, stages = (int(g) for g in match.groups())
    if any(b & (b - 1) or b < 16 for b in (block_m, block_n)) or warps not in (1, 2, 4, 8, 16) or stages < 1:
        raise ValueError(f"tile spec {spec!r}: blocks must be powers of 2 >= 16, warps 1-16, stages >= 1")
    return block_m, block_n, warps, stages


@contextmanager
def tile_config(spec: str) -> Iterator[None]:
    """Use another tile shape for the scratch path for losses computed inside the block (their backward keeps
    the shape of their forward), e.g. ``tile_config("128x64w4s4")``."""
    global GRAD_BLOCKS, GRAD_WARPS, GRAD_STAGES
    block_m, block_n, warps, stages = parse_tiles(spec)
    saved = GRAD_BLOCKS, GRAD_WARPS, GRAD_STAGES
    GRAD_BLOCKS, GRAD_WARPS, GRAD_STAGES = {"BLOCK_M": block_m, "BLOCK_N": block_n}, warps, stages
    try:
        yield
    finally:
        GRAD_BLOCKS, GRAD_WARPS, GRAD_STAGES = saved


def current_tiles() -> tuple[dict[str, int], int, int]:
    """(blocks, warps, stages) in force now: the forward saves them for its backward."""
    return dict(GRAD_BLOCKS), GRAD_WARPS, GRAD_STAGES


@triton.jit
def _prefix_norms(X, DIMS, OUT, R, D, L, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr, DIMS_DIV: tl.constexpr):
    """OUT[level, r] = ||X[r, :DIMS[level]]||, every level in one pass over the row."""
    offs_r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    mask_r = offs_r < R
    sq = tl.zeros((BLOCK_R,), dtype=tl.float32)
    start = 0
    for level in range(L):
        end = tl.multiple_of(tl.load(DIMS + level), DIMS_DIV)  # lets the loads vectorise
        for d0 in range(start, end, BLOCK_D):
            offs_d = d0 + tl.arange(0, BLOCK_D)
            x = tl.load(X + offs_r[:, None] * D + offs_d[None, :], mask=mask_r[:, None] & (offs_d[None, :] < end),
                        other=0.0).to(tl.float32)
            sq += tl.sum(x * x, axis=1)
        start = end
        tl.store(OUT + level * R + offs_r, tl.sqrt(sq), mask=mask_r)


@triton.jit
def _ib_grad_tile(Q, K, QN, KN, LABELS, LSE_IB, OUT, B, N, D, level, end, row0, rows, col0, cols, inv_temp, scale,
                  TRANS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                  DIMS_DIV: tl.constexpr, IEEE: tl.constexpr, FOLD: tl.constexpr):
    """One tile of one level's in-batch logit gradient, queries [row0, row0 + rows) x keys [col0, col0 + cols).

    TRANS False: OUT[i - row0, j - col0] = (p_ij - y_ij) b_j / tau   (query side; [rows, cols])
    TRANS True:  OUT[j - col0, i - row0] = (p_ij - y_ij) a_i / tau   (key side; [cols, rows])
    FOLD: also times the output row's own factor and ``scale`` (= w / B): a_i w / B on the query side, b_j w / B
    on the key side, so the GEMM that follows gives the chunk's gradient with no per-row pass after it.
    """
    # The fastest grid axis walks the short side (the chunk), so programs running together share the long side's
    # tile and each chunk reads the long operand from HBM about once.
    offs_m = row0 + tl.program_id(1 if TRANS else 0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = col0 + tl.program_id(0 if TRANS else 1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < row0 + rows
    mask_n = offs_n < col0 + cols
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    end = tl.multiple_of(end, DIMS_DIV)
    for d0 in range(0, end, BLOCK_D):
        q, k = load_pair(Q, K, offs_m, offs_n, mask_m, mask_n, d0, end, D, BLOCK_D)
        acc = dot(q, tl.trans(k), acc, IEEE)
    q_norm = tl.load(QN + level * B + offs_m, mask=mask_m, other=1.0)
    k_norm = tl.load(KN + level * N + offs_n, mask=mask_n, other=1.0)
    a = 1.0 / tl.maximum(q_norm, EPS)
    b = 1.0 / tl.maximum(k_norm, EPS)
    s = acc * a[:, None] * b[None, :] * inv_temp
    lse = tl.load(LSE_IB + level * B + offs_m, mask=mask_m, other=0.0)
    labels = tl.load(LABELS + offs_m, mask=mask_m, other=-1)
    valid = mask_m[:, None] & mask_n[None, :]
    onehot = (offs_n[None, :] == labels[:, None]).to(tl.float32)
    grad = tl.where(valid, tl.exp(s - lse[:, None]) - onehot, 0.0)
    a_g = tl.where(q_norm >= EPS, a, 0.0)  # a zero vector gets no gradient
    b_g = tl.where(k_norm >= EPS, b, 0.0)
    if TRANS:
        grad = grad * (a_g * inv_temp)[:, None]
        if FOLD:
            grad = grad * (b_g * scale)[None, :]
        ptrs = OUT + (offs_n - col0)[None, :] * rows + (offs_m - row0)[:, None]
    else:
        grad = grad * (b_g * inv_temp)[None, :]
        if FOLD:
            grad = grad * (a_g * scale)[:, None]
        ptrs = OUT + (offs_m - row0)[:, None] * cols + (offs_n - col0)[None, :]
    tl.store(ptrs, grad.to(OUT.dtype.element_ty), mask=valid)


@triton.jit
def _key_epilogue(U, K, KN, ACC, OUT, GOUT, col0, cols, N, D, level, end,
                  FIRST: tl.constexpr, LAST: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    """One level's key gradients for BLOCK_R keys of a chunk, from U [cols, end] = G'^T Q (fp32, already times
    b_j w / B): ACC[j] (+)= U[j] - b_j^2 (k_j . U[j]) k_j on the prefix (the key-normalisation term), 0 beyond it.
    FIRST writes ACC instead of adding; LAST writes OUT[col0 + j] = that sum x the incoming gradient instead."""
    offs_r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    mask_r = offs_r < cols
    keys = col0 + offs_r
    along = tl.zeros((BLOCK_R,), dtype=tl.float32)
    for d0 in range(0, end, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        mask = mask_r[:, None] & (offs_d[None, :] < end)
        u = tl.load(U + offs_r[:, None] * end + offs_d[None, :], mask=mask, other=0.0)
        k = tl.load(K + keys[:, None] * D + offs_d[None, :], mask=mask, other=0.0).to(tl.float32)
        along += tl.sum(u * k, axis=1)
    k_norm = tl.load(KN + level * N + keys, mask=mask_r, other=1.0)
    b_g = tl.where(k_norm >= EPS, 1.0 / tl.maximum(k_norm, EPS), 0.0)
    along = along * b_g * b_g
    g_out = tl.load(GOUT).to(tl.float32)
    for d0 in range(0, D, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        mask = mask_r[:, None] & (offs_d[None, :] < D)
        prefix = mask & (offs_d[None, :] < end)
        u = tl.load(U + offs_r[:, None] * end + offs_d[None, :], mask=prefix, other=0.0)
        k = tl.load(K + keys[:, None] * D + offs_d[None, :], mask=prefix, other=0.0).to(tl.float32)
        value = u - k * along[:, None]
        if not FIRST:
            value += tl.load(ACC + offs_r[:, None] * D + offs_d[None, :], mask=mask, other=0.0)
        if LAST:
            tl.store(OUT + keys[:, None] * D + offs_d[None, :], (value * g_out).to(OUT.dtype.element_ty), mask=mask)
        else:
            tl.store(ACC + offs_r[:, None] * D + offs_d[None, :], value, mask=mask)


def prefix_norms(x: torch.Tensor, dims_t: torch.Tensor, dims_div: int) -> torch.Tensor:
    """[levels, rows] fp32: each row's norm over each MRL prefix."""
    rows, dim = x.shape
    out = torch.empty((dims_t.shape[0], rows), dtype=torch.float32, device=x.device)
    _prefix_norms[(triton.cdiv(rows, 64),)](x, dims_t, out, rows, dim, dims_t.shape[0], BLOCK_R=64,
                                            BLOCK_D=64 if dim > 32 else 32, DIMS_DIV=dims_div)
    return out


def grad_block_d(dtype: torch.dtype) -> int:
    return 64 if dtype in (torch.float16, torch.bfloat16) else 32


def chunk_size(other: int, element_size: int, block: int) -> int:
    """Rows of a [chunk, other] scratch that fit ``SCRATCH_BYTES`` (a multiple of the tile, at least one tile)."""
    fit = SCRATCH_BYTES // max(1, other * element_size)
    return max(block, fit // block * block)


def _gradient_factor(norms: torch.Tensor) -> torch.Tensor:
    """1 / ||x|| per level and row, 0 for a (near-)zero vector whose direction, hence gradient, is undefined."""
    return torch.where(norms >= 1e-12, 1.0 / norms.clamp_min(1e-12), torch.zeros_like(norms))


def folds(dtype: torch.dtype) -> bool:
    """Whether the scratch tile carries the row factor w / B (``_ib_grad_tile``'s FOLD): in bf16 and fp32, whose 8-bit
    exponent holds (p - y) a_i b_j w / (B tau) at any batch; in fp16 it underflows at large B (6e-8 is its smallest
    number), so fp16 applies the factor in fp32 after the GEMM instead."""
    return dtype != torch.float16


def _launch_tiles(q, keys, q_norms, k_norms, labels, lse_ib, out, level, end, row0, rows, col0, cols, inv_temp,
                  trans: bool, dims_div: int, tiles: tuple[dict[str, int], int, int], scale: float) -> None:
    blocks, warps, stages = tiles
    grid = (triton.cdiv(rows, blocks["BLOCK_M"]), triton.cdiv(cols, blocks["BLOCK_N"]))
    grid = grid[::-1] if trans else grid
    _ib_grad_tile[grid](q, keys, q_norms, k_norms, labels, lse_ib, out, q.shape[0], keys.shape[0], q.shape[1],
                        level, end, row0, rows, col0, cols, inv_temp, scale, TRANS=trans,
                        BLOCK_D=grad_block_d(q.dtype), DIMS_DIV=dims_div, IEEE=q.dtype == torch.float32,
                        FOLD=folds(q.dtype), num_warps=warps, num_stages=stages, **blocks)


def _product_into(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor, accumulate: bool) -> None:
    """out (fp32) = or += a @ b, in one GEMM whatever a's dtype: cuBLAS takes bf16/fp16 operands with an fp32
    output; the CPU (tests: fp32 only on this path) multiplies in fp32."""
    if a.dtype == torch.float32:
        if accumulate:
            out.addmm_(a, b)
        else:
            torch.mm(a, b, out=out)
    elif not _fp32_output_gemm() or not out.is_contiguous():  # the product, then one add (or copy)
        product = torch.mm(a, b, out_dtype=torch.float32) if _fp32_output_gemm() else torch.mm(a, b).float()
        out.add_(product) if accumulate else out.copy_(product)
    elif accumulate:
        torch.addmm(out, a, b, out_dtype=torch.float32, out=out)
    else:
        torch.mm(a, b, out_dtype=torch.float32, out=out)


@functools.cache
def _fp32_output_gemm() -> bool:
    """Whether this torch has cuBLAS GEMMs with 16-bit operands and an fp32 output (``out_dtype``, torch >= 2.8);
    without it the product is rounded to the input dtype once, then added in fp32."""
    try:
        a = torch.ones(2, 2, dtype=torch.bfloat16, device="cuda")
        return torch.mm(a, a, out_dtype=torch.float32).dtype == torch.float32
    except (TypeError, RuntimeError):
        return False


def _chunks(total: int, other: int, like: torch.Tensor, block: int, zero: bool = True):
    """Walk ``total`` rows in chunks that keep a [chunk, other] scratch at SCRATCH_BYTES: yield (first, count,
    that chunk's [count, other] scratch in the input dtype, its fp32 [count, d] accumulator, zeroed if ``zero``).
    The two buffers are allocated once and reused by every chunk."""
    step = chunk_size(other, like.element_size(), block)
    scratch = torch.empty(min(step, total) * other, dtype=like.dtype, device=like.device)
    extra = torch.empty((min(step, total), like.shape[1]), dtype=torch.float32, device=like.device)
    for first in range(0, total, step):
        count = min(step, total - first)
        yield first, count, scratch[: count * other].view(count, other), extra[:count].zero_() if zero else extra


def query_chunks(q, keys, labels, dims: Sequence[int], weights: Sequence[float], lse_ib, q_norms, k_norms,
                 inv_temp: float, inv_b: float, dims_div: int,
                 tiles: tuple[dict[str, int], int, int]) -> Iterator[tuple[int, int, torch.Tensor]]:
    """Yield (first row, rows, fp32 [rows, d] in-batch gradient of those queries, before the incoming grad)."""
    batch, n_keys = q.shape[0], keys.shape[0]
    fold = folds(q.dtype)
    factors = None if fold else _gradient_factor(q_norms)
    for row0, rows, grad_tiles, acc in _chunks(batch, n_keys, q, tiles[0]["BLOCK_M"], zero=len(dims) > 1):
        for level, (end, weight) in enumerate(zip(dims, weights, strict=True)):
            _launch_tiles(q, keys, q_norms, k_norms, labels, lse_ib, grad_tiles, level, end, row0, rows, 0, n_keys,
                          inv_temp, trans=False, dims_div=dims_div, tiles=tiles, scale=weight * inv_b)
            if fold:  # one GEMM straight into the fp32 accumulator (the first one writes it: one level, no zeroing)
                _product_into(acc[:rows, :end], grad_tiles, keys[:, :end], accumulate=len(dims) > 1)
            else:
                part = torch.mm(grad_tiles, keys[:, :end]).float()
                acc[:, :end] += part.mul_((factors[level, row0:row0 + rows] * (weight * inv_b))[:, None])
        yield row0, rows, acc[:rows]


def key_grads(q, keys, labels, dims: Sequence[int], weights: Sequence[float], lse_ib, q_norms, k_norms,
              inv_temp: float, inv_b: float, dims_div: int, tiles: tuple[dict[str, int], int, int],
              grad_out: torch.Tensor) -> torch.Tensor:
    """dL/dkeys, chunk by chunk of keys; the key-normalisation term comes from the GEMM result itself."""
    batch, n_keys = q.shape[0], keys.shape[0]
    out = torch.empty_like(keys)
    if folds(q.dtype):
        # per chunk and level: the tile, one GEMM into U, one epilogue (normalisation term, accumulate, write out)
        dim = q.shape[1]
        step = chunk_size(batch, q.element_size(), tiles[0]["BLOCK_N"])
        u_buffer = torch.empty(min(step, n_keys) * dim, dtype=torch.float32, device=q.device)
        for col0, cols, grad_tiles, acc in _chunks(n_keys, batch, q, tiles[0]["BLOCK_N"], zero=False):
            for level, (end, weight) in enumerate(zip(dims, weights, strict=True)):
                _launch_tiles(q, keys, q_norms, k_norms, labels, lse_ib, grad_tiles, level, end, 0, batch, col0,
                              cols, inv_temp, trans=True, dims_div=dims_div, tiles=tiles, scale=weight * inv_b)
                u = u_buffer[: cols * end].view(cols, end)
                _product_into(u, grad_tiles, q[:, :end], accumulate=False)
                _key_epilogue[(triton.cdiv(cols, EPILOGUE_ROWS),)](
                    u, keys, k_norms, acc, out, grad_out, col0, cols, n_keys, dim, level, end,
                    FIRST=level == 0, LAST=level == len(dims) - 1, BLOCK_R=EPILOGUE_ROWS, BLOCK_D=64)
        return out
    factors = _gradient_factor(k_norms)
    for col0, cols, grad_tiles, acc in _chunks(n_keys, batch, q, tiles[0]["BLOCK_N"]):
        for level, (end, weight) in enumerate(zip(dims, weights, strict=True)):
            _launch_tiles(q, keys, q_norms, k_norms, labels, lse_ib, grad_tiles, level, end, 0, batch, col0, cols,
                          inv_temp, trans=True, dims_div=dims_div, tiles=tiles, scale=1.0)
            b_g = factors[level, col0:col0 + cols]
            grad_unit = torch.mm(grad_tiles, q[:, :end]).float().mul_((b_g * (weight * inv_b))[:, None])
            k_prefix = keys[col0:col0 + cols, :end].float()
            # d/dk of k / ||k||: remove the component along k (sum_i dL/ds_ij s_ij = k_j . grad_unit_j)
            along = (k_prefix * grad_unit).sum(dim=1) * b_g * b_g
            acc[:, :end] += grad_unit.sub_(k_prefix * along[:, None])  # k_prefix may be the keys themselves
        out[col0:col0 + cols] = (acc * grad_out).to(out.dtype)
    return out
