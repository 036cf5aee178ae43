"""Reductions over axes: sum, mean, max.

``axis`` is None (all axes), an int (negative counts from the end) or a tuple of ints; ``keepdims``
keeps the reduced axes with size 1. Backward first puts the reduced axes back (size 1), then lets
broadcasting spread the gradient over them. PyTorch's names ``dim`` and ``keepdim`` mean the same as
NumPy's ``axis`` and ``keepdims``; every reduction (and softmax) takes either (:func:`pick_axis`).
"""

from __future__ import annotations

from typing import Any

from minise.autograd import Function
from minise.backend import get_array_module


def pick_axis(op: str, dim: Any, axis: Any, default: Any = None) -> Any:
    """The axis given as PyTorch's ``dim`` or NumPy's ``axis`` (``default`` if neither); both is an error."""
    if dim is not None and axis is not None:
        raise TypeError(f"{op}: got dim={dim!r} and axis={axis!r} - they mean the same; pass only one")
    if dim is not None:
        return dim
    return default if axis is None else axis


def pick_keepdims(op: str, keepdim: bool | None, keepdims: bool | None) -> bool:
    """``keepdim`` (PyTorch) or ``keepdims`` (NumPy); both is an error; False if neither."""
    if keepdim is not None and keepdims is not None:
        raise TypeError(f"{op}: got keepdim and keepdims - they mean the same; pass only one")
    return bool(keepdim if keepdim is not None else keepdims)


def normalize_axis(op: str, axis: Any, ndim: int) -> tuple[int, ...]:
    """None / int / tuple -> a sorted tuple of non-negative axes, checked against ``ndim``."""
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    out = []
    for a in axes:
        if not isinstance(a, int) or isinstance(a, bool):
            raise TypeError(f"{op}: axis must be None, an int or a tuple of ints, got {axis!r}")
        if not -ndim <= a < max(ndim, 1):
            raise ValueError(f"{op}: axis {a} is out of range for a {ndim}-D tensor - use -{ndim} <= axis < {ndim}")
        out.append(a % ndim if ndim else 0)
    if len(set(out)) != len(out):
        raise ValueError(f"{op}: axis {axis!r} repeats an axis")
    return tuple(sorted(out))


def _expand(g: Any, shape: tuple[int, ...], axes: tuple[int, ...], keepdims: bool) -> Any:
    """Reshape a reduced gradient so that it broadcasts against the input: reduced axes get size 1."""
    if keepdims:
        return g
    kept = tuple(1 if i in axes else n for i, n in enumerate(shape))
    return g.reshape(kept)


class SumOp(Function):
    """y = sum_{axes} x;   dx = gy broadcast over the reduced axes"""

    name = "sum"

    def __init__(self, axis: Any = None, keepdims: bool = False) -> None:
        super().__init__()
        self.axis, self.keepdims = axis, keepdims

    def forward(self, x: Any) -> Any:
        self.axes = normalize_axis(self.name, self.axis, x.ndim)
        self.save(x.shape)
        return x.sum(axis=self.axes, keepdims=self.keepdims)

    def backward(self, gy: Any) -> Any:
        (shape,) = self.saved  # type: ignore[misc]
        xp = get_array_module(gy)
        return xp.broadcast_to(_expand(gy, shape, self.axes, self.keepdims), shape).copy()


class MeanOp(SumOp):
    """y = (1/n) sum_{axes} x, n = number of elements reduced;   dx = gy / n broadcast"""

    name = "mean"

    def forward(self, x: Any) -> Any:
        self.axes = normalize_axis(self.name, self.axis, x.ndim)
        self.save(x.shape)
        return x.mean(axis=self.axes, keepdims=self.keepdims)

    def backward(self, gy: Any) -> Any:
        (shape,) = self.saved  # type: ignore[misc]
        n = 1
        for a in self.axes:
            n *= shape[a]
        return super().backward(gy / n)


class MaxOp(Function):
    """y = max_{axes} x;   dx = gy * [x == y] / (number of maxima)

    Ties share the gradient equally (as ``torch.amax``), so the gradient stays symmetric and sums to gy.
    """

    name = "max"

    def __init__(self, axis: Any = None, keepdims: bool = False) -> None:
        super().__init__()
        self.axis, self.keepdims = axis, keepdims

    def forward(self, x: Any) -> Any:
        self.axes = normalize_axis(self.name, self.axis, x.ndim)
        if x.size == 0:
            raise ValueError(f"max: cannot reduce an empty tensor of shape {x.shape}")
        y = x.max(axis=self.axes, keepdims=True)
        self.save(x, y)
        return y if self.keepdims else y.reshape([n for i, n in enumerate(x.shape) if i not in self.axes])

    def backward(self, gy: Any) -> Any:
        x, y = self.saved  # type: ignore[misc]
        mask = (x == y).astype(x.dtype)
        mask /= mask.sum(axis=self.axes, keepdims=True)
        return mask * _expand(gy, x.shape, self.axes, self.keepdims)
