"""Exercise 03: a numerical gradient checker, ``numerical_gradient(f, x, eps)`` and
``gradient_error(f, grad, x)``.

``numerical_gradient`` is checked against gradients known in closed form; ``gradient_error`` must
call a right gradient right, catch planted wrong ones (a sign error at one element, two elements
swapped: invisible to a check of the sum, a gradient 1 % too large) and return the worst relative
error itself (0.5 for a gradient twice too large at its smallest element, where the absolute, mean and
norm-ratio errors are all below 0.07). The hints recognise a one-sided difference, a missing factor 2,
an x left changed, a check that compares sums, and those three other measures of the error.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np

from minise.exercises.core import (
    Case,
    Exercise,
    Mistake,
    PartFailed,
    Report,
    draw_cases,
    grade_function,
    learner_function,
    rng_for,
    shape_text,
)

SOLUTION = '''"""Exercise 03: checking gradients with central differences (lesson 03).

Start over:        python -m minise.lessons exercise 03 --force   (this file is kept as .bak)
Check it:          python -m minise.lessons check 03
"""

import numpy as np


def numerical_gradient(f, x, eps=1e-6):
    """The gradient of the scalar function f at x by central differences, element by element:

        grad[j] = (f(x + eps e_j) - f(x - eps e_j)) / (2 eps)      error O(eps^2)

    f takes an array shaped like x and returns a float; x is float64. Change x in place to evaluate
    f, and leave it exactly as it was when you return.
    """
    grad = np.zeros_like(x)
    # >>> your code
    for j in np.ndindex(x.shape):
        old = x[j]
        x[j] = old + eps
        plus = f(x)
        x[j] = old - eps
        minus = f(x)
        x[j] = old
        grad[j] = (plus - minus) / (2 * eps)
    return grad
    # <<<


def gradient_error(f, grad, x):
    """How wrong an analytical gradient ``grad`` (shaped like x) of f at x is: the worst relative error
    against central differences, element by element,

        max_j |grad[j] - num[j]| / max(|grad[j]|, |num[j]|, 1e-8)

    Return that number itself (not an absolute error, a mean or a ratio of norms). A right gradient
    gives about 1e-7 or less in float64 (often 1e-9; more where an element is close to 0); the wrong
    ones the checker plants give from 0.0099 (every element 1 % too large) to 2 (one element's sign
    flipped): lesson 03 calls anything above 1e-3 wrong.
    """
    # >>> your code
    num = numerical_gradient(f, x)
    return float(np.max(np.abs(grad - num) / np.maximum(np.maximum(np.abs(grad), np.abs(num)), 1e-8)))
    # <<<
'''

ONE_SIDED_HINT = (
    "this is a one-sided difference, (f(x + eps) - f(x)) / eps, whose error is O(eps) (about 1e-6 here); "
    "the central difference (f(x + eps) - f(x - eps)) / (2 eps) errs by O(eps^2)"
)
FACTOR_HINT = "the step from x - eps to x + eps is 2 eps long: divide by 2 * eps"
RESTORE_HINT = "x must be left as it was: put each x[j] back to its old value after evaluating f at x[j] +- eps"
SUM_HINT = (
    "compare element by element: errors that cancel in a sum (two elements swapped, a wrong batch-norm "
    "gradient) are invisible to a check of sums (lesson 03, section 3)"
)

ABSOLUTE_HINT = (
    "yours is the worst ABSOLUTE error, max |grad - num|: it depends on the gradient's size (a gradient of 1e-4 "
    "can be wrong by 100 % under 1e-3); divide each error by max(|grad[j]|, |num[j]|, 1e-8)"
)
MEAN_HINT = (
    "yours is the MEAN of the relative errors: one wrong element among many disappears in a mean; "
    "return the worst one, np.max(...)"
)
NORM_HINT = (
    "yours is |grad - num| / |num| over the whole array (a ratio of norms): one small wrong element hides "
    "under the large right ones; compare element by element and return the worst relative error"
)
DENOMINATOR_HINT = (
    "divide by max(|grad[j]|, |num[j]|, 1e-8), as the docstring says, not by |num[j]| alone "
    "(which can give more than 1, and is not symmetric in the two gradients)"
)

Known = tuple[str, Callable[[Any], float], Callable[[Any], Any]]


def known_functions(c: Any) -> list[Known]:
    """(formula, f, its exact gradient): functions of x whose gradients we know in closed form."""
    return [
        ("sum(c * tanh(x))", lambda x: float(np.sum(c * np.tanh(x))), lambda x: c * (1 - np.tanh(x) ** 2)),
        ("sum(c * x^3) / 3", lambda x: float(np.sum(c * x**3) / 3), lambda x: c * x**2),
        (
            "log sum exp(x) + sum(c * x)",
            lambda x: float(np.log(np.exp(x).sum()) + np.sum(c * x)),
            lambda x: np.exp(x) / np.exp(x).sum() + c,
        ),
    ]


def _wrong_gradient(f: Any, x: Any, eps: float, kind: str) -> Any:
    """What a classic mistake computes: "one-sided", "no factor 2", or "not restored" (x[j] left at old - eps)."""
    x = x.copy()
    grad = np.zeros_like(x)
    for j in np.ndindex(x.shape):
        old = x[j]
        x[j] = old + eps
        plus = f(x)
        x[j] = old if kind == "one-sided" else old - eps
        minus = f(x)
        if kind != "not restored":
            x[j] = old
        grad[j] = (plus - minus) / (2 * eps if kind == "not restored" else eps)
    return grad


def _shapes(draw: Any) -> dict[str, Any]:
    ndim = draw(1, 3)
    return {"shape": tuple(draw(1, 3) for _ in range(ndim))}


EDGE: list[dict[str, Any]] = [{"shape": (1,)}, {"shape": (1, 1, 1)}, {"shape": (2, 3)}]


def check(module: ModuleType, report: Report) -> None:
    numerical = learner_function(module, "numerical_gradient")
    shapes = draw_cases(_shapes, EDGE, count=6)
    cases = []
    changed: list[str] = []
    for i, sh in enumerate(shapes):
        rng = rng_for(i)
        x, c = rng.uniform(-1.5, 1.5, sh["shape"]), rng.standard_normal(sh["shape"])
        for formula, f, grad in known_functions(c):
            x0 = x.copy()

            def learner(x: Any = x, f: Any = f, x0: Any = x0, where: str = f"{formula}, {shape_text(x=x)}") -> Any:
                result = numerical(f, x)
                if not np.array_equal(x, x0):
                    changed.append(where)
                    x[...] = x0
                return result

            cases.append(
                Case(
                    f"{formula}, {shape_text(x=x)}",
                    (learner,),
                    {"grad": grad(x0)},
                    variants={
                        ONE_SIDED_HINT: {"grad": _wrong_gradient(f, x0, 1e-6, "one-sided")},
                        FACTOR_HINT: {"grad": _wrong_gradient(f, x0, 1e-6, "no factor 2")},
                        RESTORE_HINT: {"grad": _wrong_gradient(f, x0, 1e-6, "not restored")},
                    },
                )
            )
    grade_function(
        report,
        "numerical_gradient",
        lambda learner: learner(),
        ("grad",),
        cases,
        "the exact gradients (to 2e-8)",
        rtol=0.0,
        atol=2e-8,
        against="the exact gradient",
    )
    with report.part("numerical_gradient leaves x unchanged"):
        if changed:
            report.fail(f"numerical_gradient changed x (case: {changed[0]})", hints=[RESTORE_HINT])
            raise PartFailed
        report.ok("numerical_gradient leaves x unchanged")
    _check_gradient_error(module, report)


def _check_gradient_error(module: ModuleType, report: Report) -> None:
    error_of = learner_function(module, "gradient_error")
    rng = rng_for(99)
    x, c = rng.uniform(-1.5, 1.5, (3, 4)), rng.standard_normal((3, 4))
    _, f, exact = known_functions(c)[0]
    right = exact(x)
    sign = right.copy()
    sign[1, 2] *= -1
    swapped = right.copy()
    swapped[0, 0], swapped[2, 3] = right[2, 3], right[0, 0]
    planted = {
        "the sign of one element flipped": sign,
        "two elements swapped (the sum is unchanged)": swapped,
        "every element 1 % too large": right * 1.01,
    }
    with report.part("gradient_error"):
        report.calling = "gradient_error with the right gradient of sum(c * tanh(x)), x (3, 4)"
        value = float(error_of(f, right.copy(), x.copy()))
        if not value < 1e-6:
            report.fail(
                f"gradient_error says {value:.3g} for the RIGHT gradient of sum(c * tanh(x)); it should be < 1e-6"
            )
            raise PartFailed
        for what, wrong in planted.items():
            report.calling = f"gradient_error with a planted wrong gradient ({what})"
            value = float(error_of(f, wrong.copy(), x.copy()))
            if not value > 1e-3:
                report.fail(
                    f"gradient_error misses a planted mistake ({what}): it says {value:.3g}, it should be > 1e-3",
                    hints=[SUM_HINT],
                )
                raise PartFailed
        _check_the_value(error_of, f, right, x, report)
        report.ok(
            "gradient_error passes the right gradient, catches 3 planted mistakes and returns the worst relative error"
        )


def error_measures(grad: Any, num: Any) -> dict[str, float]:
    """The asked-for worst relative error and, for the hints, the other measures a learner may return."""
    diff = np.abs(grad - num)
    rel = diff / np.maximum(np.maximum(np.abs(grad), np.abs(num)), 1e-8)
    return {
        "right": float(np.max(rel)),
        ABSOLUTE_HINT: float(np.max(diff)),
        MEAN_HINT: float(np.mean(rel)),
        NORM_HINT: float(np.linalg.norm(grad - num) / np.linalg.norm(num)),
        DENOMINATOR_HINT: float(np.max(diff / np.maximum(np.abs(num), 1e-8))),
    }


def _check_the_value(error_of: Callable[..., Any], f: Any, right: Any, x: Any, report: Report) -> None:
    """The number itself: one small element twice too large has relative error 0.5, while the absolute
    error (its size), the mean over the elements and the ratio of norms are all far smaller."""
    at = np.unravel_index(int(np.argmin(np.abs(right))), right.shape)
    wrong = right.copy()
    wrong[at] *= 2
    measures = error_measures(wrong, right)
    want = measures.pop("right")  # 0.5
    report.calling = f"gradient_error with a gradient twice too large at element {tuple(int(i) for i in at)}"
    value = float(error_of(f, wrong.copy(), x.copy()))
    if not abs(value - want) <= 1e-4 * want:
        report.fail(
            f"gradient_error says {value:.6g} for a gradient twice too large at its smallest element "
            f"{tuple(int(i) for i in at)}; the worst relative error there is |2g - g| / |2g| = {want:.6g}",
            hints=[h for h, v in measures.items() if abs(value - v) <= 1e-3 * v],
        )
        raise PartFailed


EXERCISE = Exercise(
    number=3,
    title="a numerical gradient checker: numerical_gradient, gradient_error",
    filename="ex03_gradcheck.py",
    solution=SOLUTION,
    check=check,
    mistakes=(
        Mistake(
            "one-sided difference",
            "        x[j] = old - eps\n        minus = f(x)\n        x[j] = old\n"
            "        grad[j] = (plus - minus) / (2 * eps)\n",
            "        x[j] = old\n        minus = f(x)\n        grad[j] = (plus - minus) / eps\n",
            "one-sided difference",
        ),
        Mistake("no factor 2", "grad[j] = (plus - minus) / (2 * eps)", "grad[j] = (plus - minus) / eps", "2 * eps"),
        Mistake(
            "x not restored",
            "        minus = f(x)\n        x[j] = old\n",
            "        minus = f(x)\n",
            "x must be left as it was",
        ),
        Mistake(  # the next three are a fresh reader's: each passed the three planted mistakes
            "absolute error",
            "return float(np.max(np.abs(grad - num) / np.maximum(np.maximum(np.abs(grad), np.abs(num)), 1e-8)))",
            "return float(np.max(np.abs(grad - num)))",
            "worst ABSOLUTE error",
        ),
        Mistake(
            "mean relative error",
            "return float(np.max(np.abs(grad - num) / np.maximum(np.maximum(np.abs(grad), np.abs(num)), 1e-8)))",
            "return float(np.mean(np.abs(grad - num) / np.maximum(np.maximum(np.abs(grad), np.abs(num)), 1e-8)))",
            "MEAN of the relative errors",
        ),
        Mistake(
            "ratio of norms",
            "return float(np.max(np.abs(grad - num) / np.maximum(np.maximum(np.abs(grad), np.abs(num)), 1e-8)))",
            "return float(np.linalg.norm(grad - num) / np.linalg.norm(num))",
            "a ratio of norms",
        ),
        Mistake(
            "sums compared",
            "return float(np.max(np.abs(grad - num) / np.maximum(np.maximum(np.abs(grad), np.abs(num)), 1e-8)))",
            "return float(abs(grad.sum() - num.sum()) / max(abs(num.sum()), 1e-8))",
            "compare element by element",
        ),
    ),
)
