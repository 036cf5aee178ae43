"""Stride-1 convolution by kernel-row GEMMs: im2col over the kernel's columns only.

im2col copies every input value KH*KW times (nine times for a 3x3 kernel) into a matrix whose inner runs
are one output row long (32 values on CIFAR), and on thin layers that copy costs a large part of what
the GEMM that reads it costs (16 channels on 32x32, one core: 4.4-5.3 ms against 6.3-7.9 ms at batch
128, BENCHMARKS.md). This path copies each value KW times (three), in runs a whole map long, and lets the
kernel's rows be offsets into that copy instead of more copies.

**The flat map, wrapped columns zeroed.** (Lesson 05 writes i, j for oh, ow.) For "same" padding along the
width, 2 p_w = d_w (KW - 1), the output is as wide as the input, OW = W. Read each channel's map flat, row
after row, as it lies in memory (no copy), with p_h rows of zeros above and below: Hp = H + 2 p_h rows of W
values, row r and column v at position r W + v. Tap (kh, kw) of output (oh, ow) reads
x[oh + d_h kh - p_h, ow + s] with the column shift s = d_w kw - p_w. In the flat map that value sits s places
after position (oh + d_h kh) W + ow, except where ow + s falls off the row (ow + s < 0 or >= W): there the
flat map holds a value of the neighbouring row, "wrapped round", where the padded map has a zero. So for
each kernel column make one copy of the flat map shifted by s, with those wrapped columns set to zero:

    R[(c, kw), r W + v] = x[c, r - p_h, v + d_w kw - p_w],   zero where the row or the column is off the map.

Then, on the output's own grid (t = oh W + ow, exactly the outputs, nothing to crop),

    y[o, t] = sum_kh W_kh R[:, t + d_h kh W],    W_kh[o, (c, kw)] = W[o, c, kh, kw],

so y = sum_kh W_kh @ R[:, d_h kh W : d_h kh W + OH W]: KH GEMMs (O, C KW) x (C KW, OH W) whose right
operands are slices of R, which BLAS reads in place (a row stride of Hp W is just a leading dimension), the
first written straight into y's memory. The copy: KW times the input plus its zero rows, against im2col's
KH KW times the output (2.8x smaller on 32x32).

An earlier layout padded each row with p_w zeros of its own (rows of l = W + p_w values that share their
padding), which made the zeroing unnecessary but computed the output on a grid l wide: l / W more
multiplications (17/16 on 16x16), a copy of x into the padded layout, and a crop of the result. Zeroing the
wrapped columns instead (one value in W per copy) made a one-core forward chunk 1.14-1.22x faster
(BENCHMARKS.md, ninth round).

**Gradients.** The op is linear in x and in W:
    dW[o, c, kh, kw] = sum_t gy[o, t] R[(c, kw), t + d_h kh W]:   dW_kh^T = sum_images R_kh gy^T;
    dx = the same convolution of gy, padded by d (K - 1) - p, with the kernel flipped in space and the
        in/out channels swapped (the transposed convolution, as on the im2col path); along the width
        d_w (KW - 1) - p_w = p_w, "same" again.

No loop over images or pixels: one batched matmul per kernel row, over the images of a chunk.
Lesson 05 derives it next to im2col and Winograd.
"""

from __future__ import annotations

from typing import Any

from minise.backend import get_array_module

Pair = tuple[int, int]


def eligible(w_shape: tuple[int, ...], stride: Pair, padding: Pair, dilation: Pair, groups: int) -> bool:
    """Stride 1, one group, a kernel wider and taller than 1, "same" padding along the width
    (2 p_w = d_w (KW - 1), so OW = W: an odd KW, or an even dilation), and 0 <= p_h <= d_h (KH - 1) (so that
    the transposed convolution of the input gradient needs no cropping either)."""
    kh, kw = w_shape[2:]
    return (
        stride == (1, 1)
        and groups == 1
        and kh > 1
        and kw > 1
        and 2 * padding[1] == dilation[1] * (kw - 1)
        and 0 <= padding[0] <= dilation[0] * (kh - 1)
    )


def padded_size(h: int, w: int, kernel: Pair, padding: Pair, dilation: Pair) -> tuple[int, int, int, int]:
    """(Hp, W, OH, OW): the flat map's rows with p_h rows of zeros above and below, their length (the map's
    own width W), and the output of the stride-1 convolution (OW = W for an eligible case)."""
    hp = h + 2 * padding[0]
    return hp, w, hp - dilation[0] * (kernel[0] - 1), w + 2 * padding[1] - dilation[1] * (kernel[1] - 1)


def shifted_rows(x: Any, kw: int, padding: Pair, dilation_w: int) -> Any:
    """R (n, C*KW, Hp*W) with R[n, (c, j), r W + v] = x[n, c, r - p_h, v + d_w j - p_w], zero where the row
    or the column is off the map (``padded_size``: Hp = H + 2 p_h).

    Per kernel column j, one copy of the flat map (H W values, one contiguous run per channel) shifted by
    s = d_w j - p_w, then the |s| columns of each row that wrapped round from the neighbouring row set to zero;
    the p_h rows above and below are zeros."""
    xp = get_array_module(x)
    n, c, h, w = x.shape
    ph, pw = padding
    hw = h * w
    flat = x.reshape(n, c, hw)  # a view for a contiguous x
    rows = xp.empty((n, c, kw, (h + 2 * ph) * w), dtype=x.dtype)
    rows[:, :, :, : ph * w] = 0  # the zero rows above ...
    rows[:, :, :, (ph + h) * w :] = 0  # ... and below
    for j in range(kw):
        s = dilation_w * j - pw  # this kernel column reads s places to the right
        body = rows[:, :, j, ph * w : (ph + h) * w]  # the H rows of x, shifted
        grid = body.reshape(n, c, h, w)  # the same values as rows and columns (a view)
        m = max(0, hw - abs(s))  # values the shift keeps
        if s >= 0:
            body[:, :, :m] = flat[:, :, s : s + m]
            grid[:, :, :, max(0, w - s) :] = 0  # the last s columns read the next row's first values
        else:
            body[:, :, hw - m :] = flat[:, :, :m]
            grid[:, :, :, : min(w, -s)] = 0  # the first -s columns read the previous row's last values
    return rows.reshape(n, c * kw, (h + 2 * ph) * w)


def kernel_rows(w: Any) -> Any:
    """W (O, C, KH, KW) -> W_kh stacked (KH, O, C*KW): W_kh[o, (c, kw)] = W[o, c, kh, kw]."""
    o, c, kh, kw = w.shape
    return w.transpose(2, 0, 1, 3).reshape(kh, o, c * kw).copy()


def conv_chunk(x: Any, w_rows: Any, padding: Pair, dilation: Pair, out: Any) -> None:
    """out[...] = conv2d(x, W, stride 1, padding, dilation) for one chunk of images of an eligible case,
    with w_rows = kernel_rows(W) given: x (n, C, H, W), out (n, O, OH, W)."""
    xp = get_array_module(x)
    n, c, h, w = x.shape
    kh_, o, ckw = w_rows.shape  # (KH, O, C*KW)
    kw = ckw // c
    oh = padded_size(h, w, (kh_, kw), padding, dilation)[2]
    rows = shifted_rows(x, kw, padding, dilation[1])  # (n, C*KW, Hp*W)
    length = oh * w  # the output's own grid
    direct = out.flags.c_contiguous  # then y is out's memory and the first GEMM writes there
    y = out.reshape(n, o, length) if direct else xp.empty((n, o, length), dtype=out.dtype)
    xp.matmul(w_rows[0], rows[:, :, :length], out=y)
    for kh in range(1, kh_):
        start = dilation[0] * kh * w
        y += xp.matmul(w_rows[kh], rows[:, :, start : start + length])
    if not direct:
        out[...] = y.reshape(out.shape)


TRANSPOSED_GY_FROM = 32  # output channels from which dW's GEMMs read a transposed copy of gy (see below)


def weight_grad_chunk(x: Any, gy: Any, kernel: Pair, padding: Pair, dilation: Pair) -> Any:
    """dW for one chunk of images, as (KH, C*KW, O): entry [kh, (c, kw), o] = dW[o, c, kh, kw].

    dW_kh^T = sum over images of R_kh gy^T, R_kh = R[:, :, d_h kh W : d_h kh W + OH W].

    gy^T is the right operand of every image's GEMM. As a transposed view of gy (O, OH W), OpenBLAS reads it
    with a stride of OH W between neighbouring values; with 32 or more output channels a contiguous
    transposed copy, made once per chunk, pays for itself (one core, 16 images, dW of one chunk: 32 channels on
    16x16 1.53 -> 1.14 ms, 64 on 8x8 1.68 -> 1.22 ms). With 16 channels each copied run is 16 values long and
    the copy costs more than it saves (8 images of 16 on 32x32: 0.55 -> 0.76 ms), so there the view stays.
    (Measured when the grid was l = W + p_w wide and both came from a zero-padded copy of gy.)"""
    xp = get_array_module(x)
    n, c, h, w = x.shape
    o = gy.shape[1]
    kh_, kw_ = kernel
    oh = padded_size(h, w, kernel, padding, dilation)[2]
    rows = shifted_rows(x, kw_, padding, dilation[1])  # (n, C*KW, Hp*W)
    length = oh * w
    gy_t = gy.reshape(n, o, length).transpose(0, 2, 1)  # (n, OH*W, O), a view
    if o >= TRANSPOSED_GY_FROM:
        gy_t = xp.ascontiguousarray(gy_t)
    dwt = xp.empty((kh_, c * kw_, o), dtype=x.dtype)
    for kh in range(kh_):
        start = dilation[0] * kh * w
        dwt[kh] = xp.matmul(rows[:, :, start : start + length], gy_t).sum(axis=0)
    return dwt


def weight_grad_from_rows(dwt: Any, c: int, kw: int) -> Any:
    """(KH, C*KW, O) -> dW (O, C, KH, KW)."""
    kh, _, o = dwt.shape
    return dwt.reshape(kh, c, kw, o).transpose(3, 1, 0, 2).copy()
