"""Exercise 06: max pooling's backward, ``max_pool2d_backward(gy, x, kernel_size, stride) -> dx``.

Checked against ``minise.functional.max_pool2d`` and float64 central differences on inputs drawn
with distinct values (away from ties, where the max is differentiable), and against
``max_pool2d`` alone on inputs of a few small integers, full of ties, where the first maximum of a
window (in row-major order, as ``argmax`` picks) takes all of gy. The hints recognise a gradient sent
to every element of the window, average pooling's gradient, overlapping windows that overwrite
instead of adding, and ties given to the last maximum or shared among the tied ones.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

import minise.functional as F
from minise.exercises.core import (
    AnyOf,
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

SOLUTION = '''"""Exercise 06: max pooling's backward (lesson 06, section 1).

Start over:        python -m minise.lessons exercise 06 --force   (this file is kept as .bak)
Check it:          python -m minise.lessons check 06
"""

import numpy as np


def max_pool2d_backward(gy, x, kernel_size, stride):
    """dx for y = max_pool2d(x, kernel_size, stride) (no padding), given gy = dL/dy.

    Shapes: x (N, C, H, W); gy (N, C, OH, OW), OH = (H - K) // s + 1 (the same for W), K the
    kernel_size, s the stride.
        y[n, c, i, j] = max over the K x K window of x starting at (i s, j s)
    The max passes its gradient to the ONE element that won: if several tie, the first of them in
    row-major order (the one windows.argmax(axis=0) picks), and it alone gets all of gy;
    the other elements of the window did not change y, so they get nothing. Where windows overlap
    (s < K), an element can win several windows: its gradients add up.
    """
    k, s = kernel_size, stride
    n, c, h, w = x.shape
    oh, ow = (h - k) // s + 1, (w - k) // s + 1
    # the window element at offset (a, b) of every window: x[:, :, a + i s, b + j s] for all (i, j)
    offsets = [(a, b) for a in range(k) for b in range(k)]
    windows = np.stack([x[:, :, a : a + s * (oh - 1) + 1 : s, b : b + s * (ow - 1) + 1 : s] for a, b in offsets])
    # windows: (K*K, N, C, OH, OW)
    # >>> your code
    winner = windows.argmax(axis=0)  # (N, C, OH, OW): which offset holds each window's maximum
    dx = np.zeros_like(x)
    for o, (a, b) in enumerate(offsets):
        dx[:, :, a : a + s * (oh - 1) + 1 : s, b : b + s * (ow - 1) + 1 : s] += gy * (winner == o)
    return dx
    # <<<
'''

EVERY_HINT = (
    "your dx sends the gradient to every element of the window; only the maximum changed y, so only the "
    "element that won (the argmax of its window) gets gy, the others get 0"
)
AVERAGE_HINT = "that is average pooling's gradient (gy / K^2 to every element); max pooling sends gy to the argmax only"
LAST_HINT = (
    "where several elements of a window tie for the maximum, yours gives gy to the LAST of them; the first "
    "maximum (in row-major order, the one windows.argmax(axis=0) picks) takes it all"
)
SHARED_HINT = (
    "where several elements of a window tie for the maximum, yours gives gy to every tied element (or shares it "
    "among them); the first maximum alone (the one windows.argmax(axis=0) picks) takes all of gy"
)
OVERLAP_HINT = (
    "where windows overlap (stride < kernel) one element can win several windows: add the gradients "
    "(dx[...] += ...), do not overwrite them"
)


def wrong(gy: Any, x: Any, k: int, s: int, kind: str) -> Any:
    """dx of a classic mistake: "every" element, "average", "overwrite" on overlaps, and on ties: the
    "last" maximum, "all" tied maxima get gy, or "shared" (gy split among them)."""
    n, c, h, w = x.shape
    oh, ow = (h - k) // s + 1, (w - k) // s + 1
    offsets = [(a, b) for a in range(k) for b in range(k)]
    windows = np.stack([x[:, :, a : a + s * (oh - 1) + 1 : s, b : b + s * (ow - 1) + 1 : s] for a, b in offsets])
    winner = windows.argmax(axis=0)
    if kind == "last":
        winner = k * k - 1 - windows[::-1].argmax(axis=0)
    tied = windows == windows.max(axis=0)  # (K*K, N, C, OH, OW)
    dx = np.zeros_like(x)
    for o, (a, b) in enumerate(offsets):
        view = (slice(None), slice(None), slice(a, a + s * (oh - 1) + 1, s), slice(b, b + s * (ow - 1) + 1, s))
        if kind == "all":
            dx[view] += gy * tied[o]
        elif kind == "shared":
            dx[view] += gy * tied[o] / tied.sum(axis=0)
        elif kind == "every":
            dx[view] += gy
        elif kind == "average":
            dx[view] += gy / (k * k)
        elif kind == "overwrite":
            dx[view] = gy * (winner == o)  # overwrites what earlier offsets added
        else:
            dx[view] += gy * (winner == o)
    return dx


def _shapes(draw: Any) -> dict[str, Any]:
    k, s = draw(1, 3), draw(1, 3)
    oh, ow = draw(1, 3), draw(1, 3)
    return {
        "n": draw(1, 2),
        "c": draw(1, 3),
        "k": k,
        "s": s,
        "h": (oh - 1) * s + k + draw(0, s - 1),
        "w": (ow - 1) * s + k,
    }


EDGE = [
    {"n": 1, "c": 2, "k": 2, "s": 2, "h": 4, "w": 4},  # batch 1
    {"n": 2, "c": 1, "k": 3, "s": 1, "h": 5, "w": 4},  # one channel, overlapping windows
    {"n": 2, "c": 3, "k": 1, "s": 1, "h": 1, "w": 1},  # 1x1 spatial
    {"n": 2, "c": 2, "k": 3, "s": 3, "h": 3, "w": 3},  # the kernel covers the whole input
    {"n": 1, "c": 2, "k": 3, "s": 2, "h": 7, "w": 5},  # overlapping windows, stride 2
]


def make_cases(ties: bool = False) -> list[Case]:
    """Cases on distinct values (checked with central differences too), or with ``ties``: values from
    {0, 1, 2}, so that most windows hold several maxima (checked against max_pool2d only: the max is not
    differentiable there)."""
    cases = []
    for i, sh in enumerate(draw_cases(_shapes, EDGE)):
        rng = rng_for(i + 1000 * ties)
        shape = (sh["n"], sh["c"], sh["h"], sh["w"])
        size = int(np.prod(shape))
        if ties:
            x = rng.integers(0, 3, shape).astype(np.float64)
        else:
            x = (rng.permutation(size).reshape(shape) + rng.uniform(0.2, 0.8, shape)) / 10  # distinct, 0.1 apart
        k, s = sh["k"], sh["s"]
        oh, ow = (sh["h"] - k) // s + 1, (sh["w"] - k) // s + 1
        gy = rng.standard_normal((sh["n"], sh["c"], oh, ow))
        _, (dx,) = engine_gradients(lambda t, k=k, s=s: F.max_pool2d(t, k, s), [x], gy)

        def numeric(x: Any = x, gy: Any = gy, k: int = k, s: int = s) -> Any:
            return numerical_gradient(lambda: F.max_pool2d(x, k, s).numpy(), x, gy)

        variants = {
            EVERY_HINT: {"dx": wrong(gy, x, k, s, "every")},
            AVERAGE_HINT: {"dx": wrong(gy, x, k, s, "average")},
            OVERLAP_HINT: {"dx": wrong(gy, x, k, s, "overwrite")},
        }
        if ties:
            variants[LAST_HINT] = {"dx": wrong(gy, x, k, s, "last")}
            variants[SHARED_HINT] = {"dx": AnyOf(wrong(gy, x, k, s, "all"), wrong(gy, x, k, s, "shared"))}
        cases.append(
            Case(
                where=shape_text(x=x) + f", kernel_size {k}, stride {s}" + (", tied values in {0, 1, 2}" * ties),
                args=(gy, x, k, s),
                expected={"dx": dx},
                numeric={} if ties else {"dx": numeric},
                variants=variants,
            )
        )
    return cases


def check(module: ModuleType, report: Report) -> None:
    backward = learner_function(module, "max_pool2d_backward")
    grade_function(
        report, "max_pool2d_backward", backward, ("dx",), make_cases(), "minise's max_pool2d and central differences"
    )
    grade_function(
        report,
        "max_pool2d_backward on ties",
        backward,
        ("dx",),
        make_cases(ties=True),
        "minise's max_pool2d (the first maximum takes gy)",
        check_arguments=False,  # watched on the cases above: a changed input is reported once
    )


EXERCISE = Exercise(
    number=6,
    title="max pooling's backward: max_pool2d_backward",
    filename="ex06_max_pool.py",
    solution=SOLUTION,
    check=check,
    mistakes=(
        Mistake(
            "gradient to every element",
            "+= gy * (winner == o)",
            "+= gy",
            "every element of the window",
        ),
        Mistake(
            "overwrite on overlaps",
            "dx[:, :, a : a + s * (oh - 1) + 1 : s, b : b + s * (ow - 1) + 1 : s] += gy * (winner == o)",
            "dx[:, :, a : a + s * (oh - 1) + 1 : s, b : b + s * (ow - 1) + 1 : s] = gy * (winner == o)",
            "add the gradients",
        ),
        Mistake(  # a fresh reader's code: it passed while the checker drew distinct values only
            "ties to the last maximum",
            "winner = windows.argmax(axis=0)",
            "winner = k * k - 1 - windows[::-1].argmax(axis=0)",
            "gives gy to the LAST of them",
        ),
        Mistake(
            "ties shared",
            "+= gy * (winner == o)",
            "+= gy * (windows[o] == windows.max(axis=0)) / (windows == windows.max(axis=0)).sum(axis=0)",
            "shares it among them",
        ),
        Mistake(  # the next two are a fresh reader's: they passed while no checker watched the inputs
            "dx is x, zeroed",
            "    dx = np.zeros_like(x)\n    for o",
            "    dx = x\n    dx[...] = 0\n    for o",
            "max_pool2d_backward changed x, the array it was given",
        ),
        Mistake(
            "gy zeroed in place",
            "    return dx\n",
            "    gy[...] = 0\n    return dx\n",
            "max_pool2d_backward changed gy, the array it was given",
        ),
    ),
)
