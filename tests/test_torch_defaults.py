"""Defaults equal PyTorch's where the name is PyTorch's: every keyword default of every minise callable
below that has a PyTorch namesake, read from both signatures (so a new option is audited too).

Deliberate differences are listed with the reason (and in the README's table); anything else that
differs fails the test.
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
import pytest

import minise
import minise.functional as F
import minise.nn as nn
import minise.optim as optim
from minise.nn import init

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch

# (minise callable, torch callable)
PAIRS: list[tuple[Any, Any]] = [
    (nn.Conv2d, torch.nn.Conv2d),
    (nn.Linear, torch.nn.Linear),
    (nn.BatchNorm2d, torch.nn.BatchNorm2d),
    (nn.Dropout, torch.nn.Dropout),
    (nn.MaxPool2d, torch.nn.MaxPool2d),
    (nn.AvgPool2d, torch.nn.AvgPool2d),
    (nn.Flatten, torch.nn.Flatten),
    (nn.CrossEntropyLoss, torch.nn.CrossEntropyLoss),
    (nn.Softmax, torch.nn.Softmax),
    (nn.LogSoftmax, torch.nn.LogSoftmax),
    (init.kaiming_normal_, torch.nn.init.kaiming_normal_),
    (init.uniform_, torch.nn.init.uniform_),
    (init.calculate_gain, torch.nn.init.calculate_gain),
    (F.conv2d, torch.nn.functional.conv2d),
    (F.linear, torch.nn.functional.linear),
    (F.batch_norm, torch.nn.functional.batch_norm),
    (F.dropout, torch.nn.functional.dropout),
    (F.max_pool2d, torch.nn.functional.max_pool2d),
    (F.avg_pool2d, torch.nn.functional.avg_pool2d),
    (F.cross_entropy, torch.nn.functional.cross_entropy),
    (F.softmax, torch.nn.functional.softmax),
    (F.log_softmax, torch.nn.functional.log_softmax),
    (optim.SGD, torch.optim.SGD),
    (optim.StepLR, torch.optim.lr_scheduler.StepLR),
    (optim.MultiStepLR, torch.optim.lr_scheduler.MultiStepLR),
    (optim.CosineAnnealingLR, torch.optim.lr_scheduler.CosineAnnealingLR),
    (optim.LinearLR, torch.optim.lr_scheduler.LinearLR),
    (minise.Tensor.requires_grad_, torch.Tensor.requires_grad_),
    (minise.Tensor.flatten, torch.Tensor.flatten),
    (minise.zeros, torch.zeros),
    (minise.arange, torch.arange),
]

# (owner name, option): why minise's default differs on purpose
DELIBERATE = {
    ("SGD", "lr"): "minise requires lr (PyTorch 2 defaults to 1e-3): a forgotten lr should fail, not crawl",
}


def _same_dtype_default(option: str, mine: Any, torchs: Any) -> bool:
    """PyTorch's dtype=None means its default dtype, float32, which minise names itself."""
    return option == "dtype" and torchs is None and (mine is None or np.dtype(mine) == np.float32)


# torch's C++ builtins have no Python signature: their defaults as torch's documentation states them
DOCUMENTED: dict[str, dict[str, Any]] = {
    "conv2d": {"bias": None, "stride": 1, "padding": 0, "dilation": 1, "groups": 1},
    "linear": {"bias": None},
    "max_pool2d": {"stride": None, "padding": 0, "dilation": 1, "ceil_mode": False, "return_indices": False},
    "avg_pool2d": {"stride": None, "padding": 0, "ceil_mode": False, "count_include_pad": True},
    "requires_grad_": {"requires_grad": True},
    "flatten": {"start_dim": 0, "end_dim": -1},
    "zeros": {"dtype": None, "requires_grad": False},
    "arange": {"step": 1, "dtype": None, "requires_grad": False},
}


def _defaults(fn: Any, name: str = "") -> dict[str, Any]:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # a torch builtin
        return DOCUMENTED.get(name, {})
    return {n: p.default for n, p in sig.parameters.items() if p.default is not inspect.Parameter.empty}


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b or a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return abs(a - b) <= 1e-12 * max(1.0, abs(b))
    return a == b


@pytest.mark.parametrize("ours, theirs", PAIRS, ids=lambda f: getattr(f, "__qualname__", str(f)))
def test_defaults_equal_pytorchs(ours: Any, theirs: Any) -> None:
    name = ours.__name__
    mine, torchs = _defaults(ours), _defaults(theirs, name)
    if name == "max_pool2d":  # a Python wrapper choosing on return_indices: its signature says nothing
        torchs = DOCUMENTED["max_pool2d"]
    assert torchs, f"no defaults known for torch's {name}: add them to DOCUMENTED"
    differ = []
    for option, value in mine.items():
        if option not in torchs or _same(value, torchs[option]) or _same_dtype_default(option, value, torchs[option]):
            continue
        if (name, option) not in DELIBERATE:
            differ.append(f"{option}: minise {value!r}, torch {torchs[option]!r}")
    assert not differ, f"{name}: " + "; ".join(differ)


def test_the_audit_catches_a_changed_default() -> None:
    """The audit bites: a Dropout whose p defaults to 0.1 would be reported."""

    def dropout(input: Any, p: float = 0.1, training: bool = True) -> Any: ...

    mine, torchs = _defaults(dropout), _defaults(torch.nn.functional.dropout)
    assert not _same(mine["p"], torchs["p"])


def test_every_deliberate_difference_is_real() -> None:
    """No stale entry: each listed option exists in minise and differs (or is absent) in torch."""
    by_name = {ours.__name__: (ours, theirs) for ours, theirs in PAIRS}
    for owner, option in DELIBERATE:
        ours, theirs = by_name[owner]
        mine, torchs = _defaults(ours), _defaults(theirs, owner)
        assert option in inspect.signature(ours).parameters, (owner, option)
        assert option not in mine or option not in torchs or not _same(mine[option], torchs[option]), (owner, option)
