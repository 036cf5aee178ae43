"""Exercise 08: the SE block's forward, ``squeeze_excite_forward(x, w1, b1, w2, b2) -> y``.

Checked against ``minise.functional.squeeze_excite``; the hints recognise a squeeze that is not the
mean over the pixels, a missing ReLU, and a gate that is not the sigmoid.
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
    engine_forward,
    grade_function,
    learner_function,
    rng_for,
    shape_text,
)
from minise.exercises.ex09_se_backward import EDGE, _shapes

SOLUTION = '''"""Exercise 08: the SE block's forward (lesson 08, sections 1-2).

Start over:        python -m minise.lessons exercise 08 --force   (this file is kept as .bak)
Check it:          python -m minise.lessons check 08
Train with it:     python -m minise.lessons check 08 --train   (the SE blocks of an SE-ResNet-20 use your forward)
"""

import numpy as np


def squeeze_excite_forward(x, w1, b1, w2, b2):
    """y = x * sigmoid(w2 relu(w1 mean_hw(x) + b1) + b2), the gate broadcast over the pixels.

    Shapes: x (N, C, H, W); w1 (R, C); b1 (R,) or None; w2 (C, R); b2 (C,) or None; y like x.
    Weights are (out_features, in_features), as in a linear layer: a1 = s w1^T + b1.
        s  = mean_hw(x)               (N, C)    squeeze: one number per channel
        a1 = s w1^T + b1              (N, R)
        h  = relu(a1)                 (N, R)
        a2 = h w2^T + b2              (N, C)
        e  = sigmoid(a2)              (N, C)    excitation: a gate in (0, 1) per channel
        y  = x * e[:, :, None, None]            scale every pixel of channel c by e[n, c]
    """
    # >>> your code
    s = x.mean(axis=(2, 3))
    a1 = s @ w1.T + (0 if b1 is None else b1)
    h = np.maximum(a1, 0)
    a2 = h @ w2.T + (0 if b2 is None else b2)
    e = 0.5 * (np.tanh(0.5 * a2) + 1)  # sigmoid(a2) without overflow (lesson 01)
    return x * e[:, :, None, None]
    # <<<
'''

SQUEEZE_HINT = "the squeeze is the mean over the H x W pixels of each channel: s = x.mean(axis=(2, 3)), shape (N, C)"
SUM_HINT = "the squeeze is a mean, not a sum: divide by H W (x.mean(axis=(2, 3)))"
RELU_HINT = "the ReLU between the two layers is missing: h = relu(a1) = np.maximum(a1, 0)"
GATE_HINT = (
    "the gate is a sigmoid, 1 / (1 + exp(-a2)) (computed stably as 0.5 * (tanh(a2 / 2) + 1)), "
    "a number between 0 and 1 per channel"
)


def reference(
    x: Any, w1: Any, b1: Any, w2: Any, b2: Any, squeeze: str = "mean", relu: bool = True, gate: str = "sigmoid"
) -> Any:
    s = {"mean": x.mean(axis=(2, 3)), "sum": x.sum(axis=(2, 3)), "max": x.max(axis=(2, 3))}[squeeze]
    a1 = s @ w1.T + (0 if b1 is None else b1)
    h = np.maximum(a1, 0) if relu else a1
    a2 = h @ w2.T + (0 if b2 is None else b2)
    e = {"sigmoid": 1 / (1 + np.exp(-a2)), "tanh": np.tanh(a2), "none": a2}[gate]
    return x * e[:, :, None, None]


def make_cases() -> list[Case]:
    cases = []
    for i, sh in enumerate(draw_cases(_shapes, EDGE)):
        rng = rng_for(i)
        x = rng.standard_normal((sh["n"], sh["c"], sh["h"], sh["w"]))
        w1, w2 = rng.standard_normal((sh["r"], sh["c"])), rng.standard_normal((sh["c"], sh["r"]))
        b1 = rng.standard_normal(sh["r"]) if sh["bias"] else None
        b2 = rng.standard_normal(sh["c"]) if sh["bias"] else None
        y = engine_forward(F.squeeze_excite, [x, w1, b1, w2, b2])
        args = (x, w1, b1, w2, b2)
        cases.append(
            Case(
                where=shape_text(x=x, w1=w1, b1=b1, w2=w2, b2=b2),
                args=args,
                expected={"y": y},
                variants={
                    SQUEEZE_HINT: {"y": reference(*args, squeeze="max")},
                    SUM_HINT: {"y": reference(*args, squeeze="sum")},
                    RELU_HINT: {"y": reference(*args, relu=False)},
                    GATE_HINT: {"y": reference(*args, gate="tanh")},
                },
            )
        )
    return cases


X_RULE = (
    "the engine keeps x for the backward pass (dx and the gate's gradient both read x), so return a new "
    "array: return x * e[:, :, None, None], not x *= ...; return x"
)


def check(module: ModuleType, report: Report) -> None:
    grade_function(
        report,
        "squeeze_excite_forward",
        learner_function(module, "squeeze_excite_forward"),
        ("y",),
        make_cases(),
        "minise's squeeze_excite",
        rules={"x": X_RULE},
    )


def train(module: ModuleType, steps: int, echo: bool) -> bool:
    from minise.exercises.training import compare_training, se_with_forward  # noqa: PLC0415

    return compare_training(
        "squeeze_excite", se_with_forward(learner_function(module, "squeeze_excite_forward")), steps, echo
    )


EXERCISE = Exercise(
    number=8,
    title="the SE block's forward: squeeze_excite_forward",
    filename="ex08_se_forward.py",
    solution=SOLUTION,
    check=check,
    train=train,
    mistakes=(
        Mistake("sum instead of mean", "s = x.mean(axis=(2, 3))", "s = x.sum(axis=(2, 3))", "a mean, not a sum"),
        Mistake("no ReLU", "h = np.maximum(a1, 0)", "h = a1", "ReLU between the two layers"),
        Mistake("tanh gate", "e = 0.5 * (np.tanh(0.5 * a2) + 1)", "e = np.tanh(a2)", "gate is a sigmoid"),
        Mistake(  # a fresh reader's: it passed while no checker watched the inputs
            "x scaled in place",
            "    return x * e[:, :, None, None]\n",
            "    x *= e[:, :, None, None]\n    return x\n",
            "squeeze_excite_forward changed x, the array it was given",
        ),
    ),
)
