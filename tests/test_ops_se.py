"""squeeze_excite, the SE block as one op with a hand-derived backward: equal, in value and in every
gradient (input, w1, b1, w2, b2), to the same block composed from primitive ops; proven by gradcheck;
held to a NumPy formula and to PyTorch. Its inner relu is kinked at 0, so drawn cases keep the hidden
pre-activation away from 0 (strategies.SECase), and the kink's side is tested on its own."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import requires_torch, to_xp
from hypothesis import example, given, settings
from strategies import SECase, se_cases

import minise
import minise.functional as F
from minise import backend

NAMES = ("x", "w1", "b1", "w2", "b2")


def se_composed(x, w1, b1, w2, b2):
    """The same block from primitives: squeeze, linear, relu, linear, sigmoid, scale."""
    n, c = x.shape[:2]
    s = F.global_avg_pool2d(x)  # (N, C)
    h = F.relu(F.linear(s, w1, b1))  # (N, R)
    e = F.sigmoid(F.linear(h, w2, b2))  # (N, C)
    return x * e.reshape(n, c, 1, 1)


def se_numpy(x, w1, b1, w2, b2):
    s = x.mean(axis=(2, 3))
    h = np.maximum(s @ w1.T + (0 if b1 is None else b1), 0)
    e = 1 / (1 + np.exp(-(h @ w2.T + (0 if b2 is None else b2))))
    return x * e[:, :, None, None]


def _tensors(xp, arrays):
    return [
        None if arrays[k] is None else minise.Tensor(to_xp(xp, arrays[k].copy()), requires_grad=True) for k in NAMES
    ]


BATCH_1 = SECase(n=1, c=4, r=2, h=3, w=3, seed=1)
ONE_CHANNEL = SECase(n=2, c=1, r=1, h=2, w=3, seed=2)
SPATIAL_1X1 = SECase(n=3, c=3, r=2, h=1, w=1, seed=3)
NO_BIASES = SECase(n=2, c=4, r=3, h=2, w=2, biases=False, seed=4)
WIDE_HIDDEN = SECase(n=2, c=2, r=4, h=2, w=1, seed=5)  # R > C is allowed


def with_corner_examples(test):
    for case in (BATCH_1, ONE_CHANNEL, SPATIAL_1X1, NO_BIASES, WIDE_HIDDEN):
        test = example(case=case)(test)
    return test


def test_cases_keep_the_inner_relu_away_from_its_kink() -> None:
    for seed in range(20):
        a = SECase(n=3, c=4, r=3, h=2, w=2, seed=seed).arrays()
        a1 = a["x"].mean(axis=(2, 3)) @ a["w1"].T + a["b1"]
        assert np.abs(a1).min() >= 1e-2


@settings(max_examples=40, deadline=None)
@given(case=se_cases())
@with_corner_examples
def test_squeeze_excite_equals_composed_block(xp, case: SECase) -> None:
    a = case.arrays()
    fused, composed = _tensors(xp, a), _tensors(xp, a)
    y = F.squeeze_excite(*fused)
    y_ref = se_composed(*composed)
    np.testing.assert_allclose(y.numpy(), y_ref.numpy(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(y.numpy(), se_numpy(*(a[k] for k in NAMES)), rtol=1e-10, atol=1e-10)
    gy = to_xp(xp, np.random.default_rng(case.seed).standard_normal(y.shape))
    y.backward(gy)
    y_ref.backward(gy)
    for name, t, r in zip(NAMES, fused, composed):
        if t is None:
            assert r is None
            continue
        assert t.grad is not None and t.grad.shape == t.shape, name
        np.testing.assert_allclose(
            backend.to_host(t.grad), backend.to_host(r.grad), rtol=1e-10, atol=1e-10, err_msg=name
        )


@settings(max_examples=30, deadline=None)
@given(case=se_cases())
@with_corner_examples
def test_squeeze_excite_gradcheck(xp, case: SECase) -> None:
    inputs = _tensors(xp, case.arrays())
    report = minise.gradcheck(F.squeeze_excite, *inputs)
    assert report.ok and [r.index for r in report.inputs] == [i for i, t in enumerate(inputs) if t is not None]


def test_squeeze_excite_without_biases_equals_passing_zero_biases(xp) -> None:
    a = NO_BIASES.arrays()
    x, w1, _, w2, _ = _tensors(xp, a)
    y = F.squeeze_excite(x, w1, None, w2, None)
    zeros = {"b1": np.zeros(NO_BIASES.r), "b2": np.zeros(NO_BIASES.c)}
    y0 = F.squeeze_excite(*_tensors(xp, {**a, **zeros}))
    np.testing.assert_array_equal(y.numpy(), y0.numpy())
    assert minise.gradcheck(lambda x, w1, w2: F.squeeze_excite(x, w1, None, w2, None), x, w1, w2).ok


def test_inner_relu_switched_off_blocks_the_first_layer(xp) -> None:
    """With b1 far below 0 every hidden unit is off: y = x * sigmoid(b2), and w1, b1, w2 get zero gradient."""
    case = SECase(n=2, c=3, r=2, h=2, w=2, seed=6)
    a = case.arrays()
    a["b1"] = np.full(case.r, -100.0)
    x, w1, b1, w2, b2 = _tensors(xp, a)
    y = F.squeeze_excite(x, w1, b1, w2, b2)
    np.testing.assert_allclose(y.numpy(), a["x"] / (1 + np.exp(-a["b2"]))[None, :, None, None], rtol=1e-12)
    y.backward(to_xp(xp, np.random.default_rng(0).standard_normal(y.shape)))
    for t in (w1, b1, w2):
        assert not np.any(backend.to_host(t.grad))
    assert np.any(backend.to_host(b2.grad)) and np.any(backend.to_host(x.grad))


@requires_torch
@pytest.mark.torch
@settings(max_examples=30, deadline=None)
@given(case=se_cases())
@with_corner_examples
def test_squeeze_excite_matches_torch(xp, case: SECase) -> None:
    import torch
    import torch.nn.functional as TF

    a = case.arrays()
    inputs = _tensors(xp, a)
    y = F.squeeze_excite(*inputs)
    gy = np.random.default_rng(case.seed).standard_normal(y.shape)
    y.backward(to_xp(xp, gy))
    t = {k: None if a[k] is None else torch.tensor(a[k], requires_grad=True) for k in NAMES}
    h = TF.relu(TF.linear(t["x"].mean(dim=(2, 3)), t["w1"], t["b1"]))
    ty = t["x"] * torch.sigmoid(TF.linear(h, t["w2"], t["b2"]))[:, :, None, None]
    ty.backward(torch.tensor(gy))
    np.testing.assert_allclose(y.numpy(), ty.detach().numpy(), rtol=1e-10, atol=1e-12)
    for name, ours in zip(NAMES, inputs):
        if ours is not None:
            theirs = t[name].grad.numpy()
            np.testing.assert_allclose(backend.to_host(ours.grad), theirs, rtol=1e-9, atol=1e-12, err_msg=name)
