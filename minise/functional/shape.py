"""Ops that move values around without changing them: reshape, transpose, indexing, flatten."""

from __future__ import annotations

from typing import Any

from minise import backend
from minise.autograd import Function
from minise.backend import get_array_module


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
    from minise.tensor import as_tensor  # noqa: PLC0415

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
