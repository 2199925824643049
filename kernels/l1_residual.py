"""Fused Triton kernel of the guidance residual (docs/DESIGN.md §2, paper Eq. 11-13).

    r_b = weight_b * (long_weight * sign(d_b) + short_weight * H^T sign(H d_b)),   d = x0_hat - y,  sign(0) = 0

in one pass over ``x0_hat`` and ``y``: the 16x larger ``H d`` never exists in memory.

Bicubic H (layout and weights in :mod:`mimicfast.kernels.bicubic_up4`): a program owns a [BH, BW] tile of
low-res outputs and walks the low-res rows ``i'`` that its window touches (BH + 4 of them). For each it
interpolates d horizontally at the 16 high-res columns ``4 j - 6 + c`` of every output column j (a [16, BW]
tile; clamped column loads realise the border clamp), keeps the last five such rows in registers, and for
each of the 4 high-res rows ``p = 4 i' + k`` interpolates vertically, takes the sign, applies the x-adjoint
(a weighted sum over the 16 columns, inside each lane) and adds the result with the phase's tap weights into
a rolling window of five output-row accumulators; a row is written once its last high-res row is done. Each
high-res value is thus recomputed 4 times (the x-window overlap), never stored.

Nearest H: ``H^T sign(H d) = 16 sign(d)`` exactly (each low-res pixel is copied to 16 high-res ones), so the
residual is ``(long_weight + 16 short_weight) sign(d)``; ``UpsampleMode.NONE`` drops the short-range term.
The mode reaches the kernel as its :class:`~mimicfast.upsample_mode.UpsampleMode` code, a compile-time constant.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from mimicfast.upsample_mode import UpsampleMode

from .bicubic_up4 import (
    WINDOW,
    WINDOW_START,
    adjoint_weight,
    block,
    cubic_taps,
    finished_row,
    grid,
    phase_taps,
    spread_rows,
    tl_compute_dtype,
)
from .tensors import compute_dtype, empty_like_layout

# The mode codes as compile-time constants of the kernel (the values of UpsampleMode, shared with C++).
BICUBIC = tl.constexpr(int(UpsampleMode.BICUBIC))
NEAREST = tl.constexpr(int(UpsampleMode.NEAREST))


@triton.jit
def _sign(v):
    """sign(v) with sign(0) = 0 (as torch.sign); NaN stays NaN."""
    return tl.where(v > 0, 1.0, tl.where(v < 0, -1.0, v * 0.0))


@triton.jit
def _offset_weight(first, w0, w1, w2, w3, s: tl.constexpr):
    """Weight of the tap at offset ``s`` from the output column (sum of the taps ``first + m == s``)."""
    ws = tl.where(first == s, w0, 0.0) + tl.where(first + 1 == s, w1, 0.0)
    return ws + tl.where(first + 2 == s, w2, 0.0) + tl.where(first + 3 == s, w3, 0.0)


@triton.jit
def _x_interp_weights(CDT: tl.constexpr):
    """Weights of the column window ``4 j - 6 + c`` (c = 0..15) on the low-res columns ``j + s``, s = -4..3.

    The taps of column 4 j - 6 + c sit at offsets from j that do not depend on j; returns 8 [1, 16].
    """
    f, w0, w1, w2, w3 = cubic_taps(tl.arange(0, WINDOW)[:, None] + WINDOW_START, CDT)
    return (
        _offset_weight(f, w0, w1, w2, w3, -4), _offset_weight(f, w0, w1, w2, w3, -3),
        _offset_weight(f, w0, w1, w2, w3, -2), _offset_weight(f, w0, w1, w2, w3, -1),
        _offset_weight(f, w0, w1, w2, w3, 0), _offset_weight(f, w0, w1, w2, w3, 1),
        _offset_weight(f, w0, w1, w2, w3, 2), _offset_weight(f, w0, w1, w2, w3, 3),
    )  # fmt: skip


@triton.jit
def _clamped(cols, s: tl.constexpr, stride, W):
    # Both bounds for every offset: tail lanes of the last tile (cols >= W) must not read past the row.
    return tl.minimum(tl.maximum(cols + s, 0), W - 1) * stride


@triton.jit
def _col_offsets(cols, stride, W):
    """Element offsets of the clamped columns j + s, s = -4..3 (the tap offsets of the column window)."""
    return (
        _clamped(cols, -4, stride, W), _clamped(cols, -3, stride, W),
        _clamped(cols, -2, stride, W), _clamped(cols, -1, stride, W),
        _clamped(cols, 0, stride, W), _clamped(cols, 1, stride, W),
        _clamped(cols, 2, stride, W), _clamped(cols, 3, stride, W),
    )  # fmt: skip


@triton.jit
def _hinterp_row(x_row, y_row, x_cols, y_cols, xw, CDT: tl.constexpr):
    """Horizontal bicubic interpolation of one row of d = x - y at the high-res columns 4 j - 6 + c.

    ``x_row`` / ``y_row`` point at the (already clamped) low-res row, ``x_cols`` / ``y_cols`` are
    :func:`_col_offsets` and ``xw`` is :func:`_x_interp_weights`; d is loaded once per tap offset.
    Returns [16, BW] in CDT.
    """
    acc = tl.zeros([WINDOW, x_cols[0].shape[0]], dtype=CDT)
    for k in tl.static_range(8):
        d = tl.load(x_row + x_cols[k]).to(CDT) - tl.load(y_row + y_cols[k]).to(CDT)
        acc += xw[k] * d[None, :]
    return acc


@triton.jit
def _window_sum(g0, g1, g2, g3, taps, wxt, ip, k: tl.constexpr, H):
    """x-adjoint of sign(H d) on the high-res row p = 4 ip + k: ``sum_c wxt[c, j] sign(H d)[p, 4 j - 6 + c]``.

    ``g0..g3`` are the horizontally interpolated tap rows of p and ``taps = phase_taps(CDT)[k]``; rows p
    outside [0, 4H) contribute nothing. Returns [BW].
    """
    _, a0, a1, a2, a3 = taps
    u = tl.sum(_sign(a0 * g0 + a1 * g1 + a2 * g2 + a3 * g3) * wxt, axis=0)
    p = 4 * ip + k
    return tl.where((p >= 0) & (p < 4 * H), u, 0.0)


@triton.jit
def _l1_residual_kernel(
    x_ptr, y_ptr, w_ptr, r_ptr, C, H, W,
    sxb, sxc, sxh, sxw, syb, syc, syh, syw, srb, src, srh, srw,
    lw_hi, lw_lo, sw_hi, sw_lo,
    MODE: tl.constexpr, HAS_WEIGHT: tl.constexpr, CDT: tl.constexpr, BH: tl.constexpr, BW: tl.constexpr,
):  # fmt: skip
    pid_bc = tl.program_id(0)
    b = pid_bc // C
    ch = pid_bc % C
    i0 = tl.program_id(1) * BH
    cols = tl.program_id(2) * BW + tl.arange(0, BW)
    x_base = x_ptr + b.to(tl.int64) * sxb + ch.to(tl.int64) * sxc
    y_base = y_ptr + b.to(tl.int64) * syb + ch.to(tl.int64) * syc
    # Scalars arrive as fp32 hi + lo pairs so that float64 data keeps float64 weights.
    long_w = tl.cast(lw_hi, CDT) + tl.cast(lw_lo, CDT)
    short_w = tl.cast(sw_hi, CDT) + tl.cast(sw_lo, CDT)

    r_base = r_ptr + b.to(tl.int64) * srb + ch.to(tl.int64) * src
    w_b = tl.load(w_ptr + b).to(CDT) if HAS_WEIGHT else 1.0
    if MODE == BICUBIC:
        # x-adjoint weights of the column window of every output column (border clamping included).
        hq = 4 * cols[None, :] + WINDOW_START + tl.arange(0, WINDOW)[:, None]
        wxt = adjoint_weight(hq, cols[None, :], W, CDT)
        xw = _x_interp_weights(CDT)
        x_cols = _col_offsets(cols, sxw, W)
        y_cols = _col_offsets(cols, syw, W)
        # Taps of the 4 row phases: high-res rows 4 i' + 0, 1 tap i' - 2 .. i' + 1; 4 i' + 2, 3 tap i' - 1 .. i' + 2.
        taps = phase_taps(CDT)
        # Rolling window of horizontally interpolated rows i' - 2 .. i' + 2 (row index clamped = border clamp).
        r0 = tl.maximum(i0 - 4, 0)
        g0 = _hinterp_row(x_base + r0 * sxh, y_base + r0 * syh, x_cols, y_cols, xw, CDT)
        r1 = tl.maximum(i0 - 3, 0)
        g1 = _hinterp_row(x_base + r1 * sxh, y_base + r1 * syh, x_cols, y_cols, xw, CDT)
        r2 = tl.maximum(i0 - 2, 0)
        g2 = _hinterp_row(x_base + r2 * sxh, y_base + r2 * syh, x_cols, y_cols, xw, CDT)
        r3 = tl.maximum(i0 - 1, 0)
        g3 = _hinterp_row(x_base + r3 * sxh, y_base + r3 * syh, x_cols, y_cols, xw, CDT)
        # Rolling accumulators of H^T sign(H d) for the output rows i' - 2 .. i' + 2, taken unclamped: the rows
        # above the image are summed into ``top`` and folded into row 0, those below into row H - 1, which is
        # the adjoint of the border clamp.
        o0 = tl.zeros([BW], dtype=CDT)
        o1 = tl.zeros([BW], dtype=CDT)
        o2 = tl.zeros([BW], dtype=CDT)
        o3 = tl.zeros([BW], dtype=CDT)
        o4 = tl.zeros([BW], dtype=CDT)
        top = tl.zeros([BW], dtype=CDT)
        for step in range(0, BH + 4):
            ip = i0 - 2 + step
            r4 = tl.minimum(tl.maximum(ip + 2, 0), H - 1)
            g4 = _hinterp_row(x_base + r4 * sxh, y_base + r4 * syh, x_cols, y_cols, xw, CDT)
            u = _window_sum(g0, g1, g2, g3, taps[0], wxt, ip, 0, H)
            o0, o1, o2, o3 = spread_rows(o0, o1, o2, o3, u, taps[0])
            u = _window_sum(g0, g1, g2, g3, taps[1], wxt, ip, 1, H)
            o0, o1, o2, o3 = spread_rows(o0, o1, o2, o3, u, taps[1])
            u = _window_sum(g1, g2, g3, g4, taps[2], wxt, ip, 2, H)
            o1, o2, o3, o4 = spread_rows(o1, o2, o3, o4, u, taps[2])
            u = _window_sum(g1, g2, g3, g4, taps[3], wxt, ip, 3, H)
            o1, o2, o3, o4 = spread_rows(o1, o2, o3, o4, u, taps[3])
            # Row i = i' - 2 is complete: its high-res rows 4 i - 6 .. 4 i + 9 lie in rows i - 2 .. i + 2 = i'.
            i = ip - 2
            adj, top = finished_row(o0, o1, o2, top, i, H)
            ic = tl.minimum(tl.maximum(i, 0), H - 1)
            cc = tl.minimum(cols, W - 1)
            d = tl.load(x_base + ic * sxh + cc * sxw).to(CDT) - tl.load(y_base + ic * syh + cc * syw).to(CDT)
            # Full-shape mask: the interpreter rejects masks broadcast from a scalar.
            ii = cols * 0 + i
            keep = (cols < W) & (ii >= i0) & (ii < i0 + BH) & (ii < H)
            tl.store(r_base + ii * srh + cols * srw, (long_w * _sign(d) + short_w * adj) * w_b, mask=keep)
            g0, g1, g2, g3 = g1, g2, g3, g4
            o0, o1, o2, o3, o4 = o1, o2, o3, o4, tl.zeros([BW], dtype=CDT)
    else:
        rows = i0 + tl.arange(0, BH)
        rc = tl.minimum(rows, H - 1)[:, None]
        cc = tl.minimum(cols, W - 1)[None, :]
        d = tl.load(x_base + rc * sxh + cc * sxw).to(CDT) - tl.load(y_base + rc * syh + cc * syw).to(CDT)
        # Nearest: H^T sign(H d) = 16 sign(d); None: long-range term only.
        coef = long_w + 16.0 * short_w if MODE == NEAREST else long_w
        mask = (rows < H)[:, None] & (cols < W)[None, :]
        tl.store(r_base + rows[:, None] * srh + cols[None, :] * srw, coef * _sign(d) * w_b, mask=mask)


def _split(value: float) -> tuple[float, float]:
    """value = hi + lo with hi, lo exactly representable in float32 (to 48 bits)."""
    hi = float(torch.tensor(value, dtype=torch.float32))
    return hi, float(torch.tensor(value - hi, dtype=torch.float32))


def l1_residual_triton(
    x0_hat: torch.Tensor,
    y: torch.Tensor,
    upsample: UpsampleMode | int = UpsampleMode.BICUBIC,
    weight: torch.Tensor | None = None,
    long_weight: float = 1.0,
    short_weight: float = 1.0,
) -> torch.Tensor:
    """Guidance residual ``r = weight_b (long_weight sign(d) + short_weight H^T sign(H d))``, d = x0_hat - y.

    Same contract as :func:`mimicfast.reference.ops.l1_residual_reference` (the spec), computed in one pass.
    Inputs are trusted (``mimicfast.ops.l1_residual`` validates them).

    Args:
        x0_hat, y: [B, C, H, W], same shape, dtype and device (CUDA, or the CPU under TRITON_INTERPRET=1);
            fp16 / bf16 / fp32 / fp64; any strides (contiguous and channels_last are read in place, no copy).
        upsample: the :class:`~mimicfast.upsample_mode.UpsampleMode` (or its code): ``BICUBIC`` (paper),
            ``NEAREST`` (released code) or ``NONE`` (long-range term only).
        weight: optional per-sample weight, shape [B], any float dtype, same device.
        long_weight, short_weight: scalar weights of the two terms.

    Returns:
        r, [B, C, H, W], float32 (float64 for float64 inputs), in ``x0_hat``'s memory format.
    """
    bsz, ch, h, w = x0_hat.shape
    r = empty_like_layout(x0_hat.shape, x0_hat, compute_dtype(x0_hat.dtype))
    if r.numel() == 0:
        return r
    # GPU tiles: 32 rows x 128 columns, 4 warps, one column per lane, so the 16-wide column windows stay in
    # each thread (no shuffles): 168 registers, no spills, ~1100 instructions per output for sm_90 in the
    # compiler's report (benches/README.md).
    bh, bw = block(h, 32, 16), block(w, 128, 128)
    _l1_residual_kernel[grid(bsz * ch, h, w, bh, bw)](
        x0_hat, y, weight if weight is not None else r, r, ch, h, w,
        *x0_hat.stride(), *y.stride(), *r.stride(), *_split(long_weight), *_split(short_weight),
        MODE=int(upsample), HAS_WEIGHT=weight is not None, CDT=tl_compute_dtype(x0_hat.dtype), BH=bh, BW=bw,
        num_warps=max(1, bw // 32),
    )  # fmt: skip
    return r
