"""Exercise 02: three ops of the autograd engine, ``Mul``, ``Exp`` and ``Tanh``, as
:class:`minise.autograd.Function` subclasses (forward and backward on arrays).

Each is run through minise's engine (``Op().apply(tensors)``, then ``y.backward(gy)``): y is checked
against minise's own ``*``, ``exp`` and ``tanh``, the gradients against minise's and float64 central
differences. backward must return one gradient per input and leave ``gy`` as it was (the engine hands
one gy array to both inputs of an addition), and neither forward nor backward may write into its inputs
or what forward saved; the hints recognise the factors of a product swapped, and tanh's derivative
written with the input instead of the output.
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
    PartFailed,
    Report,
    changed_argument,
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
each input, given gy = dL/dy (lesson 02, section 5). forward keeps what backward needs with
self.save(...); backward reads it back from self.saved. The engine calls them: Mul().apply(a, b)
runs forward on the tensors' arrays and records the op; y.backward(gy) runs every backward in
reverse topological order.

Three rules for backward:
  - return one gradient per input, as a tuple: return da, db (an op with one input may return dx);
  - do not change gy in place (no gy *= b): the engine may hand the same gy array to several
    ops (in y = Mul(a, b) + a, Add gives its gy to Mul and to a), so compute new arrays (gy * b);
  - do not change what forward saved either (no y *= gy: a saved y is also the op's output).
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


GY_HINT = (
    "backward must not change gy in place (gy *= ..., gy += ...): the engine may hand the same gy array to "
    "several ops - in y = Mul(a, b) + a, Add gives its gy to Mul and to a, so a's gradient would come out "
    "wrong - compute new arrays instead: da = gy * b"
)


INPUT_HINT = (
    "forward must not write into its inputs (x *= ..., np.exp(x, out=x)): they are the arrays of the input "
    "tensors, which other ops and backward still read - compute a new array: y = np.exp(x)"
)
SAVED_HINT = (
    "backward must not write into what forward saved (y *= gy): a saved y is also the op's output (y.data), "
    "and the gradient returned would be that same array, so both come out wrong - compute a new array: "
    "return gy * y"
)


class _Stop(Exception):
    """Raised by the watched backward once it has run: the checker has what it wanted."""


def run_op(op_class: Any, arrays: tuple[Any, ...], gy: Any) -> tuple[Any, ...]:
    """(y, the gradient of each input): the learner's op run through minise's engine."""
    with use_backend("numpy"):
        ts = [tensor(a, requires_grad=True) for a in arrays]
        y = op_class().apply(*ts)
        y.backward(gy)
        return (y.numpy(), *[t.grad for t in ts])


def check_backward_contract(report: Report, name: str, op_class: Any, inputs: tuple[str, ...], case: Case) -> bool:
    """One part: ``backward`` returns one gradient per input, as a tuple, and leaves gy as it was.

    False when the number of gradients is wrong (the engine could not use them: the gradients are then
    not graded); a changed gy is reported, and the gradients are still graded.
    """
    seen: dict[str, Any] = {}

    class Watched(op_class):  # type: ignore[misc, valid-type]
        def forward(self, *arrays: Any) -> Any:
            before = tuple(np.array(a, copy=True) for a in arrays)
            y = super().forward(*arrays)
            seen["input changed"] = changed_argument(arrays, before, inputs)
            return y

        def backward(self, gy: Any) -> Any:
            before = np.array(gy, copy=True)
            saved = tuple(np.array(s, copy=True) if isinstance(s, np.ndarray) else s for s in self.saved)
            seen["out"] = super().backward(gy)
            seen["gy changed"] = not np.array_equal(gy, before)
            seen["saved changed"] = next(
                (i for i, (now, then) in enumerate(zip(self.saved, saved)) if changed_argument((now,), (then,), ())),
                None,
            )
            raise _Stop

    count_ok = False
    grads = ", ".join(f"d{i}" for i in inputs)
    with report.part(f"{name}.backward"):
        report.calling = f"{name}.backward on {case.where}"
        try:
            run_op(Watched, case.args[:-1], case.args[-1].copy())
        except _Stop:
            pass
        out = seen["out"]
        count = len(out) if isinstance(out, (tuple, list)) else 1
        if isinstance(out, list) or count != len(inputs):
            got = "a list" if isinstance(out, list) else f"{count} gradient{'s' * (count != 1)}"
            report.fail(
                f"{name}.backward returned {got}, but {name} has {len(inputs)} input{'s' * (len(inputs) != 1)} "
                f"({', '.join(inputs)}): return one gradient per input, as a tuple: return {grads}"
            )
            raise PartFailed
        count_ok = True
        if seen["input changed"] is not None:
            arg = seen["input changed"]
            report.fail(f"{name}.forward changed {arg}, the array it was given: {INPUT_HINT} (case: {case.where})")
            raise PartFailed
        if seen["gy changed"]:
            report.fail(f"{name}.backward changed gy, the array it was given (case: {case.where})", hints=[GY_HINT])
            raise PartFailed
        if seen["saved changed"] is not None:
            report.fail(
                f"{name}.backward changed self.saved[{seen['saved changed']}], an array its forward saved: "
                f"{SAVED_HINT} (case: {case.where})"
            )
            raise PartFailed
        report.ok(f"{name}.backward returns {grads}; forward and backward change none of their arrays")
    return count_ok


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
    for name, inputs, reference in (("Mul", ("a", "b"), "a * b"), ("Exp", ("x",), "exp"), ("Tanh", ("x",), "tanh")):
        cls = learner_function(module, name)
        n = len(inputs)
        grade_function(
            report,
            name,
            lambda *args, cls=cls, n=n: _forward_only(cls, args[:n]),
            ("y",),
            cases[name],
            f"minise's {reference}",
            check_arguments=False,  # the engine copies them into tensors: the contract part watches forward
        )
        if not check_backward_contract(report, name, cls, inputs, cases[name][0]):
            continue  # the gradients cannot be graded: the engine needs one per input
        names = tuple(f"d{i}" for i in inputs)
        grade_function(
            report,
            name,
            lambda *args, cls=cls, n=n: (
                run_op(cls, args[:n], args[n])[1:] if n > 1 else run_op(cls, args[:n], args[n])[1]
            ),
            names,
            cases[name],
            f"minise's gradient of {reference} and central differences",
            check_arguments=False,  # the contract part watches gy and what forward saved
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
        Mistake(  # a fresh reader's code: it passed while only one op was checked; in y = Mul(a, b) + a it is wrong
            "gy changed in place",
            "return gy * b, gy * a",
            "db = gy * a\n        gy *= b\n        return gy, db",
            "must not change gy in place",
        ),
        Mistake(
            "one gradient for two inputs", "return gy * b, gy * a", "return gy * b", "returned 1 gradient, but Mul"
        ),
        Mistake(  # a fresh reader's: it passed while only gy was watched; y.data came out wrong, x.grad was y
            "saved y changed in place",
            "        return gy * y\n",
            "        y *= gy\n        return y\n",
            "Exp.backward changed self.saved[0], an array its forward saved",
        ),
        Mistake("forward into its input", "y = np.exp(x)", "y = np.exp(x, out=x)", "Exp.forward changed x, the array"),
    ),
)
