"""Learning-rate schedules as closed-form functions of the step count.

Every schedule here is a formula ``lr_at(t)`` of the number of ``step()`` calls t (t = 0 at
construction), applied to each group's base learning rate (``initial_lr``, the ``lr`` the group had
when the first scheduler was built, as in PyTorch). ``step()`` advances t and writes ``lr_at(t)``
into the optimizer. Because the value depends on t alone, never on the previous learning rate:

* a schedule can count epochs or iterations: call ``step()`` once per epoch for the paper's
  ``StepLR(opt, step_size=30)``, or once per batch for warm-up and cosine over iterations (for a
  step schedule counted in iterations use ``step_size=30 * batches_per_epoch``);
* composition is selection: :class:`SequentialLR` runs each child schedule with its own clock
  restarted at its milestone, e.g. 5 epochs of linear warm-up and then cosine annealing, per batch::

      warmup = LinearWarmup(opt, warmup_steps=5 * n, start_factor=0.1)
      cosine = CosineAnnealingLR(opt, T_max=total - 5 * n)
      sched = SequentialLR(opt, [warmup, cosine], milestones=[5 * n])
      for batch in loader: ...; opt.step(); sched.step()

* ``state_dict()`` is the step count plus the options (JSON-able), and resuming from it restores the
  exact learning rate.

Names, arguments and values follow ``torch.optim.lr_scheduler`` (``last_epoch`` is PyTorch's name
for the step count, whatever a step means); the tests compare them step by step.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from typing import Any

from minise.optim.optimizer import Optimizer


class LRScheduler:
    """The base: subclasses define ``lr_at(t)``, the learning rates of every group after t steps."""

    def __init__(self, optimizer: Optimizer, last_epoch: int = -1) -> None:
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"{type(self).__name__}: expected an Optimizer, got {type(optimizer).__name__}")
        self.optimizer = optimizer
        for i, group in enumerate(optimizer.param_groups):
            if last_epoch == -1:
                group.setdefault("initial_lr", group["lr"])
            elif "initial_lr" not in group:
                raise KeyError(
                    f"{type(self).__name__}: param group {i} has no 'initial_lr' - resuming with last_epoch="
                    f"{last_epoch} needs the optimizer's state; or build the scheduler with last_epoch=-1"
                )
        self.base_lrs: list[float] = [g["initial_lr"] for g in optimizer.param_groups]
        self.last_epoch = last_epoch
        self._last_lr: list[float] = []
        self.step()

    def lr_at(self, t: int) -> list[float]:  # pragma: no cover - every schedule overrides it
        raise NotImplementedError

    def step(self) -> None:
        """Advance the step count by one and write the learning rate it gives into every group."""
        self.last_epoch += 1
        self._apply()

    def _apply(self) -> None:
        self._last_lr = [float(lr) for lr in self.lr_at(self.last_epoch)]
        for group, lr in zip(self.optimizer.param_groups, self._last_lr):
            group["lr"] = lr

    def get_last_lr(self) -> list[float]:
        """The learning rates the last ``step()`` (or the construction) set, one per group."""
        return list(self._last_lr)

    def state_dict(self) -> dict[str, Any]:
        """The step count and options: plain JSON-able values (no optimizer)."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(self).items() if k != "optimizer"}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state from :meth:`state_dict` and write its learning rate into the optimizer."""
        self.__dict__.update({k: v for k, v in state.items() if k != "optimizer"})
        self._apply()

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v}" for k, v in self.state_dict().items() if not k.startswith("_"))
        return f"{type(self).__name__}({opts})"


def _positive_int(owner: str, name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{owner}: {name} must be an int >= 1, got {value!r}")
    return value


class StepLR(LRScheduler):
    """lr(t) = base_lr * gamma ** (t // step_size). The paper: divide by 10 every 30 epochs
    (``StepLR(opt, step_size=30, gamma=0.1)``, stepped once per epoch)."""

    def __init__(self, optimizer: Optimizer, step_size: int, gamma: float = 0.1, last_epoch: int = -1) -> None:
        self.step_size = _positive_int("StepLR", "step_size", step_size)
        self.gamma = gamma
        super().__init__(optimizer, last_epoch)

    def lr_at(self, t: int) -> list[float]:
        return [base * self.gamma ** (t // self.step_size) for base in self.base_lrs]


class MultiStepLR(LRScheduler):
    """lr(t) = base_lr * gamma ** (number of milestones <= t); milestones strictly increasing."""

    def __init__(
        self, optimizer: Optimizer, milestones: Sequence[int], gamma: float = 0.1, last_epoch: int = -1
    ) -> None:
        ms = list(milestones)
        if any(b <= a for a, b in zip(ms, ms[1:])):
            raise ValueError(f"MultiStepLR: milestones must be strictly increasing, got {ms}")
        self.milestones, self.gamma = ms, gamma
        super().__init__(optimizer, last_epoch)

    def lr_at(self, t: int) -> list[float]:
        return [base * self.gamma ** bisect.bisect_right(self.milestones, t) for base in self.base_lrs]


class CosineAnnealingLR(LRScheduler):
    """lr(t) = eta_min + (base_lr - eta_min) * (1 + cos(pi * t / T_max)) / 2    (Loshchilov & Hutter)

    From base_lr at t = 0 down to eta_min at t = T_max; past T_max the formula goes on (it rises
    again, as PyTorch's), so set T_max to the total number of steps."""

    def __init__(self, optimizer: Optimizer, T_max: int, eta_min: float = 0.0, last_epoch: int = -1) -> None:
        self.T_max = _positive_int("CosineAnnealingLR", "T_max", T_max)
        self.eta_min = eta_min
        super().__init__(optimizer, last_epoch)

    def lr_at(self, t: int) -> list[float]:
        c = (1 + math.cos(math.pi * t / self.T_max)) / 2
        return [self.eta_min + (base - self.eta_min) * c for base in self.base_lrs]


class LinearLR(LRScheduler):
    """lr(t) = base_lr * (start_factor + (end_factor - start_factor) * min(t, total_iters) / total_iters)."""

    def __init__(
        self,
        optimizer: Optimizer,
        start_factor: float = 1.0 / 3,
        end_factor: float = 1.0,
        total_iters: int = 5,
        last_epoch: int = -1,
    ) -> None:
        name = type(self).__name__
        if not 0 < start_factor <= 1 or not 0 <= end_factor <= 1:
            raise ValueError(
                f"{name}: start_factor must be in (0, 1] and end_factor in [0, 1], got {start_factor}, {end_factor}"
            )
        self.start_factor, self.end_factor = start_factor, end_factor
        self.total_iters = _positive_int(name, "total_iters", total_iters)
        super().__init__(optimizer, last_epoch)

    def lr_at(self, t: int) -> list[float]:
        f = self.start_factor + (self.end_factor - self.start_factor) * min(t, self.total_iters) / self.total_iters
        return [base * f for base in self.base_lrs]


class LinearWarmup(LinearLR):
    """Linear warm-up from ``start_factor * base_lr`` to ``base_lr`` over ``warmup_steps`` steps, then
    constant: ``LinearLR(optimizer, start_factor, 1.0, warmup_steps)`` (Goyal et al. 2017). Put it
    first in a :class:`SequentialLR` with ``milestones=[warmup_steps]``."""

    def __init__(
        self, optimizer: Optimizer, warmup_steps: int, start_factor: float = 0.1, last_epoch: int = -1
    ) -> None:
        self.warmup_steps = _positive_int("LinearWarmup", "warmup_steps", warmup_steps)
        super().__init__(optimizer, start_factor, 1.0, warmup_steps, last_epoch)


class SequentialLR(LRScheduler):
    """Run ``schedulers[i]`` from ``milestones[i-1]`` on, its own clock restarted there:
    lr(t) = schedulers[i].lr_at(t - milestones[i-1]) with i = the number of milestones <= t.

    Each child needs the same optimizer; the children's own ``step()`` is never called.
    """

    def __init__(
        self, optimizer: Optimizer, schedulers: Sequence[LRScheduler], milestones: Sequence[int], last_epoch: int = -1
    ) -> None:
        ms = list(milestones)
        if len(schedulers) < 1 or len(ms) != len(schedulers) - 1:
            raise ValueError(
                f"SequentialLR: {len(schedulers)} schedulers need {max(len(schedulers) - 1, 0)} milestones, "
                f"got {ms} - one milestone where each scheduler after the first takes over"
            )
        if any(b <= a for a, b in zip(ms, ms[1:])) or any(m < 1 for m in ms):
            raise ValueError(f"SequentialLR: milestones must be positive and strictly increasing, got {ms}")
        for i, s in enumerate(schedulers):
            if s.optimizer is not optimizer:
                raise ValueError(
                    f"SequentialLR: scheduler {i} drives another optimizer - build every child on this one"
                )
        self.schedulers, self.milestones = list(schedulers), ms
        super().__init__(optimizer, last_epoch)

    def lr_at(self, t: int) -> list[float]:
        i = bisect.bisect_right(self.milestones, t)
        return self.schedulers[i].lr_at(t - (self.milestones[i - 1] if i else 0))

    def state_dict(self) -> dict[str, Any]:
        state = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(self).items()}
        del state["optimizer"]
        state["schedulers"] = [s.state_dict() for s in self.schedulers]
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        children = state["schedulers"]
        if len(children) != len(self.schedulers):
            raise ValueError(
                f"SequentialLR.load_state_dict: the state has {len(children)} schedulers, this one "
                f"{len(self.schedulers)} - build it with the same children"
            )
        for s, child in zip(self.schedulers, children):
            s.__dict__.update({k: v for k, v in child.items() if k != "optimizer"})
        self.__dict__.update({k: v for k, v in state.items() if k not in ("optimizer", "schedulers")})
        self._apply()
