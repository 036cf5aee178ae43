"""Plain array helpers for convolution and pooling: output sizes, padding, im2col and col2im.

im2col turns convolution into one matrix product. For every output pixel (oh, ow), the input values
under the kernel, x[c, oh*s + kh*d, ow*s + kw*d] for all (c, kh, kw), become one column of a matrix
``cols`` of shape (C*KH*KW, OH*OW); then ``W.reshape(O, C*KH*KW) @ cols`` is the convolution. The
window array (N, C, KH, KW, OH, OW) is a *strided view* of the padded input: no values are copied
until the GEMM needs them contiguous. col2im is the adjoint: it adds every column back onto the
pixels it came from, one kernel offset (kh, kw) at a time, each a strided slice of the whole batch.
Lesson 05 derives all of this.
"""

from __future__ import annotations

from typing import Any

from minise import backend
from minise.backend import get_array_module


def conv_out_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    """floor((size + 2 padding - dilation (kernel - 1) - 1) / stride) + 1, as in PyTorch's docs."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def pad_hw(x: Any, ph: int, pw: int, value: float = 0.0) -> Any:
    """Pad (or, for negative amounts, crop) the last two axes by ph rows and pw columns on each side."""
    if ph < 0:
        x = x[..., -ph : x.shape[-2] + ph, :]
        ph = 0
    if pw < 0:
        x = x[..., :, -pw : x.shape[-1] + pw]
        pw = 0
    if ph == 0 and pw == 0:
        return x
    xp = get_array_module(x)
    out = xp.full((*x.shape[:-2], x.shape[-2] + 2 * ph, x.shape[-1] + 2 * pw), value, dtype=x.dtype)
    out[..., ph : ph + x.shape[-2], pw : pw + x.shape[-1]] = x
    return out


def windows(
    xpad: Any, kernel: tuple[int, int], stride: tuple[int, int], dilation: tuple[int, int], out_hw: tuple[int, int]
) -> Any:
    """The strided view windows (N, C, KH, KW, OH, OW): windows[n, c, kh, kw, oh, ow] =
    xpad[n, c, oh*sh + kh*dh, ow*sw + kw*dw].

    No copy: only strides change. ``xpad`` must already be padded.
    """
    n, c = xpad.shape[:2]
    sn, sc, sh_, sw_ = xpad.strides
    (kh, kw), (sh, sw), (dh, dw), (oh, ow) = kernel, stride, dilation, out_hw
    return backend.as_strided(xpad, (n, c, kh, kw, oh, ow), (sn, sc, sh_ * dh, sw_ * dw, sh_ * sh, sw_ * sw))


def im2col(
    x: Any,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
) -> Any:
    """x (N, C, H, W) -> cols (N, C*KH*KW, OH*OW), a contiguous copy of the windows."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
    n, c, h, w = x.shape
    oh, ow = conv_out_size(h, kh, sh, ph, dh), conv_out_size(w, kw, sw, pw, dw)
    xp = get_array_module(x)
    view = windows(pad_hw(x, ph, pw), kernel, stride, dilation, (oh, ow))  # (N, C, KH, KW, OH, OW)
    cols = xp.empty((n, c * kh * kw, oh * ow), dtype=x.dtype)
    cols.reshape(view.shape)[...] = view  # the one copy
    return cols


def col2im(
    cols: Any,
    x_shape: tuple[int, ...],
    kernel: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    out: Any = None,
) -> Any:
    """The adjoint of im2col: cols (N, C*KH*KW, OH*OW) -> x (N, C, H, W), overlapping windows adding up.

    A loop over the KH*KW kernel offsets only: each adds one strided slice of the whole batch, so
    there is no loop over images or pixels and no scatter (this runs unchanged on CuPy). Each offset
    (i, j) adds cols[:, :, i, j, oh, ow] at x row oh*sh + i*dh - ph and column ow*sw + j*dw - pw; the
    rows and columns that fall into the padding are dropped from the slice instead of being added into
    a padded copy that is cropped afterwards. Written into ``out`` (N, C, H, W) if given, else a new array.
    """
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
    n, c, h, w = x_shape
    oh, ow = conv_out_size(h, kh, sh, ph, dh), conv_out_size(w, kw, sw, pw, dw)
    xp = get_array_module(cols)
    cols6 = cols.reshape(n, c, kh, kw, oh, ow)
    if out is None:
        out = xp.zeros((n, c, h, w), dtype=cols.dtype)
    else:
        out[...] = 0
    for i in range(kh):
        r = i * dh - ph  # the x row of output row 0 for this kernel row
        o0, o1 = _inside(r, sh, oh, h)
        for j in range(kw):
            q = j * dw - pw
            p0, p1 = _inside(q, sw, ow, w)
            if o0 < o1 and p0 < p1:
                rows = slice(r + sh * o0, r + sh * (o1 - 1) + 1, sh)
                columns = slice(q + sw * p0, q + sw * (p1 - 1) + 1, sw)
                out[:, :, rows, columns] += cols6[:, :, i, j, o0:o1, p0:p1]
    return out


def _inside(start: int, step: int, count: int, size: int) -> tuple[int, int]:
    """The outputs o0 <= o < o1 among ``count`` whose position start + step * o lies in [0, size)."""
    first = max(0, -(start // step))  # ceil(-start / step) for a negative start, else 0
    last = min(count, (size - 1 - start) // step + 1)
    return first, max(first, last)
