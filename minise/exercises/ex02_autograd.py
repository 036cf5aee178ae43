"""Exercise 02: three ops of the autograd engine, ``Mul``, ``Exp`` and ``Tanh``, as
:class:`minise.autograd.Function` subclasses (forward and backward on arrays).

Each is run through minise's engine (``Op().apply(tensors)``, then ``y.backward(gy)``) and checked
against minise's own ``*``, ``exp`` and ``tanh`` and float64 central differences; the hints recognise
the factors of a product swapped, and tanh's derivative written with the input instead of the output.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np

import minise.functional as F
from minise import no_grad, tensor, use_backend
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

SOLUTION = '''"""Exercise 02: ops of the autograd engine (lesson 02).

Start over:        python -m minise.lessons exercise 02 --force   (this file is kept as .bak)
Check it:          python -m minise.lessons check 02

An op is a Function: forward(*arrays) -> array, and backward(gy) -> the gradient of the loss for
each input, given gy = dL/dy (lesson 02, section 2). forward keeps what backward needs with
self.save(...); backward reads it back from self.saved. The engine calls them: Mul().apply(a, b)
runs forward on the tensors' arrays and records the op; y.backward(gy) runs every backward in
reverse topological order.
"""

import numpy as np

from minise.autograd import Function


class Mul(Function):
    """y = a * b (a and b of the same shape);   da = gy * b,   db = gy * a"""

    def forward(self, a, b):
        self.save(a, b)
        return a * b

    def backward(self, gy):
        # >>> your code
        a, b = self.saved
        return gy * b, gy * a
        # <<<


class Exp(Function):
    """y = exp(x);   dx = gy * exp(x) = gy * y   (keep y from the forward: no second exp)"""

    def forward(self, x):
        # >>> your code
        y = np.exp(x)
        self.save(y)
        return y
        # <<<

    def backward(self, gy):
        # >>> your code
        (y,) = self.saved
        return gy * y
        # <<<


class Tanh(Function):
    """y = tanh(x);   dx = gy * (1 - y^2)   (the derivative written with the output y)"""

    def forward(self, x):
        # >>> your code
        y = np.tanh(x)
        self.save(y)
        return y
        # <<<

    def backward(self, gy):
        # >>> your code
        (y,) = self.saved
        return gy * (1 - y * y)
        # <<<
'''

SWAP_HINT = (
    "the gradients of a product are swapped: y = a * b changes with a at the rate b, so da = gy * b (the "
    "OTHER factor) and db = gy * a"
)
TANH_INPUT_HINT = "d tanh(x)/dx = 1 - tanh(x)^2 = 1 - y^2 with the OUTPUT y, not 1 - x^2"
TANH_SQUARE_HINT = "d tanh(x)/dx = 1 - y^2: the output squared, not 1 - y"


def run_op(op_class: Any, arrays: tuple[Any, ...], gy: Any) -> tuple[Any, ...]:
    """(y, the gradient of each input): the learner's op run through minise's engine."""
    with use_backend("numpy"):
        ts = [tensor(a, requires_grad=True) for a in arrays]
        y = op_class().apply(*ts)
        y.backward(gy)
        return (y.numpy(), *[t.grad for t in ts])


def _forward_only(op_class: Any, arrays: tuple[Any, ...]) -> Any:
    with use_backend("numpy"), no_grad():
        return op_class().apply(*[tensor(a) for a in arrays]).numpy()


def _numeric(op_class: Any, arrays: tuple[Any, ...], wrt: Any, gy: Any) -> Callable[[], Any]:
    """Central differences of sum(op(arrays) * gy) with respect to ``wrt`` (one of the arrays)."""
    return lambda: numerical_gradient(lambda: _forward_only(op_class, arrays), wrt, gy)


def _shapes(draw: Any) -> dict[str, Any]:
    ndim = draw(1, 3)
    return {"shape": tuple(draw(1, 4) for _ in range(ndim))}


EDGE: list[dict[str, Any]] = [{"shape": (1,)}, {"shape": (1, 1, 1)}, {"shape": (2, 3)}]


def make_cases(module: ModuleType) -> dict[str, list[Case]]:
    """Cases for Mul, Exp and Tanh (each runs the learner's op through the engine)."""
    cases: dict[str, list[Case]] = {"Mul": [], "Exp": [], "Tanh": []}
    for i, sh in enumerate(draw_cases(_shapes, EDGE)):
        rng = rng_for(i)
        a, b, gy = (rng.standard_normal(sh["shape"]) for _ in range(3))
        y, (da, db) = engine_gradients(lambda s, t: s * t, [a, b], gy)
        mul = learner_function(module, "Mul")
        cases["Mul"].append(
            Case(
                shape_text(a=a, b=b),
                (a, b, gy),
                {"y": y, "da": da, "db": db},
                numeric={"da": _numeric(mul, (a, b), a, gy), "db": _numeric(mul, (a, b), b, gy)},
                variants={SWAP_HINT: {"da": gy * a, "db": gy * b}},
            )
        )
        for name, fn in (("Exp", F.exp), ("Tanh", F.tanh)):
            y, (dx,) = engine_gradients(fn, [a], gy)
            t = np.tanh(a)
            cls = learner_function(module, name)
            cases[name].append(
                Case(
                    shape_text(x=a),
                    (a, gy),
                    {"y": y, "dx": dx},
                    numeric={"dx": _numeric(cls, (a,), a, gy)},
                    variants={TANH_INPUT_HINT: {"dx": gy * (1 - a * a)}, TANH_SQUARE_HINT: {"dx": gy * (1 - t)}}
                    if name == "Tanh"
                    else {},
                )
            )
    return cases


def check(module: ModuleType, report: Report) -> None:
    cases = make_cases(module)
    mul = learner_function(module, "Mul")
    grade_function(
        report,
        "Mul",
        lambda a, b, gy: run_op(mul, (a, b), gy),
        ("y", "da", "db"),
        cases["Mul"],
        "minise's a * b and central differences, through the engine",
    )
    for name in ("Exp", "Tanh"):
        cls = learner_function(module, name)
        grade_function(
            report,
            name,
            lambda x, gy, cls=cls: run_op(cls, (x,), gy),
            ("y", "dx"),
            cases[name],
            f"minise's {name.lower()} and central differences, through the engine",
        )


EXERCISE = Exercise(
    number=2,
    title="ops of the autograd engine: Mul, Exp, Tanh",
    filename="ex02_autograd.py",
    solution=SOLUTION,
    check=check,
    mistakes=(
        Mistake("factors swapped", "return gy * b, gy * a", "return gy * a, gy * b", "the OTHER factor"),
        Mistake("tanh with 1 - y", "return gy * (1 - y * y)", "return gy * (1 - y)", "not 1 - y"),
    ),
)
