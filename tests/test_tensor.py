"""Tensor (minise/tensor.py): construction, dtypes, conversions, operators, shapes, reductions, indexing, matmul.

Gradients are checked against central differences of minise's own forward in float64 (every element,
random cotangent), and against PyTorch where PyTorch is installed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from conftest import requires_torch

import minise
import minise.functional as F
from minise import Tensor


def leaf(values: Any, dtype: Any = np.float64) -> Tensor:
    return minise.tensor(np.asarray(values, dtype=dtype), requires_grad=True)


def numeric_grads(fn: Callable[..., Tensor], arrays: list[np.ndarray], cot: np.ndarray, eps: float = 1e-6):  # type: ignore[no-untyped-def]
    """d <fn(arrays), cot> / d arrays[i], element by element, by central differences."""

    def value(args: list[np.ndarray]) -> float:
        with minise.no_grad():
            return float((fn(*[minise.tensor(a) for a in args]).numpy() * cot).sum())

    grads = []
    for i, a in enumerate(arrays):
        g = np.zeros_like(a)
        for idx in np.ndindex(a.shape):
            plus = [b.copy() for b in arrays]
            minus = [b.copy() for b in arrays]
            plus[i][idx] += eps
            minus[i][idx] -= eps
            g[idx] = (value(plus) - value(minus)) / (2 * eps)
        grads.append(g)
    return grads


def check_fd(fn: Callable[..., Tensor], *arrays: np.ndarray, seed: int = 0) -> Tensor:
    """Backward of fn against central differences, with a random cotangent; returns the forward output."""
    arrays_ = [np.asarray(a, dtype=np.float64) for a in arrays]
    xs = [leaf(a) for a in arrays_]
    y = fn(*xs)
    cot = np.random.default_rng(seed).normal(size=y.shape)
    y.backward(cot)
    for i, (x, g) in enumerate(zip(xs, numeric_grads(fn, arrays_, cot), strict=True)):
        assert x.grad is not None, f"input {i} got no gradient"
        assert x.grad.shape == x.shape
        np.testing.assert_allclose(x.grad, g, rtol=1e-6, atol=1e-8, err_msg=f"input {i}")
    return y


def check_torch(fn: Callable[..., Tensor], tfn: Callable[..., Any], *arrays: np.ndarray, seed: int = 0) -> None:
    """Forward and backward of fn against the same function in PyTorch (float64, random cotangent)."""
    import torch

    xs = [leaf(a) for a in arrays]
    y = fn(*xs)
    cot = np.random.default_rng(seed).normal(size=y.shape)
    y.backward(cot)
    ts = [torch.tensor(np.asarray(a, dtype=np.float64), requires_grad=True) for a in arrays]
    ty = tfn(*ts)
    ty.backward(torch.tensor(cot))
    assert y.shape == tuple(ty.shape)
    np.testing.assert_allclose(y.numpy(), ty.detach().numpy(), rtol=1e-12, atol=1e-12)
    for i, (x, t) in enumerate(zip(xs, ts, strict=True)):
        np.testing.assert_allclose(x.grad, t.grad.numpy(), rtol=1e-12, atol=1e-12, err_msg=f"input {i}")


rng = np.random.default_rng(1234)


# --------------------------------------------------------------------------------------------------
# construction and dtypes
# --------------------------------------------------------------------------------------------------
def test_tensor_from_a_list() -> None:
    t = minise.tensor([[1.0, 2.0], [3.0, 4.0]])
    assert isinstance(t, Tensor)
    assert t.shape == (2, 2) and t.ndim == 2 and t.size == 4 and len(t) == 2
    assert t.dtype == np.float64  # NumPy's default for Python floats
    np.testing.assert_array_equal(t.numpy(), [[1.0, 2.0], [3.0, 4.0]])
    assert minise.tensor([1, 2, 3]).dtype.kind == "i"
    assert minise.tensor([1, 2], dtype="float32").dtype == np.float32
    assert minise.tensor(2.5).shape == ()


def test_tensor_keeps_the_dtype_of_an_array() -> None:
    assert minise.tensor(np.ones(3, np.float64)).dtype == np.float64
    assert minise.tensor(np.ones(3, np.float32)).dtype == np.float32
    assert minise.tensor(np.ones(3, np.float32), dtype=np.float64).dtype == np.float64


def test_only_float_tensors_may_require_grad() -> None:
    with pytest.raises(TypeError, match="float"):
        minise.tensor([1, 2], requires_grad=True)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_ops_and_gradients_keep_the_dtype(dtype: Any) -> None:
    x = leaf(rng.normal(size=(2, 3)), dtype)
    w = leaf(rng.normal(size=(3, 4)), dtype)
    b = leaf(rng.uniform(0.5, 2.0, size=(4,)), dtype)
    outs = [
        x * 2.0,
        2.0 * x,
        x + 1,
        1 - x,
        x / 3,
        3.0 / b,
        -x,
        x**2,
        x**2.0,
        2.0**x,
        b**b,
        x @ w,
        x.sum(),
        x.mean(axis=0),
        x.max(axis=1),
        x.reshape(3, 2),
        x.transpose(),
        x[0, 1:],
        F.relu(x),
        F.sigmoid(x),
        x.exp(),
    ]
    for i, y in enumerate(outs):
        assert y.dtype == dtype, f"output {i} has dtype {y.dtype}"
    loss = sum((y.sum() for y in outs), start=x.sum() * 0.0)
    assert loss.dtype == dtype
    loss.backward()
    for t in (x, w, b):
        assert t.grad.dtype == dtype


def test_float32_times_python_float_stays_float32() -> None:
    x = minise.tensor(np.ones(3, np.float32))
    assert (x * 2.0).dtype == np.float32
    assert (x * np.float64(2.0)).dtype == np.float32  # a NumPy scalar is a Python float too
    assert (x + 10**6).dtype == np.float32


# --------------------------------------------------------------------------------------------------
# conversions
# --------------------------------------------------------------------------------------------------
def test_numpy_returns_a_host_ndarray_and_data_is_the_backend_array() -> None:
    a = np.arange(6.0).reshape(2, 3)
    t = minise.tensor(a)
    out = t.numpy()
    assert type(out) is np.ndarray
    np.testing.assert_array_equal(out, a)
    assert t.data is not None and t.data.shape == (2, 3)
    assert isinstance(t.data, np.ndarray)  # the numpy backend's array
    assert t.device == "numpy"


def test_item_returns_a_python_number() -> None:
    assert minise.tensor(np.float32(2.5)).item() == 2.5
    assert type(minise.tensor(np.float32(2.5)).item()) is float
    assert type(minise.tensor([7]).item()) is int
    assert minise.tensor([[3.0]]).item() == 3.0
    with pytest.raises(ValueError, match=r"one-element.*\(2,\)"):
        minise.tensor([1.0, 2.0]).item()


def test_detach_shares_data_and_cuts_the_graph() -> None:
    x = leaf([1.0, 2.0])
    y = x * 3.0
    d = y.detach()
    assert d.requires_grad is False and d.creator is None and d.is_leaf
    assert d.data is y.data  # no copy
    z = (x * x.detach()).sum()  # the detached factor is a constant: dz/dx = x
    z.backward()
    np.testing.assert_array_equal(x.grad, [1.0, 2.0])


def test_repr_names_dtype_and_requires_grad() -> None:
    r = repr(leaf([1.0], np.float32))
    assert "float32" in r and "requires_grad=True" in r


# --------------------------------------------------------------------------------------------------
# operators, broadcasting, reflected operators
# --------------------------------------------------------------------------------------------------
BROADCAST_SHAPES = [((2, 3), (2, 3)), ((2, 3), (3,)), ((2, 1), (1, 3)), ((4, 1, 3), (2, 3)), ((), (2, 2))]


@pytest.mark.parametrize(("sa", "sb"), BROADCAST_SHAPES)
@pytest.mark.parametrize(
    ("name", "op"),
    [
        ("add", lambda a, b: a + b),
        ("sub", lambda a, b: a - b),
        ("mul", lambda a, b: a * b),
        ("div", lambda a, b: a / b),
        ("pow", lambda a, b: a**b),
    ],
)
def test_binary_operators_broadcast_and_backpropagate(name: str, op: Any, sa: tuple, sb: tuple) -> None:
    a = rng.uniform(0.5, 2.0, size=sa)  # positive: a ** b and log a are defined
    b = rng.uniform(0.5, 2.0, size=sb)
    y = check_fd(op, a, b)
    np.testing.assert_allclose(y.numpy(), op(a, b), rtol=1e-14)
    # and the other way round, so each broadcast direction is summed back
    y = check_fd(op, b, a)
    np.testing.assert_allclose(y.numpy(), op(b, a), rtol=1e-14)


def test_unary_minus() -> None:
    a = rng.normal(size=(2, 3))
    y = check_fd(lambda x: -x, a)
    np.testing.assert_array_equal(y.numpy(), -a)


@pytest.mark.parametrize(
    ("name", "op"),
    [
        ("radd", lambda c, x: c + x),
        ("rsub", lambda c, x: c - x),
        ("rmul", lambda c, x: c * x),
        ("rdiv", lambda c, x: c / x),
        ("rpow", lambda c, x: c**x),
    ],
)
@pytest.mark.parametrize("left", ["python float", "python int", "ndarray", "broadcast ndarray"])
def test_reflected_operators_with_a_number_or_ndarray_on_the_left(name: str, op: Any, left: str) -> None:
    x = rng.uniform(0.5, 2.0, size=(2, 3))
    c: Any = {
        "python float": 1.5,
        "python int": 3,
        "ndarray": rng.uniform(0.5, 2.0, size=(2, 3)),
        "broadcast ndarray": rng.uniform(0.5, 2.0, size=(4, 1, 3)),
    }[left]
    y = check_fd(lambda t: op(c, t), x)
    assert isinstance(y, Tensor)
    np.testing.assert_allclose(y.numpy(), op(c, x), rtol=1e-14)


def test_pow_tensor_scalar_scalar_tensor_tensor_tensor_closed_forms() -> None:
    x = leaf([1.0, 2.0, 3.0])
    (x**3).sum().backward()
    np.testing.assert_allclose(x.grad, 3 * x.numpy() ** 2)
    x.zero_grad()
    (2.0**x).sum().backward()
    np.testing.assert_allclose(x.grad, 2.0 ** x.numpy() * np.log(2.0))
    a, b = leaf([2.0, 3.0]), leaf([0.5, 2.0])
    (a**b).sum().backward()
    np.testing.assert_allclose(a.grad, b.numpy() * a.numpy() ** (b.numpy() - 1))
    np.testing.assert_allclose(b.grad, a.numpy() ** b.numpy() * np.log(a.numpy()))


def test_operator_with_a_constant_tensor_gives_that_tensor_no_grad() -> None:
    x = leaf([1.0, 2.0])
    c = minise.tensor([3.0, 4.0])
    (x * c).sum().backward()
    np.testing.assert_array_equal(x.grad, [3.0, 4.0])
    assert c.grad is None


@pytest.mark.parametrize(
    ("name", "op"),
    [
        ("lt", lambda a, b: a < b),
        ("le", lambda a, b: a <= b),
        ("gt", lambda a, b: a > b),
        ("ge", lambda a, b: a >= b),
        ("eq", lambda a, b: a == b),
        ("ne", lambda a, b: a != b),
    ],
)
def test_comparisons_return_boolean_tensors_without_grad(name: str, op: Any) -> None:
    a = np.array([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])
    b = np.array([2.0, 2.0, 2.0])
    x = leaf(a)
    for other, ref in ((leaf(b), b), (b, b), (2.0, 2.0)):
        r = op(x, other)
        assert isinstance(r, Tensor)
        assert r.dtype == np.bool_
        assert r.requires_grad is False and r.creator is None
        np.testing.assert_array_equal(r.numpy(), op(a, ref))


def test_comparisons_with_the_tensor_on_the_right() -> None:
    x = minise.tensor([1.0, 3.0])
    for r, ref in ((np.array([2.0, 2.0]) < x, [False, True]), (2.0 < x, [False, True]), (2.0 >= x, [True, False])):
        assert isinstance(r, Tensor) and r.dtype == np.bool_
        np.testing.assert_array_equal(r.numpy(), ref)


def test_truth_value_of_a_one_element_tensor_is_its_value() -> None:
    assert bool(minise.tensor([1.0]) > 2.0) is False  # `if loss < best:` must read the value, as in PyTorch
    assert bool(minise.tensor(0.0) > 1.0) is False


def test_truth_value_of_a_many_element_tensor_is_an_error() -> None:
    with pytest.raises((ValueError, RuntimeError)):
        bool(minise.tensor([0.0, 0.0]) > 1.0)


def test_tensor_copies_the_array_it_is_made_from() -> None:
    a = np.zeros(3)
    t = minise.tensor(a, requires_grad=True)
    t.data -= 1.0
    np.testing.assert_array_equal(a, np.zeros(3))


def test_to_returns_a_copy_as_documented() -> None:
    t = minise.tensor([1.0, 2.0])
    u = t.to("numpy")
    u.data[0] = 5.0
    assert t.data[0] == 1.0


def test_tensors_hash_by_identity() -> None:
    a, b = minise.tensor([1.0]), minise.tensor([1.0])
    assert len({a, b}) == 2


# --------------------------------------------------------------------------------------------------
# reshape and transpose
# --------------------------------------------------------------------------------------------------
def test_reshape_with_a_tuple_and_with_varargs() -> None:
    a = rng.normal(size=(2, 3, 4))
    assert check_fd(lambda x: x.reshape((6, 4)), a).shape == (6, 4)
    assert check_fd(lambda x: x.reshape(4, 6), a).shape == (4, 6)
    y = check_fd(lambda x: x.reshape(-1, 2), a)
    np.testing.assert_array_equal(y.numpy(), a.reshape(-1, 2))
    assert minise.tensor(a).reshape([24]).shape == (24,)
    with pytest.raises(ValueError, match=r"reshape.*\(2, 3, 4\).*\(5, 5\)"):
        minise.tensor(a).reshape(5, 5)


def test_transpose_without_arguments_reverses_the_axes() -> None:
    a = rng.normal(size=(2, 3, 4))
    y = check_fd(lambda x: x.transpose(), a)
    np.testing.assert_array_equal(y.numpy(), a.transpose())
    assert minise.tensor(a).T.shape == (4, 3, 2)


@pytest.mark.parametrize("perm", [(1, 2, 0), (2, 0, 1), (0, 2, 1), (-1, 0, 1)])
def test_transpose_with_a_permutation(perm: tuple[int, ...]) -> None:
    a = rng.normal(size=(2, 3, 4))
    y = check_fd(lambda x: x.transpose(*perm), a)
    np.testing.assert_array_equal(y.numpy(), a.transpose(perm))
    y2 = minise.tensor(a).transpose(perm)  # a tuple works as well
    np.testing.assert_array_equal(y2.numpy(), a.transpose(perm))


def test_transpose_rejects_a_non_permutation() -> None:
    with pytest.raises(ValueError, match="permutation"):
        minise.tensor(np.zeros((2, 3))).transpose(0, 0)


# --------------------------------------------------------------------------------------------------
# reductions
# --------------------------------------------------------------------------------------------------
AXES = [None, 0, 1, -1, -3, (0, 2), (-1, 0), (0, 1, 2)]


@pytest.mark.parametrize("keepdims", [False, True])
@pytest.mark.parametrize("axis", AXES)
@pytest.mark.parametrize("name", ["sum", "mean", "max"])
def test_reductions_match_numpy_and_central_differences(name: str, axis: Any, keepdims: bool) -> None:
    a = rng.permutation(24).reshape(2, 3, 4) / 7.0 - 1.0  # distinct values: max has a unique arg
    fn = lambda x: getattr(x, name)(axis=axis, keepdims=keepdims)  # noqa: E731
    y = check_fd(fn, a)
    ref = getattr(a, name)(axis=axis, keepdims=keepdims)
    assert y.shape == ref.shape
    np.testing.assert_allclose(y.numpy(), ref, rtol=1e-14)


@pytest.mark.parametrize("axis", [None, 1, (0, 1)])
def test_max_splits_the_gradient_between_ties(axis: Any) -> None:
    a = np.array([[1.0, 3.0, 3.0], [2.0, 2.0, 0.0]])
    x = leaf(a)
    x.max(axis=axis).sum().backward()
    ref = np.zeros_like(a)
    y = a.max(axis=axis, keepdims=True)
    mask = (a == y).astype(float)
    ref = mask / mask.sum(axis=axis, keepdims=True)
    np.testing.assert_allclose(x.grad, ref)


@pytest.mark.parametrize("axis", [None, 1, (0, 1), -1])
@pytest.mark.parametrize("keepdims", [False, True])
@pytest.mark.parametrize("name", ["sum", "mean", "amax"], ids=["sum", "mean", "max"])
@pytest.mark.torch
@requires_torch
def test_reductions_match_torch(name: str, axis: Any, keepdims: bool) -> None:
    import torch

    a = np.array([[1.0, 3.0, 3.0, -1.0], [2.0, 2.0, 0.0, 5.0], [4.0, 4.0, 4.0, 4.0]])  # ties included
    mine = "max" if name == "amax" else name
    dims = tuple(range(2)) if axis is None else axis
    check_torch(
        lambda x: getattr(x, mine)(axis=axis, keepdims=keepdims),
        lambda t: getattr(torch, name)(t, dim=dims, keepdim=keepdims),
        a,
    )


def test_reduction_axis_errors_are_clear() -> None:
    x = minise.tensor(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="out of range"):
        x.sum(axis=2)
    with pytest.raises(ValueError, match="repeats"):
        x.sum(axis=(0, -2))


# --------------------------------------------------------------------------------------------------
# indexing
# --------------------------------------------------------------------------------------------------
MASK = np.array([[True, False, True, False], [False, False, True, True], [True, True, True, False]])
INDEXES = {
    "int": 1,
    "negative int": -1,
    "two ints": (2, -3),
    "slice": slice(1, None),
    "slices with step": (slice(None), slice(None, None, 2)),
    "int and slice": (1, slice(1, 3)),
    "boolean mask": MASK,
    "boolean row mask": np.array([True, False, True]),
    "repeated int array": np.array([0, 2, 0, 0]),
    "repeated int list": [1, 1, 2],
    "two repeated int arrays": (np.array([0, 0, 2, 0]), np.array([1, 1, 3, 1])),
    "slice and repeated int array": (slice(None), np.array([3, 3, 0])),
    "2-D int array": np.array([[0, 1], [1, 1]]),
}


@pytest.mark.parametrize("index", list(INDEXES.values()), ids=list(INDEXES))
def test_indexing_matches_numpy_and_central_differences(index: Any) -> None:
    a = rng.normal(size=(3, 4))
    y = check_fd(lambda x: x[index], a)
    np.testing.assert_array_equal(y.numpy(), a[index])


@pytest.mark.parametrize("index", list(INDEXES.values()), ids=list(INDEXES))
@pytest.mark.torch
@requires_torch
def test_indexing_gradients_add_up_as_in_torch(index: Any) -> None:
    import torch

    def tindex(i: Any) -> Any:
        if isinstance(i, tuple):
            return tuple(tindex(j) for j in i)
        return torch.as_tensor(i) if isinstance(i, (np.ndarray, list)) else i

    a = rng.normal(size=(3, 4))
    check_torch(lambda x: x[index], lambda t: t[tindex(index)], a)


def test_repeated_indices_add_their_gradients() -> None:
    x = leaf([10.0, 20.0, 30.0])
    x[np.array([0, 0, 0, 2])].sum().backward()
    np.testing.assert_array_equal(x.grad, [3.0, 0.0, 1.0])


def test_indexing_with_a_boolean_tensor_from_a_comparison() -> None:
    x = leaf([-1.0, 2.0, -3.0, 4.0])
    y = x[x > 0]
    np.testing.assert_array_equal(y.numpy(), [2.0, 4.0])
    y.sum().backward()
    np.testing.assert_array_equal(x.grad, [0.0, 1.0, 0.0, 1.0])


# --------------------------------------------------------------------------------------------------
# matmul
# --------------------------------------------------------------------------------------------------
MATMUL_SHAPES = [
    ((3,), (3,)),
    ((3,), (3, 4)),
    ((2, 3), (3,)),
    ((2, 3), (3, 4)),
    ((5, 2, 3), (3, 4)),
    ((2, 3), (5, 3, 4)),
    ((5, 2, 3), (5, 3, 4)),
    ((2, 1, 2, 3), (4, 3, 2)),
    ((3,), (5, 3, 4)),
    ((5, 2, 3), (3,)),
    ((1, 2, 3), (5, 3, 4)),
]


@pytest.mark.parametrize(("sa", "sb"), MATMUL_SHAPES, ids=[f"{a}@{b}" for a, b in MATMUL_SHAPES])
def test_matmul_matches_numpy_and_central_differences(sa: tuple, sb: tuple) -> None:
    a, b = rng.normal(size=sa), rng.normal(size=sb)
    y = check_fd(lambda x, w: x @ w, a, b)
    np.testing.assert_allclose(y.numpy(), a @ b, rtol=1e-13)


@pytest.mark.parametrize(("sa", "sb"), MATMUL_SHAPES, ids=[f"{a}@{b}" for a, b in MATMUL_SHAPES])
@pytest.mark.torch
@requires_torch
def test_matmul_matches_torch(sa: tuple, sb: tuple) -> None:
    import torch

    a, b = rng.normal(size=sa), rng.normal(size=sb)
    check_torch(lambda x, w: x @ w, torch.matmul, a, b)


def test_matmul_with_an_ndarray_on_either_side() -> None:
    a, b = rng.normal(size=(2, 3)), rng.normal(size=(3, 4))
    x = leaf(b)
    y = a @ x  # ndarray on the left: Tensor.__rmatmul__
    assert isinstance(y, Tensor)
    np.testing.assert_allclose(y.numpy(), a @ b)
    y.sum().backward()
    np.testing.assert_allclose(x.grad, a.T @ np.ones((2, 4)))
    w = leaf(a)
    z = w @ b
    z.sum().backward()
    np.testing.assert_allclose(w.grad, np.ones((2, 4)) @ b.T)
