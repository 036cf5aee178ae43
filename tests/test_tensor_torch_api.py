"""The Tensor API a PyTorch user reaches for: float/int/bool of one element, dim= or axis= on every
reduction and on softmax/log_softmax, each checked against torch where it is importable."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import requires_torch

import minise
import minise.functional as F

X = np.random.default_rng(0).normal(size=(2, 3, 4))


def _t(a=X, requires_grad=False):
    return minise.tensor(a, requires_grad=requires_grad)


# --------------------------------------------------------------------------------------------------
# float(t), int(t), bool(t)
# --------------------------------------------------------------------------------------------------
def test_python_scalars_of_one_element_tensors() -> None:
    assert float(_t(np.array([[2.5]]))) == 2.5 and isinstance(float(_t(np.array(2.5))), float)
    assert int(_t(np.array([-2.7]))) == -2  # truncates toward zero, as torch
    assert int(_t(np.array(7, dtype=np.int64))) == 7
    assert bool(_t(np.array([0.0]))) is False and bool(_t(np.array(3.0))) is True
    loss = (_t(requires_grad=True) ** 2).mean()
    assert abs(float(loss) - float((X**2).mean())) < 1e-15  # works on a tensor with a graph


@pytest.mark.parametrize("convert", [float, int, bool])
def test_python_scalars_of_larger_tensors_are_a_clear_error(convert) -> None:
    with pytest.raises(ValueError, match=r"(float|int|bool)\(\): .*shape \(2, 3, 4\)|ambiguous"):
        convert(_t())


@requires_torch
@pytest.mark.torch
def test_python_scalars_match_torch() -> None:
    import torch

    for v in (-2.7, -0.5, 0.0, 0.4, 3.9):
        for shape in ((), (1,), (1, 1)):
            a = np.full(shape, v)
            for convert in (float, int, bool):
                assert convert(_t(a)) == convert(torch.tensor(a))
    for convert in (float, int, bool):
        with pytest.raises((ValueError, RuntimeError)):
            convert(torch.tensor(X))


# --------------------------------------------------------------------------------------------------
# dim= and axis=
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["sum", "mean", "max"])
def test_reductions_take_dim_or_axis_and_keepdim_or_keepdims_alike(name) -> None:
    ref = getattr(X, name)(axis=1, keepdims=True)
    t = _t()
    for kwargs in ({"dim": 1, "keepdim": True}, {"axis": 1, "keepdims": True}, {"dim": 1, "keepdims": True}):
        np.testing.assert_array_equal(getattr(t, name)(**kwargs).numpy(), ref)
    np.testing.assert_array_equal(getattr(t, name)(1, True).numpy(), ref)  # positional, as both libraries
    np.testing.assert_array_equal(getattr(t, name)(dim=(0, 2)).numpy(), getattr(X, name)(axis=(0, 2)))
    with pytest.raises(TypeError, match=rf"{name}: got dim=1 and axis=1 - they mean the same; pass only one"):
        getattr(t, name)(dim=1, axis=1)
    with pytest.raises(TypeError, match=rf"{name}: got keepdim and keepdims"):
        getattr(t, name)(1, keepdim=True, keepdims=True)


def test_argmax_takes_dim_or_axis_and_keepdim() -> None:
    t = _t()
    np.testing.assert_array_equal(t.argmax(dim=2).numpy(), X.argmax(axis=2))
    np.testing.assert_array_equal(t.argmax(axis=2).numpy(), X.argmax(axis=2))
    assert t.argmax(1, keepdim=True).shape == (2, 1, 4)
    with pytest.raises(TypeError, match="argmax: got dim"):
        t.argmax(dim=0, axis=0)


@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_softmax_takes_dim_or_axis_as_function_and_method(name) -> None:
    fn = getattr(F, name)
    ref = fn(_t(), dim=1).numpy()
    for y in (fn(_t(), axis=1), fn(_t(), 1), getattr(_t(), name)(1), getattr(_t(), name)(axis=1)):
        np.testing.assert_array_equal(y.numpy(), ref)
    np.testing.assert_array_equal(fn(_t()).numpy(), fn(_t(), dim=-1).numpy())  # default: the last axis
    with pytest.raises(TypeError, match=rf"{name}: got dim=1 and axis=0"):
        fn(_t(), dim=1, axis=0)


@requires_torch
@pytest.mark.torch
def test_dim_reductions_and_softmax_match_torch_with_gradients() -> None:
    import torch

    gy_rng = np.random.default_rng(1)
    cases = [
        ("sum", lambda t: t.sum(dim=1, keepdim=True), lambda t: t.sum(dim=1, keepdim=True)),
        ("mean", lambda t: t.mean(dim=(0, 2)), lambda t: t.mean(dim=(0, 2))),
        ("max", lambda t: t.max(dim=2), lambda t: t.amax(dim=2)),
        ("softmax", lambda t: t.softmax(dim=0), lambda t: t.softmax(dim=0)),
        ("log_softmax", lambda t: F.log_softmax(t, dim=1), lambda t: torch.log_softmax(t, dim=1)),
    ]
    for name, ours, theirs in cases:
        x, tx = _t(requires_grad=True), torch.tensor(X, requires_grad=True)
        y, ty = ours(x), theirs(tx)
        gy = gy_rng.normal(size=tuple(ty.shape))
        y.backward(gy)
        ty.backward(torch.tensor(gy))
        np.testing.assert_allclose(y.numpy(), ty.detach().numpy(), rtol=1e-13, err_msg=name)
        np.testing.assert_allclose(x.grad, tx.grad.numpy(), rtol=1e-12, atol=1e-15, err_msg=name)
    np.testing.assert_array_equal(_t().argmax(dim=1).numpy(), torch.tensor(X).argmax(dim=1).numpy())


def test_numel_and_dim_as_torch_and_size_as_numpy() -> None:
    t = _t()
    assert (t.numel(), t.dim(), t.ndim, t.size) == (24, 3, 3, 24)
    with pytest.raises(TypeError):
        t.size()  # type: ignore[operator]  # deliberate: NumPy's size (README: where minise differs)


def test_requires_grad_in_place_as_torch() -> None:
    x = _t()
    assert x.requires_grad_() is x and x.requires_grad
    (x * x).sum().backward()
    np.testing.assert_allclose(x.grad, 2 * X)
    assert x.requires_grad_(False) is x and not x.requires_grad
    with pytest.raises(TypeError, match=r"requires_grad_: dtype int64 cannot require gradients"):
        minise.tensor([1, 2]).requires_grad_()


@requires_torch
@pytest.mark.torch
def test_requires_grad_matches_torch() -> None:
    import torch

    x, tx = _t(), torch.tensor(X)
    x.requires_grad_(), tx.requires_grad_()
    (x * 3.0).sum().backward()
    (tx * 3.0).sum().backward()
    np.testing.assert_array_equal(x.grad, tx.grad.numpy())
    with pytest.raises(RuntimeError):
        torch.tensor([1, 2]).requires_grad_()  # torch refuses integer tensors too
