"""Exercise 09: the SE block's backward by hand, with the fixed signature
``squeeze_excite_backward(gy, x, w1, b1, w2, b2) -> (dx, dw1, db1, dw2, db2)``.

Checked against ``minise.functional.squeeze_excite`` and float64 central differences; the hints
recognise a missing path of dx (the scale path G * e or the squeeze path through s, a1, h, a2, e), a
transposed weight gradient, a missing ReLU mask or sigmoid derivative, and the squeeze's 1/(H W).
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

SOLUTION = '''"""Exercise 09: the SE block's backward, by hand (lesson 09, sections 2-9).

Start over:        python -m minise.lessons exercise 09 --force   (this file is kept as .bak)
Check it:          python -m minise.lessons check 09
Train with it:     python -m minise.lessons check 09 --train   (an SE-ResNet-20 whose SE blocks use your backward)

Shapes: x (N, C, H, W); w1 (R, C); b1 (R,) or None; w2 (C, R); b2 (C,) or None; gy like x.
The forward (lesson 08):
    s  = mean_hw(x)               (N, C)    squeeze
    a1 = s w1^T + b1              (N, R)
    h  = relu(a1)                 (N, R)
    a2 = h w2^T + b2              (N, C)
    e  = sigmoid(a2)              (N, C)    excitation (the gate)
    y  = x * e[:, :, None, None]            scale
"""

import numpy as np


def squeeze_excite_backward(gy, x, w1, b1, w2, b2):
    """Return (dx, dw1, db1, dw2, db2), the gradients of the loss given gy = dL/dy (N, C, H, W).

    With G = gy:
        g_e  = sum_hw G * x                (N, C)   what reaches the gate
        g_a2 = g_e * e * (1 - e)           (N, C)   through the sigmoid
        dw2  = g_a2^T h      db2 = sum_n g_a2
        g_a1 = (g_a2 w2) * [a1 > 0]        (N, R)   through the ReLU
        dw1  = g_a1^T s      db1 = sum_n g_a1
        dx   = G * e  +  (g_a1 w1) / (H W)          the scale path + the squeeze path (lesson 09)
    db1 (db2) is None when b1 (b2) is None.
    """
    n, c, hh, ww = x.shape
    # the forward again, keeping what the backward needs
    s = x.mean(axis=(2, 3))  # (N, C)
    a1 = s @ w1.T + (0 if b1 is None else b1)  # (N, R)
    h = np.maximum(a1, 0)
    a2 = h @ w2.T + (0 if b2 is None else b2)  # (N, C)
    e = 0.5 * (np.tanh(0.5 * a2) + 1)  # (N, C)  sigmoid(a2), in the stable form of lesson 01
    # >>> your code
    g_e = (gy * x).sum(axis=(2, 3))  # (N, C)
    g_a2 = g_e * e * (1 - e)
    dw2 = g_a2.T @ h  # (C, R)
    db2 = None if b2 is None else g_a2.sum(axis=0)
    g_a1 = (g_a2 @ w2) * (a1 > 0)  # (N, R)
    dw1 = g_a1.T @ s  # (R, C)
    db1 = None if b1 is None else g_a1.sum(axis=0)
    dx = gy * e[:, :, None, None] + (g_a1 @ w1)[:, :, None, None] / (hh * ww)
    return dx, dw1, db1, dw2, db2
    # <<<
'''

SQUEEZE_PATH_HINT = (
    "your dx is only the scale path G * e: the squeeze path is missing. x also reaches y through the squeeze "
    "s = mean_hw(x), which feeds the gate e; add (g_a1 w1) / (H W), broadcast over the pixels (lesson 09)"
)
SCALE_PATH_HINT = (
    "your dx is only the squeeze path (g_a1 w1) / (H W): the scale path is missing. y = x * e depends on x "
    "directly too; add G * e[:, :, None, None] (lesson 09)"
)
MEAN_HINT = "the squeeze path must be divided by H W: the squeeze is a mean over the H x W pixels, not a sum"
MASK_HINT = "the ReLU mask is missing: the gradient passes the ReLU only where a1 > 0, so g_a1 = (g_a2 w2) * [a1 > 0]"
SUM_HINT = (
    "g_e is a sum over the pixels, not a mean: every pixel of channel c is scaled by the same e[n, c], so each "
    "adds its G * x to the gate's gradient: g_e = (gy * x).sum(axis=(2, 3))"
)
DW2_HINT = "dw2 = g_a2^T h with h = relu(a1), the input of the second layer, not a1 (the ReLU comes before it)"
SIGMOID_HINT = "the sigmoid's derivative is missing: g_a2 = g_e * e * (1 - e), since d sigmoid(a)/da = e (1 - e)"


def reference(gy: Any, x: Any, w1: Any, b1: Any, w2: Any, b2: Any, **use: bool) -> dict[str, Any]:
    """The backward in NumPy; ``use`` switches a term off (scale, squeeze, mean, mask, sigmoid, gate_sum,
    relu_input) to give the answer of a classic mistake, so that the checker can recognise it."""
    scale, squeeze, mean = use.get("scale", True), use.get("squeeze", True), use.get("mean", True)
    mask, sigmoid = use.get("mask", True), use.get("sigmoid", True)
    gate_sum, relu_input = use.get("gate_sum", True), use.get("relu_input", True)
    hh, ww = x.shape[2:]
    s = x.mean(axis=(2, 3))
    a1 = s @ w1.T + (0 if b1 is None else b1)
    h = np.maximum(a1, 0)
    e = 1 / (1 + np.exp(-(h @ w2.T + (0 if b2 is None else b2))))
    g_a2 = (gy * x).sum(axis=(2, 3)) / (1 if gate_sum else hh * ww) * (e * (1 - e) if sigmoid else 1)
    g_a1 = (g_a2 @ w2) * ((a1 > 0) if mask else 1)
    dx = (gy * e[:, :, None, None] if scale else 0) + (
        (g_a1 @ w1)[:, :, None, None] / (hh * ww if mean else 1) if squeeze else 0
    )
    return {
        "dx": dx * np.ones_like(x),
        "dw1": g_a1.T @ s,
        "db1": None if b1 is None else g_a1.sum(axis=0),
        "dw2": g_a2.T @ (h if relu_input else a1),
        "db2": None if b2 is None else g_a2.sum(axis=0),
    }


def forward(x: Any, w1: Any, b1: Any, w2: Any, b2: Any) -> Any:
    """y = x * sigmoid(w2 relu(w1 mean_hw(x) + b1) + b2) in NumPy (for central differences)."""
    h = np.maximum(x.mean(axis=(2, 3)) @ w1.T + (0 if b1 is None else b1), 0)
    e = 1 / (1 + np.exp(-(h @ w2.T + (0 if b2 is None else b2))))
    return x * e[:, :, None, None]


def _shapes(draw: Any) -> dict[str, Any]:
    return {"n": draw(1, 3), "c": draw(1, 5), "r": draw(1, 3), "h": draw(1, 4), "w": draw(1, 4), "bias": draw(0, 1)}


EDGE = [
    {"n": 1, "c": 3, "r": 2, "h": 3, "w": 2, "bias": 1},  # batch 1
    {"n": 2, "c": 1, "r": 1, "h": 2, "w": 3, "bias": 1},  # one channel
    {"n": 3, "c": 4, "r": 2, "h": 1, "w": 1, "bias": 1},  # 1x1 spatial
    {"n": 2, "c": 3, "r": 3, "h": 2, "w": 2, "bias": 0},  # no biases
]


def make_cases() -> list[Case]:
    cases = []
    for i, sh in enumerate(draw_cases(_shapes, EDGE)):
        rng = rng_for(i)
        n, c, r, hh, ww = sh["n"], sh["c"], sh["r"], sh["h"], sh["w"]
        x = rng.standard_normal((n, c, hh, ww))
        w1, w2 = rng.standard_normal((r, c)), rng.standard_normal((c, r))
        b1 = rng.standard_normal(r) if sh["bias"] else None
        b2 = rng.standard_normal(c) if sh["bias"] else None
        gy = rng.standard_normal(x.shape)
        _, grads = engine_gradients(F.squeeze_excite, [x, w1, b1, w2, b2], gy)
        names = ("dx", "dw1", "db1", "dw2", "db2")
        inputs = (x, w1, b1, w2, b2)

        def numeric(a: Any, inputs: Any = inputs, gy: Any = gy) -> Any:
            return lambda: numerical_gradient(lambda: forward(*inputs), a, gy)

        wrong = {
            SQUEEZE_PATH_HINT: {"dx": reference(gy, *inputs, squeeze=False)["dx"]},
            SCALE_PATH_HINT: {"dx": reference(gy, *inputs, scale=False)["dx"]},
            MEAN_HINT: {"dx": reference(gy, *inputs, mean=False)["dx"]},
            MASK_HINT: reference(gy, *inputs, mask=False),
            SIGMOID_HINT: reference(gy, *inputs, sigmoid=False),
            SUM_HINT: reference(gy, *inputs, gate_sum=False),
            DW2_HINT: {"dw2": reference(gy, *inputs, relu_input=False)["dw2"]},
        }
        cases.append(
            Case(
                where=shape_text(x=x, w1=w1, b1=b1, w2=w2, b2=b2),
                args=(gy, x, w1, b1, w2, b2),
                expected=dict(zip(names, grads)),
                numeric={k: numeric(a) for k, a in zip(names, inputs) if a is not None},
                variants=wrong,
            )
        )
    return cases


GY_RULE = (
    "the engine hands the same gy to every input of an addition - the SE output is added to the identity "
    "path, so both receive this gy - so change a copy (gy = gy * e) or build a new array"
)


def check(module: ModuleType, report: Report) -> None:
    grade_function(
        report,
        "squeeze_excite_backward",
        learner_function(module, "squeeze_excite_backward"),
        ("dx", "dw1", "db1", "dw2", "db2"),
        make_cases(),
        "minise's squeeze_excite and central differences",
        rules={"gy": GY_RULE},
    )


def train(module: ModuleType, steps: int, echo: bool) -> bool:
    from minise.exercises.training import compare_training, se_with_backward  # noqa: PLC0415

    op = se_with_backward(learner_function(module, "squeeze_excite_backward"))
    return compare_training("squeeze_excite", op, steps, echo)


EXERCISE = Exercise(
    number=9,
    title="the SE block's backward: squeeze_excite_backward",
    filename="ex09_se_backward.py",
    solution=SOLUTION,
    check=check,
    train=train,
    mistakes=(
        Mistake(
            "the squeeze path is missing",
            "dx = gy * e[:, :, None, None] + (g_a1 @ w1)[:, :, None, None] / (hh * ww)",
            "dx = gy * e[:, :, None, None]",
            "the squeeze path is missing",
        ),
        Mistake(
            "the scale path is missing",
            "dx = gy * e[:, :, None, None] + (g_a1 @ w1)[:, :, None, None] / (hh * ww)",
            "dx = 0 * gy + (g_a1 @ w1)[:, :, None, None] / (hh * ww)",
            "the scale path is missing",
        ),
        Mistake("dw1 transposed", "dw1 = g_a1.T @ s", "dw1 = s.T @ g_a1", "transpose of the right one"),
        Mistake("no ReLU mask", "g_a1 = (g_a2 @ w2) * (a1 > 0)", "g_a1 = g_a2 @ w2", "ReLU mask is missing"),
        Mistake("no sigmoid derivative", "    g_a2 = g_e * e * (1 - e)\n", "    g_a2 = g_e\n", "sigmoid's derivative"),
        Mistake(  # the next two are a fresh reader's: they failed without a hint
            "g_e a mean", "g_e = (gy * x).sum(axis=(2, 3))", "g_e = (gy * x).mean(axis=(2, 3))", "g_e is a sum"
        ),
        Mistake("dw2 from a1", "dw2 = g_a2.T @ h", "dw2 = g_a2.T @ a1", "not a1 (the ReLU comes before it)"),
        Mistake(  # a fresh reader's: it passed this check but broke --train (the identity path got a scaled gy)
            "gy scaled in place",
            "    dx = gy * e[:, :, None, None] + (g_a1 @ w1)[:, :, None, None] / (hh * ww)\n",
            "    gy *= e[:, :, None, None]\n    dx = gy + (g_a1 @ w1)[:, :, None, None] / (hh * ww)\n",
            "squeeze_excite_backward changed gy, the array it was given: the engine hands the same gy",
        ),
    ),
)
