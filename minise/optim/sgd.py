"""Stochastic gradient descent with momentum, as the SENet paper trains (momentum 0.9), and
the helper that exempts batch-norm and bias parameters from weight decay."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from minise.autograd import no_grad
from minise.nn import Module
from minise.optim.optimizer import Optimizer


class SGD(Optimizer):
    """SGD with momentum, dampening, Nesterov and weight decay: PyTorch's update rule, exactly.

    For every parameter p with a gradient, with the hyperparameters of its group:

        g   = grad + weight_decay * p                       (L2 weight decay, coupled)
        buf = g                                             at the first step
        buf = momentum * buf + (1 - dampening) * g          after it
        g   = g + momentum * buf     if nesterov,   else  g = buf        (when momentum != 0)
        p   = p - lr * g

    ``momentum`` defaults to 0, as PyTorch's (plain SGD): pass ``momentum=0.9``, the SENet paper's
    value, to train as the paper does (``minise.train``'s ``--momentum`` defaults to 0.9).
    Nesterov needs momentum > 0 and dampening 0, as in PyTorch. ``params`` is an
    iterable of parameters or of group dicts (``{"params": [...], "weight_decay": 0.0}``); parameters
    whose ``grad`` is None are skipped and keep their momentum buffer unchanged.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float,
        momentum: float = 0.0,
        dampening: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
    ) -> None:
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "dampening": dampening,
            "nesterov": nesterov,
            "weight_decay": weight_decay,
        }
        super().__init__(params, defaults)

    def check_group(self, group: dict[str, Any]) -> None:
        for key in ("lr", "momentum", "weight_decay"):
            value = group[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"SGD: {key} must be a number >= 0, got {value!r}")
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError(
                f"SGD: Nesterov momentum requires a momentum > 0 and zero dampening, got momentum="
                f"{group['momentum']}, dampening={group['dampening']} - set momentum=0.9, dampening=0"
            )

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Update every parameter that has a gradient, in place on ``p.data``; returns ``closure()``
        (called with gradients enabled) if one is given, as in PyTorch."""
        loss = closure() if closure is not None else None
        with no_grad():
            for group in self.param_groups:
                lr, momentum, dampening = group["lr"], group["momentum"], group["dampening"]
                nesterov, weight_decay = group["nesterov"], group["weight_decay"]
                for p in group["params"]:
                    if p.grad is None:
                        continue
                    g = p.grad
                    if weight_decay != 0:
                        g = g + weight_decay * p.data
                    if momentum != 0:
                        state = self.state.setdefault(p, {})
                        buf = state.get("momentum_buffer")
                        if buf is None:
                            buf = state["momentum_buffer"] = g.copy()
                        else:
                            buf *= momentum
                            buf += (1 - dampening) * g
                        g = g + momentum * buf if nesterov else buf
                    p.data -= lr * g
        return loss


def param_groups_no_decay(model: Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two parameter groups: weights with ``weight_decay``, and every 1-D parameter (batch-norm
    gamma and beta, all biases) with weight decay 0. Empty groups are left out.

        optimizer = SGD(param_groups_no_decay(model, 1e-4), lr=0.1, momentum=0.9)
    """
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]
