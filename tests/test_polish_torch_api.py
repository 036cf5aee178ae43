"""Names a PyTorch user types and expects to work: nn.Softmax and nn.LogSoftmax as modules, abs(t) /
t.abs() / F.abs, and torch's in-place nn.init names with a trailing underscore. Each is checked
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
from minise.nn import init

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


# --------------------------------------------------------------------------------------------------
# nn.init: torch's in-place names (kaiming_normal_, uniform_, constant_) beside minise's shape forms
# --------------------------------------------------------------------------------------------------
SHAPE = (64, 32, 3, 3)  # fan_in 288, fan_out 576; 18,432 draws: the sample std is within 2% of the true one


def test_in_place_initialisers_fill_the_same_tensor_and_return_it(xp) -> None:
    w = nn.Parameter(to_xp(xp, np.zeros(SHAPE, dtype=np.float32)))
    data = w.data
    for fill in (init.kaiming_normal_, lambda t: init.uniform_(t, -0.5, 0.5), lambda t: init.constant_(t, 0.25)):
        assert fill(w) is w and w.data is data and w.dtype == np.float32  # in place: same object, same array
        assert backend.get_array_module(w.data) is xp  # on the tensor's own backend
    np.testing.assert_array_equal(w.numpy(), np.full(SHAPE, 0.25, dtype=np.float32))


@pytest.mark.parametrize(
    ("kwargs", "fan", "gain"),
    [
        ({}, 288, np.sqrt(2.0)),  # torch's defaults: fan_in, leaky_relu with a = 0
        ({"mode": "fan_out", "nonlinearity": "relu"}, 576, np.sqrt(2.0)),
        ({"a": 0.2}, 288, np.sqrt(2.0 / 1.04)),
        ({"nonlinearity": "tanh"}, 288, 5.0 / 3.0),
        ({"nonlinearity": "linear"}, 288, 1.0),
    ],
)
def test_kaiming_normal_draws_torchs_std(kwargs, fan: int, gain: float) -> None:
    w = init.kaiming_normal_(minise.zeros(SHAPE, dtype=np.float64), **kwargs).numpy()
    assert abs(w.mean()) < 0.02 * gain / np.sqrt(fan)
    assert abs(w.std() / (gain / np.sqrt(fan)) - 1) < 0.02


def test_uniform_and_constant_fill_as_torch() -> None:
    w = init.uniform_(minise.zeros(SHAPE, dtype=np.float64), -3.0, -1.0).numpy()
    assert w.min() >= -3.0 and w.max() < -1.0 and abs(w.mean() + 2.0) < 0.02
    w = init.uniform_(minise.zeros(SHAPE, dtype=np.float64)).numpy()
    assert w.min() >= 0.0 and w.max() < 1.0  # torch's default U(0, 1)
    assert (init.constant_(minise.zeros((3,)), -1.5).numpy() == -1.5).all()


def test_in_place_initialisers_follow_the_seed() -> None:
    minise.manual_seed(7)
    first = init.kaiming_normal_(minise.zeros((4, 3))).numpy().copy()
    minise.manual_seed(7)
    np.testing.assert_array_equal(init.kaiming_normal_(minise.zeros((4, 3))).numpy(), first)


def test_the_shape_forms_still_work() -> None:
    assert init.kaiming_normal((4, 3, 3, 3)).shape == (4, 3, 3, 3)
    b = init.uniform((5,), 0.1)
    assert b.shape == (5,) and np.all(np.abs(b) <= 0.1)
    np.testing.assert_array_equal(init.constant((2,), 3.0), [3.0, 3.0])


def test_in_place_initialiser_errors_name_the_fix() -> None:
    with pytest.raises(ValueError, match="kaiming_normal_: mode must be 'fan_in' or 'fan_out', got 'fan_avg'"):
        init.kaiming_normal_(minise.zeros((2, 2)), mode="fan_avg")
    with pytest.raises(ValueError, match="calculate_gain: unknown nonlinearity 'gelu' - use one of"):
        init.kaiming_normal_(minise.zeros((2, 2)), nonlinearity="gelu")


@requires_torch
@pytest.mark.torch
@pytest.mark.parametrize("name", ["linear", "conv2d", "sigmoid", "tanh", "relu", "leaky_relu"])
@pytest.mark.parametrize("param", [None, 0.0, 0.2])
def test_calculate_gain_matches_torch(name: str, param) -> None:
    import torch

    assert init.calculate_gain(name, param) == pytest.approx(torch.nn.init.calculate_gain(name, param), rel=1e-15)


@requires_torch
@pytest.mark.torch
def test_kaiming_normal_std_matches_torchs() -> None:
    """The same target std as torch's, for the same arguments (the draws differ: different generators)."""
    import torch

    torch.manual_seed(0)
    for kwargs in ({}, {"mode": "fan_out", "nonlinearity": "relu"}, {"a": 0.2}):
        ours = init.kaiming_normal_(minise.zeros(SHAPE, dtype=np.float64), **kwargs).numpy().std()
        theirs = torch.nn.init.kaiming_normal_(torch.empty(SHAPE, dtype=torch.float64), **kwargs).std().item()
        assert abs(ours / theirs - 1) < 0.04, kwargs
