"""Stride-1 convolution by kernel-row GEMMs: im2col over the kernel's columns only.

im2col copies every input value KH*KW times (nine times for a 3x3 kernel) into a matrix whose inner runs
are one output row long (32 values on CIFAR), and on thin layers that copy costs a large part of what
the GEMM that reads it costs (16 channels on 32x32, one core: 4.4-5.3 ms against 6.3-7.9 ms at batch
128, BENCHMARKS.md). This path copies each value KW times (three), in runs as long as a whole laid-out map,
and lets the kernel's rows be offsets into that copy instead of more copies.

**Rows that share their padding.** (Lesson 05 writes l for the row length and i, j for oh, ow.) Lay each
channel's input out flat, row after row, each row of the layout p_w zeros followed by the W values of a row
of x, with p_h rows of zeros above and below: rows of l = W + p_w values, and

    xf[c, (u + p_h) l + (v + p_w)] = x[c, u, v],   zeros elsewhere.

It is the zero-padded map with one change: the p_w zeros that should pad a row on the right are the p_w zeros
that start the next row; a window that reaches past the right end of one row, or before the left end of the
next, reads those same zeros. Compute the output on a grid l wide: y'[o, oh l + ow] for ow = 0..l-1, of which
only ow < OW = W + 2 p_w - d_w (KW - 1) are outputs (the other d_w (KW - 1) - p_w columns, one for 3x3 with
padding 1, mix the end of one row with the start of the next and are dropped). With t = oh l + ow,

    y'[o, t] = sum_{c, kh, kw} W[o, c, kh, kw] xf[c, t + d_h kh l + d_w kw].

(Check: xf[t + d_h kh l + d_w kw] = x[oh + d_h kh - p_h, ow + d_w kw - p_w], or a zero where that is off
the map.) Padding each row on both sides, l = W + 2 p_w, would work too but throws away d_w (KW - 1) columns
a row instead of d_w (KW - 1) - p_w: the GEMMs below do l / OW times im2col's multiplications, 17/16 on 16x16
maps instead of 18/16 (measured forward of one chunk, one core: 32->32 on 16x16 1.051x faster, 16->16 on
32x32 1.030x).

**KW shifted copies, KH offsets.** Let R[(c, kw), t] = xf[c, t + d_w kw]: KW copies of the flat map, each
shifted by d_w kw (the one large copy this path makes: KW x the laid-out input, each row one contiguous
run; the last shift reads d_w (KW - 1) values past the last row, which are zeros). Then

    y'[:, t] = sum_kh W_kh R[:, t + d_h kh l],    W_kh[o, (c, kw)] = W[o, c, kh, kw],

so y' = sum_kh W_kh @ R[:, d_h kh l : d_h kh l + OH l]: KH GEMMs (O, C KW) x (C KW, OH l) whose right
operands are slices of R, which BLAS reads in place (a row stride of Hp l is just a leading dimension).
The output is cropped to its OW columns once. The copy: KW times the laid-out input, against im2col's
KH KW times the output (2.7x smaller on 32x32 with padding 1).

**Gradients.** The op is linear in x and in W:
    dW[o, c, kh, kw] = sum_t gy'[o, t] R[(c, kw), t + d_h kh l]:   dW_kh^T = sum_images R_kh gy'^T
        with gy' the output gradient on the grid l wide, zeros in the dropped columns;
    dx = the same convolution of gy, padded by d (K - 1) - p, with the kernel flipped in space and the
        in/out channels swapped (the transposed convolution, as on the im2col path).

No loop over images or pixels: one batched matmul per kernel row, over the images of a chunk.
Lesson 05 derives it next to im2col and Winograd.
"""

from __future__ import annotations

from typing import Any

from minise.backend import get_array_module

Pair = tuple[int, int]


def eligible(w_shape: tuple[int, ...], stride: Pair, padding: Pair, dilation: Pair, groups: int) -> bool:
    """Stride 1, one group, a kernel wider and taller than 1, and 0 <= p <= d (K - 1) on both axes (so that
    the transposed convolution of the input gradient needs no cropping either)."""
    kh, kw = w_shape[2:]
    return (
        stride == (1, 1)
        and groups == 1
        and kh > 1
        and kw > 1
        and 0 <= padding[0] <= dilation[0] * (kh - 1)
        and 0 <= padding[1] <= dilation[1] * (kw - 1)
    )


def padded_size(h: int, w: int, kernel: Pair, padding: Pair, dilation: Pair) -> tuple[int, int, int, int]:
    """(Hp, l, OH, OW): the laid-out input's rows (with p_h rows of zeros above and below) and their length
    l = W + p_w (p_w zeros, then W values), and the output of the stride-1 convolution."""
    hp = h + 2 * padding[0]
    return hp, w + padding[1], hp - dilation[0] * (kernel[0] - 1), w + 2 * padding[1] - dilation[1] * (kernel[1] - 1)


def shifted_rows(x: Any, kw: int, padding: Pair, dilation_w: int) -> Any:
    """R (n, C*KW, Hp*l) with R[n, (c, j), t] = xf[n, c, t + dilation_w j], xf the flat laid-out maps
    (``padded_size``: x[c, u, v] at xf[c, (u + p_h) l + (v + p_w)], zeros elsewhere).

    Two copies: x into the zeroed flat maps (Hp rows of l values, then dilation_w (KW - 1) zeros for the last
    shifts), then KW contiguous shifted copies of them."""
    xp = get_array_module(x)
    n, c, h, w = x.shape
    (ph, pw), reach = padding, dilation_w * (kw - 1)
    hp, ell = h + 2 * ph, w + pw
    flat = xp.zeros((n, c, hp * ell + reach), dtype=x.dtype)
    flat[:, :, ph * ell : (ph + h) * ell].reshape(n, c, h, ell)[:, :, :, pw:] = x  # each row: p_w zeros, then W values
    rows = xp.empty((n, c, kw, hp * ell), dtype=x.dtype)
    for j in range(kw):
        rows[:, :, j] = flat[:, :, dilation_w * j : dilation_w * j + hp * ell]
    return rows.reshape(n, c * kw, hp * ell)


def kernel_rows(w: Any) -> Any:
    """W (O, C, KH, KW) -> W_kh stacked (KH, O, C*KW): W_kh[o, (c, kw)] = W[o, c, kh, kw]."""
    o, c, kh, kw = w.shape
    return w.transpose(2, 0, 1, 3).reshape(kh, o, c * kw).copy()


def conv_chunk(x: Any, w_rows: Any, padding: Pair, dilation: Pair, out: Any) -> None:
    """out[...] = conv2d(x, W, stride 1, padding, dilation) for one chunk of images, with
    w_rows = kernel_rows(W) given: x (n, C, H, W), out (n, O, OH, OW)."""
    xp = get_array_module(x)
    n, c, h, w = x.shape
    kh_, o, ckw = w_rows.shape  # (KH, O, C*KW)
    kw = ckw // c
    hp, ell, oh, ow = padded_size(h, w, (kh_, kw), padding, dilation)
    rows = shifted_rows(x, kw, padding, dilation[1])  # (n, C*KW, Hp*l)
    length = oh * ell  # output columns on the grid l wide
    y = xp.matmul(w_rows[0], rows[:, :, :length])  # (n, O, OH*l)
    for kh in range(1, kh_):
        start = dilation[0] * kh * ell
        y += xp.matmul(w_rows[kh], rows[:, :, start : start + length])
    out[...] = y.reshape(n, o, oh, ell)[:, :, :, :ow]  # drop the columns past OW


def on_padded_width(gy: Any, ell: int) -> Any:
    """gy (n, O, OH, OW) -> gy' (n, O, OH, l): gy in the first OW columns, zeros in the dropped ones (those
    columns are no outputs, so nothing may flow back from them)."""
    xp = get_array_module(gy)
    wide = xp.zeros((*gy.shape[:3], ell), dtype=gy.dtype)
    wide[..., : gy.shape[3]] = gy
    return wide


def on_padded_width_transposed(gy: Any, ell: int) -> Any:
    """gy (n, O, OH, OW) -> gy'^T (n, OH*l, O), C-contiguous: ``on_padded_width`` transposed, in one copy."""
    xp = get_array_module(gy)
    n, o, oh, ow = gy.shape
    wide = xp.zeros((n, oh, ell, o), dtype=gy.dtype)
    wide[:, :, :ow] = gy.transpose(0, 2, 3, 1)
    return wide.reshape(n, oh * ell, o)


TRANSPOSED_GY_FROM = 32  # output channels from which dW's GEMMs read a transposed copy of gy' (see below)


def weight_grad_chunk(x: Any, gy: Any, kernel: Pair, padding: Pair, dilation: Pair) -> Any:
    """dW for one chunk of images, as (KH, C*KW, O): entry [kh, (c, kw), o] = dW[o, c, kh, kw].

    dW_kh^T = sum over images of R_kh gy'^T, R_kh = R[:, :, d_h kh l : d_h kh l + OH l] and gy' the
    output gradient on the grid l wide with zeros in the dropped columns.

    gy'^T is the right operand of every image's GEMM. As a transposed view of gy' (O, OH l), OpenBLAS reads it
    with a stride of OH l between neighbouring values; with 32 or more output channels a contiguous
    transposed copy, made once per chunk, pays for itself (one core, 16 images, dW of one chunk: 32 channels on
    16x16 1.53 -> 1.14 ms, 64 on 8x8 1.68 -> 1.22 ms). With 16 channels each copied run is 16 values long and
    the copy costs more than it saves (8 images of 16 on 32x32: 0.55 -> 0.76 ms), so there the view stays."""
    xp = get_array_module(x)
    n, c, h, w = x.shape
    o = gy.shape[1]
    kh_, kw_ = kernel
    hp, ell, oh, ow = padded_size(h, w, kernel, padding, dilation)
    rows = shifted_rows(x, kw_, padding, dilation[1])  # (n, C*KW, Hp*l)
    if o >= TRANSPOSED_GY_FROM:
        gy_t = on_padded_width_transposed(gy, ell)  # (n, OH*l, O), contiguous
    else:
        gy_t = on_padded_width(gy, ell).reshape(n, o, oh * ell).transpose(0, 2, 1)  # (n, OH*l, O), a view
    length = oh * ell
    dwt = xp.empty((kh_, c * kw_, o), dtype=x.dtype)
    for kh in range(kh_):
        start = dilation[0] * kh * ell
        dwt[kh] = xp.matmul(rows[:, :, start : start + length], gy_t).sum(axis=0)
    return dwt


def weight_grad_from_rows(dwt: Any, c: int, kw: int) -> Any:
    """(KH, C*KW, O) -> dW (O, C, KH, KW)."""
    kh, _, o = dwt.shape
    return dwt.reshape(kh, c, kw, o).transpose(3, 1, 0, 2).copy()
