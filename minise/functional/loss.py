"""Softmax, log-softmax and the fused, stable cross-entropy loss."""

from __future__ import annotations

from typing import Any

from minise.autograd import Function
from minise.backend import get_array_module
from minise.functional._checks import check_axis, check_float
from minise.tensor import Tensor, as_tensor


def _log_softmax(x: Any, axis: int) -> Any:
    """log softmax(x) = x - m - log sum exp(x - m), m = max x: subtracting the max keeps exp from overflowing."""
    xp = get_array_module(x)
    shifted = x - x.max(axis=axis, keepdims=True)
    return shifted - xp.log(xp.exp(shifted).sum(axis=axis, keepdims=True))


class SoftmaxOp(Function):
    """y_i = exp(x_i) / sum_j exp(x_j) along ``axis``;   dx = y * (gy - sum_j gy_j y_j)"""

    name = "softmax"

    def __init__(self, axis: int) -> None:
        super().__init__()
        self.axis = axis

    def forward(self, x: Any) -> Any:
        y = get_array_module(x).exp(_log_softmax(x, self.axis))
        self.save(y)
        return y

    def backward(self, gy: Any) -> Any:
        (y,) = self.saved  # type: ignore[misc]
        return y * (gy - (gy * y).sum(axis=self.axis, keepdims=True))


class LogSoftmaxOp(Function):
    """y = x - log sum_j exp(x_j) along ``axis``;   dx = gy - softmax(x) * sum_j gy_j"""

    name = "log_softmax"

    def __init__(self, axis: int) -> None:
        super().__init__()
        self.axis = axis

    def forward(self, x: Any) -> Any:
        y = _log_softmax(x, self.axis)
        self.save(y)
        return y

    def backward(self, gy: Any) -> Any:
        (y,) = self.saved  # type: ignore[misc]
        xp = get_array_module(y)
        return gy - xp.exp(y) * gy.sum(axis=self.axis, keepdims=True)


class CrossEntropyOp(Function):
    """L = (1/N) sum_n -sum_k q_nk log softmax(z_n)_k,   q = (1 - eps) onehot(t) + eps / K

    Backward:  dz = gL * (softmax(z) - q) / N      (lesson 04: the "softmax minus one-hot" gradient)
    Fused, so the softmax is never formed in a way that could overflow, and log 0 never appears.
    """

    name = "cross_entropy"

    def __init__(self, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.eps = label_smoothing

    def _target(self, logp: Any, target: Any) -> Any:
        xp = get_array_module(logp)
        n, k = logp.shape
        q = xp.full((n, k), self.eps / k, dtype=logp.dtype)
        q[xp.arange(n), target] += 1.0 - self.eps
        return q

    def forward(self, z: Any, target: Any) -> Any:
        logp = _log_softmax(z, axis=1)  # (N, K)
        q = self._target(logp, target)
        self.save(logp, q)
        return -(q * logp).sum() / z.shape[0]

    def backward(self, gy: Any) -> tuple[Any, None]:
        logp, q = self.saved  # type: ignore[misc]
        xp = get_array_module(logp)
        return (xp.exp(logp) - q) * (gy / logp.shape[0]), None


def softmax(input: Any, dim: int = -1) -> Tensor:
    x = as_tensor(input)
    check_float("softmax", "input", x.data)
    check_axis("softmax", dim, x.ndim, x.shape)
    return SoftmaxOp(dim).apply(x)


def log_softmax(input: Any, dim: int = -1) -> Tensor:
    x = as_tensor(input)
    check_float("log_softmax", "input", x.data)
    check_axis("log_softmax", dim, x.ndim, x.shape)
    return LogSoftmaxOp(dim).apply(x)


def cross_entropy(input: Any, target: Any, label_smoothing: float = 0.0) -> Tensor:
    """Mean cross-entropy of logits ``input`` (N, K) against class indices ``target`` (N,)."""
    z = as_tensor(input)
    t = target.data if isinstance(target, Tensor) else target
    xp = get_array_module(z.data)
    check_float("cross_entropy", "input", z.data)
    if z.ndim != 2:
        raise ValueError(
            f"cross_entropy: input must be 2-D logits (N, classes), got shape {z.shape} - flatten the model's "
            "output to (N, classes)"
        )
    if not hasattr(t, "dtype"):
        t = xp.asarray(t)
    if t.dtype.kind not in "iu":
        raise TypeError(
            f"cross_entropy: target has dtype {t.dtype} but must hold integer class indices - "
            "pass labels as int64, e.g. target.astype('int64')"
        )
    if t.shape != (z.shape[0],):
        raise ValueError(
            f"cross_entropy: target has shape {tuple(t.shape)} but input {z.shape} needs ({z.shape[0]},) - "
            "one class index per row of logits"
        )
    if t.size and (int(t.min()) < 0 or int(t.max()) >= z.shape[1]):
        raise ValueError(
            f"cross_entropy: target holds class {int(t.min()) if int(t.min()) < 0 else int(t.max())} but input "
            f"has {z.shape[1]} classes - targets must lie in [0, {z.shape[1] - 1}]; check num_classes"
        )
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(
            f"cross_entropy: label_smoothing must lie in [0, 1], got {label_smoothing} - e.g. 0.1, or 0 for none"
        )
    return CrossEntropyOp(label_smoothing).apply(z, Tensor(t))
