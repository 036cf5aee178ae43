"""Input checks shared by the ops, so that every error reads alike:

op: what is wrong (the shapes) - how to fix it
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np  # only to recognise NumPy integer and bool scalars


def _shape(x: Any) -> tuple[int, ...]:
    return tuple(x.shape)


def check_float(op: str, name: str, x: Any) -> None:
    """Gradients need floating-point data."""
    if x is not None and x.dtype.kind != "f":
        raise TypeError(
            f"{op}: {name} has dtype {x.dtype}, but this op needs floating-point data - "
            f"convert it first, e.g. {name}.astype('float32')"
        )


def check_ndim(op: str, name: str, x: Any, ndim: int, layout: str) -> None:
    if x.ndim != ndim:
        raise ValueError(
            f"{op}: {name} must be {ndim}-D {layout}, got shape {_shape(x)} - "
            f"reshape it to {layout}"
            + (" (add a batch axis with x.reshape(1, *x.shape))" if x.ndim == ndim - 1 else "")
        )


def check_same_dtype(op: str, **arrays: Any) -> None:
    dtypes = {name: a.dtype for name, a in arrays.items() if a is not None}
    if len(set(dtypes.values())) > 1:
        listed = ", ".join(f"{n} {d}" for n, d in dtypes.items())
        raise TypeError(f"{op}: inputs have different dtypes ({listed}) - cast them to one dtype, e.g. float32")


def pair(op: str, name: str, value: Any, minimum: int) -> tuple[int, int]:
    """An int or a pair of ints -> (h, w), each at least ``minimum``; anything else is a TypeError/ValueError."""
    if _is_int(value):
        pair_ = (int(value), int(value))
    elif isinstance(value, (tuple, list)) and len(value) == 2 and all(_is_int(v) for v in value):
        pair_ = (int(value[0]), int(value[1]))
    else:
        raise TypeError(
            f"{op}: {name} must be an int or a pair of ints, got {value!r} ({type(value).__name__}) - "
            f"e.g. {name}=1 or {name}=(1, 2)"
        )
    if min(pair_) < minimum:
        raise ValueError(
            f"{op}: {name} must be at least {minimum}, got {value!r} - pass {name}={max(minimum, 1)} or more"
        )
    return pair_


def _is_int(value: Any) -> bool:
    """A Python or NumPy integer, not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def check_axis(op: str, dim: int, ndim: int, shape: tuple[int, ...]) -> None:
    if not -ndim <= dim < max(ndim, 1):
        raise ValueError(f"{op}: dim {dim} is out of range for shape {shape} - use a dim in [-{ndim}, {ndim - 1}]")
