"""2-D convolution (cross-correlation, as in PyTorch): im2col and one GEMM per group, kernel-row GEMMs,
Winograd or parity planes, whichever the measured rule of :func:`choose_algorithm` picks for the layer.

How the fast path works, and what each trick buys (measured in ``python -m minise.bench ops``):

* **Chunks.** The batch is cut into chunks of a few images whose im2col buffer is a few MB, so the
  buffer stays in cache between the copy that fills it and the GEMM that reads it; one whole-batch
  matrix would stream through main memory twice. On CuPy a chunk is the whole batch.
* **Threads.** On the CPU the chunks run on all cores (NumPy releases the GIL inside copies and BLAS),
  with BLAS held to one thread meanwhile: two cores splitting the batch beat two cores splitting a
  small matrix product. ``cpu.run_chunks`` owns this.
* **Small GEMMs.** OpenBLAS multiplies products of at most 10^6 multiply-adds without packing them
  first; cutting the output columns into such blocks (``cpu.gemm_columns``) runs the forward and
  input-gradient GEMMs of a 16-channel layer twice as fast.
* **The weight gradient as its transpose.** dW^T = sum_n cols gy^T holds the same numbers as
  sum_n gy cols^T, and OpenBLAS computes it up to twice as fast on these shapes (measured; not profiled why).
* **The input gradient as a convolution.** For stride 1, dL/dx is the convolution of dL/dy, padded by
  d(K-1)-p, with the kernel flipped in space and with in/out channels swapped. That is one more
  im2col + GEMM: a contiguous copy instead of col2im's scattered read-modify-write adds. With a
  stride > 1 the output gradient would need zeros between its pixels (most of the GEMM would
  multiply zeros), so there we compute the column gradient W^T gy and fold it back with col2im.
* **Kernel-row GEMMs for stride-1 layers with 8-32 channels and "same" padding along the width.**
  ``minise.functional.conv_rows`` copies the input 3 times (one copy per kernel column, shifted) instead
  of im2col's 9, and reads the kernel rows as offsets into that copy: 1.2-1.5x faster than im2col on
  these layers, 1.19x on a whole se_resnet20 training step (measured, ``BENCHMARKS.md``).
* **Winograd for 3x3, stride-1 layers with more channels.** ``minise.functional.winograd``
  computes F(4x4, 3x3) with 36 multiplications per 4x4 outputs instead of 144 (33 to 128 channels on
  maps of 4x4 and more) or F(2x2, 3x3) with 16 per 2x2 instead of 36 (more channels). It
  pays where the GEMMs dominate and loses where the copies are cheap and the GEMMs small (16 channels on
  32x32).
* **Parity planes for 3x3, stride-2 layers.** ``minise.functional.conv_parity`` builds im2col's columns
  from the input's four parity planes (every other row and column) and folds the column gradient back the
  same way, in runs of a whole plane instead of runs of OW values: col2im 3.4x faster, im2col 1.2x, on
  the 32 -> 64 layer of a CIFAR ResNet.

``MINISE_CONV_ALGORITHM`` or :func:`conv_algorithm` forces a path ("im2col", "rows", "winograd2",
"winograd4", "parity"; default "auto").

Tests hold every path equal to a naive loop over output pixels and to PyTorch.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from minise import backend, cpu
from minise.autograd import Function, is_grad_enabled
from minise.backend import get_array_module
from minise.functional import conv_parity, conv_rows, winograd
from minise.functional._checks import check_float, check_same_dtype, pair
from minise.functional.elementwise import _relu_grad, relu_of
from minise.functional.im2col import col2im, conv_out_size, im2col
from minise.tensor import Tensor, as_tensor

Pair = tuple[int, int]

# Bytes of shifted rows R per chunk in the kernel-row forward: half of cpu.chunk_size's default. A chunk's R,
# its laid-out copy and its output on the grid l wide then stay within about 4 MB (32->32 on 16x16: 16 images
# per chunk instead of 32). se_resnet20 evaluation, batch 128: +7.6 % (won 11 of 12 alternating rounds);
# training unchanged (0.99x, 5 of 10), so the backward keeps the default budget.
ROWS_FORWARD_BUDGET = 2 << 20
ALGORITHMS = ("auto", "im2col", "rows", "winograd2", "winograd4", "parity")
_algorithm = "auto"


def _check_algorithm(name: str, where: str) -> str:
    if name not in ALGORITHMS:
        raise ValueError(f"conv2d: {where} algorithm {name!r} is not one of {ALGORITHMS} - pick one of those")
    return name


def set_conv_algorithm(name: str) -> str:
    """Force how eligible convolutions run: "auto" (the measured rule of :func:`choose_algorithm`),
    "im2col", "rows" (kernel-row GEMMs), "winograd2" (F(2x2, 3x3)), "winograd4" (F(4x4, 3x3)) or "parity"
    (3x3 at stride 2 by parity planes). Returns the previous setting. Convolutions the forced path cannot
    run (see ``choose_algorithm``) use im2col."""
    global _algorithm
    previous, _algorithm = _algorithm, _check_algorithm(name, "set_conv_algorithm:")
    return previous


@contextmanager
def conv_algorithm(name: str) -> Iterator[None]:
    """``with conv_algorithm("im2col"): ...`` runs the block with that algorithm, then restores the last one."""
    previous = set_conv_algorithm(name)
    try:
        yield
    finally:
        set_conv_algorithm(previous)


def choose_algorithm(
    xp: Any,
    x_shape: tuple[int, ...],
    w_shape: tuple[int, ...],
    stride: Pair,
    padding: Pair,
    dilation: Pair,
    groups: int,
) -> str:
    """How this convolution runs: "im2col", "rows" (kernel-row GEMMs, ``conv_rows``), "winograd2",
    "winograd4" or "parity" (``conv_parity``).

    ``MINISE_CONV_ALGORITHM`` (read at each call) or :func:`set_conv_algorithm` may force a path; a forced
    path applies only where it is eligible, and every other convolution uses im2col. Eligible for "rows":
    stride 1, one group, a kernel larger than 1x1, "same" padding along the width (2 p_w = d_w (KW - 1)),
    0 <= p_h <= d_h (KH - 1). For Winograd: 3x3, stride 1,
    dilation 1, one group, padding 0-2. For "parity": 3x3, stride 2, padding 1, dilation 1, one group, even
    height and width. The "auto" rule, on NumPy only (on CuPy im2col's one big GEMM is
    what the GPU does best), with c = min(in, out channels) and p = output pixels per channel:

    ============================ ============ =====================================================
    eligible for "parity"         parity       a 3x3 stride-2 layer of a ResNet: its generic im2col and
                                               col2im run in runs of OW values, every other input value
    8 <= c <= 32                  rows         thin GEMMs: im2col's 9x copy costs most of what its GEMM
                                               costs; rows copy 3x, in runs a whole map long, and do
                                               exactly im2col's multiplications
    c <= 32 (and not above)       im2col       the stem (3 channels), thin layers rows cannot take
    p < 16 (maps under 4x4)       im2col       a 2x2 or 1x1 map fills one padded Winograd tile:
                                               Winograd multiplies more than im2col, and the kernel
                                               transform (16 x O x C numbers) is shared by too few tiles
    c <= 128                      F(4x4, 3x3)  36 multiplications per 16 outputs (F(2x2): 16 per 4)
    otherwise                     F(2x2, 3x3)  many channels, where the GEMMs dominate; with over 128
                                               channels F(4x4)'s kernel transforms (36 x O x C numbers,
                                               forward and dW) cost more than its smaller GEMMs save
    ============================ ============ =====================================================

    Since the kernel-row path lost its extra column (ninth round), forward + backward on two cores, medians of
    5 alternating rounds, ms for rows / F(4x4) / F(2x2) / im2col: batch 128: 8->8 on 16x16 1.72 / 3.85 /
    4.59 / 3.16; 16->16 on 32x32 14.7 / 35.1 / 39.9 / 24.1, on 8x8 1.31 / 1.71 / 1.85 / 2.35; 32->32 on 16x16
    12.2 / 14.4 / 19.4 / 19.4, on 8x8 3.21 / 3.46 / 5.23 / 5.76, on 4x4 1.68 / 1.81 / 1.93 / 3.60; 48->48 on
    16x16 31.9 / 24.7 / 32.2 / 37.7; 64->64 on 32x32 215 / 175 / 247 / 497, on 16x16 46.9 / 32.1 / 43.4 / 61.5,
    on 8x8 11.7 / 8.07 / 12.3 / 18.3, on 4x4 4.52 / 3.44 / 3.96 / 8.55; 128->128 on 8x8 52.0 / 25.6 / 35.0 /
    61.4, on 4x4 20.6 / 11.3 / 13.2 / 20.9; batch 32: 64->64 on 56x56 130 / 98 / 153 / 205, 128 on 28x28 131 /
    70 / 94 / 142, 256 on 14x14 149 / 95 / 96 / 151. Rows lose to F(4x4) from about 48 channels: each
    image's GEMM reads the whole weight for a few columns, and F(4x4) multiplies a quarter as much.

    Earlier measurements (kernel rows then padded on both sides), forward + backward on two cores' wall
    clock, medians of 3 alternating rounds, ms for im2col / rows / F(2x2) (PyTorch in the same run): batch
    128: 16->16 on 32x32 22.2 / 18.3 / 42.0 (13.4),
    32->32 on 16x16 19.4 / 15.4 / 21.7 (9.9), 64->64 on 8x8 18.0 / 15.3 / 13.7 (8.5); ResNet-18's layers
    at batch 32: 64->64 on 56x56 215 / 143 / 156 (115), 128 on 28x28 140 / 148 / 102 (109), 256 on 14x14
    141 / 149 / 87 (100), 512 on 7x7 146 / 231 / 156 (97). Rows lose on small maps with many channels:
    each image's GEMM reads the whole weight for a few columns (and when these were measured, rows padded on
    both sides added (W + 2p) / W more multiplications, 1.25x on 8x8; rows now do exactly im2col's).
    Earlier, one core's CPU time, F(2x2) / im2col: 0.54
    for 128->128 on 8x8, 0.46 for 512->512 on 4x4 at batch 32, but 1.25 for 256->256 on 2x2 and 4.4 for
    512->512 on 1x1. F(4x4) against F(2x2), forward + backward, two cores, medians of 5 alternating
    rounds, ms (since the transforms became matrix products, ``winograd.input_transform``): batch 128:
    32->32 on 8x8 5.67 / 7.76, 64->64 on 8x8 8.87 / 12.45 (rows 15.02); batch 32: 128 on 28x28
    89.0 / 110.2, 256 on 14x14 99.3 / 95.8, 512 on 7x7 182.1 / 143.4, 512 on 4x4 90.2 / 58.5. A
    se_resnet20 step with F(4x4) on its 64-channel layers: training 1.036x (won 5 of 8), evaluation
    1.046x (9 of 10). F(4x4)'s float32 error is about 10x F(2x2)'s (1e-5 against 1e-6 of the largest
    value, ``tests/test_winograd.py``), as in cuDNN's and oneDNN's F(4x4) kernels. ``BENCHMARKS.md`` has
    the tables. Parity planes against im2col for the 3x3 stride-2 layers, forward + backward, medians of 5
    alternating rounds: batch 128, 16->32 on 32x32 1.18x faster, 32->64 on 16x16 1.18x; batch 32, 64->128 on
    56x56 1.11x, 128->256 on 28x28 1.05x, 256->512 on 14x14 1.09x; a se_resnet20 step: evaluation 1.096x
    (won 7 of 10), training 1.002x (4 of 8).
    """
    name = _check_algorithm(os.environ.get("MINISE_CONV_ALGORITHM", _algorithm), "MINISE_CONV_ALGORITHM")
    o, cg, kh, kw = w_shape
    wino = (
        (kh, kw) == (3, 3)
        and stride == (1, 1)
        and dilation == (1, 1)
        and groups == 1
        and 0 <= padding[0] <= 2
        and 0 <= padding[1] <= 2
    )
    rows = conv_rows.eligible(w_shape, stride, padding, dilation, groups)
    parity = conv_parity.eligible(x_shape, w_shape, stride, padding, dilation, groups)
    if name == "rows":
        return "rows" if rows else "im2col"
    if name.startswith("winograd"):
        return name if wino else "im2col"
    if name == "parity":
        return "parity" if parity else "im2col"
    if name == "im2col" or xp is not np:
        return "im2col"
    if parity:
        return "parity"
    pixels = (x_shape[2] + 2 * padding[0] - dilation[0] * (kh - 1)) * (
        x_shape[3] + 2 * padding[1] - dilation[1] * (kw - 1)
    )
    c = min(cg, o)
    if rows and 8 <= c <= 32:
        return "rows"
    if wino and c > 32 and pixels >= 16:
        return "winograd4" if c <= 128 else "winograd2"
    return "im2col"


def _one_gemm(m: int, length: int, n: int) -> bool:
    """Whether a weight matrix with ``m`` rows times ``n`` images' columns of ``length`` pixels each should
    be one GEMM over all the images rather than one GEMM per image.

    Per image, the BLAS reads the whole weight matrix for only ``length`` columns: on small maps with
    many channels (ResNet-18's last stage: a 512 x 4,608 weight, 9.4 MB, for 1 to 49 pixels) that is a
    matrix-vector product, bound by memory, repeated for every image. Gathering the images' columns side
    by side, (K, n * L), costs one copy of the columns (as small as the maps) and gives one GEMM that reads
    the weight once. It pays when the weight outgrows the columns, that is when ``length < m``.
    """
    return n > 1 and length < m


def _gemm_into(a: Any, b: Any, out: Any) -> None:
    """out[...] = a @ b for a (M, K), b (n, K, L), out (n, M, L): in blocks of columns sized for the BLAS
    (``cpu.gemm_columns``), each written straight into ``out`` when out is one contiguous block; or, on
    small maps (``_one_gemm``), as one GEMM a (M, K) x (K, n L) over all the images."""
    xp = get_array_module(b)
    n, k, length = b.shape
    if _one_gemm(a.shape[0], length, n):
        side_by_side = b.transpose(1, 0, 2).reshape(k, n * length)  # (K, n*L): image i's columns i*L..i*L+L-1
        out[...] = (a @ side_by_side).reshape(a.shape[0], n, length).transpose(1, 0, 2)
        return
    step = cpu.gemm_columns(xp, a.shape[0], a.shape[1], length)
    if step == length and out.flags.c_contiguous:
        xp.matmul(a, b, out=out)  # no temporary
        return
    for s in range(0, length, step):
        out[..., s : s + step] = a @ b[..., s : s + step]


def _conv_chunk(x: Any, w: Any, stride: Pair, padding: Pair, dilation: Pair, groups: int, out: Any) -> Any:
    """out[...] = conv2d(x, w) for one chunk of images, by im2col + one GEMM per group. Returns the columns
    (n, C*KH*KW, OH*OW), which the backward of a strided convolution reuses for its weight gradient."""
    n = x.shape[0]
    o, cg, kh, kw = w.shape
    og, k = o // groups, cg * kh * kw
    cols = im2col(x, (kh, kw), stride, padding, dilation)  # (n, C*KH*KW, OH*OW)
    w2 = w.reshape(groups, og, k)  # (G, O/G, Cg*KH*KW)
    out3 = out.reshape(n, o, -1)  # (n, O, OH*OW), a view of out
    for g in range(groups):
        _gemm_into(w2[g], cols[:, g * k : (g + 1) * k], out3[:, g * og : (g + 1) * og])
    return cols


def _flipped(w: Any, groups: int) -> Any:
    """The kernel of the transposed convolution: (O, Cg, KH, KW) -> (C, O/G, KH, KW), flipped in space.

    Within each group, output and input channels swap roles; the spatial flip turns cross-correlation
    into its adjoint.
    """
    o, cg, kh, kw = w.shape
    og = o // groups
    wg = w.reshape(groups, og, cg, kh, kw)[:, :, :, ::-1, ::-1]  # (G, O/G, Cg, KH, KW)
    return wg.transpose(0, 2, 1, 3, 4).reshape(groups * cg, og, kh, kw).copy()  # (C, O/G, KH, KW)


class Conv2dOp(Function):
    """y[n, o] = b[o] + sum_{c in group(o), kh, kw} W[o, c, kh, kw] x_pad[n, c, oh*s + kh*d, ow*s + kw*d]

    Shapes: x (N, C, H, W); W (O, C/G, KH, KW); b (O,); y (N, O, OH, OW), OH = floor((H+2p-d(KH-1)-1)/s)+1.
    As GEMMs per group g, with cols = im2col(x) (C/G*KH*KW, OH*OW) per image:
        forward   y_g   = W_g cols_g
        backward  dW_g  = sum_n gy_g cols_g^T  (computed as its transpose, sum_n cols_g gy_g^T),
                  db    = sum_{n,h,w} gy,
                  dx    = col2im(W_g^T gy_g)  = conv2d(pad(gy), flip(W)^T)   (the latter for stride 1)
    With ``relu`` (:func:`conv2d_relu`): y = max(that, 0), and the backward first masks, gy <- gy [y > 0].
    Derivation: lesson 05.
    """

    name = "conv2d"

    def __init__(
        self,
        stride: Pair,
        padding: Pair,
        dilation: Pair,
        groups: int,
        algorithm: str = "im2col",
        relu: bool = False,
        weight_needs_grad: bool = True,
    ) -> None:
        super().__init__()
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups
        self.algorithm = algorithm  # "im2col", "rows", "winograd2", "winograd4" or "parity" (choose_algorithm)
        self.tile = int(algorithm[-1]) if algorithm.startswith("winograd") else 0  # Winograd's F(tile x tile, 3x3)
        self.relu = relu  # y = max(conv + b, 0) in one op (conv2d_relu, for batch-norm-folded models)
        # whether the forward keeps what dW reads again (Winograd's V, a strided convolution's columns): the
        # weight's requires_grad, known before forward runs (needs_input_grad is set after it)
        self.weight_needs_grad = weight_needs_grad
        if relu:
            self.name = "conv2d_relu"

    def forward(self, x: Any, w: Any, b: Any) -> Any:
        xp = get_array_module(x)
        n, c, h, wd = x.shape
        o, _, kh, kw = w.shape
        (sh, sw), (ph, pw), (dh, dw) = self.stride, self.padding, self.dilation
        oh, ow = conv_out_size(h, kh, sh, ph, dh), conv_out_size(wd, kw, sw, pw, dw)
        y = xp.empty((n, o, oh, ow), dtype=x.dtype)
        y3 = y.reshape(n, o, oh * ow)
        bias = None if b is None else cpu.channel_plane(xp, b, oh * ow)  # (1, O, OH*OW), or (1, O, 1) if large
        relu = self.relu

        def epilogue(a: int, z: int) -> None:
            """y[a:z] = max(y[a:z] + b, 0) (the max only for a fused ReLU) on the chunk the GEMMs just wrote,
            while it is in cache: a whole-batch pass after the chunks would read y from memory again."""
            if bias is not None:
                y3[a:z] += bias
            if relu:
                relu_of(y[a:z], out=y[a:z])

        finish = epilogue if bias is not None or relu else None
        keep_for_dw = is_grad_enabled() and self.weight_needs_grad  # a backward will compute dW
        transformed: Any = None
        if self.tile:
            _, transformed = winograd.conv3x3(
                x, w, self.padding, self.tile, out=y, keep_transformed=keep_for_dw, epilogue=finish
            )
        elif self.algorithm == "rows":
            w_rows = conv_rows.kernel_rows(w)
            hp = conv_rows.padded_size(h, wd, (kh, kw), self.padding, self.dilation)[0]  # rows of the flat map
            size = cpu.chunk_size(xp, n, c * kw * hp * wd * x.itemsize, ROWS_FORWARD_BUDGET)  # R's bytes

            def rows_work(a: int, z: int) -> None:
                conv_rows.conv_chunk(x[a:z], w_rows, self.padding, self.dilation, y[a:z])
                if finish is not None:
                    finish(a, z)

            cpu.run_chunks(xp, n, size, rows_work)
        else:
            size = cpu.chunk_size(xp, n, c * kh * kw * oh * ow * x.itemsize)
            # A strided convolution keeps each chunk's columns for the weight gradient (a backward would
            # build the same ones again): KH KW / (S_h S_w) = 2.25 times x for 3x3 stride 2, held from the
            # forward to the backward. Stride 1 keeps none: there the columns are KH KW = 9 times x.
            kept: dict[tuple[int, int], Any] | None = {} if keep_for_dw and (sh, sw) != (1, 1) else None

            w_taps = conv_parity.weight_matrix(w) if self.algorithm == "parity" else None  # (O, 9 C)

            def work(a: int, z: int) -> None:
                if w_taps is not None:  # by parity planes: the columns in tap order, the weight to match
                    cols = conv_parity.im2col(x[a:z])
                    _gemm_into(w_taps, cols, y[a:z].reshape(z - a, o, -1))
                else:
                    cols = _conv_chunk(x[a:z], w, self.stride, self.padding, self.dilation, self.groups, y[a:z])
                if kept is not None:
                    kept[(a, z)] = cols
                if finish is not None:
                    finish(a, z)

            cpu.run_chunks(xp, n, size, work)
            transformed = kept
        # transformed: Winograd's V per chunk of x (a list), or a strided convolution's columns per chunk (a
        # dict), for the weight gradient; y: the ReLU's mask
        self.save(x, w, transformed, y if relu else None)
        return y

    def _through_relu(self, gy: Any) -> Any:
        """The gradient at the convolution's output: gy [y > 0] after a fused ReLU, else gy itself."""
        if not self.relu:
            return gy
        y = self.saved[3]  # type: ignore[index]
        return backend.elementwise(_relu_grad, gy, y, like=gy)

    def backward(self, gy: Any) -> tuple[Any, Any, Any]:
        gy = self._through_relu(gy)
        if self.tile:
            return self._winograd_backward(gy)
        if self.algorithm == "rows":
            return self._rows_backward(gy)
        x, w, kept_cols = self.saved[:3]  # type: ignore[index]
        xp = get_array_module(x)
        n, c, h, wd = x.shape
        o, cg, kh, kw = w.shape
        g_, og, k = self.groups, o // self.groups, cg * kh * kw
        (sh, sw), (ph, pw), (dh, dw) = self.stride, self.padding, self.dilation
        need_x, need_w, need_b = self.needs_input_grad
        oh, ow = gy.shape[2:]
        unit_stride = (sh, sw) == (1, 1)
        wf = _flipped(w, g_) if need_x and unit_stride else None
        dx: Any = xp.empty(x.shape, dtype=x.dtype) if need_x else None  # C-contiguous, whatever x is
        parity = self.algorithm == "parity"  # columns and weight in tap order (i, j, c): conv_parity
        w3 = (conv_parity.weight_matrix(w) if parity else w).reshape(g_, og, k)
        # per image: the columns of x (and, with stride > 1, of dx, the same size); for stride 1, those of gy
        per_image = max(c * kh * kw * oh * ow, o * kh * kw * h * wd if need_x and unit_stride else 0)
        size = cpu.chunk_size(xp, n, per_image * x.itemsize)

        def work(a: int, z: int) -> Any:
            g3 = gy[a:z].reshape(z - a, o, oh * ow)  # (n, O, OH*OW)
            dw_part = None
            if need_w:
                cols = kept_cols.get((a, z)) if kept_cols else None  # the forward's, for the same chunk
                if cols is None and parity:
                    cols = conv_parity.im2col(x[a:z])  # (n, 9 C, L)
                elif cols is None:
                    cols = im2col(x[a:z], (kh, kw), self.stride, self.padding, self.dilation)  # (n, C*KH*KW, L)
                dw_part = xp.empty((g_, og, k), dtype=x.dtype)
                length = oh * ow
                for g in range(g_):
                    # dW_g^T = sum over images of cols_g gy_g^T: one GEMM per image, (K, L) x (L, O/G), then a
                    # small sum. OpenBLAS runs this orientation about twice as fast as gy_g cols_g^T for 16
                    # channels (measured); tensordot would first copy both operands into transposed
                    # whole-chunk matrices. On small maps (_one_gemm) the per-image products would each
                    # write a (K, O/G) block as large as the weight: there one GEMM (K, n L) x (n L, O/G).
                    gy_t = g3[:, g * og : (g + 1) * og].transpose(0, 2, 1)  # (n, L, O/G), a view
                    cols_g = cols[:, g * k : (g + 1) * k]  # (n, K, L)
                    if _one_gemm(og, length, z - a):  # dW_g = gy_g (O/G, n L) x cols_g^T (n L, K), no transposed output
                        side_by_side = cols_g.transpose(1, 0, 2).reshape(k, (z - a) * length)  # (K, n*L), a copy
                        gy_rows = g3[:, g * og : (g + 1) * og].transpose(1, 0, 2).reshape(og, -1)  # (O/G, n*L)
                        xp.matmul(gy_rows, side_by_side.T, out=dw_part[g])
                    else:
                        dw_part[g] = (cols_g @ gy_t).sum(axis=0).T
            if need_x and unit_stride:
                q = (dh * (kh - 1) - ph, dw * (kw - 1) - pw)  # padding of the transposed convolution
                _conv_chunk(gy[a:z], wf, (1, 1), q, self.dilation, g_, dx[a:z])
            elif need_x:
                dcols = xp.empty((z - a, c * kh * kw, oh * ow), dtype=x.dtype)
                for g in range(g_):
                    _gemm_into(w3[g].T, g3[:, g * og : (g + 1) * og], dcols[:, g * k : (g + 1) * k])  # (n, K, L)
                if parity:
                    conv_parity.col2im(dcols, (z - a, c, h, wd), out=dx[a:z])
                else:
                    col2im(dcols, (z - a, c, h, wd), (kh, kw), self.stride, self.padding, self.dilation, out=dx[a:z])
            return dw_part

        parts = cpu.run_chunks(xp, n, size, work)
        dw_ = None
        if need_w:
            dw_ = parts[0]
            for p in parts[1:]:
                dw_ += p
            dw_ = conv_parity.weight_from_matrix(dw_[0], c) if parity else dw_.reshape(w.shape)
        db = gy.sum(axis=(0, 2, 3)) if need_b else None
        return dx, dw_, db

    def _rows_backward(self, gy: Any) -> tuple[Any, Any, Any]:
        """dW from the kernel-row GEMMs of x and gy (``conv_rows.weight_grad_chunk``); dx = the kernel-row
        convolution of gy, padded by d (K - 1) - p, with the flipped, channel-swapped kernel."""
        x, w = self.saved[:2]  # type: ignore[index]
        xp = get_array_module(x)
        n, c, h, wd = x.shape
        o, _, kh, kw = w.shape
        (ph, pw), (dh, dw) = self.padding, self.dilation
        need_x, need_w, need_b = self.needs_input_grad
        q = (dh * (kh - 1) - ph, dw * (kw - 1) - pw)  # padding of the transposed convolution
        wf_rows = conv_rows.kernel_rows(_flipped(w, 1)) if need_x else None
        dx: Any = xp.empty(x.shape, dtype=x.dtype) if need_x else None
        oh, ow = gy.shape[2:]
        hp = conv_rows.padded_size(h, wd, (kh, kw), self.padding, self.dilation)[0]  # x's flat map's rows
        hq = conv_rows.padded_size(oh, ow, (kh, kw), q, self.dilation)[0]  # gy's, for dx
        per_image = max(c * kw * hp * wd, o * kw * hq * ow)  # the two R
        size = cpu.chunk_size(xp, n, per_image * x.itemsize)

        def work(a: int, z: int) -> Any:
            part = None
            if need_w:
                part = conv_rows.weight_grad_chunk(x[a:z], gy[a:z], (kh, kw), self.padding, self.dilation)
            if need_x:
                conv_rows.conv_chunk(gy[a:z], wf_rows, q, self.dilation, dx[a:z])
            return part

        parts = cpu.run_chunks(xp, n, size, work)
        dw_ = None
        if need_w:
            dwt = parts[0]
            for p in parts[1:]:
                dwt += p
            dw_ = conv_rows.weight_grad_from_rows(dwt, c, kw)
        db = gy.sum(axis=(0, 2, 3)) if need_b else None
        return dx, dw_, db

    def _winograd_backward(self, gy: Any) -> tuple[Any, Any, Any]:
        """dx = Winograd conv of gy padded by 2 - p with the flipped, channel-swapped kernel;
        dW = G^T (sum over tiles of V^T dM) G (``winograd.weight_grad_chunk``), with each chunk's V kept
        from the forward (the same chunks: ``winograd.images_per_chunk``)."""
        x, w, transformed = self.saved[:3]  # type: ignore[index]
        xp = get_array_module(x)
        n = x.shape[0]
        o = w.shape[0]
        m, (ph, pw) = self.tile, self.padding
        need_x, need_w, need_b = self.needs_input_grad
        dx = winograd.conv3x3(gy, _flipped(w, 1), (2 - ph, 2 - pw), m)[0] if need_x else None
        dw_ = None
        if need_w:
            size = winograd.images_per_chunk(xp, x.shape, o, self.padding, m, x.itemsize)
            kept = {} if transformed is None else {(a, z): v for a, z, v in transformed}

            def chunk(a: int, z: int) -> Any:  # V from the forward when it cut the same chunk (the same threads)
                return winograd.weight_grad_chunk(x[a:z], gy[a:z], (ph, pw), m, kept.get((a, z)))

            parts = cpu.run_chunks(xp, n, size, chunk)
            dut = parts[0]
            for p in parts[1:]:
                dut += p
            dw_ = winograd.weight_grad_from_transformed(dut, m)
        db = gy.sum(axis=(0, 2, 3)) if need_b else None
        return dx, dw_, db


def conv2d(
    input: Any,
    weight: Any,
    bias: Any = None,
    stride: int | Pair = 1,
    padding: int | Pair = 0,
    dilation: int | Pair = 1,
    groups: int = 1,
) -> Tensor:
    """2-D convolution with PyTorch's signature and layouts: input (N, C, H, W), weight (O, C/groups, KH, KW)."""
    return _conv2d("conv2d", input, weight, bias, stride, padding, dilation, groups, relu=False)


def conv2d_relu(
    input: Any,
    weight: Any,
    bias: Any = None,
    stride: int | Pair = 1,
    padding: int | Pair = 0,
    dilation: int | Pair = 1,
    groups: int = 1,
) -> Tensor:
    """``relu(conv2d(input, weight, bias, ...))`` as one op: the bias and the ReLU are applied to each chunk of
    the output right after its GEMMs wrote it, while it is in cache, instead of in two more passes over the
    whole output. What a convolution followed by batch norm and ReLU becomes once the batch norm is folded
    into it (``fused.fold_batch_norm``). Backward: g = gy [y > 0], then the convolution's gradients of g."""
    return _conv2d("conv2d_relu", input, weight, bias, stride, padding, dilation, groups, relu=True)


def _conv2d(
    op: str,
    input: Any,
    weight: Any,
    bias: Any,
    stride: int | Pair,
    padding: int | Pair,
    dilation: int | Pair,
    groups: int,
    relu: bool,
) -> Tensor:
    """conv2d (and conv2d_relu): check the arguments, pick the algorithm, apply the op."""
    x, w = as_tensor(input), as_tensor(weight)
    b = None if bias is None else as_tensor(bias)
    for name, t in (("input", x), ("weight", w), ("bias", b)):
        check_float(op, name, None if t is None else t.data)
    if w.ndim != 4:
        raise ValueError(
            f"{op}: weight must be 4-D (out_channels, in_channels/groups, KH, KW), got shape {w.shape} - "
            "reshape it, e.g. w.reshape(out_channels, in_channels, 1, 1) for a 1x1 kernel"
        )
    if x.ndim != 4:
        raise ValueError(
            f"{op}: input must be 4-D (N, C, H, W), got shape {x.shape} - "
            + ("add a batch axis with x.reshape(1, *x.shape)" if x.ndim == 3 else "reshape it to (N, C, H, W)")
        )
    s, p, d = pair(op, "stride", stride, 1), pair(op, "padding", padding, 0), pair(op, "dilation", dilation, 1)
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise TypeError(f"{op}: groups must be a positive int, got {groups!r} - e.g. groups=1")
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    if c % groups or o % groups:
        raise ValueError(
            f"{op}: groups={groups} must divide both in_channels ({c}) and out_channels ({o}) - "
            "choose groups among their common divisors"
        )
    if c != cg * groups:
        raise ValueError(
            f"{op}: input has {c} channels but weight expects {cg * groups} (weight {w.shape}, groups={groups}); "
            "in_channels must equal weight.shape[1] * groups"
        )
    eff_h, eff_w = d[0] * (kh - 1) + 1, d[1] * (kw - 1) + 1
    if eff_h > h + 2 * p[0] or eff_w > wd + 2 * p[1]:
        raise ValueError(
            f"{op}: kernel {kh}x{kw} (dilation {d}, spanning {eff_h}x{eff_w}) is larger than the padded input "
            f"{h + 2 * p[0]}x{wd + 2 * p[1]} (input {x.shape}, padding {p}) - use a smaller kernel or more padding"
        )
    if b is not None and b.shape != (o,):
        raise ValueError(
            f"{op}: bias has shape {b.shape} but weight {w.shape} needs ({o},) - one bias per output channel"
        )
    check_same_dtype(op, input=x.data, weight=w.data, bias=None if b is None else b.data)
    algorithm = choose_algorithm(get_array_module(x.data), x.shape, w.shape, s, p, d, groups)
    return Conv2dOp(s, p, d, groups, algorithm, relu, weight_needs_grad=w.requires_grad).apply(x, w, b)
