"""Hypothesis strategies for the op tests.

Every strategy builds a *valid* case directly: it draws the output size and derives the input size
from it (never ``assume``), so no example is thrown away. The values of a case come from a drawn
seed and NumPy's Generator (fast, and shrinkable through the seed); every array is float64.

Kinked ops need inputs away from their kink: :func:`away_from_zero` keeps every value at least 1e-2
from 0 and :func:`distinct_values` keeps any two values at least 5e-3 apart, both far more than the
gradcheck step eps = 1e-6, so central differences never straddle a kink or a tie.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from hypothesis import strategies as st

Pair = tuple[int, int]

seeds = st.integers(0, 2**32 - 1)


# --------------------------------------------------------------------------------------------------
# values
# --------------------------------------------------------------------------------------------------
def normal(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    """Standard normal float64 values."""
    return np.random.default_rng(seed).standard_normal(shape)


def away_from_zero(seed: int, shape: tuple[int, ...], margin: float = 1e-2) -> np.ndarray:
    """Values of random sign with |v| >= margin (for relu's kink at 0)."""
    rng = np.random.default_rng(seed)
    sign = np.where(rng.random(shape) < 0.5, -1.0, 1.0)
    return sign * (margin + np.abs(rng.standard_normal(shape)))


def distinct_values(seed: int, shape: tuple[int, ...], gap: float = 1e-2) -> np.ndarray:
    """Values in random order, any two at least gap/2 apart (for max and max pooling: no ties)."""
    rng = np.random.default_rng(seed)
    size = int(np.prod(shape, dtype=np.int64))
    ranks = rng.permutation(size).astype(np.float64) - size / 2
    return ((ranks + rng.uniform(0.0, 0.5, size)) * gap).reshape(shape)


def positive(seed: int, shape: tuple[int, ...], low: float = 0.5, high: float = 2.0) -> np.ndarray:
    """Values in [low, high] (for log, and for the base of pow and the divisor of div)."""
    return np.random.default_rng(seed).uniform(low, high, shape)


@st.composite
def arrays(draw: st.DrawFn, shape: tuple[int, ...], kind: str = "normal") -> np.ndarray:
    """A float64 array of ``shape`` whose values come from a drawn seed (kind: normal, away, distinct, positive)."""
    seed = draw(seeds)
    maker = {"normal": normal, "away": away_from_zero, "distinct": distinct_values, "positive": positive}[kind]
    return maker(seed, shape)


@st.composite
def shapes(draw: st.DrawFn, min_dims: int = 0, max_dims: int = 3, max_side: int = 4) -> tuple[int, ...]:
    return tuple(draw(st.lists(st.integers(1, max_side), min_size=min_dims, max_size=max_dims)))


def _input_size(draw: st.DrawFn, out: int, span: int, stride: int, pad: int) -> int:
    """An input size with floor((size + 2 pad - span) / stride) + 1 == out and size >= 1.

    size = (out - 1) * stride + span - 2 pad + extra with 0 <= extra < stride keeps the floor at
    out - 1; extra is raised where needed to keep size >= 1 (callers draw ``out`` at least the
    output of a 1-pixel input, so that extra stays below the stride).
    """
    base = (out - 1) * stride + span - 2 * pad
    extra = draw(st.integers(max(0, 1 - base), stride - 1))
    return base + extra


def _output_size(draw: st.DrawFn, span: int, stride: int, pad: int, max_out: int) -> int:
    """An output size reachable with an input of at least one pixel."""
    smallest = max(1, (1 + 2 * pad - span) // stride + 1)
    return draw(st.integers(smallest, max(smallest, max_out)))


# --------------------------------------------------------------------------------------------------
# conv2d
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ConvCase:
    n: int
    c: int
    o: int
    h: int
    w: int
    kernel: Pair
    stride: Pair = (1, 1)
    padding: Pair = (0, 0)
    dilation: Pair = (1, 1)
    groups: int = 1
    bias: bool = True
    seed: int = 0

    @property
    def x_shape(self) -> tuple[int, int, int, int]:
        return (self.n, self.c, self.h, self.w)

    @property
    def w_shape(self) -> tuple[int, int, int, int]:
        return (self.o, self.c // self.groups, *self.kernel)

    @property
    def out_hw(self) -> Pair:
        return (
            (self.h + 2 * self.padding[0] - self.dilation[0] * (self.kernel[0] - 1) - 1) // self.stride[0] + 1,
            (self.w + 2 * self.padding[1] - self.dilation[1] * (self.kernel[1] - 1) - 1) // self.stride[1] + 1,
        )

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """x, weight, bias (None when the case has no bias), float64."""
        rng = np.random.default_rng(self.seed)
        x = rng.standard_normal(self.x_shape)
        w = rng.standard_normal(self.w_shape)
        b = rng.standard_normal(self.o) if self.bias else None
        return x, w, b

    def kwargs(self) -> dict[str, object]:
        return {"stride": self.stride, "padding": self.padding, "dilation": self.dilation, "groups": self.groups}


@st.composite
def conv_cases(
    draw: st.DrawFn,
    max_batch: int = 3,
    max_per_group: int = 4,
    max_groups: int = 3,
    max_kernel: int = 3,
    max_stride: int = 3,
    max_padding: int = 2,
    max_dilation: int = 2,
    max_out: int = 3,
) -> ConvCase:
    """A valid conv2d case: groups divides C and O, and the padded input covers the dilated kernel."""
    groups = draw(st.integers(1, max_groups))
    c = groups * draw(st.integers(1, max_per_group))
    o = groups * draw(st.integers(1, max_per_group))
    kernel = (draw(st.integers(1, max_kernel)), draw(st.integers(1, max_kernel)))
    stride = (draw(st.integers(1, max_stride)), draw(st.integers(1, max_stride)))
    padding = (draw(st.integers(0, max_padding)), draw(st.integers(0, max_padding)))
    dilation = (draw(st.integers(1, max_dilation)), draw(st.integers(1, max_dilation)))
    hw = []
    for i in range(2):
        span = dilation[i] * (kernel[i] - 1) + 1
        out = _output_size(draw, span, stride[i], padding[i], max_out)
        hw.append(_input_size(draw, out, span, stride[i], padding[i]))
    return ConvCase(
        n=draw(st.integers(1, max_batch)),
        c=c,
        o=o,
        h=hw[0],
        w=hw[1],
        kernel=kernel,
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=groups,
        bias=draw(st.booleans()),
        seed=draw(seeds),
    )


# --------------------------------------------------------------------------------------------------
# pooling
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PoolCase:
    n: int
    c: int
    h: int
    w: int
    kernel: Pair
    stride: Pair
    padding: Pair = (0, 0)
    seed: int = 0

    @property
    def x_shape(self) -> tuple[int, int, int, int]:
        return (self.n, self.c, self.h, self.w)

    @property
    def out_hw(self) -> Pair:
        return (
            (self.h + 2 * self.padding[0] - self.kernel[0]) // self.stride[0] + 1,
            (self.w + 2 * self.padding[1] - self.kernel[1]) // self.stride[1] + 1,
        )

    def x(self, kind: str = "normal") -> np.ndarray:
        return {"normal": normal, "distinct": distinct_values}[kind](self.seed, self.x_shape)


@st.composite
def pool_cases(
    draw: st.DrawFn,
    max_batch: int = 3,
    max_channels: int = 3,
    max_kernel: int = 3,
    max_stride: int = 3,
    max_out: int = 3,
) -> PoolCase:
    """A valid pooling case: padding at most kernel // 2 (as PyTorch requires), input derived from the output."""
    kernel = (draw(st.integers(1, max_kernel)), draw(st.integers(1, max_kernel)))
    stride = (draw(st.integers(1, max_stride)), draw(st.integers(1, max_stride)))
    padding = (draw(st.integers(0, kernel[0] // 2)), draw(st.integers(0, kernel[1] // 2)))
    hw = []
    for i in range(2):
        out = _output_size(draw, kernel[i], stride[i], padding[i], max_out)
        hw.append(_input_size(draw, out, kernel[i], stride[i], padding[i]))
    return PoolCase(
        n=draw(st.integers(1, max_batch)),
        c=draw(st.integers(1, max_channels)),
        h=hw[0],
        w=hw[1],
        kernel=kernel,
        stride=stride,
        padding=padding,
        seed=draw(seeds),
    )


# --------------------------------------------------------------------------------------------------
# batch norm
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BatchNormCase:
    shape: tuple[int, ...]  # (N, C) or (N, C, H, W)
    affine: bool = True  # weight and bias given (False: both None)
    momentum: float = 0.1
    eps: float = 1e-5
    seed: int = 0

    @property
    def c(self) -> int:
        return self.shape[1]

    def arrays(self) -> dict[str, np.ndarray | None]:
        """x, weight, bias, running_mean, running_var (running_var positive)."""
        rng = np.random.default_rng(self.seed)
        c = self.c
        return {
            "x": rng.standard_normal(self.shape) * rng.uniform(0.5, 2.0) + rng.uniform(-1.0, 1.0),
            "weight": rng.uniform(0.5, 1.5, c) * np.where(rng.random(c) < 0.5, -1.0, 1.0) if self.affine else None,
            "bias": rng.standard_normal(c) if self.affine else None,
            "running_mean": rng.standard_normal(c),
            "running_var": rng.uniform(0.5, 2.0, c),
        }


@st.composite
def batch_norm_cases(
    draw: st.DrawFn, ndim: int | None = None, max_batch: int = 4, max_channels: int = 4
) -> BatchNormCase:
    """2-D (N, C) or 4-D (N, C, H, W) with at least two values per channel (training needs a variance)."""
    nd = draw(st.sampled_from([2, 4])) if ndim is None else ndim
    c = draw(st.integers(1, max_channels))
    if nd == 2:
        shape: tuple[int, ...] = (draw(st.integers(2, max_batch)), c)
    else:
        h, w = draw(st.integers(1, 3)), draw(st.integers(1, 3))
        n = draw(st.integers(2 if h * w == 1 else 1, max_batch))
        shape = (n, c, h, w)
    return BatchNormCase(
        shape=shape,
        affine=draw(st.booleans()),
        momentum=draw(st.sampled_from([0.1, 0.5, 1.0])),
        eps=draw(st.sampled_from([1e-5, 1e-3])),
        seed=draw(seeds),
    )


# --------------------------------------------------------------------------------------------------
# squeeze-and-excitation
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SECase:
    n: int
    c: int
    r: int
    h: int
    w: int
    biases: bool = True
    seed: int = 0

    def arrays(self, margin: float = 1e-2) -> dict[str, np.ndarray | None]:
        """x, w1, b1, w2, b2 with the hidden pre-activation a1 = mean_hw(x) W1^T + b1 at least
        ``margin`` away from relu's kink at 0 (redrawn from the same generator until it is)."""
        rng = np.random.default_rng(self.seed)
        for _ in range(1000):
            x = rng.standard_normal((self.n, self.c, self.h, self.w))
            w1 = rng.standard_normal((self.r, self.c))
            b1 = rng.standard_normal(self.r) if self.biases else None
            a1 = x.mean(axis=(2, 3)) @ w1.T + (0.0 if b1 is None else b1)
            if np.abs(a1).min() >= margin:
                break
        else:  # pragma: no cover - the chance of 1000 misses is nil
            raise RuntimeError("SECase: could not draw a1 away from 0")
        return {
            "x": x,
            "w1": w1,
            "b1": b1,
            "w2": rng.standard_normal((self.c, self.r)),
            "b2": rng.standard_normal(self.c) if self.biases else None,
        }


@st.composite
def se_cases(
    draw: st.DrawFn, max_batch: int = 3, max_channels: int = 6, max_hidden: int = 4, max_side: int = 4
) -> SECase:
    return SECase(
        n=draw(st.integers(1, max_batch)),
        c=draw(st.integers(1, max_channels)),
        r=draw(st.integers(1, max_hidden)),
        h=draw(st.integers(1, max_side)),
        w=draw(st.integers(1, max_side)),
        biases=draw(st.booleans()),
        seed=draw(seeds),
    )


# --------------------------------------------------------------------------------------------------
# axes for reductions
# --------------------------------------------------------------------------------------------------
@st.composite
def reduction_axes(draw: st.DrawFn, ndim: int) -> int | tuple[int, ...] | None:
    """None, an int (possibly negative), or a tuple of distinct axes (each possibly negative)."""
    kind = draw(st.sampled_from(["none", "int", "tuple"] if ndim else ["none"]))
    if kind == "none":
        return None
    if kind == "int":
        return draw(st.integers(-ndim, ndim - 1))
    axes = draw(st.lists(st.integers(0, ndim - 1), min_size=1, max_size=ndim, unique=True))
    return tuple(a - ndim if draw(st.booleans()) else a for a in axes)
