"""Making tensors as PyTorch does: ``zeros``, ``ones``, ``randn``, ``arange``, ``from_numpy``.

Each returns a :class:`~minise.tensor.Tensor` on the current backend (``from_numpy`` excepted: it
shares the NumPy array's memory, as ``torch.from_numpy``). The default dtype is float32, as
PyTorch's; ``randn`` draws on the host from minise's seeded generator (``minise.manual_seed``), so a
seed gives the same values on NumPy and on CuPy. ``cat`` and ``stack`` live with the other shape ops
in :mod:`minise.functional.shape`, as differentiable ops.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from minise import backend
from minise.tensor import Tensor


def _size(op: str, size: tuple[Any, ...]) -> tuple[int, ...]:
    """``f(2, 3)`` and ``f((2, 3))`` alike, as PyTorch."""
    if len(size) == 1 and isinstance(size[0], (tuple, list)):
        size = tuple(size[0])
    if not all(isinstance(n, (int, np.integer)) and not isinstance(n, bool) and n >= 0 for n in size):
        raise TypeError(f"{op}: size must be non-negative ints, e.g. {op}(2, 3) or {op}((2, 3)), got {size!r}")
    return tuple(int(n) for n in size)


def _make(values: np.ndarray, dtype: Any, requires_grad: bool) -> Tensor:
    return Tensor(backend.to_device(values.astype(dtype, copy=False)), requires_grad=requires_grad)


def zeros(*size: Any, dtype: Any = np.float32, requires_grad: bool = False) -> Tensor:
    """A tensor of zeros of shape ``size``."""
    xp = backend.xp_of_backend()
    return Tensor(xp.zeros(_size("zeros", size), dtype=dtype), requires_grad=requires_grad)


def ones(*size: Any, dtype: Any = np.float32, requires_grad: bool = False) -> Tensor:
    """A tensor of ones of shape ``size``."""
    xp = backend.xp_of_backend()
    return Tensor(xp.ones(_size("ones", size), dtype=dtype), requires_grad=requires_grad)


def randn(*size: Any, dtype: Any = np.float32, requires_grad: bool = False) -> Tensor:
    """Samples of N(0, 1) of shape ``size``, from the generator ``minise.manual_seed`` seeds."""
    return _make(backend.host_rng().standard_normal(_size("randn", size)), dtype, requires_grad)


def arange(
    start: float, end: float | None = None, step: float = 1, *, dtype: Any = None, requires_grad: bool = False
) -> Tensor:
    """start, start + step, ... up to (not including) end; ``arange(n)`` is 0 ... n-1, as PyTorch.

    The dtype, as PyTorch's: int64 if every argument is an int, else float32.
    """
    if end is None:
        start, end = 0, start
    if step == 0:
        raise ValueError("arange: step must not be 0")
    if dtype is None:
        ints = all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in (start, end, step))
        dtype = np.int64 if ints else np.float32
    return _make(
        np.arange(start, end, step, dtype=np.float64 if np.dtype(dtype).kind == "f" else None), dtype, requires_grad
    )


def from_numpy(array: np.ndarray) -> Tensor:
    """A tensor sharing ``array``'s memory and dtype (on the host), as ``torch.from_numpy``: changing
    one changes the other. Use ``minise.tensor(array)`` for a copy on the current backend."""
    if not isinstance(array, np.ndarray):
        raise TypeError(
            f"from_numpy: expected a numpy.ndarray, got {type(array).__name__} - use minise.tensor(values) "
            "for lists, scalars or CuPy arrays"
        )
    return Tensor(array)
