"""Weight initialisation. Values are drawn on the host from minise's seeded generator, then moved to
the current backend, so ``minise.manual_seed(n)`` gives the same weights on NumPy and on CuPy."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from minise import backend


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
    return _place(backend.host_rng().normal(0.0, std, size=shape), dtype)


def uniform(shape: tuple[int, ...], bound: float, dtype: Any = np.float32) -> Any:
    """U(-bound, bound)."""
    return _place(backend.host_rng().uniform(-bound, bound, size=shape), dtype)


def constant(shape: tuple[int, ...], value: float, dtype: Any = np.float32) -> Any:
    return _place(np.full(shape, value), dtype)
