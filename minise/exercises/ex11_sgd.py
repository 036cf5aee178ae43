"""Exercise 11: one step of SGD with momentum, dampening, Nesterov and weight decay,
``sgd_step(p, grad, buf, lr, momentum, dampening, nesterov, weight_decay) -> (p, buf)``.

Run for 60 steps on a noisy quadratic under several settings and compared, step by step, with
``minise.optim.SGD`` and (where torch is installed) ``torch.optim.SGD``; the hints recognise momentum
applied in the wrong order (the step taken with last step's buffer), weight decay added after the
momentum, Nesterov ignored, and dampening applied at the first step.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np

import minise
from minise import optim
from minise.exercises.core import Exercise, Mistake, PartFailed, Report, close, compare, learner_function, rng_for
from minise.nn import Parameter

SOLUTION = '''"""Exercise 11: SGD with momentum, Nesterov and weight decay (lesson 11, sections 2-4).

Start over:        python -m minise.lessons exercise 11 --force   (this file is kept as .bak)
Check it:          python -m minise.lessons check 11
"""

import numpy as np


def sgd_step(p, grad, buf, lr, momentum, dampening, nesterov, weight_decay):
    """One update of the parameter array p given its gradient; returns (new p, new buf).

    buf is the momentum buffer: None before the first step (and always None when momentum is 0).
    PyTorch's rule, in this order:
        g   = grad + weight_decay * p                       weight decay (L2, coupled)
        buf = g                                             at the first step (buf is None)
        buf = momentum * buf + (1 - dampening) * g          at every later step
        g   = g + momentum * buf   if nesterov,   else g = buf         (only when momentum != 0)
        p   = p - lr * g
    Return new arrays; do not change p, grad or buf in place (not even through another name:
    after g = grad, g += ... changes grad, the optimizer's p.grad).
    """
    # >>> your code
    g = grad + weight_decay * p
    if momentum != 0:
        if buf is None:
            buf = g.copy()
        else:
            buf = momentum * buf + (1 - dampening) * g
        g = g + momentum * buf if nesterov else buf
    return p - lr * g, buf
    # <<<
'''

ORDER_HINT = (
    "momentum is applied in the wrong order: your step uses last step's buffer. Update the buffer first, "
    "buf = momentum * buf + (1 - dampening) * g, then step with the new buffer"
)
DECAY_HINT = (
    "weight decay is added after the momentum: add weight_decay * p to the gradient first, so that it goes "
    "into the buffer too (PyTorch's coupled L2 decay)"
)
NESTEROV_HINT = "Nesterov is ignored: with nesterov=True the step is g + momentum * buf, not buf"
DAMPENING_HINT = "at the first step the buffer is the gradient itself, buf = g, without the factor (1 - dampening)"

IN_PLACE_HINT = (
    "return new arrays and leave p, grad and buf as they came: g = grad + weight_decay * p (not g = grad; "
    "g += ..., which changes grad itself - the optimizer's p.grad - through its other name), p - lr * g "
    "(not p -= lr * g), buf = momentum * buf + (1 - dampening) * g (not buf *= momentum; buf += ...)"
)

SETTINGS: list[dict[str, Any]] = [
    {"lr": 0.1, "momentum": 0.9, "dampening": 0.0, "nesterov": False, "weight_decay": 0.0},
    {"lr": 0.05, "momentum": 0.9, "dampening": 0.0, "nesterov": True, "weight_decay": 5e-4},
    {"lr": 0.1, "momentum": 0.5, "dampening": 0.3, "nesterov": False, "weight_decay": 1e-2},
    {"lr": 0.2, "momentum": 0.0, "dampening": 0.0, "nesterov": False, "weight_decay": 1e-3},
    {"lr": 0.02, "momentum": 0.99, "dampening": 0.0, "nesterov": True, "weight_decay": 0.1},
]
STEPS = 60


def reference_step(p: Any, grad: Any, buf: Any, s: dict[str, Any], mistake: str = "") -> tuple[Any, Any]:
    """The right rule, or the rule of a classic ``mistake`` ("order", "decay", "nesterov", "dampening")."""
    g = grad if mistake == "decay" else grad + s["weight_decay"] * p
    m = s["momentum"]
    if m != 0:
        old = buf
        if buf is None:
            buf = g * (1 - s["dampening"]) if mistake == "dampening" else g.copy()
        else:
            buf = m * buf + (1 - s["dampening"]) * g
        used = (g if old is None else old) if mistake == "order" else buf
        g = g + m * used if s["nesterov"] and mistake != "nesterov" else used
    if mistake == "decay":
        g = g + s["weight_decay"] * p
    return p - s["lr"] * g, buf


def _problem(i: int) -> tuple[np.ndarray, Callable[[np.ndarray, int], np.ndarray]]:
    """A start point and gradient(p, step): a quadratic bowl 0.5 p^T H p plus fixed noise per step."""
    rng = rng_for(i)
    a = rng.standard_normal((6, 6))
    h = a @ a.T / 6 + 0.1 * np.eye(6)
    noise = rng.standard_normal((STEPS, 6)) * 0.1
    return rng.standard_normal(6), lambda p, t: h @ p + noise[t]


def trajectory(step: Callable[..., tuple[Any, Any]], s: dict[str, Any], i: int) -> list[np.ndarray]:
    """p after each of STEPS steps of ``step(p, grad, buf, setting)``."""
    p, gradient = _problem(i)
    buf = None
    out = []
    for t in range(STEPS):
        p, buf = step(p, gradient(p, t), buf, s)
        out.append(np.array(p, dtype=np.float64))
    return out


def minise_trajectory(s: dict[str, Any], i: int) -> list[np.ndarray]:
    """The same run with minise.optim.SGD (momentum passed explicitly: its default may change)."""
    p0, gradient = _problem(i)
    with minise.use_backend("numpy"):
        param = Parameter(p0.copy())
        opt = optim.SGD([param], **s)
        out = []
        for t in range(STEPS):
            param.grad = gradient(param.data, t)
            opt.step()
            out.append(param.data.copy())
    return out


def torch_trajectory(s: dict[str, Any], i: int) -> list[np.ndarray] | None:
    """The same run with torch.optim.SGD, or None when torch is not installed."""
    try:
        import torch  # noqa: PLC0415
    except ImportError:
        return None
    p0, gradient = _problem(i)
    param = torch.nn.Parameter(torch.tensor(p0, dtype=torch.float64))
    opt = torch.optim.SGD([param], **s)
    out = []
    for t in range(STEPS):
        param.grad = torch.tensor(gradient(param.detach().numpy(), t))
        opt.step()
        out.append(param.detach().numpy().copy())
    return out


def _setting_text(s: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in s.items())


def check(module: ModuleType, report: Report) -> None:
    fn = learner_function(module, "sgd_step")
    reported: set[str] = set()  # a change in place is told once, not again against torch

    def learner(p: Any, grad: Any, buf: Any, s: dict[str, Any]) -> tuple[Any, Any]:
        before = {"p": p.copy(), "grad": grad.copy(), "buf": None if buf is None else buf.copy()}
        result = fn(p, grad, buf, s["lr"], s["momentum"], s["dampening"], s["nesterov"], s["weight_decay"])
        now = {"p": p, "grad": grad, "buf": buf}
        changed = [k for k, v in before.items() if v is not None and not np.array_equal(now[k], v)]
        if changed:
            what = " and ".join(changed)
            if what in reported:
                report.fail(f"sgd_step changed {what} in place (as above)")
            else:
                reported.add(what)
                report.fail(f"sgd_step changed {what} in place ({_setting_text(s)})", hints=[IN_PLACE_HINT])
            raise PartFailed
        return result  # type: ignore[no-any-return]

    references = [("minise.optim.SGD", minise_trajectory)]
    if torch_trajectory(SETTINGS[0], 0) is not None:
        references.append(("torch.optim.SGD", torch_trajectory))  # type: ignore[arg-type]
    for name, run in references:
        with report.part(f"sgd_step against {name}"):
            for i, s in enumerate(SETTINGS):
                report.calling = f"sgd_step ({_setting_text(s)})"
                yours = trajectory(learner, s, i)
                want = run(s, i)
                for t, (a, b) in enumerate(zip(yours, want)):
                    problem = compare(a, b, rtol=1e-9, atol=1e-12)
                    if problem is None:
                        continue
                    hints = [
                        h
                        for h, m in (
                            (ORDER_HINT, "order"),
                            (DECAY_HINT, "decay"),
                            (NESTEROV_HINT, "nesterov"),
                            (DAMPENING_HINT, "dampening"),
                        )
                        if close(
                            np.stack(yours),
                            np.stack(trajectory(lambda p, g, b_, s_, m=m: reference_step(p, g, b_, s_, m), s, i)),
                            rtol=1e-9,
                        )
                    ]
                    report.fail(
                        f"p after step {t + 1} of {STEPS} differs from {name} ({_setting_text(s)})",
                        hints=hints,
                        details=problem,
                    )
                    raise PartFailed
            report.ok(f"sgd_step follows {name} for {STEPS} steps under {len(SETTINGS)} settings")


MOMENTUM_LINES = (
    "    if momentum != 0:\n"
    "        if buf is None:\n"
    "            buf = g.copy()\n"
    "        else:\n"
    "            buf = momentum * buf + (1 - dampening) * g\n"
    "        g = g + momentum * buf if nesterov else buf\n"
)
WRONG_ORDER_LINES = (  # the step is taken with the buffer of the step before
    "    if momentum != 0:\n"
    "        if buf is None:\n"
    "            buf = g.copy()\n"
    "            g = g + momentum * buf if nesterov else buf\n"
    "        else:\n"
    "            g, buf = (g + momentum * buf if nesterov else buf), momentum * buf + (1 - dampening) * g\n"
)

EXERCISE = Exercise(
    number=11,
    title="SGD with momentum, Nesterov and weight decay: sgd_step",
    filename="ex11_sgd.py",
    solution=SOLUTION,
    check=check,
    mistakes=(
        Mistake(
            "momentum in the wrong order", MOMENTUM_LINES, WRONG_ORDER_LINES, "momentum is applied in the wrong order"
        ),
        Mistake(
            "weight decay after momentum",
            "    g = grad + weight_decay * p\n" + MOMENTUM_LINES + "    return p - lr * g, buf\n",
            "    g = grad\n" + MOMENTUM_LINES + "    return p - lr * (g + weight_decay * p), buf\n",
            "weight decay is added after the momentum",
        ),
        Mistake(  # a fresh reader's code: it passed while only p and buf were watched
            "grad changed in place",
            "    g = grad + weight_decay * p\n",
            "    g = grad\n    g += weight_decay * p\n",
            "sgd_step changed grad in place",
        ),
        Mistake(  # a fresh reader's: the hint gave the right form for grad and p, not for buf
            "buf changed in place",
            "            buf = momentum * buf + (1 - dampening) * g\n",
            "            buf *= momentum\n            buf += (1 - dampening) * g\n",
            "buf = momentum * buf + (1 - dampening) * g (not buf *= momentum",
        ),
        Mistake(
            "Nesterov ignored",
            "        g = g + momentum * buf if nesterov else buf\n",
            "        g = buf\n",
            "Nesterov is ignored",
        ),
    ),
)
