"""Gradient checking: does an op's hand-written backward agree with finite differences?

For a function f and inputs x_i, pick a random cotangent c of f's output shape and define the scalar
    phi(x) = <f(x), c> = sum(f(x) * c).
Backward with gradient c gives d phi / d x_i; central differences give, for every element j,
    (phi(x + eps e_j) - phi(x - eps e_j)) / (2 eps),
with error O(eps^2). Everything runs in float64 so rounding (~1e-16 / eps) stays far below the
tolerance. A *random* cotangent matters: with c = 1 (a ``sum()`` loss) a wrong batch-norm or softmax
backward can still pass, because their input gradients sum to zero along an axis whatever the error.
Lesson 03 explains and shows such a bug.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from minise import backend
from minise.autograd import no_grad
from minise.tensor import Tensor


class GradcheckError(AssertionError):
    """Raised when analytical and numerical gradients disagree; ``report`` holds the details."""

    def __init__(self, report: GradcheckReport) -> None:
        super().__init__(str(report))
        self.report = report


@dataclass
class InputReport:
    """Worst errors for one input: absolute and relative, where they occur and the two values there."""

    index: int
    shape: tuple[int, ...]
    max_abs_error: float
    max_rel_error: float
    worst_at: tuple[int, ...]
    analytical: float
    numerical: float
    ok: bool


@dataclass
class GradcheckReport:
    inputs: list[InputReport] = field(default_factory=list)
    atol: float = 0.0
    rtol: float = 0.0

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.inputs)

    def __str__(self) -> str:
        lines = [f"gradcheck {'passed' if self.ok else 'FAILED'} (atol={self.atol:g}, rtol={self.rtol:g})"]
        for r in self.inputs:
            lines.append(
                f"  input {r.index} {r.shape}: max abs error {r.max_abs_error:.3e}, max rel error "
                f"{r.max_rel_error:.3e}, worst at {r.worst_at}: analytical {r.analytical:.10g}, numerical "
                f"{r.numerical:.10g}{'' if r.ok else '   <-- mismatch'}"
            )
        return "\n".join(lines)


def gradcheck(
    fn: Callable[..., Tensor],
    *inputs: Any,
    eps: float = 1e-6,
    atol: float = 1e-8,
    rtol: float = 1e-6,
    seed: int = 20180618,
    raise_on_failure: bool = True,
) -> GradcheckReport:
    """Compare the backward of ``fn(*inputs)`` with central differences, on every element of every input
    that requires grad, against a random cotangent. Inputs must be float64 tensors.

    An element passes when |analytical - numerical| <= atol + rtol * |numerical|. Returns the report
    (worst absolute and relative error per input and where); raises :class:`GradcheckError` with it on
    failure unless ``raise_on_failure=False``.
    """
    checked = [t for t in inputs if isinstance(t, Tensor) and t.requires_grad]
    if not checked:
        raise ValueError("gradcheck: no input requires grad - create the inputs with requires_grad=True")
    for t in checked:
        if t.dtype != np.float64:
            raise TypeError(
                f"gradcheck: inputs must be float64 (got {t.dtype} for shape {t.shape}) - float32 rounding "
                "swamps finite differences; use x.astype('float64') and requires_grad=True"
            )
    for t in checked:  # perturbing an element below must perturb the input: make its data contiguous
        if not t.data.flags.c_contiguous:
            t.data = backend.get_array_module(t.data).ascontiguousarray(t.data)
    out = fn(*inputs)
    xp = backend.get_array_module(out.data)
    rng = np.random.default_rng(seed)
    cot = backend.to_device(rng.standard_normal(out.shape), out.device)

    for t in checked:
        t.grad = None
    out.backward(cot)
    analytical = [backend.to_host(t.grad) if t.grad is not None else np.zeros(t.shape) for t in checked]

    def phi() -> float:
        with no_grad():
            return float(xp.sum(fn(*inputs).data * cot))

    report = GradcheckReport(atol=atol, rtol=rtol)
    for i, t in enumerate(checked):
        numerical = np.zeros(t.shape)
        flat = t.data.reshape(-1)  # a view: perturbing it perturbs the input
        for j in range(flat.size):
            orig = float(flat[j])
            flat[j] = orig + eps
            plus = phi()
            flat[j] = orig - eps
            minus = phi()
            flat[j] = orig
            numerical.flat[j] = (plus - minus) / (2 * eps)
        a = analytical[i]
        abs_err = np.abs(a - numerical)
        rel_err = abs_err / np.maximum(np.abs(numerical), 1e-12)
        excess = abs_err - (atol + rtol * np.abs(numerical))
        worst = int(np.argmax(excess)) if excess.size else 0
        at = tuple(int(v) for v in np.unravel_index(worst, t.shape)) if t.shape else ()
        report.inputs.append(
            InputReport(
                index=_position(inputs, t),
                shape=t.shape,
                max_abs_error=float(abs_err.max()) if abs_err.size else 0.0,
                max_rel_error=float(rel_err.max()) if rel_err.size else 0.0,
                worst_at=at,
                analytical=float(a.flat[worst]) if a.size else 0.0,
                numerical=float(numerical.flat[worst]) if a.size else 0.0,
                ok=bool((excess <= 0).all()),
            )
        )
    if raise_on_failure and not report.ok:
        raise GradcheckError(report)
    return report


def _position(inputs: tuple[Any, ...], t: Tensor) -> int:
    return next(i for i, x in enumerate(inputs) if x is t)
