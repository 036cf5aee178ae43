"""Pooling: max, average, global average, adaptive average (output 1x1 or an exact divisor).

Max and average pooling loop over the KH*KW kernel offsets, each a strided slice of the whole batch
(no loop over images or pixels). Max pooling remembers, per output, *which* offset won; backward
routes the gradient there. Ties go to the first maximum in row-major window order, as in PyTorch;
padding never wins (a window of real ``-inf`` values hands its gradient to its first real input), and a
window holding a NaN outputs NaN and hands its gradient to its (last) NaN, as PyTorch's CPU kernel.
"""

from __future__ import annotations

from typing import Any

from minise import cpu
from minise.autograd import Function
from minise.backend import get_array_module
from minise.functional._checks import check_float, pair
from minise.functional.im2col import conv_out_size, pad_hw
from minise.tensor import Tensor, as_tensor

Pair = tuple[int, int]


def _offsets(kernel: Pair, stride: Pair, out_hw: Pair) -> list[tuple[int, slice, slice]]:
    """(k, rows, cols) for each kernel offset k = kh*KW + kw: the slice of the padded input it reads."""
    (kh, kw), (sh, sw), (oh, ow) = kernel, stride, out_hw
    return [
        (i * kw + j, slice(i, i + sh * (oh - 1) + 1, sh), slice(j, j + sw * (ow - 1) + 1, sw))
        for i in range(kh)
        for j in range(kw)
    ]


def space_to_depth(xpad: Any, stride: Pair) -> Any:
    """(N, C, Hp, Wp) -> phase planes (sh, sw, N, C, Hp/sh, Wp/sw) with planes[a, b] = xpad[:, :, a::sh, b::sw].

    With a stride s, the window at kernel offset (kh, kw) reads every s-th pixel: a strided inner loop,
    several times slower than a contiguous one. After this one reshuffle it is a plain unit-stride
    slice, ``planes[kh % sh, kw % sw][:, :, kh // sh : ..., kw // sw : ...]``. Hp, Wp must be multiples
    of the stride. For stride 1 it is a free reshape.
    """
    n, c, hp, wp = xpad.shape
    sh, sw = stride
    v = xpad.reshape(n, c, hp // sh, sh, wp // sw, sw).transpose(3, 5, 0, 1, 2, 4)  # (sh, sw, N, C, Hp/sh, Wp/sw)
    return v if stride == (1, 1) else get_array_module(xpad).ascontiguousarray(v)


def depth_to_space(planes: Any) -> Any:
    """The inverse of :func:`space_to_depth`."""
    sh, sw, n, c, h, w = planes.shape
    return planes.transpose(2, 3, 4, 0, 5, 1).reshape(n, c, h * sh, w * sw)


def pool_out_size(size: int, kernel: int, stride: int, pad: int, ceil_mode: bool = False) -> int:
    """floor (or ceil) of (size + 2 pad - kernel) / stride, plus 1, as PyTorch's ``pooling_output_shape``.

    With ``ceil_mode`` a last, partial window is kept only if it starts inside the input or the left
    padding: a window starting in the right padding would see padding only.
    """
    span = size + 2 * pad - kernel
    out = (span + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def _padded_size(size: int, kernel: int, stride: int, pad: int, out: int) -> int:
    """Padded length covering every window, rounded up to a multiple of the stride."""
    need = max(size + 2 * pad, (out - 1) * stride + kernel)
    return -(-need // stride) * stride


class MaxPool2dOp(Function):
    """y[n,c,oh,ow] = max_{kh,kw} x_pad[n, c, oh*s + kh, ow*s + kw]   (padding is -inf)

    Backward: dx gets gy at the argmax of each window (the first maximum on ties), summed where windows
    overlap. The forward records, per output, which kernel offset k = kh*KW + kw won. The argmax starts
    at the window's first *real* input and moves only to a strictly greater value (or to a NaN), so
    padding, which is -inf, never wins, even over a window of real -inf values.
    ``ceil_mode``: the output size rounds up (:func:`pool_out_size`); the extra windows read -inf past
    the bottom and right edges.

    How it is computed, and why (each step measured with ``python -m minise.bench ops``):
    1. Chunks of a few images, on all cores (``cpu.run_chunks``), so each chunk stays in cache.
    2. The padded chunk is split into stride phases (:func:`space_to_depth`): a window read becomes a
       unit-stride slice instead of reading every s-th value.
    3. "Wide" outputs: on a phase plane of width Wq, the window at offset (i, j) for every output is
       the *one* contiguous run ``flat[i*Wq + j : i*Wq + j + L]`` of the flattened planes, if we also
       compute outputs at the positions past OH x OW (garbage, cropped away; in backward they carry
       zero gradient). Long 1-D loops instead of one short loop per output row.
    4. No masked writes: ``arg = where(better, k, arg)`` is written as ``arg += better * (k - arg)``,
       and the gradient routing as ``gy * (arg == k)``, because a write under a random mask branches
       on every element (about 20 times slower here).
    """

    name = "max_pool2d"

    def __init__(self, kernel: Pair, stride: Pair, padding: Pair, ceil_mode: bool = False) -> None:
        super().__init__()
        self.kernel, self.stride, self.padding, self.ceil_mode = kernel, stride, padding, ceil_mode

    def _geometry(self, shape: tuple[int, ...]) -> tuple[int, int, int, int]:
        """Output size and the padded size (a multiple of the stride that covers every window)."""
        (kh, kw), (sh, sw), (ph, pw) = self.kernel, self.stride, self.padding
        oh = pool_out_size(shape[2], kh, sh, ph, self.ceil_mode)
        ow = pool_out_size(shape[3], kw, sw, pw, self.ceil_mode)
        return oh, ow, _padded_size(shape[2], kh, sh, ph, oh), _padded_size(shape[3], kw, sw, pw, ow)

    def _first_real(self, xp: Any, oh: int, ow: int, dtype: Any) -> Any:
        """(OH, OW): the offset k = kh*KW + kw of each window's first real (not padding) input."""
        (_, kw), (sh, sw), (ph, pw) = self.kernel, self.stride, self.padding
        rows = xp.maximum(ph - sh * xp.arange(oh), 0)  # padding rows above the window's first real row
        cols = xp.maximum(pw - sw * xp.arange(ow), 0)
        return (rows[:, None] * kw + cols[None, :]).astype(dtype)

    def _offsets(self, wq: int) -> list[tuple[int, int, int, int]]:
        """(k, phase row, phase column, flat offset) per kernel offset k = kh*KW + kw."""
        (kh, kw), (sh, sw) = self.kernel, self.stride
        return [(i * kw + j, i % sh, j % sw, (i // sh) * wq + j // sw) for i in range(kh) for j in range(kw)]

    def forward(self, x: Any) -> Any:
        xp = get_array_module(x)
        n, c, h, w = x.shape
        (kh, kw), (sh, sw), (ph, pw) = self.kernel, self.stride, self.padding
        oh, ow, hp, wp = self._geometry(x.shape)
        hq, wq = hp // sh, wp // sw
        y = xp.empty((n, c, oh, ow), dtype=x.dtype)
        arg = xp.empty((n, c, oh, ow), dtype=xp.uint8 if kh * kw < 256 else xp.int32)
        offsets = self._offsets(wq)
        reach = max(o for *_, o in offsets)
        first = self._first_real(xp, oh, ow, arg.dtype)  # (OH, OW)

        def work(a: int, z: int) -> None:
            xpad = xp.full((z - a, c, hp, wp), -xp.inf, dtype=x.dtype)
            xpad[:, :, ph : ph + h, pw : pw + w] = x[a:z]
            flat = space_to_depth(xpad, self.stride).reshape(sh, sw, -1)  # (sh, sw, M), M = n*C*Hq*Wq
            size = flat.shape[2] - reach  # wide outputs: every window is flat[.., o : o + size]
            yw = xp.empty(flat.shape[2], dtype=x.dtype)
            argw = xp.zeros(flat.shape[2], dtype=arg.dtype)
            argw.reshape(z - a, c, hq, wq)[:, :, :oh, :ow] = first  # where the first real input sits
            better = xp.empty(size, dtype=bool)
            nan = xp.empty(size, dtype=bool)
            step = xp.empty(size, dtype=arg.dtype)
            ys, args = yw[:size], argw[:size]
            for k, pa, pb, o in offsets:
                window = flat[pa, pb, o : o + size]
                if k == 0:
                    ys[...] = window  # if this is padding (-inf), args already points past it
                    continue
                xp.greater(window, ys, out=better)  # strict: a later equal value does not take over (ties)
                better |= xp.isnan(window, out=nan)  # a NaN takes over, as PyTorch ("val > max || isnan(val)")
                xp.maximum(ys, window, out=ys)  # NaN propagates
                xp.subtract(arg.dtype.type(k), args, out=step)  # arg = where(better, k, arg)
                step *= better
                args += step
            y[a:z] = yw.reshape(z - a, c, hq, wq)[:, :, :oh, :ow]  # crop the wide outputs
            arg[a:z] = argw.reshape(z - a, c, hq, wq)[:, :, :oh, :ow]

        cpu.run_chunks(xp, n, cpu.chunk_size(xp, n, c * hp * wp * x.itemsize, budget=1 << 20), work)
        self.save(arg, x.shape)
        return y

    def backward(self, gy: Any) -> Any:
        arg, shape = self.saved  # type: ignore[misc]
        xp = get_array_module(gy)
        n, c, h, w = shape
        (ph, pw), (sh, sw) = self.padding, self.stride
        oh, ow, hp, wp = self._geometry(shape)
        hq, wq = hp // sh, wp // sw
        offsets = self._offsets(wq)
        reach = max(o for *_, o in offsets)
        dx = xp.empty(shape, dtype=gy.dtype)

        def work(a: int, z: int) -> None:
            gw = xp.zeros((z - a, c, hq, wq), dtype=gy.dtype)  # wide: zero gradient at the garbage places
            gw[:, :, :oh, :ow] = gy[a:z]
            aw = xp.zeros((z - a, c, hq, wq), dtype=arg.dtype)
            aw[:, :, :oh, :ow] = arg[a:z]
            size = gw.size - reach
            gs, args = gw.reshape(-1)[:size], aw.reshape(-1)[:size]
            dflat = xp.zeros((sh, sw, gw.size), dtype=gy.dtype)
            routed = xp.empty(size, dtype=gy.dtype)
            for k, pa, pb, o in offsets:
                xp.multiply(gs, args == k, out=routed)  # gy where offset k won, else 0
                dflat[pa, pb, o : o + size] += routed
            dxpad = depth_to_space(dflat.reshape(sh, sw, z - a, c, hq, wq))
            dx[a:z] = dxpad[:, :, ph : ph + h, pw : pw + w]

        cpu.run_chunks(xp, n, cpu.chunk_size(xp, n, c * hp * wp * gy.itemsize, budget=1 << 20), work)
        return dx


class AvgPool2dOp(Function):
    """y[n,c,oh,ow] = (1/D) sum_{kh,kw} x_pad[n, c, oh*s + kh, ow*s + kw];   dx: gy / D spread back over each window

    D = KH*KW when padding counts (``count_include_pad=True``, PyTorch's default), else the number
    of real pixels under the window.
    """

    name = "avg_pool2d"

    def __init__(self, kernel: Pair, stride: Pair, padding: Pair, count_include_pad: bool) -> None:
        super().__init__()
        self.kernel, self.stride, self.padding, self.count_include_pad = kernel, stride, padding, count_include_pad

    def _divisor(self, xp: Any, hw: Pair, out_hw: Pair, dtype: Any) -> Any:
        (kh, kw), (ph, pw) = self.kernel, self.padding
        if self.count_include_pad or (ph, pw) == (0, 0):
            return dtype.type(kh * kw)
        ones = pad_hw(xp.ones((1, 1, *hw), dtype=dtype), ph, pw)
        count = xp.zeros((1, 1, *out_hw), dtype=dtype)
        for _, rows, cols in _offsets(self.kernel, self.stride, out_hw):
            count += ones[:, :, rows, cols]
        return count

    def forward(self, x: Any) -> Any:
        xp = get_array_module(x)
        (kh, kw), (sh, sw), (ph, pw) = self.kernel, self.stride, self.padding
        oh, ow = conv_out_size(x.shape[2], kh, sh, ph, 1), conv_out_size(x.shape[3], kw, sw, pw, 1)
        xpad = pad_hw(x, ph, pw)
        y = xp.zeros((*x.shape[:2], oh, ow), dtype=x.dtype)
        for _, rows, cols in _offsets(self.kernel, self.stride, (oh, ow)):
            y += xpad[:, :, rows, cols]
        divisor = self._divisor(xp, x.shape[2:], (oh, ow), x.dtype)
        self.save(x.shape, divisor)
        return y / divisor

    def backward(self, gy: Any) -> Any:
        shape, divisor = self.saved  # type: ignore[misc]
        xp = get_array_module(gy)
        (ph, pw) = self.padding
        g = gy / divisor
        dxpad = xp.zeros((shape[0], shape[1], shape[2] + 2 * ph, shape[3] + 2 * pw), dtype=gy.dtype)
        for _, rows, cols in _offsets(self.kernel, self.stride, gy.shape[2:]):
            dxpad[:, :, rows, cols] += g
        return dxpad[:, :, ph : ph + shape[2], pw : pw + shape[3]]


class GlobalAvgPoolOp(Function):
    """y[n, c] = (1/HW) sum_{h,w} x[n, c, h, w];   dx[n, c, h, w] = gy[n, c] / HW"""

    name = "global_avg_pool2d"

    def forward(self, x: Any) -> Any:
        self.save(x.shape)
        return x.mean(axis=(2, 3))

    def backward(self, gy: Any) -> Any:
        (shape,) = self.saved  # type: ignore[misc]
        xp = get_array_module(gy)
        g = gy / (shape[2] * shape[3])
        return xp.broadcast_to(g[:, :, None, None], shape).copy()


def _pool_args(op: str, x: Tensor, kernel_size: Any, stride: Any, padding: Any) -> tuple[Pair, Pair, Pair]:
    check_float(op, "input", x.data)
    if x.ndim != 4:
        raise ValueError(
            f"{op}: input must be 4-D (N, C, H, W), got shape {x.shape} - "
            + ("add a batch axis with x.reshape(1, *x.shape)" if x.ndim == 3 else "reshape it to (N, C, H, W)")
        )
    k = pair(op, "kernel_size", kernel_size, 1)
    s = k if stride is None else pair(op, "stride", stride, 1)
    p = pair(op, "padding", padding, 0)
    if p[0] > k[0] // 2 or p[1] > k[1] // 2:
        raise ValueError(
            f"{op}: padding {p} must be at most half the kernel size {k} (as in PyTorch) - "
            "use padding <= kernel_size // 2"
        )
    if k[0] > x.shape[2] + 2 * p[0] or k[1] > x.shape[3] + 2 * p[1]:
        raise ValueError(
            f"{op}: kernel {k} is larger than the padded input {x.shape[2] + 2 * p[0]}x{x.shape[3] + 2 * p[1]} "
            f"(input {x.shape}) - use a smaller kernel_size or more padding"
        )
    return k, s, p


def max_pool2d(input: Any, kernel_size: Any, stride: Any = None, padding: Any = 0, ceil_mode: bool = False) -> Tensor:
    """Max over each KHxKW window; ``stride`` defaults to ``kernel_size`` as in PyTorch.

    ``ceil_mode=True`` rounds the output size up, as PyTorch (:func:`pool_out_size`). PyTorch's
    ``dilation`` and ``return_indices`` are not supported.
    """
    x = as_tensor(input)
    return MaxPool2dOp(*_pool_args("max_pool2d", x, kernel_size, stride, padding), ceil_mode=ceil_mode).apply(x)


def avg_pool2d(
    input: Any, kernel_size: Any, stride: Any = None, padding: Any = 0, count_include_pad: bool = True
) -> Tensor:
    """Mean over each KHxKW window; ``stride`` defaults to ``kernel_size`` as in PyTorch."""
    x = as_tensor(input)
    k, s, p = _pool_args("avg_pool2d", x, kernel_size, stride, padding)
    return AvgPool2dOp(k, s, p, count_include_pad).apply(x)


def global_avg_pool2d(input: Any) -> Tensor:
    """(N, C, H, W) -> (N, C): the mean of every channel (the SE block's squeeze)."""
    x = as_tensor(input)
    check_float("global_avg_pool2d", "input", x.data)
    if x.ndim != 4:
        raise ValueError(
            f"global_avg_pool2d: input must be 4-D (N, C, H, W), got shape {x.shape} - reshape it to (N, C, H, W)"
        )
    return GlobalAvgPoolOp().apply(x)


def adaptive_avg_pool2d(input: Any, output_size: Any) -> Tensor:
    """Average pooling to a fixed output size, (N, C, H, W) -> (N, C, OH, OW) as in PyTorch.

    Output 1 (the global average, reshaped) and sizes that divide the input exactly are supported;
    built from GlobalAvgPoolOp / AvgPool2dOp.
    """
    x = as_tensor(input)
    o = pair("adaptive_avg_pool2d", "output_size", output_size, 1)
    if x.ndim != 4:
        raise ValueError(
            f"adaptive_avg_pool2d: input must be 4-D (N, C, H, W), got shape {x.shape} - reshape it to (N, C, H, W)"
        )
    h, w = x.shape[2:]
    if o == (1, 1):
        return global_avg_pool2d(x).reshape(x.shape[0], x.shape[1], 1, 1)
    if h % o[0] or w % o[1]:
        raise ValueError(
            f"adaptive_avg_pool2d: output size {o} does not divide the input size {(h, w)} - minise supports "
            "output 1 or exact divisors; resize the input or use avg_pool2d"
        )
    return avg_pool2d(x, (h // o[0], w // o[1]))
