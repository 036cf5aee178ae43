"""Ops that move values around without changing them: reshape, transpose, indexing, flatten, cat, stack."""

from __future__ import annotations

import itertools
from typing import Any

from minise import backend
from minise.autograd import Function
from minise.backend import get_array_module
from minise.functional.reduction import pick_axis
from minise.tensor import as_tensor


class ReshapeOp(Function):
    """y = x viewed with another shape;   dx = gy reshaped back"""

    name = "reshape"

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.shape = shape

    def forward(self, x: Any) -> Any:
        self.save(x.shape)
        try:
            return x.reshape(self.shape)
        except ValueError:
            raise ValueError(
                f"reshape: cannot reshape a tensor of shape {x.shape} ({x.size} elements) to {self.shape} - "
                "the new shape must hold the same number of elements (use -1 for one inferred axis)"
            ) from None

    def backward(self, gy: Any) -> Any:
        (shape,) = self.saved  # type: ignore[misc]
        return gy.reshape(shape)


class TransposeOp(Function):
    """y = x with axes permuted;   dx = gy permuted by the inverse permutation"""

    name = "transpose"

    def __init__(self, axes: tuple[int, ...] | None = None) -> None:
        super().__init__()
        self.axes = axes

    def forward(self, x: Any) -> Any:
        if self.axes is not None and any(not -x.ndim <= a < x.ndim for a in self.axes):
            raise ValueError(
                f"transpose: axes {self.axes} are out of range for a {x.ndim}-D tensor of shape {x.shape} - "
                f"use axes in [-{x.ndim}, {x.ndim - 1}]"
            )
        axes = tuple(reversed(range(x.ndim))) if self.axes is None else tuple(a % x.ndim for a in self.axes)
        if sorted(axes) != list(range(x.ndim)):
            raise ValueError(f"transpose: axes {self.axes} are not a permutation of the {x.ndim} axes of {x.shape}")
        self.perm = axes
        return x.transpose(axes)

    def backward(self, gy: Any) -> Any:
        inverse = [0] * len(self.perm)
        for i, a in enumerate(self.perm):
            inverse[a] = i
        return gy.transpose(inverse)


class GetItemOp(Function):
    """y = x[index];   dx = zeros with gy added at index (repeated integer indices add up)"""

    name = "getitem"

    def __init__(self, index: Any) -> None:
        super().__init__()
        self.index = index

    def forward(self, x: Any) -> Any:
        self.save(x.shape, x.dtype)
        return x[self.index]

    def backward(self, gy: Any) -> Any:
        shape, dtype = self.saved  # type: ignore[misc]
        xp = get_array_module(gy)
        dx = xp.zeros(shape, dtype=dtype)
        backend.scatter_add(dx, self.index, gy)
        return dx


def flatten(input: Any, start_dim: int = 1, end_dim: int = -1) -> Any:
    """Merge axes start_dim..end_dim into one (a reshape; built from ReshapeOp), as ``torch.flatten``."""
    x = as_tensor(input)
    nd = x.ndim
    if nd == 0:
        return x.reshape(1)
    for name, d in (("start_dim", start_dim), ("end_dim", end_dim)):
        if not -nd <= d < nd:
            raise ValueError(
                f"flatten: {name}={d} is out of range for a {nd}-D tensor of shape {x.shape} - use [-{nd}, {nd - 1}]"
            )
    s, e = start_dim % nd, end_dim % nd
    if s > e:
        raise ValueError(f"flatten: start_dim {start_dim} comes after end_dim {end_dim} for shape {x.shape}")
    merged = 1
    for n in x.shape[s : e + 1]:
        merged *= n
    return x.reshape(*x.shape[:s], merged, *x.shape[e + 1 :])


class CatOp(Function):
    """y = [x_1, x_2, ...] joined along ``axis`` (torch.cat);   dx_i = the slice of gy that x_i filled"""

    name = "cat"

    def __init__(self, axis: int) -> None:
        super().__init__()
        self.axis = axis

    def forward(self, *xs: Any) -> Any:
        xp = get_array_module(*xs)
        self.save(tuple(x.shape[self.axis] for x in xs))
        return xp.concatenate(xs, axis=self.axis)

    def backward(self, gy: Any) -> tuple[Any, ...]:
        (sizes,) = self.saved  # type: ignore[misc]
        xp = get_array_module(gy)
        cuts = list(itertools.accumulate(sizes[:-1]))  # where each input's slice of gy starts
        return tuple(xp.split(gy, cuts, axis=self.axis))


class StackOp(Function):
    """y = the x_i stacked along a new axis ``axis`` (torch.stack);   dx_i = gy taken at index i of that axis"""

    name = "stack"

    def __init__(self, axis: int) -> None:
        super().__init__()
        self.axis = axis

    def forward(self, *xs: Any) -> Any:
        return get_array_module(*xs).stack(xs, axis=self.axis)

    def backward(self, gy: Any) -> tuple[Any, ...]:
        xp = get_array_module(gy)
        return tuple(xp.take(gy, i, axis=self.axis) for i in range(gy.shape[self.axis]))


def _join_args(op: str, tensors: Any, dim: Any, axis: Any, new_axis: bool) -> tuple[list[Any], int]:
    """Check a sequence of tensors for cat/stack; returns them as Tensors and the axis (non-negative)."""
    if not isinstance(tensors, (list, tuple)) or not tensors:
        raise TypeError(f"{op}: expected a non-empty list or tuple of tensors, got {type(tensors).__name__}")
    ts = [as_tensor(t) for t in tensors]
    d = pick_axis(op, dim, axis, default=0)
    ndim = ts[0].ndim + (1 if new_axis else 0)
    if not isinstance(d, int) or not -ndim <= d < max(ndim, 1):
        raise ValueError(f"{op}: dim {d!r} is out of range for {ndim}-D output - use -{ndim} <= dim < {ndim}")
    d %= max(ndim, 1)
    first = ts[0].shape
    for i, t in enumerate(ts):
        same = (
            t.shape == first
            if new_axis
            else (
                t.ndim == len(first)
                and all(a == b for k, (a, b) in enumerate(zip(t.shape, first, strict=True)) if k != d)
            )
        )
        if not same or t.dtype != ts[0].dtype:
            rule = "every shape equal" if new_axis else f"shapes equal except along dim {d}"
            raise ValueError(
                f"{op}: tensor {i} has shape {t.shape} and dtype {t.dtype} but tensor 0 has {first} and "
                f"{ts[0].dtype} - {op} needs {rule} and one dtype"
            )
    if not new_axis and ts[0].ndim == 0:
        raise ValueError(f"{op}: zero-dimensional tensors cannot be concatenated - use stack, or reshape(1)")
    return ts, d


def cat(tensors: Any, dim: int | None = None, *, axis: int | None = None) -> Any:
    """Join tensors along an existing axis ``dim`` (default 0), as ``torch.cat``; differentiable."""
    ts, d = _join_args("cat", tensors, dim, axis, new_axis=False)
    return CatOp(d).apply(*ts)


def stack(tensors: Any, dim: int | None = None, *, axis: int | None = None) -> Any:
    """Join equal-shaped tensors along a new axis ``dim`` (default 0), as ``torch.stack``; differentiable."""
    ts, d = _join_args("stack", tensors, dim, axis, new_axis=True)
    return StackOp(d).apply(*ts)
