"""The elementwise arithmetic behind Tensor's operators, and matrix multiplication.

Binary ops broadcast like NumPy; their backward sums each gradient back to its input's shape with the
one :func:`~minise.autograd.sum_to` helper.
"""

from __future__ import annotations

from typing import Any

from minise import backend
from minise.autograd import Function, sum_to
from minise.backend import get_array_module


class AddOp(Function):
    """y = a + b;   da = sum_to(gy), db = sum_to(gy)"""

    name = "add"

    def forward(self, a: Any, b: Any) -> Any:
        self.save(a.shape, b.shape)
        if a.shape == b.shape and a.dtype == b.dtype:  # e.g. a residual connection: on all cores, or one kernel
            return backend.elementwise(_add, a, b, like=a)
        return a + b

    def backward(self, gy: Any) -> tuple[Any, Any]:
        sa, sb = self.saved  # type: ignore[misc]
        return sum_to(gy, sa), sum_to(gy, sb)


def _add(a: Any, b: Any, out: Any = None) -> Any:
    """a + b (the body of backend.elementwise)."""
    return get_array_module(a).add(a, b, out=out)


class SubOp(Function):
    """y = a - b;   da = sum_to(gy), db = -sum_to(gy)"""

    name = "sub"

    def forward(self, a: Any, b: Any) -> Any:
        self.save(a.shape, b.shape)
        return a - b

    def backward(self, gy: Any) -> tuple[Any, Any]:
        sa, sb = self.saved  # type: ignore[misc]
        return sum_to(gy, sa), -sum_to(gy, sb) if self.needs_input_grad[1] else None


class MulOp(Function):
    """y = a * b;   da = sum_to(gy * b), db = sum_to(gy * a)"""

    name = "mul"

    def forward(self, a: Any, b: Any) -> Any:
        self.save(a, b)
        return a * b

    def backward(self, gy: Any) -> tuple[Any, Any]:
        a, b = self.saved  # type: ignore[misc]
        da = sum_to(gy * b, a.shape) if self.needs_input_grad[0] else None
        db = sum_to(gy * a, b.shape) if self.needs_input_grad[1] else None
        return da, db


class DivOp(Function):
    """y = a / b;   da = sum_to(gy / b), db = sum_to(-gy * a / b**2)"""

    name = "div"

    def forward(self, a: Any, b: Any) -> Any:
        self.save(a, b)
        return a / b

    def backward(self, gy: Any) -> tuple[Any, Any]:
        a, b = self.saved  # type: ignore[misc]
        da = sum_to(gy / b, a.shape) if self.needs_input_grad[0] else None
        db = sum_to(-gy * a / (b * b), b.shape) if self.needs_input_grad[1] else None
        return da, db


class NegOp(Function):
    """y = -x;   dx = -gy"""

    name = "neg"

    def forward(self, x: Any) -> Any:
        return -x

    def backward(self, gy: Any) -> Any:
        return -gy


class PowOp(Function):
    """y = a ** b;   da = sum_to(gy * b * a**(b-1)),  db = sum_to(gy * y * log a)  (a > 0 where db is needed)"""

    name = "pow"

    def forward(self, a: Any, b: Any) -> Any:
        y = a**b
        self.save(a, b, y)
        return y

    def backward(self, gy: Any) -> tuple[Any, Any]:
        a, b, y = self.saved  # type: ignore[misc]
        xp = get_array_module(a)
        da = sum_to(gy * b * a ** (b - 1), a.shape) if self.needs_input_grad[0] else None
        db = sum_to(gy * y * xp.log(a), b.shape) if self.needs_input_grad[1] else None
        return da, db


class MatMulOp(Function):
    """y = a @ b (with NumPy's matmul broadcasting);   da = gy @ b^T,  db = a^T @ gy   (summed to shape)

    1-D operands are treated as in NumPy: a vector on the left is a row, on the right a column.
    """

    name = "matmul"

    def forward(self, a: Any, b: Any) -> Any:
        self.save(a, b)
        return a @ b

    def backward(self, gy: Any) -> tuple[Any, Any]:
        a, b = self.saved  # type: ignore[misc]
        a2 = a.reshape(1, -1) if a.ndim == 1 else a  # (..., M, K)
        b2 = b.reshape(-1, 1) if b.ndim == 1 else b  # (..., K, N)
        g2 = gy.reshape(*gy.shape, 1) if b.ndim == 1 else gy
        g2 = g2.reshape(*g2.shape[:-1], 1, g2.shape[-1]) if a.ndim == 1 else g2  # (..., M, N)
        da = db = None
        if self.needs_input_grad[0]:
            da = sum_to(g2 @ b2.swapaxes(-1, -2), a2.shape if a.ndim > 1 else (1, a.shape[0])).reshape(a.shape)
        if self.needs_input_grad[1]:
            db = sum_to(a2.swapaxes(-1, -2) @ g2, b2.shape if b.ndim > 1 else (b.shape[0], 1)).reshape(b.shape)
        return da, db
