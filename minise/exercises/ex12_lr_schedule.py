"""Exercise 12: the learning-rate schedule of the training recipe, ``warmup_cosine_lr(t, total_steps,
warmup_steps, base_lr) -> lr``: a linear warm-up from 0.1 base_lr, then a cosine decay to 0.

Checked at every step against minise's own schedulers as ``minise.train`` chains them
(``SequentialLR([LinearWarmup(start_factor=0.1), CosineAnnealingLR])``), over step counts drawn by
hypothesis; the hints recognise a warm-up that starts at 0, a cosine whose clock does not restart at
the end of the warm-up, and a cosine stretched over all the steps.
"""

from __future__ import annotations

import math
from types import ModuleType
from typing import Any

import minise
from minise import optim
from minise.exercises.core import Case, Exercise, Mistake, Report, draw_cases, grade_function, learner_function
from minise.nn import Parameter
from minise.optim import lr_scheduler

SOLUTION = '''"""Exercise 12: the learning rate at each step of the training recipe (lesson 12, section 4).

Start over:        python -m minise.lessons exercise 12 --force   (this file is kept as .bak)
Check it:          python -m minise.lessons check 12
"""

import math


def warmup_cosine_lr(t, total_steps, warmup_steps, base_lr):
    """The learning rate at step t (0, 1, ..., total_steps - 1), T = total_steps, T_w = warmup_steps:

        lr(t) = base_lr * (0.1 + 0.9 t / T_w)                                for t < T_w   (linear warm-up)
        lr(t) = base_lr * (1 + cos(pi (t - T_w) / (T - T_w))) / 2            for t >= T_w  (cosine to 0)

    The warm-up starts at a tenth of base_lr (Goyal et al. 2017); the cosine's clock starts at 0 when
    the warm-up ends, and runs over the T - T_w steps left. With T_w = 0 there is no warm-up.
    """
    # >>> your code
    if t < warmup_steps:
        return base_lr * (0.1 + 0.9 * t / warmup_steps)
    return base_lr * (1 + math.cos(math.pi * (t - warmup_steps) / (total_steps - warmup_steps))) / 2
    # <<<
'''

FROM_ZERO_HINT = "the warm-up starts at a tenth of base_lr, not at 0: lr = base_lr * (0.1 + 0.9 t / T_w)"
CLOCK_HINT = "the cosine's clock restarts at the end of the warm-up: use t - T_w, not t"
PERIOD_HINT = "the cosine runs over the T - T_w steps left after the warm-up, not over all T steps"


def minise_schedule(total: int, warmup: int, base_lr: float) -> list[float]:
    """The learning rate at each step from minise's schedulers, chained as ``minise.train`` does."""
    with minise.use_backend("numpy"):
        opt = optim.SGD([Parameter(minise.tensor([0.0]).data)], lr=base_lr, momentum=0.0)
        cosine = lr_scheduler.CosineAnnealingLR(opt, total - warmup)
        if warmup == 0:
            return [cosine.lr_at(t)[0] for t in range(total)]
        warm = lr_scheduler.LinearWarmup(opt, warmup, start_factor=0.1)
        chain = lr_scheduler.SequentialLR(opt, [warm, cosine], [warmup])
        return [chain.lr_at(t)[0] for t in range(total)]


def _wrong(total: int, warmup: int, base_lr: float, kind: str) -> list[float]:
    out = []
    for t in range(total):
        if t < warmup:
            out.append(base_lr * ((t / warmup) if kind == "zero" else (0.1 + 0.9 * t / warmup)))
        else:
            clock = t if kind == "clock" else t - warmup
            period = total if kind == "period" else total - warmup
            out.append(base_lr * (1 + math.cos(math.pi * clock / period)) / 2)
    return out


def _shapes(draw: Any) -> dict[str, Any]:
    total = draw(2, 60)
    return {"total": total, "warmup": draw(0, total - 1), "lr": (0.1, 0.05, 0.4)[draw(0, 2)]}


EDGE: list[dict[str, Any]] = [
    {"total": 100, "warmup": 10, "lr": 0.1},  # the recipe's shape: a tenth of the steps for warm-up
    {"total": 20, "warmup": 0, "lr": 0.1},  # no warm-up
    {"total": 2, "warmup": 1, "lr": 0.1},  # one warm-up step, one cosine step
]


def make_cases() -> list[Case]:
    cases = []
    for sh in draw_cases(_shapes, EDGE):
        total, warmup, lr = sh["total"], sh["warmup"], sh["lr"]
        cases.append(
            Case(
                f"total_steps {total}, warmup_steps {warmup}, base_lr {lr}",
                (total, warmup, lr),
                {"lr at every step": minise_schedule(total, warmup, lr)},
                variants={
                    FROM_ZERO_HINT: {"lr at every step": _wrong(total, warmup, lr, "zero")},
                    CLOCK_HINT: {"lr at every step": _wrong(total, warmup, lr, "clock")},
                    PERIOD_HINT: {"lr at every step": _wrong(total, warmup, lr, "period")},
                },
            )
        )
    return cases


def check(module: ModuleType, report: Report) -> None:
    fn = learner_function(module, "warmup_cosine_lr")
    grade_function(
        report,
        "warmup_cosine_lr",
        lambda total, warmup, lr: [float(fn(t, total, warmup, lr)) for t in range(total)],
        ("lr at every step",),
        make_cases(),
        "minise's LinearWarmup + CosineAnnealingLR at every step",
        rtol=1e-9,
        against="minise's schedulers",
    )


EXERCISE = Exercise(
    number=12,
    title="the warm-up + cosine learning-rate schedule: warmup_cosine_lr",
    filename="ex12_lr_schedule.py",
    solution=SOLUTION,
    check=check,
    mistakes=(
        Mistake(
            "warm-up from 0",
            "return base_lr * (0.1 + 0.9 * t / warmup_steps)",
            "return base_lr * t / warmup_steps",
            "not at 0",
        ),
        Mistake("cosine clock not restarted", "math.pi * (t - warmup_steps) /", "math.pi * t /", "clock restarts"),
        Mistake(
            "cosine over all the steps",
            "/ (total_steps - warmup_steps))) / 2",
            "/ total_steps)) / 2",
            "T - T_w steps left",
        ),
    ),
)
