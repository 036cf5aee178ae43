"""The Squeeze-and-Excitation block as ONE op, its backward derived by hand (Hu et al., SENet, Sec. 3)."""

from __future__ import annotations

from typing import Any

from minise import backend
from minise.autograd import Function
from minise.backend import get_array_module
from minise.functional._checks import check_float, check_same_dtype
from minise.functional.elementwise import _relu_grad, relu_of, stable_sigmoid
from minise.tensor import Tensor, as_tensor


class SqueezeExciteOp(Function):
    """y = x * sigmoid(W2 relu(W1 mean_hw(x) + b1) + b2)    (Hu et al., SENet, Sec. 3, Eqs. 2-4)

    Shapes: x (N, C, H, W); W1 (R, C), b1 (R,); W2 (C, R), b2 (C,); R = hidden width (C / r).
    (h below is the hidden activation; sum_hw and mean_hw run over the H x W pixels.)
    Forward, step by step (all per image n):
        s  = mean_hw(x)            (N, C)   squeeze
        a1 = s W1^T + b1           (N, R)
        h  = relu(a1)              (N, R)
        a2 = h W2^T + b2           (N, C)
        e  = sigmoid(a2)           (N, C)   excitation
        y  = x * e[:, :, None, None]        scale
    Backward, with G = dL/dy (N, C, H, W):
        g_e  = sum_hw G * x                 (N, C)
        g_a2 = g_e * e * (1 - e)            (N, C)
        dW2  = g_a2^T h,   db2 = sum_n g_a2
        g_a1 = (g_a2 W2) * [a1 > 0]         (N, R)
        dW1  = g_a1^T s,   db1 = sum_n g_a1
        g_s  = g_a1 W1                      (N, C)
        dx   = G * e + g_s / (H W)          (both broadcast over the H x W pixels)
    The first term of dx is the path through the scale, the second the path through the squeeze.
    Derivation, step by step with numerical checks: lesson 09. Biases may be None (no bias).
    """

    name = "squeeze_excite"

    def forward(self, x: Any, w1: Any, b1: Any, w2: Any, b2: Any) -> Any:
        s, h, e = self.excite(x, w1, b1, w2, b2)
        self.save(x, s, h, e, w1, w2)  # what the backward reads: not a1, a2 or y
        return backend.elementwise(_scale, x, e[:, :, None, None], like=x)  # scale

    def excite(self, x: Any, w1: Any, b1: Any, w2: Any, b2: Any) -> tuple[Any, Any, Any]:
        """The squeeze s (N, C), the hidden activation h (N, R) and the excitation e (N, C): the forward's
        steps up to the scale."""
        n, c, hh, ww = x.shape
        # squeeze: einsum's summing loop runs 3-4x faster than x.mean(axis=(2, 3)) here (measured, 0.35 -> 0.11 ms
        # on (128, 16, 32, 32)); the mean is the same up to float32 rounding
        s = get_array_module(x).einsum("ncl->nc", x.reshape(n, c, hh * ww)) / (hh * ww)  # (N, C)
        a1 = s @ w1.T  # (N, R)
        if b1 is not None:
            a1 += b1
        h = get_array_module(x).maximum(a1, 0)  # (N, R)
        a2 = h @ w2.T  # (N, C)
        if b2 is not None:
            a2 += b2
        e = stable_sigmoid(a2)  # (N, C)   excitation
        return s, h, e

    def backward(self, gy: Any) -> tuple[Any, ...]:
        x, s, h, e, w1, w2 = self.saved  # type: ignore[misc]
        return self.gradients(gy, x, s, h, e, w1, w2)

    def gradients(self, gy: Any, x: Any, s: Any, h: Any, e: Any, w1: Any, w2: Any) -> tuple[Any, ...]:
        """dx, dW1, db1, dW2, db2 for the output gradient gy (the formulas above)."""
        xp = get_array_module(x)
        n, c, hh, ww = x.shape
        need_x, need_w1, need_b1, need_w2, need_b2 = self.needs_input_grad[:5]
        g_e = xp.einsum("ncl,ncl->nc", gy.reshape(n, c, -1), x.reshape(n, c, -1))  # (N, C) = sum_hw G*x
        g_a2 = g_e * e * (1 - e)  # (N, C)
        dw2 = g_a2.T @ h if need_w2 else None  # (C, R)
        db2 = g_a2.sum(axis=0) if need_b2 else None  # (C,)
        g_a1 = (g_a2 @ w2) * (h > 0)  # (N, R)
        dw1 = g_a1.T @ s if need_w1 else None  # (R, C)
        db1 = g_a1.sum(axis=0) if need_b1 else None  # (R,)
        dx = None
        if need_x:
            g_s = g_a1 @ w1  # (N, C)
            t = (g_s / (hh * ww))[:, :, None, None]
            dx = backend.elementwise(_scale_add, gy, e[:, :, None, None], t, like=x)  # G * e + g_s / (H W)
        return dx, dw1, db1, dw2, db2


class SqueezeExciteAddReLUOp(SqueezeExciteOp):
    """y = relu(x * e + r): the end of an SE residual block, relu(SE(F(x)) + shortcut), as one op.

    e is the excitation of :class:`SqueezeExciteOp` (the same squeeze, FC layers and sigmoid), r the shortcut
    (N, C, H, W). One pass writes y; the unfused ops write x * e, then read it again with r for the ReLU.
    Backward, with G = dL/dy:
        g  = G * [y > 0]                    the ReLU's gradient, which both branches receive
        dr = g
        dx, dW1, db1, dW2, db2 = the SE block's gradients of g (:meth:`SqueezeExciteOp.gradients`)
    """

    name = "squeeze_excite_add_relu"

    def forward(self, x: Any, w1: Any, b1: Any, w2: Any, b2: Any, r: Any) -> Any:  # type: ignore[override]
        s, h, e = self.excite(x, w1, b1, w2, b2)
        y = backend.elementwise(_scale_add_relu, x, e[:, :, None, None], r, like=x)
        self.save(x, s, h, e, w1, w2, y)  # the SE block's, and y for the ReLU's mask
        return y

    def backward(self, gy: Any) -> tuple[Any, ...]:
        x, s, h, e, w1, w2, y = self.saved  # type: ignore[misc]
        g = backend.elementwise(_relu_grad, gy, y, like=gy)  # gy [y > 0]
        return (*self.gradients(g, x, s, h, e, w1, w2), g if self.needs_input_grad[5] else None)


# The elementwise bodies (backend.elementwise): ufuncs and operators only, so that CuPy fuses each into one kernel.
def _scale(x: Any, e: Any, out: Any = None) -> Any:
    """x * e: the SE scale."""
    return get_array_module(x).multiply(x, e, out=out)


def _scale_add_relu(x: Any, e: Any, r: Any, out: Any = None) -> Any:
    """max(x * e + r, 0): the SE scale, the residual add and the ReLU in one pass."""
    return relu_of(x * e + r, out=out)


def _scale_add(g: Any, e: Any, t: Any, out: Any = None) -> Any:
    """g * e + t (on NumPy two passes over one chunk while it is in cache; on CuPy one kernel)."""
    return get_array_module(g).add(g * e, t, out=out)


def squeeze_excite(input: Any, w1: Any, b1: Any = None, w2: Any = None, b2: Any = None) -> Tensor:
    """The SE block ``input * sigmoid(W2 relu(W1 mean_hw(input) + b1) + b2)`` as one op.

    input (N, C, H, W); w1 (R, C); b1 (R,) or None; w2 (C, R); b2 (C,) or None. Weights are laid out
    (out_features, in_features) as in ``linear``.
    """
    return SqueezeExciteOp().apply(*_checked("squeeze_excite", input, w1, b1, w2, b2))


def squeeze_excite_add_relu(input: Any, w1: Any, b1: Any, w2: Any, b2: Any, residual: Any) -> Tensor:
    """``relu(squeeze_excite(input, w1, b1, w2, b2) + residual)`` as one op (:class:`SqueezeExciteAddReLUOp`):
    the end of an SE residual block. ``residual`` has the shape and dtype of ``input``."""
    op = "squeeze_excite_add_relu"
    args = _checked(op, input, w1, b1, w2, b2)
    r = as_tensor(residual)
    check_float(op, "residual", r.data)
    if r.shape != args[0].shape:
        raise ValueError(
            f"{op}: residual has shape {r.shape} but input has {args[0].shape} - the shortcut must match the "
            "branch it is added to (a projection shortcut changes its width and stride)"
        )
    check_same_dtype(op, input=args[0].data, residual=r.data)
    return SqueezeExciteAddReLUOp().apply(*args, r)


def _checked(op: str, input: Any, w1: Any, b1: Any, w2: Any, b2: Any) -> tuple[Any, ...]:
    """The SE block's arguments as tensors (x, w1, b1, w2, b2), biases None or tensors, after checking shapes
    and dtypes; errors name ``op``."""
    x, w1_ = as_tensor(input), as_tensor(w1)
    if w2 is None:
        raise TypeError(f"{op}: w2 is required - call {op}(x, w1, b1, w2, b2, ...) (biases may be None)")
    w2_ = as_tensor(w2)
    b1_ = None if b1 is None else as_tensor(b1)
    b2_ = None if b2 is None else as_tensor(b2)
    for name, t in (("input", x), ("w1", w1_), ("b1", b1_), ("w2", w2_), ("b2", b2_)):
        check_float(op, name, None if t is None else t.data)
    if x.ndim != 4:
        raise ValueError(f"{op}: input must be 4-D (N, C, H, W), got shape {x.shape} - reshape it to (N, C, H, W)")
    c = x.shape[1]
    if w1_.ndim != 2 or w1_.shape[1] != c:
        raise ValueError(f"{op}: w1 has shape {w1_.shape} but input {x.shape} has {c} channels - w1 must be (R, {c})")
    r = w1_.shape[0]
    if w2_.shape != (c, r):
        raise ValueError(
            f"{op}: w2 has shape {w2_.shape} but must be ({c}, {r}) to map the {r} hidden units back to {c} "
            "channels - build w2 as (channels, hidden)"
        )
    if b1_ is not None and b1_.shape != (r,):
        raise ValueError(f"{op}: b1 has shape {b1_.shape} but must be ({r},) - one bias per hidden unit, or None")
    if b2_ is not None and b2_.shape != (c,):
        raise ValueError(f"{op}: b2 has shape {b2_.shape} but must be ({c},) - one bias per channel, or None")
    check_same_dtype(
        op,
        input=x.data,
        w1=w1_.data,
        b1=None if b1_ is None else b1_.data,
        w2=w2_.data,
        b2=None if b2_ is None else b2_.data,
    )
    return x, w1_, b1_, w2_, b2_
