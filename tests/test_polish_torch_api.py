"""Names a PyTorch user types and expects to work: nn.Softmax and nn.LogSoftmax as modules, abs(t) /
t.abs() / minise.abs, and torch's in-place nn.init names with a trailing underscore. Each is checked
against torch where it is importable."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import requires_torch

import minise
import minise.functional as F
import minise.nn as nn

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
