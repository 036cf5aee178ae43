"""Exercise 06: max pooling's backward, ``max_pool2d_backward(gy, x, kernel_size, stride) -> dx``.

Checked against ``minise.functional.max_pool2d`` and float64 central differences (the inputs are drawn
with distinct values, away from ties, where the max is differentiable); the hints recognise a
gradient sent to every element of the window, average pooling's gradient, and overlapping windows
that overwrite instead of adding.
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

SOLUTION = '''"""Exercise 06: max pooling's backward (lesson 06, section 1).

Start over:        python -m minise.lessons exercise 06 --force   (this file is kept as .bak)
Check it:          python -m minise.lessons check 06
"""

import numpy as np


def max_pool2d_backward(gy, x, kernel_size, stride):
    """dx for y = max_pool2d(x, kernel_size, stride) (no padding), given gy = dL/dy.

    Shapes: x (N, C, H, W); gy (N, C, OH, OW), OH = (H - K) // S + 1 (the same for W).
        y[n, c, i, j] = max over the K x K window of x starting at (i S, j S)
    The max passes its gradient to the ONE element that won (the first maximum if several tie);
    the other elements of the window did not change y, so they get nothing. Where windows overlap
    (S < K), an element can win several windows: its gradients add up.
    """
    k, s = kernel_size, stride
    n, c, h, w = x.shape
    oh, ow = (h - k) // s + 1, (w - k) // s + 1
    # the window element at offset (a, b) of every window: x[:, :, a + i S, b + j S] for all (i, j)
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
OVERLAP_HINT = (
    "where windows overlap (stride < kernel) one element can win several windows: add the gradients "
    "(dx[...] += ...), do not overwrite them"
)


def wrong(gy: Any, x: Any, k: int, s: int, kind: str) -> Any:
    """dx of a classic mistake: "every" element, "average", or "overwrite" on overlaps."""
    n, c, h, w = x.shape
    oh, ow = (h - k) // s + 1, (w - k) // s + 1
    offsets = [(a, b) for a in range(k) for b in range(k)]
    windows = np.stack([x[:, :, a : a + s * (oh - 1) + 1 : s, b : b + s * (ow - 1) + 1 : s] for a, b in offsets])
    winner = windows.argmax(axis=0)
    dx = np.zeros_like(x)
    for o, (a, b) in enumerate(offsets):
        view = (slice(None), slice(None), slice(a, a + s * (oh - 1) + 1, s), slice(b, b + s * (ow - 1) + 1, s))
        if kind == "every":
            dx[view] += gy
        elif kind == "average":
            dx[view] += gy / (k * k)
        else:
            dx[view] = gy * (winner == o)  # overwrites what earlier offsets added
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


def make_cases() -> list[Case]:
    cases = []
    for i, sh in enumerate(draw_cases(_shapes, EDGE)):
        rng = rng_for(i)
        shape = (sh["n"], sh["c"], sh["h"], sh["w"])
        size = int(np.prod(shape))
        x = (rng.permutation(size).reshape(shape) + rng.uniform(0.2, 0.8, shape)) / 10  # distinct, 0.1 apart or more
        k, s = sh["k"], sh["s"]
        oh, ow = (sh["h"] - k) // s + 1, (sh["w"] - k) // s + 1
        gy = rng.standard_normal((sh["n"], sh["c"], oh, ow))
        _, (dx,) = engine_gradients(lambda t, k=k, s=s: F.max_pool2d(t, k, s), [x], gy)

        def numeric(x: Any = x, gy: Any = gy, k: int = k, s: int = s) -> Any:
            return numerical_gradient(lambda: F.max_pool2d(x, k, s).numpy(), x, gy)

        cases.append(
            Case(
                where=shape_text(x=x) + f", kernel_size {k}, stride {s}",
                args=(gy, x, k, s),
                expected={"dx": dx},
                numeric={"dx": numeric},
                variants={
                    EVERY_HINT: {"dx": wrong(gy, x, k, s, "every")},
                    AVERAGE_HINT: {"dx": wrong(gy, x, k, s, "average")},
                    OVERLAP_HINT: {"dx": wrong(gy, x, k, s, "overwrite")},
                },
            )
        )
    return cases


def check(module: ModuleType, report: Report) -> None:
    grade_function(
        report,
        "max_pool2d_backward",
        learner_function(module, "max_pool2d_backward"),
        ("dx",),
        make_cases(),
        "minise's max_pool2d and central differences",
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
    ),
)
