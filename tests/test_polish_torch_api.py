"""Names a PyTorch user types and expects to work: nn.Softmax and nn.LogSoftmax as modules, abs(t) /
t.abs() / minise.abs, and torch's in-place nn.init names with a trailing underscore. Each is checked
against torch where it is importable."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from conftest import requires_torch, to_xp
from hypothesis import example, given, settings
from strategies import away_from_zero, normal, seeds, shapes

import minise
import minise.functional as F
import minise.nn as nn
from minise import backend
from minise.functional.elementwise import AbsOp

X = np.random.default_rng(0).normal(size=(2, 3, 4))


# --------------------------------------------------------------------------------------------------
# nn.Softmax, nn.LogSoftmax
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("module", "fn"), [(nn.Softmax, F.softmax), (nn.LogSoftmax, F.log_softmax)])
def test_softmax_modules_are_the_functional_ops(module, fn) -> None:
    for dim in (0, 1, -1):
        layer = module(dim=dim)
        np.testing.assert_array_equal(layer(minise.tensor(X)).numpy(), fn(minise.tensor(X), dim).numpy())
        assert repr(layer) == f"{module.__name__}(dim={dim})"
        assert list(layer.parameters()) == []
    np.testing.assert_array_equal(module()(minise.tensor(X)).numpy(), fn(minise.tensor(X), -1).numpy())
    with pytest.raises(ValueError, match=fn.__name__):
        module(dim=3)(minise.tensor(X))  # the functional op's axis check names the op


def test_softmax_modules_are_exported() -> None:
    assert {"Softmax", "LogSoftmax"} <= set(nn.__all__)


@requires_torch
@pytest.mark.torch
@pytest.mark.parametrize("name", ["Softmax", "LogSoftmax"])
def test_softmax_modules_match_torch_with_gradients(name: str) -> None:
    import torch

    x, tx = minise.tensor(X, requires_grad=True), torch.tensor(X, requires_grad=True)
    y, ty = getattr(nn, name)(dim=1)(x), getattr(torch.nn, name)(dim=1)(tx)
    gy = np.random.default_rng(1).normal(size=X.shape)
    y.backward(gy)
    ty.backward(torch.tensor(gy))
    np.testing.assert_allclose(y.numpy(), ty.detach().numpy(), rtol=1e-13)
    np.testing.assert_allclose(x.grad, tx.grad.numpy(), rtol=1e-12, atol=1e-15)
    assert repr(getattr(nn, name)(dim=1)) == repr(getattr(torch.nn, name)(dim=1))


# --------------------------------------------------------------------------------------------------
# abs(t), t.abs(), F.abs
# --------------------------------------------------------------------------------------------------
@settings(max_examples=15, deadline=None)
@given(shape=shapes(min_dims=0, max_dims=3), seed=seeds)
@example(shape=(), seed=0)
@example(shape=(1, 1, 1), seed=1)
def test_abs_gradcheck_and_forward(xp, shape, seed: int) -> None:
    """Values stay at least 1e-2 from the kink at 0, far more than gradcheck's step 1e-6."""
    a = away_from_zero(seed, shape)
    x = minise.Tensor(to_xp(xp, a), requires_grad=True)
    np.testing.assert_array_equal(F.abs(x).numpy(), np.abs(a))
    assert minise.gradcheck(F.abs, x).ok


def test_abs_gradient_at_zero_is_zero() -> None:
    """The kink rule, as PyTorch: the subgradient sign(0) = 0."""
    x = minise.tensor([-2.0, 0.0, 3.0], requires_grad=True)
    F.abs(x).backward(np.array([5.0, 5.0, 5.0]))
    np.testing.assert_array_equal(x.grad, [-5.0, 0.0, 5.0])


def test_abs_builtin_method_and_function_agree() -> None:
    t = minise.tensor(X)
    for y in (abs(t), t.abs(), F.abs(t)):
        np.testing.assert_array_equal(y.numpy(), np.abs(X))
    x = minise.tensor(X, requires_grad=True)
    abs(x).sum().backward()
    np.testing.assert_array_equal(x.grad, np.sign(X))
    ints = abs(minise.tensor([-3, 0, 2]))
    assert ints.dtype == np.int64 and ints.numpy().tolist() == [3, 0, 2]  # integers stay integer, as torch


class NoSignAbsOp(AbsOp):
    """abs whose backward forgot the sign: dx = gy."""

    def backward(self, gy: Any) -> Any:
        return gy


def test_gradcheck_catches_an_abs_without_its_sign() -> None:
    x = minise.tensor(-(away_from_zero(0, (3, 4)) ** 2), requires_grad=True)  # all negative: every element wrong
    with pytest.raises(minise.GradcheckError, match="mismatch"):
        minise.gradcheck(lambda t: NoSignAbsOp().apply(t), x)


@requires_torch
@pytest.mark.torch
def test_abs_matches_torch_in_float64_with_gradients(xp) -> None:
    import torch

    a = normal(3, (4, 5))
    a[0, :2] = 0.0  # the kink too: torch's subgradient there is 0
    x = minise.Tensor(to_xp(xp, a), requires_grad=True)
    y = abs(x)
    gy = normal(4, y.shape)
    y.backward(to_xp(xp, gy))
    tx = torch.tensor(a, requires_grad=True)
    ty = abs(tx)
    ty.backward(torch.tensor(gy))
    assert y.dtype == np.float64
    np.testing.assert_array_equal(y.numpy(), ty.detach().numpy())
    np.testing.assert_array_equal(backend.to_host(x.grad), tx.grad.numpy())
