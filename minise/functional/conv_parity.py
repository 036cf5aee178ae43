"""im2col and col2im for a 3x3 convolution at stride 2 (padding 1), by the four parity planes of the input.

A 3x3, stride-2 convolution with padding 1 reads, for output pixel (o, p), the input rows 2o - 1, 2o, 2o + 1
and columns 2p - 1, 2p, 2p + 1. Split the input into its four parity planes (H = 2 OH, W = 2 OW)

    P[a, b][o, p] = x[2o + a, 2p + b]        a, b in {0, 1}, each plane OH x OW,

and every kernel tap (i, j) reads one plane, shifted by at most one row and one column:

    tap row i = 0: x row 2o - 1 = plane row a = 1, shifted: row o - 1  (row -1 is padding: zero)
    tap row i = 1: x row 2o     = plane row a = 0, row o
    tap row i = 2: x row 2o + 1 = plane row a = 1, row o

(the same for the columns with j). So im2col is four strided copies, one per plane, for the taps
(1, 1), (1, 2), (2, 1) and (2, 2), and five contiguous copies for the others, each an earlier tap's
columns shifted by one row (OW values), one column (one value) or both, with the values that fall on the
padding set to zero. With the columns stored tap by tap, (i, j, c) instead of im2col's (c, i, j), each
tap's columns for one image are one run of C * OH * OW values, and a shift is one offset into that run:

    generic im2col: 9 * N * C * OH runs of OW values (8 on a 16 x 16 input), each from every other input value
    by planes:      4 * N * C * OH runs for the planes, then 5 * N runs of C * OH * OW values, then the
                    padding's zeros: 3 * N * C runs of OW (output row 0 of the taps i = 0) and 3 * N * C
                    strided runs of OH (output column 0 of the taps j = 0)

The runs are what NumPy pays for: each is one call of its inner loop, and at OW = 8 that call costs more
than its 8 values. col2im, the adjoint, runs the same steps backwards: it adds the shifted taps onto the
four unshifted ones in place (one run per image each), then writes each sum into its plane of dx, one
strided copy per plane: 9 strided adds onto a zeroed dx become 4 strided copies.

The weight matrix follows the columns' order: (O, 3, 3, C) flattened, :func:`weight_matrix`; the weight
gradient computed in that order goes back with :func:`weight_from_matrix`. Measured on one chunk of 16
images, 32 -> 64 channels on 16 x 16 (one core of the machine of ``BENCHMARKS.md``): im2col 0.24 ms ->
0.20 ms, col2im 0.57 ms -> 0.17 ms. Tests hold both equal to :mod:`minise.functional.im2col` and to its
adjoint, and the convolution equal to the generic path and to finite differences.
"""

from __future__ import annotations

from typing import Any

from minise.backend import get_array_module


def eligible(
    x_shape: tuple[int, ...],
    w_shape: tuple[int, ...],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    groups: int,
) -> bool:
    """Whether a convolution can run by parity planes: a 3x3 kernel, stride 2, padding 1, dilation 1, one group,
    and an input of even height and width (so that every plane has OH x OW values)."""
    h, w = x_shape[2], x_shape[3]
    return (
        tuple(w_shape[2:]) == (3, 3)
        and stride == (2, 2)
        and padding == (1, 1)
        and dilation == (1, 1)
        and groups == 1
        and h % 2 == 0
        and w % 2 == 0
    )


def weight_matrix(w: Any) -> Any:
    """W (O, C, 3, 3) -> (O, 9 C) with columns in the order (i, j, c) of :func:`im2col`'s rows (a copy, or for
    one channel a view: only read)."""
    o = w.shape[0]
    return w.transpose(0, 2, 3, 1).reshape(o, -1)


def weight_from_matrix(m: Any, c: int) -> Any:
    """The inverse of :func:`weight_matrix`: (O, 9 C) in the order (i, j, c) -> (O, C, 3, 3)."""
    o = m.shape[0]
    return get_array_module(m).ascontiguousarray(m.reshape(o, 3, 3, c).transpose(0, 3, 1, 2))


def im2col(x: Any) -> Any:
    """x (N, C, 2 OH, 2 OW) -> cols (N, 9 C, OH OW) with rows in the order (i, j, c):
    cols[n, (3 i + j) C + c, o OW + p] = x_pad[n, c, 2o + i, 2p + j] (x padded by one on each side)."""
    n, c, h, w = x.shape
    oh, ow = h // 2, w // 2
    run = c * oh * ow  # one tap's columns for one image
    xp = get_array_module(x)
    cols = xp.empty((n, 9 * c, oh * ow), dtype=x.dtype)
    taps = cols.reshape(n, 3, 3, run)  # taps[:, i, j]: tap (i, j), one run per image
    grid = cols.reshape(n, 3, 3, c, oh, ow)  # the same, by channel and output pixel
    planes = x.reshape(n, c, oh, 2, ow, 2)  # planes[:, :, :, a, :, b] = P[a, b]
    grid[:, 1, 1] = planes[:, :, :, 0, :, 0]  # the unshifted taps: one strided copy per plane
    grid[:, 1, 2] = planes[:, :, :, 0, :, 1]
    grid[:, 2, 1] = planes[:, :, :, 1, :, 0]
    grid[:, 2, 2] = planes[:, :, :, 1, :, 1]
    taps[:, 1, 0, 1:] = taps[:, 1, 2, :-1]  # one column to the left: P[0, 1][o, p - 1]
    taps[:, 0, 1, ow:] = taps[:, 2, 1, :-ow]  # one row up: P[1, 0][o - 1, p]
    taps[:, 0, 2, ow:] = taps[:, 2, 2, :-ow]  # P[1, 1][o - 1, p]
    taps[:, 2, 0, 1:] = taps[:, 2, 2, :-1]  # P[1, 1][o, p - 1]
    taps[:, 0, 0, ow + 1 :] = taps[:, 2, 2, : -ow - 1]  # P[1, 1][o - 1, p - 1]
    # what the shifts carried over from the previous row or channel, and the first values they left unset,
    # are the padding
    _zero_padding(grid)
    return cols


def col2im(dcols: Any, x_shape: tuple[int, ...], out: Any = None) -> Any:
    """The adjoint of :func:`im2col`: dcols (N, 9 C, OH OW), rows in the order (i, j, c) -> dx (N, C, 2 OH, 2 OW),
    the taps that read each input value added up. ``dcols`` is used as scratch (overwritten). Written into
    ``out`` if given, else a new array.

    Each plane of dx receives the taps that read it, shifted back:
        P[0, 0] = tap (1, 1)
        P[0, 1] = tap (1, 2) + tap (1, 0) one column to the right
        P[1, 0] = tap (2, 1) + tap (0, 1) one row down
        P[1, 1] = tap (2, 2) + tap (2, 0) one column right + tap (0, 2) one row down + tap (0, 0) both
    """
    n, c, h, w = x_shape
    oh, ow = h // 2, w // 2
    run = c * oh * ow
    xp = get_array_module(dcols)
    dcols = xp.ascontiguousarray(dcols)  # so that the views below share its memory
    taps = dcols.reshape(n, 3, 3, run)
    grid = dcols.reshape(n, 3, 3, c, oh, ow)
    # the values that im2col read from the padding carry no gradient to x: zero them, so that the shifted
    # runs below carry only zeros across the end of a row or a channel
    _zero_padding(grid)
    taps[:, 1, 2, :-1] += taps[:, 1, 0, 1:]
    taps[:, 2, 1, :-ow] += taps[:, 0, 1, ow:]
    taps[:, 2, 2, :-1] += taps[:, 2, 0, 1:]
    taps[:, 2, 2, :-ow] += taps[:, 0, 2, ow:]
    taps[:, 2, 2, : -ow - 1] += taps[:, 0, 0, ow + 1 :]
    if out is None:
        out = xp.empty((n, c, h, w), dtype=dcols.dtype)
    elif not out.flags.c_contiguous:  # its reshape below would be a copy, and the planes written into that copy
        raise ValueError(f"conv_parity.col2im: out {out.shape} must be C-contiguous - pass xp.empty({x_shape})")
    planes = out.reshape(n, c, oh, 2, ow, 2)
    planes[:, :, :, 0, :, 0] = grid[:, 1, 1]
    planes[:, :, :, 0, :, 1] = grid[:, 1, 2]
    planes[:, :, :, 1, :, 0] = grid[:, 2, 1]
    planes[:, :, :, 1, :, 1] = grid[:, 2, 2]
    return out


def _zero_padding(grid: Any) -> None:
    """Zero the columns that read the padding, in place: grid (N, 3, 3, C, OH, OW), taps (i, j) first. The taps
    i = 0 read input row -1 at output row 0, the taps j = 0 input column -1 at output column 0."""
    grid[:, 0, :, :, 0, :] = 0
    grid[:, :, 0, :, :, 0] = 0
