"""Exercise 04: the linear layer's backward and softmax cross-entropy, forward and backward.

``linear_backward(gy, x, w) -> (dx, dw, db)``, ``softmax_cross_entropy(z, target) -> loss`` and
``softmax_cross_entropy_backward(z, target) -> dz``, checked against ``minise.functional.linear`` and
``cross_entropy`` and float64 central differences; the hints recognise a transposed weight gradient,
a missing 1/N, a gradient without the one-hot, and exp overflowing on large logits.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

import minise.functional as F
from minise.exercises.core import (
    Case,
    Exercise,
    Mistake,
    Report,
    draw_cases,
    engine_gradients,
    grade_function,
    learner_function,
    numerical_gradient,
    rng_for,
    shape_text,
)

SOLUTION = '''"""Exercise 04: the linear layer's backward and softmax cross-entropy (lesson 04).

Start over:        python -m minise.lessons exercise 04 --force   (this file is kept as .bak)
Check it:          python -m minise.lessons check 04
"""

import numpy as np


def linear_backward(gy, x, w):
    """Return (dx, dw, db) for y = x w^T + b, given gy = dL/dy.

    Shapes: x (N, IN); w (OUT, IN), as in PyTorch; gy (N, OUT).
        dx = gy w          (N, IN)
        dw = gy^T x        (OUT, IN)    the weight's own shape
        db = sum_n gy      (OUT,)
    """
    # >>> your code
    dx = gy @ w
    dw = gy.T @ x
    db = gy.sum(axis=0)
    return dx, dw, db
    # <<<


def softmax_cross_entropy(z, target):
    """The mean cross-entropy loss of logits z (N, K) against class indices target (N,), a float.

        L = (1/N) sum_n -log softmax(z_n)[target_n],   log softmax(z) = z - m - log sum_k exp(z_k - m)
    with m = max_k z_k: subtracting it changes nothing mathematically and keeps exp from overflowing.
    """
    n = z.shape[0]
    # >>> your code
    shifted = z - z.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return float(-log_p[np.arange(n), target].mean())
    # <<<


def softmax_cross_entropy_backward(z, target):
    """dL/dz (N, K) of the mean loss above: (softmax(z) - onehot(target)) / N."""
    n = z.shape[0]
    # >>> your code
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    p[np.arange(n), target] -= 1
    return p / n
    # <<<
'''

MEAN_HINT = "the loss is the MEAN over the N examples, so its gradient has a factor 1/N: divide by N"
ONEHOT_HINT = "dL/dz is softmax(z) minus the one-hot of the target: subtract 1 at each example's target class"
OVERFLOW_HINT = (
    "exp overflowed on large logits: subtract each row's maximum before exp (softmax(z - m) = softmax(z)), "
    "and use log-sum-exp for the log"
)


def _softmax(z: Any) -> Any:
    p = np.exp(z - z.max(axis=1, keepdims=True))
    return p / p.sum(axis=1, keepdims=True)


def _shapes(draw: Any) -> dict[str, Any]:
    return {"n": draw(1, 5), "k": draw(1, 6), "inp": draw(1, 4), "out": draw(1, 4), "scale": 3}


EDGE = [
    {"n": 1, "k": 4, "inp": 3, "out": 2, "scale": 3},  # batch 1
    {"n": 3, "k": 1, "inp": 1, "out": 1, "scale": 3},  # one class, one feature
    {"n": 4, "k": 5, "inp": 2, "out": 3, "scale": 1000},  # large logits: exp(1000) overflows
]


def make_cases() -> tuple[list[Case], list[Case], list[Case]]:
    """Cases for linear_backward, softmax_cross_entropy and softmax_cross_entropy_backward."""
    lin, loss_cases, grad_cases = [], [], []
    for i, sh in enumerate(draw_cases(_shapes, EDGE)):
        rng = rng_for(i)
        n, k = sh["n"], sh["k"]
        x, w, b = (
            rng.standard_normal((n, sh["inp"])),
            rng.standard_normal((sh["out"], sh["inp"])),
            rng.standard_normal(sh["out"]),
        )
        gy = rng.standard_normal((n, sh["out"]))
        _, grads = engine_gradients(F.linear, [x, w, b], gy)
        inputs = (x, w, b)

        def numeric(a: Any, inputs: Any = inputs, gy: Any = gy) -> Any:
            return lambda: numerical_gradient(lambda: F.linear(*inputs).numpy(), a, gy)

        lin.append(
            Case(
                shape_text(x=x, w=w),
                (gy, x, w),
                dict(zip(("dx", "dw", "db"), grads)),
                numeric={k_: numeric(a) for k_, a in zip(("dx", "dw", "db"), inputs)},
            )
        )
        z = rng.standard_normal((n, k)) * sh["scale"]
        target = rng.integers(0, k, n)
        loss, (dz, _) = engine_gradients(lambda z_, t_, target=target: F.cross_entropy(z_, target), [z, None], 1.0)
        where = shape_text(z=z) + (" (large logits)" if sh["scale"] > 100 else "")
        big = {OVERFLOW_HINT: {"loss": np.nan, "dz": np.full_like(z, np.nan)}} if sh["scale"] > 100 else {}
        loss_cases.append(Case(where, (z, target), {"loss": float(loss)}, variants=big))

        def numeric_loss(z: Any = z, target: Any = target) -> Any:
            return numerical_gradient(lambda: F.cross_entropy(z, target).numpy(), z, 1.0)

        onehot = np.eye(k)[target]
        grad_cases.append(
            Case(
                where,
                (z, target),
                {"dz": dz},
                numeric={"dz": numeric_loss} if sh["scale"] < 100 else {},
                variants={MEAN_HINT: {"dz": _softmax(z) - onehot}, ONEHOT_HINT: {"dz": _softmax(z) / n}, **big},
            )
        )
    return lin, loss_cases, grad_cases


def check(module: ModuleType, report: Report) -> None:
    lin, loss_cases, grad_cases = make_cases()
    grade_function(
        report,
        "linear_backward",
        learner_function(module, "linear_backward"),
        ("dx", "dw", "db"),
        lin,
        "minise's linear and central differences",
    )
    grade_function(
        report,
        "softmax_cross_entropy",
        learner_function(module, "softmax_cross_entropy"),
        ("loss",),
        loss_cases,
        "minise's cross_entropy",
    )
    grade_function(
        report,
        "softmax_cross_entropy_backward",
        learner_function(module, "softmax_cross_entropy_backward"),
        ("dz",),
        grad_cases,
        "minise's cross_entropy and central differences",
    )


EXERCISE = Exercise(
    number=4,
    title="the linear layer's backward and softmax cross-entropy",
    filename="ex04_softmax_ce.py",
    solution=SOLUTION,
    check=check,
    mistakes=(
        Mistake("transposed weight gradient", "dw = gy.T @ x", "dw = x.T @ gy", "transpose of the right one"),
        Mistake("no 1/N", "    return p / n\n", "    return p\n", "MEAN over the N examples"),
        Mistake("no one-hot", "p[np.arange(n), target] -= 1", "pass", "minus the one-hot"),
        Mistake(
            "no max subtracted",
            "shifted = z - z.max(axis=1, keepdims=True)",
            "shifted = z",
            "subtract each row's maximum",
        ),
        Mistake(  # the next two are a fresh reader's: they passed while no checker watched the inputs
            "gy and x zeroed in place",
            "    return dx, dw, db\n",
            "    gy[...] = 0\n    x[...] = 0\n    return dx, dw, db\n",
            "linear_backward changed gy, the array it was given",
        ),
        Mistake(
            "z zeroed in place",
            "    return p / n\n",
            "    z[...] = 0\n    return p / n\n",
            "softmax_cross_entropy_backward changed z, the array it was given",
        ),
    ),
)
