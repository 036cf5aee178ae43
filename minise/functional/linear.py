"""The fully connected layer as one op."""

from __future__ import annotations

from typing import Any

from minise.autograd import Function
from minise.functional._checks import check_float, check_same_dtype
from minise.tensor import Tensor, as_tensor


class LinearOp(Function):
    """y = x W^T + b     x (N, in), W (out, in), b (out,) -> y (N, out)   (leading axes of x are kept)

    Backward:  dx = gy W,   dW = gy^T x   (summed over every leading axis),   db = sum_n gy
    """

    name = "linear"

    def forward(self, x: Any, w: Any, b: Any) -> Any:
        self.save(x, w)
        y = x @ w.T
        if b is not None:
            y += b
        return y

    def backward(self, gy: Any) -> tuple[Any, Any, Any]:
        x, w = self.saved  # type: ignore[misc]
        g2 = gy.reshape(-1, gy.shape[-1])  # (N*, out)
        dx = gy @ w if self.needs_input_grad[0] else None
        dw = g2.T @ x.reshape(-1, x.shape[-1]) if self.needs_input_grad[1] else None
        db = g2.sum(axis=0) if self.needs_input_grad[2] else None
        return dx, dw, db


def linear(input: Any, weight: Any, bias: Any = None) -> Tensor:
    """input @ weight.T + bias, with weight laid out (out_features, in_features) as in PyTorch."""
    x, w = as_tensor(input), as_tensor(weight)
    b = None if bias is None else as_tensor(bias)
    for name, t in (("input", x), ("weight", w), ("bias", b)):
        check_float("linear", name, None if t is None else t.data)
    if w.ndim != 2:
        raise ValueError(f"linear: weight must be 2-D (out_features, in_features), got shape {w.shape}")
    if x.ndim < 1 or x.shape[-1] != w.shape[1]:
        raise ValueError(
            f"linear: input has {x.shape[-1] if x.ndim else 0} features (shape {x.shape}) but weight expects "
            f"{w.shape[1]} (weight {w.shape}) - the last axis of input must equal weight.shape[1]; "
            "flatten the input first if it is an image batch"
        )
    if b is not None and b.shape != (w.shape[0],):
        raise ValueError(f"linear: bias has shape {b.shape} but weight {w.shape} needs ({w.shape[0]},)")
    check_same_dtype("linear", input=x.data, weight=w.data, bias=None if b is None else b.data)
    return LinearOp().apply(x, w, b)
