"""softmax, log_softmax, cross_entropy (with label smoothing), linear and dropout: gradcheck over drawn
shapes and values, the forward against a NumPy formula, and forward and gradients against PyTorch."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import requires_torch, to_xp
from hypothesis import example, given, settings
from hypothesis import strategies as st
from strategies import normal, seeds, shapes

import minise
import minise.functional as F
import minise.nn as nn
from minise import backend


def _t(xp, a, requires_grad=True):
    return minise.Tensor(to_xp(xp, np.array(a, dtype=np.float64)), requires_grad=requires_grad)


def np_log_softmax(z, axis):
    shifted = z - z.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


# --------------------------------------------------------------------------------------------------
# softmax and log_softmax
# --------------------------------------------------------------------------------------------------
@st.composite
def softmax_cases(draw):
    shape = draw(shapes(min_dims=1, max_dims=3, max_side=4))
    return shape, draw(st.integers(-len(shape), len(shape) - 1)), draw(seeds), draw(st.sampled_from([1.0, 5.0]))


@settings(max_examples=30, deadline=None)
@given(case=softmax_cases())
@example(case=((1,), 0, 0, 1.0))  # one class: softmax is 1, its gradient 0
@example(case=((1, 5), -1, 1, 1.0))
@example(case=((3, 1, 2), 1, 2, 5.0))
def test_softmax_and_log_softmax(xp, case) -> None:
    shape, dim, seed, scale = case
    z = normal(seed, shape) * scale
    p = F.softmax(_t(xp, z), dim=dim).numpy()
    logp = F.log_softmax(_t(xp, z), dim=dim).numpy()
    np.testing.assert_allclose(logp, np_log_softmax(z, dim), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(p, np.exp(z) / np.exp(z).sum(axis=dim, keepdims=True), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(p.sum(axis=dim), 1.0, rtol=1e-13)
    assert minise.gradcheck(lambda t: F.softmax(t, dim=dim), _t(xp, z)).ok
    assert minise.gradcheck(lambda t: F.log_softmax(t, dim=dim), _t(xp, z)).ok


def test_softmax_does_not_overflow() -> None:
    z = minise.Tensor(np.array([[1000.0, 0.0, -1000.0]]), requires_grad=True)
    with np.errstate(over="raise", invalid="raise"):
        p = F.softmax(z)
        logp = F.log_softmax(z)
        F.cross_entropy(z, np.array([2])).backward()
    np.testing.assert_allclose(p.numpy(), [[1.0, 0.0, 0.0]])
    np.testing.assert_allclose(logp.numpy(), [[0.0, -1000.0, -2000.0]])
    np.testing.assert_allclose(z.grad, [[1.0, 0.0, -1.0]])


@requires_torch
@pytest.mark.torch
@settings(max_examples=25, deadline=None)
@given(case=softmax_cases())
def test_softmax_matches_torch(xp, case) -> None:
    import torch

    shape, dim, seed, scale = case
    z = normal(seed, shape) * scale
    gy = normal(seed + 1, shape)
    for ours, theirs in ((F.softmax, torch.softmax), (F.log_softmax, torch.log_softmax)):
        x, tx = _t(xp, z), torch.tensor(z, requires_grad=True)
        y, ty = ours(x, dim=dim), theirs(tx, dim=dim)
        y.backward(to_xp(xp, gy))
        ty.backward(torch.tensor(gy))
        np.testing.assert_allclose(y.numpy(), ty.detach().numpy(), rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(backend.to_host(x.grad), tx.grad.numpy(), rtol=1e-10, atol=1e-14)


# --------------------------------------------------------------------------------------------------
# cross_entropy
# --------------------------------------------------------------------------------------------------
@st.composite
def cross_entropy_cases(draw):
    n, k = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    target = np.array(draw(st.lists(st.integers(0, k - 1), min_size=n, max_size=n)), dtype=np.int64)
    smoothing = draw(st.sampled_from([0.0, 1.0]) | st.floats(0.0, 1.0))
    return n, k, target, smoothing, draw(seeds)


def np_cross_entropy(z, target, smoothing):
    n, k = z.shape
    q = np.full((n, k), smoothing / k)
    q[np.arange(n), target] += 1 - smoothing
    return -(q * np_log_softmax(z, 1)).sum() / n


@settings(max_examples=40, deadline=None)
@given(case=cross_entropy_cases())
@example(case=(1, 3, np.array([2]), 0.0, 0))  # batch 1
@example(case=(3, 1, np.array([0, 0, 0]), 0.1, 1))  # one class: the loss is 0
@example(case=(4, 3, np.array([0, 1, 2, 1]), 1.0, 2))  # full smoothing: the target is uniform
def test_cross_entropy(xp, case) -> None:
    n, k, target, smoothing, seed = case
    z = normal(seed, (n, k)) * 3
    t = to_xp(xp, target)
    loss = F.cross_entropy(_t(xp, z), t, label_smoothing=smoothing)
    assert loss.shape == ()
    np.testing.assert_allclose(loss.item(), np_cross_entropy(z, target, smoothing), rtol=1e-12, atol=1e-14)
    assert minise.gradcheck(lambda x: F.cross_entropy(x, t, label_smoothing=smoothing), _t(xp, z)).ok


def test_cross_entropy_gradient_is_softmax_minus_target() -> None:
    z = normal(0, (3, 4))
    x = minise.Tensor(z.copy(), requires_grad=True)
    F.cross_entropy(x, minise.Tensor(np.array([3, 0, 1]))).backward()
    onehot = np.eye(4)[[3, 0, 1]]
    np.testing.assert_allclose(x.grad, (np.exp(np_log_softmax(z, 1)) - onehot) / 3, rtol=1e-12)


def test_cross_entropy_accepts_a_list_of_labels() -> None:
    z = normal(1, (2, 3))
    a = F.cross_entropy(minise.Tensor(z), [1, 2]).item()
    np.testing.assert_allclose(a, np_cross_entropy(z, np.array([1, 2]), 0.0), rtol=1e-12)


@requires_torch
@pytest.mark.torch
@settings(max_examples=30, deadline=None)
@given(case=cross_entropy_cases())
def test_cross_entropy_matches_torch(xp, case) -> None:
    import torch

    n, k, target, smoothing, seed = case
    z = normal(seed, (n, k)) * 3
    x, tx = _t(xp, z), torch.tensor(z, requires_grad=True)
    loss = F.cross_entropy(x, to_xp(xp, target), label_smoothing=smoothing)
    tloss = torch.nn.functional.cross_entropy(tx, torch.tensor(target), label_smoothing=smoothing)
    loss.backward(to_xp(xp, np.array(0.7)))
    tloss.backward(torch.tensor(0.7, dtype=torch.float64))
    np.testing.assert_allclose(loss.item(), tloss.item(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(backend.to_host(x.grad), tx.grad.numpy(), rtol=1e-10, atol=1e-14)


# --------------------------------------------------------------------------------------------------
# cross_entropy: reduction="mean" | "sum" | "none" and ignore_index, as PyTorch
# --------------------------------------------------------------------------------------------------
IGNORE = -100


@st.composite
def reduction_cases(draw):
    """Logits (N, K), targets with some rows ignored (possibly all), a reduction and a smoothing."""
    n, k = draw(st.integers(1, 5)), draw(st.integers(1, 4))
    ignore = draw(st.sampled_from([IGNORE, 0, 7]))  # the default, a real class, a value never used
    target = draw(st.lists(st.integers(0, k - 1) | st.just(ignore), min_size=n, max_size=n))
    reduction = draw(st.sampled_from(["mean", "sum", "none"]))
    return n, k, np.array(target, dtype=np.int64), ignore, reduction, draw(st.sampled_from([0.0, 0.2])), draw(seeds)


def np_cross_entropy_rows(z, target, ignore, smoothing):
    """Per-row losses (0 where ignored) and the number of rows that count, by the formula."""
    n, k = z.shape
    valid = target != ignore
    q = np.full((n, k), smoothing / k)
    q[np.arange(n), np.where(valid, target, 0)] += 1 - smoothing
    return -(q * np_log_softmax(z, 1)).sum(axis=1) * valid, valid.sum()


@settings(max_examples=40, deadline=None)
@given(case=reduction_cases())
@example(case=(1, 3, np.array([2]), IGNORE, "none", 0.0, 0))  # batch 1
@example(case=(3, 1, np.array([0, IGNORE, 0]), IGNORE, "mean", 0.2, 1))  # one class
@example(case=(4, 3, np.array([0, 1, 0, 2]), 0, "mean", 0.0, 2))  # ignore_index is a real class
@example(case=(3, 2, np.array([1, 0, 1]), 7, "sum", 0.2, 3))  # nothing ignored
def test_cross_entropy_reductions_and_ignore_index(xp, case) -> None:
    n, k, target, ignore, reduction, smoothing, seed = case
    z = normal(seed, (n, k)) * 3
    t = to_xp(xp, target)
    rows, count = np_cross_entropy_rows(z, target, ignore, smoothing)
    expected = {"none": rows, "sum": rows.sum(), "mean": rows.sum() / count if count else np.nan}[reduction]

    def loss_fn(x):
        return F.cross_entropy(x, t, ignore_index=ignore, reduction=reduction, label_smoothing=smoothing)

    loss = loss_fn(_t(xp, z))
    assert loss.shape == ((n,) if reduction == "none" else ())
    np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-12, atol=1e-14)
    if reduction == "mean" and count == 0:
        return  # NaN loss (as PyTorch): no finite differences to compare
    assert minise.gradcheck(loss_fn, _t(xp, z)).ok
    x = _t(xp, z)
    loss_fn(x).backward(to_xp(xp, np.ones(loss.shape)))
    assert (backend.to_host(x.grad)[target == ignore] == 0).all()  # ignored rows: zero gradient


@requires_torch
@pytest.mark.torch
@settings(max_examples=40, deadline=None)
@given(case=reduction_cases())
@example(case=(3, 2, np.array([IGNORE, IGNORE, IGNORE]), IGNORE, "mean", 0.0, 0))  # all ignored: NaN in both
def test_cross_entropy_reductions_and_ignore_index_match_torch(xp, case) -> None:
    import torch

    n, k, target, ignore, reduction, smoothing, seed = case
    z = normal(seed, (n, k)) * 3
    gy = normal(seed + 1, (n,) if reduction == "none" else ())
    x, tx = _t(xp, z), torch.tensor(z, requires_grad=True)
    loss = F.cross_entropy(x, to_xp(xp, target), ignore_index=ignore, reduction=reduction, label_smoothing=smoothing)
    tloss = torch.nn.functional.cross_entropy(
        tx, torch.tensor(target), ignore_index=ignore, reduction=reduction, label_smoothing=smoothing
    )
    loss.backward(to_xp(xp, gy))
    tloss.backward(torch.tensor(gy))
    np.testing.assert_allclose(loss.numpy(), tloss.detach().numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(backend.to_host(x.grad), tx.grad.numpy(), rtol=1e-10, atol=1e-14)


def test_the_reduction_gradcheck_catches_an_ignored_row_that_still_gets_gradient() -> None:
    """The property test above bites: a backward that forgets to mask ignored rows fails gradcheck."""
    from minise.functional.loss import CrossEntropyOp

    class Unmasked(CrossEntropyOp):
        def backward(self, gy):
            logp, q, v = self.saved
            return (np.exp(logp) - q) * gy / v.sum(), None  # planted: no "* v" on the softmax term

    z, t = _t(np, normal(5, (3, 4))), minise.Tensor(np.array([1, IGNORE, 3]))
    assert minise.gradcheck(lambda x: CrossEntropyOp().apply(x, t), z).ok
    report = minise.gradcheck(lambda x: Unmasked().apply(x, t), z, raise_on_failure=False)
    assert not report.ok


def test_cross_entropy_loss_module_matches_the_function() -> None:
    z, target = normal(4, (4, 3)), np.array([0, IGNORE, 2, 1])
    loss_fn = nn.CrossEntropyLoss(reduction="sum", label_smoothing=0.1)
    expected = F.cross_entropy(_t(np, z), target, reduction="sum", label_smoothing=0.1)
    np.testing.assert_array_equal(loss_fn(_t(np, z), target).numpy(), expected.numpy())
    assert "reduction='sum'" in repr(loss_fn)
    with pytest.raises(TypeError):
        nn.CrossEntropyLoss(None)  # type: ignore[misc]  # PyTorch's first positional is weight


def test_cross_entropy_rejects_an_unknown_reduction_and_out_of_range_targets_that_are_not_ignored() -> None:
    z = _t(np, normal(0, (2, 3)))
    with pytest.raises(ValueError, match=r"cross_entropy: reduction='avg' is not one of"):
        F.cross_entropy(z, [0, 1], reduction="avg")
    with pytest.raises(ValueError, match=r"target holds class 5 .* or equal ignore_index \(-100\)"):
        F.cross_entropy(z, [5, 1])
    F.cross_entropy(z, [-100, 1])  # the default ignore_index is allowed
    with pytest.raises(ValueError, match=r"target holds class -100"):
        F.cross_entropy(z, [-100, 1], ignore_index=-1)


# --------------------------------------------------------------------------------------------------
# linear
# --------------------------------------------------------------------------------------------------
@st.composite
def linear_cases(draw):
    lead = tuple(draw(st.lists(st.integers(1, 3), min_size=0, max_size=2)))
    return lead, draw(st.integers(1, 4)), draw(st.integers(1, 4)), draw(st.booleans()), draw(seeds)


@settings(max_examples=30, deadline=None)
@given(case=linear_cases())
@example(case=((1,), 1, 1, True, 0))  # batch 1, one feature in and out
@example(case=((), 3, 2, True, 1))  # a single vector
@example(case=((2, 3), 4, 2, False, 2))  # leading axes, no bias
def test_linear(xp, case) -> None:
    lead, fin, fout, bias, seed = case
    rng = np.random.default_rng(seed)
    a, w = rng.standard_normal((*lead, fin)), rng.standard_normal((fout, fin))
    b = rng.standard_normal(fout) if bias else None
    ts = [_t(xp, v) for v in (a, w)] + ([_t(xp, b)] if bias else [])
    y = F.linear(*ts)
    np.testing.assert_allclose(y.numpy(), a @ w.T + (0 if b is None else b), rtol=1e-12, atol=1e-14)
    report = minise.gradcheck(F.linear, *ts)
    assert report.ok and len(report.inputs) == len(ts)


@requires_torch
@pytest.mark.torch
@settings(max_examples=25, deadline=None)
@given(case=linear_cases())
def test_linear_matches_torch(xp, case) -> None:
    import torch

    lead, fin, fout, bias, seed = case
    rng = np.random.default_rng(seed)
    arrays = [rng.standard_normal((*lead, fin)), rng.standard_normal((fout, fin))] + (
        [rng.standard_normal(fout)] if bias else []
    )
    ours = [_t(xp, v) for v in arrays]
    theirs = [torch.tensor(v, requires_grad=True) for v in arrays]
    y, ty = F.linear(*ours), torch.nn.functional.linear(*theirs)
    gy = rng.standard_normal(y.shape)
    y.backward(to_xp(xp, gy))
    ty.backward(torch.tensor(gy))
    np.testing.assert_allclose(y.numpy(), ty.detach().numpy(), rtol=1e-12, atol=1e-14)
    for o, t in zip(ours, theirs):
        np.testing.assert_allclose(backend.to_host(o.grad), t.grad.numpy(), rtol=1e-10, atol=1e-14)


# --------------------------------------------------------------------------------------------------
# dropout
# --------------------------------------------------------------------------------------------------
@settings(max_examples=20, deadline=None)
@given(shape=shapes(min_dims=1, max_dims=3, max_side=4), p=st.sampled_from([0.1, 0.5, 0.9]), seed=seeds)
def test_dropout_gradcheck_with_a_fixed_mask(xp, shape, p: float, seed: int) -> None:
    """Reseeding before each call draws the same mask, so dropout is a fixed linear map that gradcheck can test."""

    def fn(t):
        minise.manual_seed(seed)
        return F.dropout(t, p=p, training=True)

    assert minise.gradcheck(fn, _t(xp, normal(seed, shape))).ok


@pytest.mark.parametrize("p", [0.2, 0.5, 0.8])
def test_dropout_zeroes_a_fraction_p_and_scales_the_rest(xp, p: float) -> None:
    a = np.random.default_rng(0).uniform(1.0, 2.0, (200, 500))  # no zeros of its own
    x = _t(xp, a)
    minise.manual_seed(1)
    y = F.dropout(x, p=p)
    out = y.numpy()
    kept = out != 0
    assert abs(1 - kept.mean() - p) < 0.01
    np.testing.assert_allclose(out[kept], a[kept] / (1 - p), rtol=1e-12)
    assert abs(out.mean() / a.mean() - 1) < 0.02  # inverted dropout keeps the expectation
    gy = np.random.default_rng(2).standard_normal(a.shape)
    y.backward(to_xp(xp, gy))
    np.testing.assert_allclose(backend.to_host(x.grad), np.where(kept, gy / (1 - p), 0.0), rtol=1e-12)


def test_dropout_same_seed_same_mask() -> None:
    a = np.ones((50, 50))
    minise.manual_seed(3)
    first = F.dropout(minise.Tensor(a), 0.5).numpy()
    minise.manual_seed(3)
    second = F.dropout(minise.Tensor(a), 0.5).numpy()
    third = F.dropout(minise.Tensor(a), 0.5).numpy()
    np.testing.assert_array_equal(first, second)
    assert not np.array_equal(second, third)


def test_dropout_identity_cases(xp) -> None:
    a = normal(0, (3, 4))
    x = _t(xp, a)
    assert F.dropout(x, 0.5, training=False) is x
    assert F.dropout(x, 0.0) is x
    y = F.dropout(x, 1.0)
    np.testing.assert_array_equal(y.numpy(), np.zeros_like(a))
    y.backward(to_xp(xp, np.ones_like(a)))
    np.testing.assert_array_equal(backend.to_host(x.grad), np.zeros_like(a))
