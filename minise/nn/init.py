"""Weight initialisation. Values are drawn on the host from minise's seeded generator, then moved to
the current backend, so ``minise.manual_seed(n)`` gives the same weights on NumPy and on CuPy."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import numpy as np

from minise import backend

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
