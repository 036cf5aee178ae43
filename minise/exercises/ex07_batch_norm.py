"""Exercise 07: batch norm's training-mode backward, with the fixed signature
``batch_norm_backward(gy, x, gamma, eps) -> (dx, dgamma, dbeta)``.

Checked against ``minise.functional.batch_norm(training=True)`` and float64 central differences; the
hints recognise batch norm without its mean terms (the gradient of a fixed normalisation), with only
the mean of g (the path through the variance missing), and sums over the wrong axes.
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

SOLUTION = '''"""Exercise 07: batch normalisation's backward in training mode (lesson 07, section 2).

Start over:        python -m minise.lessons exercise 07 --force   (this file is kept as .bak)
Check it:          python -m minise.lessons check 07
Train with it:     python -m minise.lessons check 07 --train   (every batch norm of an SE-ResNet-20 uses your backward)

Shapes: x (N, C, H, W) or (N, C); gamma (C,) or None (no scale); gy like x. Per channel c, over the
m = N*H*W values of that channel (the axes 0, 2, 3):
    mu = mean(x)    var = mean((x - mu)^2)  (biased)    xhat = (x - mu) / sqrt(var + eps)
    y  = gamma * xhat + beta
"""

import numpy as np


def batch_norm_backward(gy, x, gamma, eps):
    """Return (dx, dgamma, dbeta) given gy = dL/dy; dgamma is None when gamma is None.

    With g = gy * gamma (g = gy without gamma), means over the m values of each channel:
        dx     = (g - mean(g) - xhat * mean(g * xhat)) / sqrt(var + eps)
        dgamma = sum gy * xhat        dbeta = sum gy                      (each of shape (C,))
    The two mean terms are there because mu and var depend on every x of the channel.
    """
    axes = (0, *range(2, x.ndim))  # every axis but the channel axis 1
    shape = (1, -1) + (1,) * (x.ndim - 2)  # (C,) -> (1, C, 1, 1), to broadcast against x
    mu = x.mean(axis=axes, keepdims=True)
    var = x.var(axis=axes, keepdims=True)
    inv_std = 1 / np.sqrt(var + eps)
    xhat = (x - mu) * inv_std
    # >>> your code
    g = gy if gamma is None else gy * gamma.reshape(shape)
    dx = (g - g.mean(axis=axes, keepdims=True) - xhat * (g * xhat).mean(axis=axes, keepdims=True)) * inv_std
    dgamma = None if gamma is None else (gy * xhat).sum(axis=axes)
    dbeta = gy.sum(axis=axes)
    return dx, dgamma, dbeta
    # <<<
'''

NO_MEANS_HINT = (
    "this is batch norm without the mean terms: gy * gamma / sqrt(var + eps) would be right if mu and var "
    "were constants (evaluation mode), but in training they are computed from this batch, so every x of a "
    "channel moves them: subtract mean(g) and xhat * mean(g * xhat) (lesson 07)"
)
NO_VAR_HINT = (
    "the path through the variance is missing: besides mean(g) (through mu), subtract xhat * mean(g * xhat) "
    "(through var) before dividing by sqrt(var + eps)"
)
NO_MU_HINT = "the path through the mean is missing: subtract mean(g) too (mu depends on every x of the channel)"
EPS_HINT = "eps goes inside the square root: 1 / sqrt(var + eps), not 1 / (sqrt(var) + eps)"
SCALED_GY_HINT = (
    "these are the sums of gy * gamma: gy itself was scaled by gamma before dgamma and dbeta read it (g = gy; "
    "g *= gamma changes gy through its other name) - write g = gy * gamma"
)
AXES_HINT = "sum over every axis but the channel axis: (0, 2, 3) for (N, C, H, W), so dgamma and dbeta have shape (C,)"


def forward(x: Any, gamma: Any, beta: Any, eps: float) -> Any:
    axes = (0, *range(2, x.ndim))
    shape = (1, -1) + (1,) * (x.ndim - 2)
    xhat = (x - x.mean(axis=axes, keepdims=True)) / np.sqrt(x.var(axis=axes, keepdims=True) + eps)
    return (xhat if gamma is None else xhat * gamma.reshape(shape)) + beta.reshape(shape)


def wrong_dx(gy: Any, x: Any, gamma: Any, eps: float, mu_term: bool, var_term: bool, eps_outside: bool = False) -> Any:
    """dx without the path through the mean (``mu_term`` False) or the variance, or with 1 / (sqrt(var) + eps)."""
    axes = (0, *range(2, x.ndim))
    shape = (1, -1) + (1,) * (x.ndim - 2)
    var = x.var(axis=axes, keepdims=True)
    inv_std = 1 / (np.sqrt(var) + eps) if eps_outside else 1 / np.sqrt(var + eps)
    xhat = (x - x.mean(axis=axes, keepdims=True)) * inv_std
    g = gy if gamma is None else gy * gamma.reshape(shape)
    dx = g - (g.mean(axis=axes, keepdims=True) if mu_term else 0)
    return (dx - (xhat * (g * xhat).mean(axis=axes, keepdims=True) if var_term else 0)) * inv_std


def _scaled_gy_sums(gy: Any, x: Any, gamma: Any, eps: float) -> dict[str, Any]:
    """dgamma and dbeta computed from g = gy * gamma instead of gy (gy was scaled in place)."""
    axes = (0, *range(2, x.ndim))
    g = gy * gamma.reshape((1, -1) + (1,) * (x.ndim - 2))
    xhat = (x - x.mean(axis=axes, keepdims=True)) / np.sqrt(x.var(axis=axes, keepdims=True) + eps)
    return {"dgamma": (g * xhat).sum(axis=axes), "dbeta": g.sum(axis=axes)}


def _eps_outside_dgamma(gy: Any, x: Any, eps: float) -> Any:
    """dgamma = sum gy * xhat with xhat = (x - mu) / (sqrt(var) + eps), eps outside the square root."""
    axes = (0, *range(2, x.ndim))
    mu, var = x.mean(axis=axes, keepdims=True), x.var(axis=axes, keepdims=True)
    return (gy * (x - mu) / (np.sqrt(var) + eps)).sum(axis=axes)


def _shapes(draw: Any) -> dict[str, Any]:
    n, h, w = draw(1, 4), draw(1, 3), draw(1, 3)
    return {"n": max(n, 2) if h * w == 1 else n, "c": draw(1, 4), "h": h, "w": w, "gamma": draw(0, 3) > 0, "ndim": 4}


EDGE = [
    {"n": 1, "c": 3, "h": 2, "w": 3, "gamma": True, "ndim": 4},  # batch 1
    {"n": 3, "c": 1, "h": 2, "w": 2, "gamma": True, "ndim": 4},  # one channel
    {"n": 4, "c": 3, "h": 1, "w": 1, "gamma": True, "ndim": 4},  # 1x1 spatial
    {"n": 3, "c": 2, "h": 2, "w": 2, "gamma": False, "ndim": 4},  # no gamma
    {"n": 5, "c": 3, "h": 1, "w": 1, "gamma": True, "ndim": 2},  # (N, C), as after a linear layer
]


def make_cases() -> list[Case]:
    cases = []
    eps = 1e-5
    for i, sh in enumerate(draw_cases(_shapes, EDGE)):
        rng = rng_for(i)
        shape = (sh["n"], sh["c"], sh["h"], sh["w"]) if sh["ndim"] == 4 else (sh["n"], sh["c"])
        x = rng.standard_normal(shape) * rng.uniform(0.5, 3) + rng.uniform(-2, 2)
        gamma = rng.standard_normal(sh["c"]) if sh["gamma"] else None
        beta = rng.standard_normal(sh["c"])
        gy = rng.standard_normal(shape)
        _, (dx, dgamma, dbeta) = engine_gradients(
            lambda x_, g_, b_: F.batch_norm(x_, None, None, g_, b_, training=True, eps=eps), [x, gamma, beta], gy
        )
        inputs = (x, gamma, beta)

        def numeric(a: Any, inputs: Any = inputs, gy: Any = gy) -> Any:
            return lambda: numerical_gradient(lambda: forward(inputs[0], inputs[1], inputs[2], eps), a, gy)

        cases.append(
            Case(
                where=shape_text(x=x, gamma=gamma) + f", eps {eps:g}",
                args=(gy, x, gamma, eps),
                expected={"dx": dx, "dgamma": dgamma, "dbeta": dbeta},
                numeric={k: numeric(a) for k, a in zip(("dx", "dgamma", "dbeta"), inputs) if a is not None},
                variants={
                    NO_MEANS_HINT: {"dx": wrong_dx(gy, x, gamma, eps, False, False)},
                    NO_VAR_HINT: {"dx": wrong_dx(gy, x, gamma, eps, True, False)},
                    NO_MU_HINT: {"dx": wrong_dx(gy, x, gamma, eps, False, True)},
                    AXES_HINT: {"dbeta": gy.sum(0)},
                    EPS_HINT: {
                        "dx": wrong_dx(gy, x, gamma, eps, True, True, eps_outside=True),
                        "dgamma": None if gamma is None else _eps_outside_dgamma(gy, x, eps),
                    },
                    **({} if gamma is None else {SCALED_GY_HINT: _scaled_gy_sums(gy, x, gamma, eps)}),
                },
            )
        )
    return cases


GY_RULE = (
    "the engine hands the same gy to every input of an addition (the block adds its identity path), so build "
    "a new array: g = gy * gamma, not g = gy; g *= gamma, which writes into gy through its other name"
)


def check(module: ModuleType, report: Report) -> None:
    grade_function(
        report,
        "batch_norm_backward",
        learner_function(module, "batch_norm_backward"),
        ("dx", "dgamma", "dbeta"),
        make_cases(),
        "minise's batch_norm (training) and central differences",
        rules={"gy": GY_RULE},
    )


def train(module: ModuleType, steps: int, echo: bool) -> bool:
    from minise.exercises.training import batch_norm_with_backward, compare_training  # noqa: PLC0415

    op = batch_norm_with_backward(learner_function(module, "batch_norm_backward"))
    return compare_training("batch_norm", op, steps, echo)


EXERCISE = Exercise(
    number=7,
    title="batch norm's training backward: batch_norm_backward",
    filename="ex07_batch_norm.py",
    solution=SOLUTION,
    check=check,
    train=train,
    mistakes=(
        Mistake(
            "no mean terms",
            "dx = (g - g.mean(axis=axes, keepdims=True) - xhat * (g * xhat).mean(axis=axes, keepdims=True)) * inv_std",
            "dx = g * inv_std",
            "without the mean terms",
        ),
        Mistake(
            "no variance path",
            "dx = (g - g.mean(axis=axes, keepdims=True) - xhat * (g * xhat).mean(axis=axes, keepdims=True)) * inv_std",
            "dx = (g - g.mean(axis=axes, keepdims=True)) * inv_std",
            "path through the variance is missing",
        ),
        Mistake(
            "dbeta over the batch axis only", "dbeta = gy.sum(axis=axes)", "dbeta = gy.sum(axis=0)", "every axis but"
        ),
        Mistake(  # the next two are a fresh reader's: the first passed, the second got only "dgamma wrong"
            "gy zeroed in place",
            "    return dx, dgamma, dbeta\n",
            "    gy *= 0\n    return dx, dgamma, dbeta\n",
            "batch_norm_backward changed gy, the array it was given",
        ),
        Mistake(
            "g is gy, scaled in place",
            "g = gy if gamma is None else gy * gamma.reshape(shape)",
            "g = gy\n    if gamma is not None:\n        g *= gamma.reshape(shape)",
            "not g = gy; g *= gamma",
        ),
        Mistake(  # a fresh reader's: it failed without a hint
            "eps outside the square root",
            "inv_std = 1 / np.sqrt(var + eps)",
            "inv_std = 1 / (np.sqrt(var) + eps)",
            "eps goes inside the square root",
        ),
    ),
)
