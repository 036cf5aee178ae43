"""Dropout: zero each value with probability p while training, and scale the rest by 1/(1-p)."""

from __future__ import annotations

from typing import Any

from minise import backend
from minise.autograd import Function
from minise.functional._checks import check_float
from minise.tensor import Tensor, as_tensor


class DropoutOp(Function):
    """y = x * m / (1 - p), m ~ Bernoulli(1 - p) drawn once per call;   dx = gy * m / (1 - p)

    Scaling at training time ("inverted dropout") keeps E[y] = x, so evaluation is the identity.
    """

    name = "dropout"

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Any) -> Any:
        xp = backend.get_array_module(x)
        keep = backend.default_rng(xp).random(x.shape, dtype=x.dtype) >= self.p
        mask = keep.astype(x.dtype) * x.dtype.type(1.0 / (1.0 - self.p))
        self.save(mask)
        return x * mask

    def backward(self, gy: Any) -> Any:
        (mask,) = self.saved  # type: ignore[misc]
        return gy * mask


def dropout(input: Any, p: float = 0.5, training: bool = True) -> Tensor:
    """Randomly zero values with probability ``p`` in training mode; the identity otherwise."""
    x = as_tensor(input)
    if isinstance(p, bool) or not (isinstance(p, (int, float)) and 0.0 <= p <= 1.0):
        raise ValueError(f"dropout: p must be a probability in [0, 1], got {p!r} - e.g. p=0.5")
    check_float("dropout", "input", x.data)
    if not training or p == 0.0:
        return x
    if p == 1.0:
        return x * 0.0
    return DropoutOp(float(p)).apply(x)
