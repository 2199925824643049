"""Triton kernels for H, the bicubic x4 upsampling, and its adjoint H^T (docs/DESIGN.md §2, paper Eq. 12).

PyTorch semantics (``F.interpolate(scale_factor=4, mode="bicubic", align_corners=False)``): high-res index p
reads the source coordinate ``src = (p + 0.5) / 4 - 0.5`` (not clamped at 0 for cubic), taps
``floor(src) - 1 + m`` for m = 0..3, each clamped to [0, n - 1], with Keys cubic weights (a = -0.75) of
``t = src - floor(src)``. With scale 4, t takes only the values 0.625, 0.875, 0.125, 0.375 (p % 4 = 0..3).

Adjoint window: low-res index i is touched by exactly the 16 high-res indices ``4 i - 6 + c`` (c = 0..15),
clipped to [0, 4 n). Clamping moves taps only onto the two border pixels, never onto interior ones, so the
window is the same at the border; only the weights differ there (a border pixel sums several taps). The
adjoint kernels gather over this window (no atomics): ``(H^T g)[i] = sum_c A(4 i - 6 + c, i) g[4 i - 6 + c]``.

Arithmetic is float32 for fp16 / bf16 / fp32 inputs and float64 for float64 inputs. Triton is imported
here, not in ``mimicfast.kernels``, so that ``mimicfast`` stays importable without it. The launchers trust
their inputs (``mimicfast.ops`` validates them): 4-D float tensors, on CUDA or under TRITON_INTERPRET=1.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from mimicfast.upsample_mode import SCALE

from .tensors import compute_dtype, empty_like_layout

# Width of the adjoint window (see module docstring) and the offset of its first element.
WINDOW = tl.constexpr(16)
WINDOW_START = tl.constexpr(-6)


@triton.jit
def cubic_taps(hi, CDT: tl.constexpr):
    """Taps of the high-res indices ``hi`` (int tensor, any shape, may be negative).

    Returns ``(first, w0, w1, w2, w3)``: the unclamped index of the first low-res tap (floor(src) - 1)
    and the four weights, in dtype ``CDT``.
    """
    src = (hi.to(CDT) + 0.5) * 0.25 - 0.5
    fl = tl.floor(src)
    t = src - fl
    # Keys cubic kernel, a = -0.75, written out as PyTorch's cubic_convolution2 (1 < |x| < 2, taps 0 and 3)
    # and cubic_convolution1 (|x| <= 1, taps 1 and 2); inline because the interpreter pays per nested call.
    x0 = t + 1.0
    x2 = 1.0 - t
    x3 = 2.0 - t
    w0 = ((-0.75 * x0 + 3.75) * x0 - 6.0) * x0 + 3.0
    w1 = (1.25 * t - 2.25) * t * t + 1.0
    w2 = (1.25 * x2 - 2.25) * x2 * x2 + 1.0
    w3 = ((-0.75 * x3 + 3.75) * x3 - 6.0) * x3 + 3.0
    return fl.to(tl.int32) - 1, w0, w1, w2, w3


@triton.jit
def adjoint_weight(hi, lo, n_lo, CDT: tl.constexpr):
    """Weight with which low-res index ``lo`` enters high-res index ``hi`` (the entry H[hi, lo] along one axis).

    Sums the weights of all taps that clamp onto ``lo``; zero where ``hi`` is outside [0, 4 n_lo).
    ``hi`` and ``lo`` broadcast against each other.
    """
    first, w0, w1, w2, w3 = cubic_taps(hi, CDT)
    last = n_lo - 1
    w = tl.where(tl.minimum(tl.maximum(first, 0), last) == lo, w0, 0.0)
    w += tl.where(tl.minimum(tl.maximum(first + 1, 0), last) == lo, w1, 0.0)
    w += tl.where(tl.minimum(tl.maximum(first + 2, 0), last) == lo, w2, 0.0)
    w += tl.where(tl.minimum(tl.maximum(first + 3, 0), last) == lo, w3, 0.0)
    return tl.where((hi >= 0) & (hi < 4 * n_lo), w, 0.0)


@triton.jit
def phase_taps(CDT: tl.constexpr):
    """``cubic_taps`` of the 4 row phases k = 0..3: high-res index 4 i + k has first tap i + first_k and the
    weights of phase k. Returns a tuple of 4 (first_k, w0, w1, w2, w3)."""
    zero = tl.zeros([], dtype=tl.int32)
    return cubic_taps(zero, CDT), cubic_taps(zero + 1, CDT), cubic_taps(zero + 2, CDT), cubic_taps(zero + 3, CDT)


@triton.jit
def spread_rows(o0, o1, o2, o3, u, taps):
    """Adds ``u``, the x-adjoint of one high-res row of phase k (``taps = phase_taps(CDT)[k]``), to the
    accumulators of its 4 unclamped tap rows with the phase's weights."""
    _, a0, a1, a2, a3 = taps
    return o0 + a0 * u, o1 + a1 * u, o2 + a2 * u, o3 + a3 * u


@triton.jit
def finished_row(o0, o1, o2, top, i, H):
    """Row ``i`` of H^T from a rolling window of unclamped row accumulators (o0 = row i, o1, o2 below it).

    Rows above the image are summed into ``top`` and folded into row 0, the two below it into row H - 1:
    the adjoint of the border clamp. Returns (row i, updated top).
    """
    top = tl.where(i < 0, top + o0, top)
    return o0 + tl.where(i == 0, top, 0.0) + tl.where(i == H - 1, o1 + o2, 0.0), top


@triton.jit
def _bicubic_up4_kernel(
    x_ptr, o_ptr, C, H, W,
    sxb, sxc, sxh, sxw, sob, soc, soh, sow,
    CDT: tl.constexpr, BP: tl.constexpr, BQ: tl.constexpr,
):  # fmt: skip
    # One program: a [BP, BQ] tile of high-res outputs of one (batch, channel) plane.
    pid_bc = tl.program_id(0)
    b = pid_bc // C
    ch = pid_bc % C
    ps = tl.program_id(1) * BP + tl.arange(0, BP)
    qs = tl.program_id(2) * BQ + tl.arange(0, BQ)
    x_base = x_ptr + b.to(tl.int64) * sxb + ch.to(tl.int64) * sxc
    fy, a0, a1, a2, a3 = cubic_taps(ps, CDT)
    fx, b0, b1, b2, b3 = cubic_taps(qs, CDT)
    ay = (a0, a1, a2, a3)
    bx = (b0, b1, b2, b3)
    acc = tl.zeros([BP, BQ], dtype=CDT)
    # Separable: the 4 horizontal taps of each tap row, then the vertical taps.
    for m in tl.static_range(4):
        row = tl.minimum(tl.maximum(fy + m, 0), H - 1)
        row_acc = tl.zeros([BP, BQ], dtype=CDT)
        for n in tl.static_range(4):
            col = tl.minimum(tl.maximum(fx + n, 0), W - 1)
            v = tl.load(x_base + row[:, None] * sxh + col[None, :] * sxw).to(CDT)
            row_acc += bx[n][None, :] * v
        acc += ay[m][:, None] * row_acc
    mask = (ps < 4 * H)[:, None] & (qs < 4 * W)[None, :]
    o_base = o_ptr + b.to(tl.int64) * sob + ch.to(tl.int64) * soc
    tl.store(o_base + ps[:, None] * soh + qs[None, :] * sow, acc.to(o_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _bicubic_up4_adjoint_kernel(
    g_ptr, o_ptr, C, H, W,
    sgb, sgc, sgh, sgw, sob, soc, soh, sow,
    CDT: tl.constexpr, BH: tl.constexpr, BW: tl.constexpr,
):  # fmt: skip
    # One program: a [BH, BW] tile of low-res outputs; H, W are the low-res sizes. It walks the low-res rows
    # i' whose high-res rows 4 i' + k touch the tile; each high-res row is read as [16, BW] (the column window
    # of every output column, one column per lane), reduced along x, and spread over a rolling window of five
    # output-row accumulators (rows i' - 2 .. i' + 2); row i' - 2 is then complete and written.
    pid_bc = tl.program_id(0)
    b = pid_bc // C
    ch = pid_bc % C
    i0 = tl.program_id(1) * BH
    cols = tl.program_id(2) * BW + tl.arange(0, BW)
    hq = 4 * cols[None, :] + WINDOW_START + tl.arange(0, WINDOW)[:, None]
    wxt = adjoint_weight(hq, cols[None, :], W, CDT)
    q_in = (hq >= 0) & (hq < 4 * W)
    taps = phase_taps(CDT)
    g_base = g_ptr + b.to(tl.int64) * sgb + ch.to(tl.int64) * sgc
    o_base = o_ptr + b.to(tl.int64) * sob + ch.to(tl.int64) * soc
    o0 = tl.zeros([BW], dtype=CDT)
    o1 = tl.zeros([BW], dtype=CDT)
    o2 = tl.zeros([BW], dtype=CDT)
    o3 = tl.zeros([BW], dtype=CDT)
    o4 = tl.zeros([BW], dtype=CDT)
    top = tl.zeros([BW], dtype=CDT)
    for step in range(0, BH + 4):
        ip = i0 - 2 + step
        for k in tl.static_range(4):
            # Full-shape masks: the interpreter rejects a mask broadcast from a scalar.
            hp = hq * 0 + (4 * ip + k)
            gv = tl.load(g_base + hp * sgh + hq * sgw, mask=q_in & (hp >= 0) & (hp < 4 * H), other=0.0)
            u = tl.sum(gv.to(CDT) * wxt, axis=0)
            # High-res rows 4 i' + 0, 1 tap rows i' - 2 .. i' + 1; rows 4 i' + 2, 3 tap i' - 1 .. i' + 2.
            if k < 2:
                o0, o1, o2, o3 = spread_rows(o0, o1, o2, o3, u, taps[k])
            else:
                o1, o2, o3, o4 = spread_rows(o1, o2, o3, o4, u, taps[k])
        row, top = finished_row(o0, o1, o2, top, ip - 2, H)
        ii = cols * 0 + (ip - 2)
        keep = (cols < W) & (ii >= i0) & (ii < i0 + BH) & (ii < H)
        tl.store(o_base + ii * soh + cols * sow, row.to(o_ptr.dtype.element_ty), mask=keep)
        o0, o1, o2, o3, o4 = o1, o2, o3, o4, tl.zeros([BW], dtype=CDT)


def tl_compute_dtype(dtype: torch.dtype) -> tl.dtype:
    """Arithmetic dtype of the kernels (as Triton spells it): float64 for float64 data, float32 otherwise."""
    return tl.float64 if compute_dtype(dtype) == torch.float64 else tl.float32


def block(n: int, gpu: int, interpreter: int) -> int:
    """Tile length along an axis of length n: ``gpu`` on a GPU, ``interpreter`` under TRITON_INTERPRET=1
    (which pays per program and per operation, not per element), never beyond the next power of 2 of n."""
    cap = interpreter if os.environ.get("TRITON_INTERPRET") == "1" else gpu
    return min(cap, triton.next_power_of_2(n))


def grid(bc: int, rows: int, cols: int, block_rows: int, block_cols: int) -> tuple[int, int, int]:
    """Launch grid: (batch x channel planes, row tiles, column tiles)."""
    return (bc, triton.cdiv(rows, block_rows), triton.cdiv(cols, block_cols))


def bicubic_up4_triton(x: torch.Tensor) -> torch.Tensor:
    """H x: ``F.interpolate(x, scale_factor=4, mode="bicubic", align_corners=False)``.

    Args:
        x: [B, C, H, W], fp16 / bf16 / fp32 / fp64, any strides (channels_last included), CUDA.
    Returns:
        [B, C, 4H, 4W] in ``x.dtype`` and ``x``'s memory format; fp32 arithmetic (fp64 for fp64).
    """
    bsz, ch, h, w = x.shape
    out = empty_like_layout((bsz, ch, SCALE * h, SCALE * w), x, x.dtype)
    if out.numel() == 0:
        return out
    bp, bq = block(SCALE * h, 16, 64), block(SCALE * w, 64, 256)
    _bicubic_up4_kernel[grid(bsz * ch, SCALE * h, SCALE * w, bp, bq)](
        x, out, ch, h, w, *x.stride(), *out.stride(), CDT=tl_compute_dtype(x.dtype), BP=bp, BQ=bq
    )
    return out


def bicubic_up4_adjoint_triton(g: torch.Tensor) -> torch.Tensor:
    """H^T g: the gradient of :func:`bicubic_up4_triton` w.r.t. its input, by gathering (no atomics).

    Args:
        g: [B, C, 4H, 4W] (both spatial sizes multiples of 4), fp16 / bf16 / fp32 / fp64, any strides, CUDA.
    Returns:
        [B, C, H, W] in ``g.dtype`` and ``g``'s memory format; fp32 arithmetic (fp64 for fp64).
    """
    bsz, ch, gh, gw = g.shape
    h, w = gh // SCALE, gw // SCALE
    out = empty_like_layout((bsz, ch, h, w), g, g.dtype)
    if out.numel() == 0:
        return out
    # One output column per lane (BW = 32 x warps): the column windows are reduced inside each thread.
    bh, bw = block(h, 32, 16), block(w, 128, 128)
    _bicubic_up4_adjoint_kernel[grid(bsz * ch, h, w, bh, bw)](
        g, out, ch, h, w, *g.stride(), *out.stride(), CDT=tl_compute_dtype(g.dtype), BH=bh, BW=bw,
        num_warps=max(1, bw // 32),
    )  # fmt: skip
    return out
