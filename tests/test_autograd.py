"""The backward walk (minise/autograd.py): seeding, accumulation, graph shapes, freeing, grad mode, sum_to.

Each test states the gradient it expects in closed form, or compares with central differences of the
forward itself in float64.
"""

from __future__ import annotations

import numpy as np
import pytest

import minise
import minise.functional as F
from minise.autograd import Function, is_grad_enabled, sum_to, topological_order
from minise.functional.arithmetic import MulOp


def leaf(values, dtype=np.float64):  # type: ignore[no-untyped-def]
    return minise.tensor(np.asarray(values, dtype=dtype), requires_grad=True)


# --------------------------------------------------------------------------------------------------
# seeding the backward
# --------------------------------------------------------------------------------------------------
def test_backward_of_a_scalar_seeds_one() -> None:
    x = leaf([1.0, 2.0, 3.0])
    y = (x * x).sum()  # dy/dx = 2x
    y.backward()
    np.testing.assert_array_equal(x.grad, [2.0, 4.0, 6.0])


def test_backward_of_a_one_element_non_scalar_seeds_one() -> None:
    x = leaf([[3.0]])
    (x * 5.0).backward()
    np.testing.assert_array_equal(x.grad, [[5.0]])


def test_backward_of_a_non_scalar_without_gradient_is_a_clear_error() -> None:
    x = leaf([1.0, 2.0])
    y = x * 2.0
    with pytest.raises(RuntimeError, match=r"shape \(2,\).*gradient=") as info:
        y.backward()
    assert "sum()" in str(info.value)  # the message says how to fix it
    assert x.grad is None  # nothing was accumulated


def test_backward_with_an_explicit_gradient_is_a_vector_jacobian_product() -> None:
    x = leaf([1.0, 2.0, 3.0])
    y = x * x
    y.backward(np.array([1.0, 10.0, 100.0]))
    np.testing.assert_array_equal(x.grad, [2.0, 40.0, 600.0])


def test_backward_rejects_a_gradient_of_the_wrong_shape() -> None:
    x = leaf([1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match=r"\(2,\).*\(3,\)"):
        (x * 2.0).backward(np.ones(2))


def test_backward_on_a_tensor_without_graph_is_a_clear_error() -> None:
    x = minise.tensor([1.0, 2.0])
    with pytest.raises(RuntimeError, match="requires_grad=True"):
        x.sum().backward()


# --------------------------------------------------------------------------------------------------
# accumulation and the order of the walk
# --------------------------------------------------------------------------------------------------
def test_leaf_gradients_accumulate_over_backward_calls_as_in_pytorch() -> None:
    x = leaf([1.0, -2.0])
    (x * 3.0).sum().backward()
    (x * 4.0).sum().backward()  # a second graph: the leaf's grad adds up
    np.testing.assert_array_equal(x.grad, [7.0, 7.0])
    x.zero_grad()
    assert x.grad is None
    (x * 4.0).sum().backward()
    np.testing.assert_array_equal(x.grad, [4.0, 4.0])


def test_accumulated_grad_is_a_fresh_array_not_an_alias_of_another_gradient() -> None:
    # a + b hands the same gy to both inputs: each leaf must get its own array
    a, b = leaf([1.0]), leaf([2.0])
    (a + b).sum().backward()
    a.grad += 10.0
    np.testing.assert_array_equal(b.grad, [1.0])


class _Returns(Function):
    """y = x; its backward returns what ``make(gy, x)`` gives: a fresh array, a view, the input's data ..."""

    name = "returns"

    def __init__(self, make) -> None:  # type: ignore[no-untyped-def]
        super().__init__()
        self.make = make
        self.returned: object = None

    def forward(self, x):  # type: ignore[no-untyped-def]
        self.save(x)
        return x.copy()

    def backward(self, gy):  # type: ignore[no-untyped-def]
        self.returned = self.make(gy, self.saved[0])  # type: ignore[index]
        return self.returned


def test_a_leaf_keeps_the_gradient_its_op_made_for_it_without_a_copy() -> None:
    """The array an op's backward made for one input alone becomes the leaf's .grad itself (as PyTorch's
    AccumulateGrad steals it): no copy of a whole input gradient."""
    x = leaf([1.0, 2.0])
    op = _Returns(lambda gy, x: gy * 2.0)
    op.apply(x).backward(np.array([1.0, 1.0]))
    assert x.grad is op.returned
    np.testing.assert_array_equal(x.grad, [2.0, 2.0])


@pytest.mark.parametrize(
    "make",
    [lambda gy, x: gy, lambda gy, x: (gy * 2.0)[::1], lambda gy, x: x],
    ids=["the-incoming-gradient", "a-view", "a-saved-array"],
)
def test_a_gradient_someone_else_holds_is_copied_into_the_leaf(make) -> None:  # type: ignore[no-untyped-def]
    """The incoming gradient (the caller's array here), a view of another array, or an array the op saved:
    the leaf gets a copy, and changing it changes nothing else."""
    x = leaf([1.0, 2.0])
    op = _Returns(make)
    gy = np.array([5.0, 6.0])
    op.apply(x).backward(gy)
    assert x.grad is not op.returned
    before = np.array(op.returned, copy=True)
    x.grad += 100.0
    np.testing.assert_array_equal(op.returned, before)
    np.testing.assert_array_equal(gy, [5.0, 6.0])


class _ReturnsWhatItHolds(Function):
    """y = 2 x; its backward returns an array the op still holds: what it saved (a fresh array, not x), or its
    input's data, which it did not save."""

    name = "returns_what_it_holds"

    def __init__(self, which: str) -> None:
        super().__init__()
        self.which = which

    def forward(self, x):  # type: ignore[no-untyped-def]
        y = x * 2.0
        self.save(y * 1.0 if self.which == "saved" else None)
        return y

    def backward(self, gy):  # type: ignore[no-untyped-def]
        return self.saved[0] if self.which == "saved" else self.inputs[0].data  # type: ignore[index,union-attr]


@pytest.mark.parametrize("which", ["saved", "input-data"])
def test_an_array_the_op_holds_is_copied_into_the_leaf(which: str) -> None:
    """Each of _owned's two "still held" checks on its own: an array the op saved (not the input), and the
    input's data (not saved)."""
    x = leaf([1.0, 2.0])
    op = _ReturnsWhatItHolds(which)
    y = op.apply(x)
    held = x.data if which == "input-data" else op.saved[0]  # type: ignore[index]
    y.backward(np.array([1.0, 1.0]), retain_graph=True)  # retain_graph: the saved array stays the op's
    assert x.grad is not held
    x.grad += 100.0
    np.testing.assert_array_equal(held, [1.0, 2.0] if which == "input-data" else [2.0, 4.0])


def test_the_callers_gradient_is_never_a_leafs_grad() -> None:
    x = leaf([1.0, 2.0])
    gy = np.array([3.0, 4.0])
    x.backward(gy)  # the root is the leaf: its gradient is the caller's array
    x.grad += 1.0
    np.testing.assert_array_equal(gy, [3.0, 4.0])


def test_a_gradient_handed_to_two_inputs_is_copied_for_each() -> None:
    """One fresh array returned for both inputs (as an add could): each leaf gets its own."""

    class Twice(Function):
        name = "twice"

        def forward(self, a, b):  # type: ignore[no-untyped-def]
            return a + b

        def backward(self, gy):  # type: ignore[no-untyped-def]
            g = gy * 1.0  # fresh, but handed to both
            return g, g

    a, b = leaf([1.0]), leaf([2.0])
    Twice().apply(a, b).backward(np.array([1.0]))
    assert a.grad is not b.grad
    a.grad += 10.0
    np.testing.assert_array_equal(b.grad, [1.0])


def test_stealing_every_gradient_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """A planted mistake: _owned saying yes to everything. The checks above fail: a + b gives both leaves one
    array, and a leaf's .grad becomes the op's saved input."""
    import minise.autograd as autograd  # noqa: PLC0415

    monkeypatch.setattr(autograd, "_owned", lambda *args: True)
    with pytest.raises(AssertionError):
        test_accumulated_grad_is_a_fresh_array_not_an_alias_of_another_gradient()
    with pytest.raises(AssertionError):
        test_a_gradient_someone_else_holds_is_copied_into_the_leaf(lambda gy, x: x)
    with pytest.raises(AssertionError):
        test_a_gradient_handed_to_two_inputs_is_copied_for_each()


def test_a_tensor_used_twice_then_twice_again_gets_four() -> None:
    # b = a + a; c = b + b: if b ran its backward before both of c's contributions arrived, a.grad would be 2
    a = leaf(3.0)
    b = a + a
    c = b + b
    c.backward()
    assert a.grad == 4.0
    np.testing.assert_array_equal(c.numpy(), 12.0)


def test_diamond_graph_adds_both_paths() -> None:
    # u = x^2 feeds two branches that meet again: y = 3u + u x;  dy/dx = 6x + (2x * x + u) = 6x + 3x^2
    x = leaf([1.0, 2.0, -0.5])
    u = x * x
    v = u * 3.0
    w = u * x
    y = (v + w).sum()
    y.backward()
    xv = x.numpy()
    np.testing.assert_allclose(x.grad, 6 * xv + 3 * xv**2, rtol=1e-12)


def test_diamond_through_a_shared_intermediate_with_broadcasting() -> None:
    rng = np.random.default_rng(0)
    a = leaf(rng.normal(size=(3, 1)))
    b = leaf(rng.normal(size=(4,)))
    s = a + b  # (3, 4)
    y = (s * s + s).sum()  # dy/ds = 2s + 1
    y.backward()
    g = 2 * (a.numpy() + b.numpy()) + 1
    np.testing.assert_allclose(a.grad, g.sum(axis=1, keepdims=True), rtol=1e-12)
    np.testing.assert_allclose(b.grad, g.sum(axis=0), rtol=1e-12)


def test_topological_order_puts_each_tensor_after_its_inputs() -> None:
    a = leaf(1.0)
    b = a * 2.0
    c = a + b
    d = c * b
    order = topological_order(d)
    pos = {id(t): i for i, t in enumerate(order)}
    assert pos[id(a)] < pos[id(b)] < pos[id(c)] < pos[id(d)]
    assert len(order) == 4  # each tensor once; constants (no grad) are not walked


def test_a_chain_of_ten_thousand_ops_needs_no_recursion() -> None:
    n = 10_000
    x = leaf([0.5, 2.0])
    c = 1.0001
    y = x
    for _ in range(n // 2):
        y = y * c  # 5,000 multiplications
        y = y + x  # 5,000 additions: y_k = c y_{k-1} + x
    y.sum().backward()
    # y_m = x * (c^m + sum_{j<m} c^j) with m = n/2;  dy/dx is the same factor
    m = n // 2
    factor = c**m + (c**m - 1) / (c - 1)
    np.testing.assert_allclose(y.numpy(), x.numpy() * factor, rtol=1e-9)
    np.testing.assert_allclose(x.grad, [factor, factor], rtol=1e-9)


# --------------------------------------------------------------------------------------------------
# freeing saved arrays
# --------------------------------------------------------------------------------------------------
def test_saved_arrays_are_freed_after_backward() -> None:
    x = leaf([1.0, 2.0])
    w = leaf([3.0, 4.0])
    y = x * w
    z = F.sigmoid(y).sum()
    ops = [y.creator, z.creator, z.creator.inputs[0].creator]
    assert all(op is not None and op.saved is not None for op in ops)
    z.backward()
    assert all(op.saved is None for op in ops)  # type: ignore[union-attr]


def test_a_second_backward_through_the_same_graph_is_a_clear_runtime_error() -> None:
    x = leaf([1.0, 2.0])
    z = (x * x).sum()
    z.backward()
    first = x.grad.copy()
    with pytest.raises(RuntimeError, match=r"already freed.*forward again"):
        z.backward()
    np.testing.assert_array_equal(x.grad, first)  # the failed call accumulated nothing


def test_the_error_names_retain_graph() -> None:
    x = leaf([1.0, 2.0])
    z = (x * x).sum()
    z.backward()
    with pytest.raises(RuntimeError, match=r"pass retain_graph=True to the first backward"):
        z.backward()


def test_retain_graph_keeps_saved_arrays_and_a_second_backward_accumulates() -> None:
    x = leaf([1.0, -2.0, 3.0])
    z = (F.sigmoid(x * x) * x).sum()
    z.backward(retain_graph=True)
    first = x.grad.copy()
    z.backward(retain_graph=True)
    np.testing.assert_allclose(x.grad, 2 * first, rtol=1e-15)
    z.backward()  # the last one frees the graph
    np.testing.assert_allclose(x.grad, 3 * first, rtol=1e-15)
    with pytest.raises(RuntimeError, match=r"already freed"):
        z.backward()


def test_retain_graph_through_every_layer_of_an_se_resnet_gives_the_same_gradient_twice() -> None:
    """No op's backward may change what it saved: a second backward must see the same arrays."""
    import minise.nn as nn
    from minise import models

    minise.manual_seed(0)
    net = models.create("se_resnet20", num_classes=4, dtype=np.float64)
    head = nn.Sequential(nn.MaxPool2d(2, ceil_mode=True), nn.Dropout(0.5))
    x = minise.tensor(np.random.default_rng(0).normal(size=(2, 3, 9, 9)), requires_grad=True)
    loss = F.cross_entropy(net(head(x)), [1, 3], label_smoothing=0.1, reduction="sum")
    loss.backward(retain_graph=True)
    first = {name: p.grad.copy() for name, p in net.named_parameters()}
    first["x"] = x.grad.copy()
    loss.backward()
    second = {name: p.grad for name, p in net.named_parameters()}
    second["x"] = x.grad
    for name, g in first.items():
        np.testing.assert_allclose(second[name], 2 * g, rtol=1e-12, atol=1e-300, err_msg=name)


@pytest.mark.torch
def test_retain_graph_matches_torch() -> None:
    torch = pytest.importorskip("torch")
    values = np.array([0.5, -1.5, 2.0])
    x, tx = leaf(values), torch.tensor(values, requires_grad=True)
    z, tz = (F.tanh(x) * x).sum(), (torch.tanh(tx) * tx).sum()
    for retain in (True, False):
        z.backward(retain_graph=retain)
        tz.backward(retain_graph=retain)
        np.testing.assert_allclose(x.grad, tx.grad.numpy(), rtol=1e-15)
    with pytest.raises(RuntimeError):
        tz.backward()
    with pytest.raises(RuntimeError):
        z.backward()


def test_an_op_applied_without_grad_frees_its_saved_arrays_at_once() -> None:
    x = minise.tensor([1.0, 2.0])  # needs no gradient: nothing will call backward
    op = MulOp()
    y = op.apply(x, x)
    assert y.creator is None and y.requires_grad is False
    assert op.saved is None


def test_function_subclass_saves_and_returns_none_for_inputs_without_grad() -> None:
    seen: dict[str, object] = {}

    class Cube(Function):
        name = "cube"

        def forward(self, a, b):  # type: ignore[no-untyped-def]
            self.save(a)
            return a**3 + b

        def backward(self, gy):  # type: ignore[no-untyped-def]
            (a,) = self.saved  # type: ignore[misc]
            seen["needs"] = self.needs_input_grad
            return 3 * a**2 * gy, (gy if self.needs_input_grad[1] else None)

    x = leaf([2.0])
    y = Cube().apply(x, np.array([1.0]))
    y.backward(np.array([1.0]))
    assert seen["needs"] == (True, False)
    np.testing.assert_array_equal(x.grad, [12.0])


# --------------------------------------------------------------------------------------------------
# retain_grad and intermediate tensors
# --------------------------------------------------------------------------------------------------
def test_retain_grad_keeps_gradients_on_intermediates() -> None:
    x = leaf([1.0, 2.0])
    u = x * 3.0
    u.retain_grad()
    v = u * u  # not retained
    v.sum().backward()
    np.testing.assert_array_equal(u.grad, 2 * u.numpy())
    assert v.grad is None
    assert not v.is_leaf and x.is_leaf
    np.testing.assert_array_equal(x.grad, 2 * u.numpy() * 3.0)


def test_non_leaves_without_retain_grad_have_no_grad() -> None:
    x = leaf([1.0, 2.0])
    u = x * 3.0
    (u * u).sum().backward()
    assert u.grad is None
    assert x.grad is not None


def test_retain_grad_returns_the_tensor_and_accumulates_when_used_twice() -> None:
    x = leaf(2.0)
    u = (x * x).retain_grad()
    y = u + u
    y.backward()
    assert u.grad == 2.0
    assert x.grad == 2.0 * 2 * 2.0


# --------------------------------------------------------------------------------------------------
# grad mode
# --------------------------------------------------------------------------------------------------
def test_no_grad_records_no_graph() -> None:
    x = leaf([1.0, 2.0])
    with minise.no_grad():
        y = (x * 2.0 + 1.0).sum()
        z = F.relu(x)
    for t in (y, z):
        assert t.requires_grad is False
        assert t.creator is None
    np.testing.assert_array_equal(y.numpy(), 8.0)


def test_no_grad_nests_and_restores_even_on_exception() -> None:
    assert is_grad_enabled()
    with minise.no_grad():
        assert not is_grad_enabled()
        with minise.no_grad():
            assert not minise.is_grad_enabled()
        assert not is_grad_enabled()  # the inner exit restores "off", not "on"
        with minise.enable_grad():
            assert is_grad_enabled()
            x = leaf([1.0])
            assert (x * 2.0).requires_grad
        assert not is_grad_enabled()
    assert is_grad_enabled()
    with pytest.raises(ZeroDivisionError), minise.no_grad():
        1 / 0  # noqa: B018
    assert is_grad_enabled()


def test_a_graph_built_before_no_grad_still_backpropagates() -> None:
    x = leaf([1.0, 2.0])
    y = (x * x).sum()
    with minise.no_grad():
        y.backward()  # backward itself does not record a graph
    np.testing.assert_array_equal(x.grad, [2.0, 4.0])


# --------------------------------------------------------------------------------------------------
# sum_to: the backward of broadcasting
# --------------------------------------------------------------------------------------------------
def test_sum_to_is_the_identity_for_the_same_shape() -> None:
    g = np.arange(6.0).reshape(2, 3)
    assert sum_to(g, (2, 3)) is g


def test_sum_to_sums_away_leading_axes() -> None:
    g = np.arange(24.0).reshape(2, 3, 4)
    np.testing.assert_array_equal(sum_to(g, (4,)), g.sum(axis=(0, 1)))
    np.testing.assert_array_equal(sum_to(g, (3, 4)), g.sum(axis=0))
    np.testing.assert_array_equal(sum_to(g, ()), g.sum())


def test_sum_to_sums_size_one_axes_keeping_them() -> None:
    g = np.arange(24.0).reshape(2, 3, 4)
    np.testing.assert_array_equal(sum_to(g, (2, 1, 4)), g.sum(axis=1, keepdims=True))
    np.testing.assert_array_equal(sum_to(g, (1, 3, 1)), g.sum(axis=(0, 2), keepdims=True))
    np.testing.assert_array_equal(sum_to(g, (3, 1)), g.sum(axis=(0, 2))[:, None])
    out = sum_to(g, (1, 1, 1))
    assert out.shape == (1, 1, 1) and out.item() == g.sum()


def test_sum_to_keeps_size_one_axes_that_were_already_one() -> None:
    g = np.ones((2, 1, 4))
    out = sum_to(g, (1, 1, 4))
    assert out.shape == (1, 1, 4)
    np.testing.assert_array_equal(out, 2.0)


def test_sum_to_inverts_broadcast_to_for_a_linear_check() -> None:
    # <broadcast(a), g> == <a, sum_to(g)> for every shape pair: sum_to is broadcast's adjoint
    rng = np.random.default_rng(1)
    for small, big in [((3,), (2, 3)), ((2, 1), (2, 5)), ((1, 4, 1), (3, 2, 4, 6)), ((), (2, 2))]:
        a = rng.normal(size=small)
        g = rng.normal(size=big)
        lhs = (np.broadcast_to(a, big) * g).sum()
        rhs = (a * sum_to(g, small)).sum()
        assert sum_to(g, small).shape == small
        np.testing.assert_allclose(lhs, rhs, rtol=1e-12)
