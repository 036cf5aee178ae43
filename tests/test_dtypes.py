"""float32 in, float32 out: every op's output and every gradient keep the input's dtype.

A gradient that silently becomes float64 (for instance a sum accumulated in float64 and never cast
back) doubles the optimiser's memory and breaks exact resume, since checkpoints store float32.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import minise
import minise.functional as F

rng = np.random.default_rng(7)


def _t(*shape: int) -> minise.Tensor:
    return minise.Tensor(rng.standard_normal(shape).astype(np.float32), requires_grad=True)


CASES: dict[str, tuple[Callable[..., Any], Callable[[], list[minise.Tensor]]]] = {
    "conv2d": (lambda x, w, b: F.conv2d(x, w, b, padding=1), lambda: [_t(2, 3, 5, 5), _t(4, 3, 3, 3), _t(4)]),
    "conv2d stride 2 groups": (
        lambda x, w: F.conv2d(x, w, stride=2, groups=2),
        lambda: [_t(2, 4, 6, 6), _t(4, 2, 3, 3)],
    ),
    "batch_norm train": (
        lambda x, g, b: F.batch_norm(x, np.zeros(3, np.float32), np.ones(3, np.float32), g, b, training=True),
        lambda: [_t(4, 3, 2, 2), _t(3), _t(3)],
    ),
    "batch_norm eval": (
        lambda x, g, b: F.batch_norm(x, np.zeros(3, np.float32), np.ones(3, np.float32), g, b),
        lambda: [_t(4, 3, 2, 2), _t(3), _t(3)],
    ),
    "max_pool2d": (lambda x: F.max_pool2d(x, 3, 2, 1), lambda: [_t(2, 3, 6, 6)]),
    "avg_pool2d": (lambda x: F.avg_pool2d(x, 2), lambda: [_t(2, 3, 6, 6)]),
    "global_avg_pool2d": (F.global_avg_pool2d, lambda: [_t(2, 3, 4, 4)]),
    "squeeze_excite": (F.squeeze_excite, lambda: [_t(2, 8, 3, 3), _t(2, 8), _t(2), _t(8, 2), _t(8)]),
    "linear": (F.linear, lambda: [_t(3, 5), _t(4, 5), _t(4)]),
    "cross_entropy": (lambda z: F.cross_entropy(z, np.array([0, 2, 1]), label_smoothing=0.1), lambda: [_t(3, 4)]),
    "softmax": (lambda z: F.softmax(z, 1), lambda: [_t(3, 4)]),
    "log_softmax": (lambda z: F.log_softmax(z, 1), lambda: [_t(3, 4)]),
    "relu sigmoid tanh": (lambda x: F.tanh(F.sigmoid(F.relu(x))), lambda: [_t(3, 4)]),
    "exp log": (lambda x: F.log(F.exp(x)), lambda: [_t(3, 4)]),
    "dropout": (lambda x: F.dropout(x, 0.5), lambda: [_t(3, 4)]),
    "arithmetic": (lambda a, b: ((a * b - a / (b * b + 1)) ** 2 + 2.0) @ b.T, lambda: [_t(3, 4), _t(3, 4)]),
    "reductions and shapes": (
        lambda x: x.max(axis=1).sum() + x.mean(axis=(0, 1)) + x.reshape(6, 2)[1:, ::2].sum() + x.transpose().sum(),
        lambda: [_t(3, 4)],
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_float32_stays_float32(name: str) -> None:
    fn, make = CASES[name]
    inputs = make()
    out = fn(*inputs)
    assert out.dtype == np.float32, f"{name}: output is {out.dtype}"
    out.backward(np.ones(out.shape, dtype=np.float32))
    for i, t in enumerate(inputs):
        assert t.grad is not None, f"{name}: input {i} got no gradient"
        assert t.grad.dtype == np.float32, f"{name}: gradient of input {i} is {t.grad.dtype}"
        assert t.grad.shape == t.shape
