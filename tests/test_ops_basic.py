"""The basic ops: elementwise relu/sigmoid/tanh/exp/log; + - * / ** @ with broadcasting; reshape,
transpose, indexing, flatten; sum/mean/max over None / int / negative / tuple axes with keepdims.

Every op: gradcheck over drawn shapes and values, the forward against NumPy, and forward and
gradients against PyTorch. relu and max are kinked: relu's inputs stay at least 1e-2 from 0 and max's
inputs are distinct; the kink's rule (relu'(0) = 0) and the tie rule (max splits ties equally, as
torch.amax) are tested on their own.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import requires_torch, to_xp
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import basic_indices, mutually_broadcastable_shapes
from strategies import arrays, away_from_zero, distinct_values, normal, positive, reduction_axes, seeds, shapes

import minise
import minise.functional as F
from minise import backend


def _t(xp, a, requires_grad=True):
    return minise.Tensor(to_xp(xp, np.array(a, dtype=np.float64)), requires_grad=requires_grad)


def _grads_match_torch(ours, theirs, rtol=1e-10, atol=1e-12):
    for i, (o, t) in enumerate(zip(ours, theirs)):
        np.testing.assert_allclose(backend.to_host(o.grad), t.grad.numpy(), rtol=rtol, atol=atol, err_msg=f"input {i}")


# --------------------------------------------------------------------------------------------------
# elementwise
# --------------------------------------------------------------------------------------------------
# name: (minise op, NumPy reference, value maker keeping away from kinks and out of the domain's edge)
UNARY = {
    "relu": (F.relu, lambda x: np.maximum(x, 0), away_from_zero),
    "sigmoid": (F.sigmoid, lambda x: 1 / (1 + np.exp(-x)), normal),
    "tanh": (F.tanh, np.tanh, normal),
    "exp": (F.exp, np.exp, normal),
    "log": (F.log, np.log, positive),
}


@pytest.mark.parametrize("name", list(UNARY))
@settings(max_examples=15, deadline=None)
@given(shape=shapes(min_dims=0, max_dims=3), seed=seeds)
@example(shape=(), seed=0)
@example(shape=(1, 1, 1), seed=1)
def test_unary_gradcheck_and_forward(xp, name: str, shape, seed: int) -> None:
    op, ref, values = UNARY[name]
    a = values(seed, shape)
    x = _t(xp, a)
    np.testing.assert_allclose(op(x).numpy(), ref(a), rtol=1e-13, atol=1e-15)
    assert minise.gradcheck(op, x).ok


@pytest.mark.parametrize("name", list(UNARY))
def test_tensor_methods_are_the_functional_ops(name: str) -> None:
    a = UNARY[name][2](0, (3, 2))
    np.testing.assert_array_equal(getattr(minise.Tensor(a), name)().numpy(), UNARY[name][0](minise.Tensor(a)).numpy())


def test_relu_gradient_at_zero_is_zero() -> None:
    """The kink rule, as PyTorch: relu'(0) = 0."""
    x = minise.Tensor(np.array([-1.0, 0.0, 2.0]), requires_grad=True)
    F.relu(x).backward(np.array([5.0, 5.0, 5.0]))
    np.testing.assert_array_equal(x.grad, [0.0, 0.0, 5.0])


@pytest.mark.parametrize("size", [0, 7, 4096, "over the zeros buffer"])
def test_relu_of_is_max_with_zero_whichever_loop_runs(size: int | str, monkeypatch: pytest.MonkeyPatch) -> None:
    """relu_of, the ReLU step of the elementwise bodies, compares with kept zeros (cpu.zeros) on NumPy, or
    with the scalar 0 above cpu.ZEROS_BYTES: either way max(t, 0), NaN and inf kept, into ``out`` or not."""
    from minise import cpu  # noqa: PLC0415
    from minise.functional.elementwise import relu_of  # noqa: PLC0415

    n = 4096 if size == "over the zeros buffer" else int(size)
    if size == "over the zeros buffer":
        monkeypatch.setattr(cpu, "ZEROS_BYTES", 1024)
    t = np.random.default_rng(n).standard_normal((n, 3)).astype(np.float32)
    if n:
        t[0, :3] = [np.nan, -np.inf, np.inf]
    want = np.maximum(t, np.float32(0))
    np.testing.assert_array_equal(relu_of(t), want)
    out = np.full_like(t, 5.0)
    assert relu_of(t, out=out) is out
    np.testing.assert_array_equal(out, want)
    relu_of(t, out=t)  # in place, as the convolution's epilogue does
    np.testing.assert_array_equal(t, want)


def test_sigmoid_does_not_overflow() -> None:
    x = minise.Tensor(np.array([-1000.0, 0.0, 1000.0]), requires_grad=True)
    with np.errstate(all="raise"):
        y = F.sigmoid(x)
        y.backward(np.ones(3))
    np.testing.assert_array_equal(y.numpy(), [0.0, 0.5, 1.0])
    np.testing.assert_array_equal(x.grad, [0.0, 0.25, 0.0])


@requires_torch
@pytest.mark.torch
@pytest.mark.parametrize("name", list(UNARY))
def test_unary_matches_torch(xp, name: str) -> None:
    import torch

    op, _, values = UNARY[name]
    a = values(3, (4, 5))
    x = _t(xp, a)
    y = op(x)
    gy = normal(4, y.shape)
    y.backward(to_xp(xp, gy))
    tx = torch.tensor(a, requires_grad=True)
    ty = getattr(torch, name)(tx)
    ty.backward(torch.tensor(gy))
    np.testing.assert_allclose(y.numpy(), ty.detach().numpy(), rtol=1e-13, atol=1e-15)
    _grads_match_torch([x], [tx])


# --------------------------------------------------------------------------------------------------
# arithmetic with broadcasting
# --------------------------------------------------------------------------------------------------
def _signed(seed, shape):
    return away_from_zero(seed, shape, margin=0.5)


# name: (the op on tensors, value maker for a, value maker for b)
BINARY = {
    "add": (lambda a, b: a + b, normal, normal),
    "sub": (lambda a, b: a - b, normal, normal),
    "mul": (lambda a, b: a * b, normal, normal),
    "div": (lambda a, b: a / b, normal, _signed),  # |b| >= 0.5
    "pow": (lambda a, b: a**b, positive, normal),  # a > 0: d/db a**b = a**b log a
}


@pytest.mark.parametrize("name", list(BINARY))
@settings(max_examples=20, deadline=None)
@given(shapes=mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=3, max_side=3), seed=seeds)
def test_binary_broadcasting_gradcheck(xp, name: str, shapes, seed: int) -> None:
    """Both operands require grad and broadcast against each other: each gradient sums back to its shape."""
    fn, make_a, make_b = BINARY[name]
    sa, sb = shapes.input_shapes
    a, b = make_a(seed, sa), make_b(seed + 1, sb)
    ta, tb = _t(xp, a), _t(xp, b)
    y = fn(ta, tb)
    assert y.shape == shapes.result_shape
    np.testing.assert_allclose(y.numpy(), fn(a, b), rtol=1e-13, atol=1e-15)
    assert minise.gradcheck(fn, ta, tb).ok


@pytest.mark.parametrize(
    ("name", "fn", "make"),
    [
        ("x + 2", lambda x: x + 2.0, normal),
        ("2 + x", lambda x: 2.0 + x, normal),
        ("2 - x", lambda x: 2.0 - x, normal),
        ("x * 3", lambda x: x * 3, normal),
        ("3 / x", lambda x: 3.0 / x, _signed),
        ("x / 4", lambda x: x / 4.0, normal),
        ("x ** 2 (negative base)", lambda x: x**2, normal),
        ("x ** 3", lambda x: x**3, normal),
        ("x ** 0.5", lambda x: x**0.5, positive),
        ("2 ** x", lambda x: 2.0**x, normal),
        ("-x", lambda x: -x, normal),
        ("x * x - x (one tensor used twice)", lambda x: x * x - x, normal),
    ],
)
def test_arithmetic_with_python_numbers(xp, name: str, fn, make) -> None:
    a = make(5, (2, 3))
    x = _t(xp, a)
    np.testing.assert_allclose(fn(x).numpy(), fn(a), rtol=1e-13)
    assert minise.gradcheck(fn, x).ok


@st.composite
def matmul_shapes(draw):
    """Operand shapes for every matmul form: vector-vector, matrix-vector, vector-matrix, matrix-matrix, batched."""
    b, m, k, n = (draw(st.integers(1, 3)) for _ in range(4))
    return draw(
        st.sampled_from(
            [
                ((k,), (k,)),
                ((m, k), (k,)),
                ((k,), (k, n)),
                ((m, k), (k, n)),
                ((b, m, k), (k, n)),
                ((m, k), (b, k, n)),
                ((b, m, k), (b, k, n)),
                ((1, m, k), (b, k, n)),
                ((b, 1, m, k), (1, b, k, n)),
                ((k,), (b, k, n)),
                ((b, m, k), (k,)),
            ]
        )
    )


@settings(max_examples=40, deadline=None)
@given(pair=matmul_shapes(), seed=seeds)
def test_matmul_gradcheck(xp, pair, seed: int) -> None:
    sa, sb = pair
    a, b = normal(seed, sa), normal(seed + 1, sb)
    ta, tb = _t(xp, a), _t(xp, b)
    np.testing.assert_allclose((ta @ tb).numpy(), a @ b, rtol=1e-12, atol=1e-14)
    assert minise.gradcheck(lambda p, q: p @ q, ta, tb).ok


@requires_torch
@pytest.mark.torch
@settings(max_examples=30, deadline=None)
@given(
    shapes=mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=3, max_side=3),
    pair=matmul_shapes(),
    seed=seeds,
)
def test_arithmetic_matches_torch(xp, shapes, pair, seed: int) -> None:
    import torch

    cases = [
        (name, fn, make_a(seed, shapes.input_shapes[0]), make_b(seed + 1, shapes.input_shapes[1]))
        for name, (fn, make_a, make_b) in BINARY.items()
    ]
    cases.append(("matmul", lambda p, q: p @ q, normal(seed, pair[0]), normal(seed + 1, pair[1])))
    for name, fn, a, b in cases:
        ta, tb = _t(xp, a), _t(xp, b)
        y = fn(ta, tb)
        gy = normal(seed + 2, y.shape)
        y.backward(to_xp(xp, gy))
        qa, qb = torch.tensor(a, requires_grad=True), torch.tensor(b, requires_grad=True)
        qy = fn(qa, qb)
        qy.backward(torch.tensor(gy))
        np.testing.assert_allclose(y.numpy(), qy.detach().numpy(), rtol=1e-12, atol=1e-14, err_msg=name)
        _grads_match_torch([ta, tb], [qa, qb])


# --------------------------------------------------------------------------------------------------
# shape ops
# --------------------------------------------------------------------------------------------------
@settings(max_examples=30, deadline=None)
@given(shape=shapes(min_dims=1, max_dims=4, max_side=3), seed=seeds, data=st.data())
def test_reshape_transpose_flatten_gradcheck(xp, shape, seed: int, data) -> None:
    a = normal(seed, shape)
    nd = len(shape)
    perm = tuple(data.draw(st.permutations(range(nd))))
    start = data.draw(st.integers(-nd, nd - 1))
    end = data.draw(st.integers(start % nd, nd - 1))
    new_shape = data.draw(st.sampled_from([(-1,), (a.size, 1), tuple(reversed(shape)), (1, -1)]))
    cases = {
        "reshape": (lambda t: t.reshape(new_shape), a.reshape(new_shape)),
        "reshape(*args)": (lambda t: t.reshape(*new_shape), a.reshape(new_shape)),
        "transpose(perm)": (lambda t: t.transpose(*perm), a.transpose(perm)),
        "transpose()": (lambda t: t.transpose(), a.T),
        "T": (lambda t: t.T, a.T),
        "flatten": (lambda t: t.flatten(start, end), a.reshape(*shape[: start % nd], -1, *shape[end + 1 :])),
        "F.flatten": (lambda t: F.flatten(t, start, end), a.reshape(*shape[: start % nd], -1, *shape[end + 1 :])),
    }
    for name, (fn, expected) in cases.items():
        x = _t(xp, a)
        y = fn(x)
        np.testing.assert_array_equal(y.numpy(), expected, err_msg=name)
        # transposes feed their gradient to a non-contiguous view: multiply to make the check non-trivial
        assert minise.gradcheck(lambda t, fn=fn: fn(t) * fn(t), x).ok, name


@settings(max_examples=40, deadline=None)
@given(data=st.data(), shape=shapes(min_dims=1, max_dims=3, max_side=4))
def test_getitem_basic_indices_gradcheck(xp, data, shape) -> None:
    """Integers, slices (negative steps too), Ellipsis and None."""
    index = data.draw(basic_indices(shape, allow_newaxis=True))
    a = data.draw(arrays(shape))
    x = _t(xp, a)
    np.testing.assert_array_equal(x[index].numpy(), a[index])
    assert minise.gradcheck(lambda t: t[index] * 2.0, x).ok


def test_getitem_repeated_integer_indices_add_up(xp) -> None:
    a = normal(0, (4, 3))
    x = _t(xp, a)
    index = to_xp(xp, np.array([2, 0, 2, 2]))
    y = x[index]
    np.testing.assert_array_equal(y.numpy(), a[[2, 0, 2, 2]])
    y.backward(to_xp(xp, np.ones((4, 3))))
    np.testing.assert_array_equal(backend.to_host(x.grad)[:, 0], [1.0, 0.0, 3.0, 0.0])
    assert minise.gradcheck(lambda t: t[index] ** 2, _t(xp, a)).ok


def test_getitem_boolean_mask_and_tensor_index(xp) -> None:
    a = normal(1, (3, 4))
    x = _t(xp, a)
    mask = minise.Tensor(to_xp(xp, a > 0))
    np.testing.assert_array_equal(x[mask].numpy(), a[a > 0])
    assert minise.gradcheck(lambda t: t[mask] * 3.0, x).ok
    rows, cols = minise.Tensor(to_xp(xp, np.array([0, 2, 0]))), to_xp(xp, np.array([1, 1, 3]))
    np.testing.assert_array_equal(x[rows, cols].numpy(), a[[0, 2, 0], [1, 1, 3]])
    assert minise.gradcheck(lambda t: t[rows, cols], _t(xp, a)).ok


@requires_torch
@pytest.mark.torch
def test_shape_ops_match_torch(xp) -> None:
    import torch

    a = normal(2, (2, 3, 4))
    cases = [
        ("reshape", lambda t: t.reshape(4, 6), lambda t: t.reshape(4, 6)),
        ("permute", lambda t: t.transpose(2, 0, 1), lambda t: t.permute(2, 0, 1)),
        ("flatten", lambda t: t.flatten(1), lambda t: t.flatten(1)),
        ("getitem", lambda t: t[1, ::2, 1:3], lambda t: t[1, ::2, 1:3]),
    ]
    for name, ours, theirs in cases:
        x, tx = _t(xp, a), torch.tensor(a, requires_grad=True)
        y, ty = ours(x), theirs(tx)
        gy = normal(3, y.shape)
        y.backward(to_xp(xp, gy))
        ty.backward(torch.tensor(gy))
        np.testing.assert_array_equal(y.numpy(), ty.detach().numpy(), err_msg=name)
        _grads_match_torch([x], [tx])


# --------------------------------------------------------------------------------------------------
# reductions
# --------------------------------------------------------------------------------------------------
@st.composite
def reduction_cases(draw, min_dims: int = 0):
    shape = draw(shapes(min_dims=min_dims, max_dims=4, max_side=3))
    return shape, draw(reduction_axes(len(shape))), draw(st.booleans()), draw(seeds)


@pytest.mark.parametrize("name", ["sum", "mean", "max"])
@settings(max_examples=30, deadline=None)
@given(case=reduction_cases())
@example(case=((), None, False, 0))
@example(case=((2, 3, 4), -1, True, 1))
@example(case=((2, 3, 4), (0, -1), False, 2))
@example(case=((2, 3, 4), (2, 0, 1), True, 3))
def test_reduction_gradcheck_and_forward(xp, name: str, case) -> None:
    shape, axis, keepdims, seed = case
    a = distinct_values(seed, shape) if name == "max" else normal(seed, shape)  # max: no ties
    x = _t(xp, a)
    y = getattr(x, name)(axis=axis, keepdims=keepdims)
    expected = getattr(np, name)(a, axis=axis, keepdims=keepdims)
    assert y.shape == np.shape(expected)
    np.testing.assert_allclose(y.numpy(), expected, rtol=1e-13, atol=1e-15)
    assert minise.gradcheck(lambda t: getattr(t, name)(axis=axis, keepdims=keepdims), x).ok


def test_max_splits_ties_equally() -> None:
    """The tie rule of Tensor.max (as torch.amax): tied maxima share the gradient equally."""
    x = minise.Tensor(np.array([[1.0, 3.0, 3.0], [2.0, 2.0, 2.0]]), requires_grad=True)
    x.max(axis=1).backward(np.array([6.0, 6.0]))
    np.testing.assert_allclose(x.grad, [[0.0, 3.0, 3.0], [2.0, 2.0, 2.0]])
    x.grad = None
    x.max().backward()
    np.testing.assert_allclose(x.grad, [[0.0, 0.5, 0.5], [0.0, 0.0, 0.0]])


@requires_torch
@pytest.mark.torch
@settings(max_examples=30, deadline=None)
@given(case=reduction_cases(min_dims=1), ties=st.booleans())
def test_reductions_match_torch(xp, case, ties: bool) -> None:
    """sum, mean and max (torch.amax, ties included) over the same axes: values and gradients."""
    import torch

    shape, axis, keepdims, seed = case
    dims = tuple(range(len(shape))) if axis is None else axis
    theirs = {
        "sum": lambda t: torch.sum(t, dim=dims, keepdim=keepdims),
        "mean": lambda t: torch.mean(t, dim=dims, keepdim=keepdims),
        "max": lambda t: torch.amax(t, dim=dims, keepdim=keepdims),
    }
    a = np.random.default_rng(seed).integers(0, 2, shape).astype(np.float64) if ties else normal(seed, shape)
    for name, fn in theirs.items():
        x, tx = _t(xp, a), torch.tensor(a, requires_grad=True)
        y, ty = getattr(x, name)(axis=axis, keepdims=keepdims), fn(tx)
        gy = normal(seed + 1, y.shape)
        y.backward(to_xp(xp, gy))
        ty.backward(torch.tensor(gy))
        np.testing.assert_allclose(y.numpy(), ty.detach().numpy(), rtol=1e-13, atol=1e-15, err_msg=name)
        _grads_match_torch([x], [tx])
