"""Softmax, log-softmax and the fused, stable cross-entropy loss."""

from __future__ import annotations

from typing import Any

from minise.autograd import Function
from minise.backend import get_array_module
from minise.functional._checks import check_axis, check_float
from minise.functional.reduction import pick_axis
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


REDUCTIONS = ("mean", "sum", "none")


class CrossEntropyOp(Function):
    """l_n = -v_n sum_k q_nk log softmax(z_n)_k,   q = (1 - eps) onehot(t) + eps / K,   v_n = [t_n != ignore_index]

    L = l (reduction "none", shape (N,)), sum_n l_n ("sum") or sum_n l_n / sum_n v_n ("mean": the
    mean over the rows that count, as PyTorch; if every row is ignored, NaN with a zero gradient).
    Backward:  dz_n = g_n v_n (softmax(z_n) - q_n), with g_n = gL_n, gL or gL / sum v
    (lesson 04: the "softmax minus one-hot" gradient). Ignored rows get zero loss and zero gradient.
    Fused, so the softmax is never formed in a way that could overflow, and log 0 never appears.
    """

    name = "cross_entropy"

    def __init__(self, label_smoothing: float = 0.0, reduction: str = "mean", ignore_index: int = -100) -> None:
        super().__init__()
        self.eps, self.reduction, self.ignore_index = label_smoothing, reduction, ignore_index

    def _target(self, logp: Any, target: Any) -> tuple[Any, Any]:
        """q (N, K), zero on ignored rows, and the mask v (N, 1) of rows that count."""
        xp = get_array_module(logp)
        n, k = logp.shape
        valid = target != self.ignore_index  # (N,)
        q = xp.full((n, k), self.eps / k, dtype=logp.dtype)
        q[xp.arange(n), xp.where(valid, target, 0)] += 1.0 - self.eps
        v = valid.astype(logp.dtype)[:, None]  # (N, 1)
        return q * v, v

    def forward(self, z: Any, target: Any) -> Any:
        logp = _log_softmax(z, axis=1)  # (N, K)
        q, v = self._target(logp, target)
        losses = -(q * logp).sum(axis=1)  # (N,)
        self.save(logp, q, v)
        if self.reduction == "none":
            return losses
        total = losses.sum()
        if self.reduction == "sum":
            return total
        count = v.sum()
        return total / count if count > 0 else total * get_array_module(z).nan  # every row ignored: NaN

    def backward(self, gy: Any) -> tuple[Any, None]:
        logp, q, v = self.saved  # type: ignore[misc]
        xp = get_array_module(logp)
        if self.reduction == "none":
            g = gy[:, None]  # (N, 1)
        elif self.reduction == "sum":
            g = gy
        else:
            g = gy / xp.maximum(v.sum(), 1)  # every row ignored: every row's gradient is 0 anyway
        return (xp.exp(logp) * v - q) * g, None


def softmax(input: Any, dim: int | None = None, *, axis: int | None = None) -> Tensor:
    """exp(x) / sum exp(x) along ``dim`` (or NumPy's ``axis``; default the last axis)."""
    dim = pick_axis("softmax", dim, axis, default=-1)
    x = as_tensor(input)
    check_float("softmax", "input", x.data)
    check_axis("softmax", dim, x.ndim, x.shape)
    return SoftmaxOp(dim).apply(x)


def log_softmax(input: Any, dim: int | None = None, *, axis: int | None = None) -> Tensor:
    """x - log sum exp(x) along ``dim`` (or NumPy's ``axis``; default the last axis)."""
    dim = pick_axis("log_softmax", dim, axis, default=-1)
    x = as_tensor(input)
    check_float("log_softmax", "input", x.data)
    check_axis("log_softmax", dim, x.ndim, x.shape)
    return LogSoftmaxOp(dim).apply(x)


def cross_entropy(
    input: Any, target: Any, *, ignore_index: int = -100, reduction: str = "mean", label_smoothing: float = 0.0
) -> Tensor:
    """Cross-entropy of logits ``input`` (N, K) against class indices ``target`` (N,), as PyTorch.

    ``reduction``: "mean" (over the rows whose target is not ``ignore_index``), "sum" or "none"
    (one loss per row). Rows whose target equals ``ignore_index`` get zero loss and zero gradient.
    The options are keyword-only: PyTorch's third positional argument is ``weight``, which minise lacks.
    """
    z = as_tensor(input)
    t = target.data if isinstance(target, Tensor) else target
    xp = get_array_module(z.data)
    check_float("cross_entropy", "input", z.data)
    if z.ndim != 2:
        raise ValueError(
            f"cross_entropy: input must be 2-D logits (N, classes), got shape {z.shape} - flatten the model's "
            "output to (N, classes)"
        )
    if reduction not in REDUCTIONS:
        raise ValueError(f"cross_entropy: reduction={reduction!r} is not one of {REDUCTIONS} - use 'mean' (default)")
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
    counted = t[t != ignore_index]
    if counted.size and (int(counted.min()) < 0 or int(counted.max()) >= z.shape[1]):
        bad = int(counted.min()) if int(counted.min()) < 0 else int(counted.max())
        raise ValueError(
            f"cross_entropy: target holds class {bad} but input has {z.shape[1]} classes - targets must lie in "
            f"[0, {z.shape[1] - 1}] or equal ignore_index ({ignore_index}); check num_classes"
        )
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(
            f"cross_entropy: label_smoothing must lie in [0, 1], got {label_smoothing} - e.g. 0.1, or 0 for none"
        )
    return CrossEntropyOp(label_smoothing, reduction, ignore_index).apply(z, Tensor(t))
