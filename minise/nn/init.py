"""Weight initialisation. Values are drawn on the host from minise's seeded generator, then moved to
the current backend, so ``minise.manual_seed(n)`` gives the same weights on NumPy and on CuPy.

Two spellings: ``kaiming_normal(shape)``, ``uniform(shape, bound)`` and ``constant(shape, value)`` make
a new array (the layers use them); PyTorch's in-place names ``kaiming_normal_(tensor)``,
``uniform_(tensor, a, b)`` and ``constant_(tensor, val)`` fill an existing tensor, with PyTorch's
arguments and defaults, and return it.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import numpy as np

from minise import backend
from minise.tensor import Tensor

_draw = True


@contextlib.contextmanager
def skip_init() -> Iterator[None]:
    """Inside ``with skip_init():`` random initialisers give zeros without drawing a number (the idea of
    ``torch.nn.utils.skip_init``): for counting a model's parameters, or before ``load_state_dict``.
    Drawing the 49 M weights of se_resnet101 takes seconds; zeros come from the allocator untouched."""
    global _draw
    previous, _draw = _draw, False
    try:
        yield
    finally:
        _draw = previous


def _place(values: np.ndarray, dtype: Any) -> Any:
    return backend.to_device(values.astype(dtype, copy=False))


def fans(shape: tuple[int, ...]) -> tuple[int, int]:
    """(fan_in, fan_out) of a weight as PyTorch counts them: (in * KH * KW, out * KH * KW)."""
    receptive = int(np.prod(shape[2:])) if len(shape) > 2 else 1
    return shape[1] * receptive, shape[0] * receptive


def kaiming_normal(shape: tuple[int, ...], mode: str = "fan_out", dtype: Any = np.float32) -> Any:
    """N(0, 2 / fan): He et al. 2015 for ReLU networks; ResNets use mode="fan_out"."""
    fan_in, fan_out = fans(shape)
    std = math.sqrt(2.0 / (fan_out if mode == "fan_out" else fan_in))
    if not _draw:
        return _place(np.zeros(shape, dtype=dtype), dtype)
    return _place(backend.host_rng().normal(0.0, std, size=shape), dtype)


def uniform(shape: tuple[int, ...], bound: float, dtype: Any = np.float32) -> Any:
    """U(-bound, bound)."""
    if not _draw:
        return _place(np.zeros(shape, dtype=dtype), dtype)
    return _place(backend.host_rng().uniform(-bound, bound, size=shape), dtype)


def constant(shape: tuple[int, ...], value: float, dtype: Any = np.float32) -> Any:
    return _place(np.full(shape, value), dtype)


# --------------------------------------------------------------------------------------------------
# PyTorch's in-place names: fill an existing tensor (a Parameter, say) and return it
# --------------------------------------------------------------------------------------------------
def _fill_(tensor: Tensor, values: np.ndarray) -> Tensor:
    """Write host ``values`` into ``tensor.data`` in place, in its dtype and on its backend; return ``tensor``."""
    tensor.data[...] = backend.to_device(values.astype(tensor.data.dtype, copy=False), tensor.device)
    return tensor


def calculate_gain(nonlinearity: str, param: float | None = None) -> float:
    """PyTorch's gain: 1 (linear, conv, sigmoid), 5/3 (tanh), sqrt(2) (relu), sqrt(2 / (1 + a^2)) (leaky_relu)."""
    if nonlinearity in ("linear", "conv1d", "conv2d", "conv3d", "sigmoid"):
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3.0
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        a = 0.01 if param is None else param
        return math.sqrt(2.0 / (1.0 + a * a))
    raise ValueError(
        f"calculate_gain: unknown nonlinearity {nonlinearity!r} - use one of linear, conv1d, conv2d, conv3d, "
        "sigmoid, tanh, relu, leaky_relu"
    )


def kaiming_normal_(tensor: Tensor, a: float = 0, mode: str = "fan_in", nonlinearity: str = "leaky_relu") -> Tensor:
    """Fill ``tensor`` in place with N(0, std^2), std = calculate_gain(nonlinearity, a) / sqrt(fan), as torch."""
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"kaiming_normal_: mode must be 'fan_in' or 'fan_out', got {mode!r}")
    fan_in, fan_out = fans(tensor.shape)
    std = calculate_gain(nonlinearity, a) / math.sqrt(fan_in if mode == "fan_in" else fan_out)
    return _fill_(tensor, backend.host_rng().normal(0.0, std, size=tensor.shape) if _draw else np.zeros(tensor.shape))


def uniform_(tensor: Tensor, a: float = 0.0, b: float = 1.0) -> Tensor:
    """Fill ``tensor`` in place with U(a, b), as torch (note: ``uniform(shape, bound)`` draws U(-bound, bound))."""
    return _fill_(tensor, backend.host_rng().uniform(a, b, size=tensor.shape) if _draw else np.zeros(tensor.shape))


def constant_(tensor: Tensor, val: float) -> Tensor:
    """Fill ``tensor`` in place with ``val``, as torch."""
    return _fill_(tensor, np.full(tensor.shape, val))
