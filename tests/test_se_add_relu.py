"""squeeze_excite_add_relu, relu(SE(x) + r) as one op (the end of an SE residual block): gradcheck over drawn
cases and the corner cases, equality with relu(squeeze_excite(...) + r) in value and every gradient, torch
in float64, the models' use of it, clear errors, and planted mistakes the checks catch."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
from conftest import requires_torch, to_xp
from hypothesis import example, given, settings
from strategies import SECase, se_cases

import minise
import minise.functional as F
from minise import backend
from minise.functional.squeeze_excite import squeeze_excite_add_relu
from minise.models import create

se_module = importlib.import_module("minise.functional.squeeze_excite")  # (F.squeeze_excite is the function)

NAMES = ("x", "w1", "b1", "w2", "b2", "r")

BATCH_1 = SECase(n=1, c=4, r=2, h=3, w=3, seed=1)
ONE_CHANNEL = SECase(n=2, c=1, r=1, h=2, w=3, seed=2)
SPATIAL_1X1 = SECase(n=3, c=3, r=2, h=1, w=1, seed=3)
NO_BIASES = SECase(n=2, c=4, r=3, h=2, w=2, biases=False, seed=4)


def se_numpy(x, w1, b1, w2, b2):  # type: ignore[no-untyped-def]
    s = x.mean(axis=(2, 3))
    h = np.maximum(s @ w1.T + (0 if b1 is None else b1), 0)
    e = 1 / (1 + np.exp(-(h @ w2.T + (0 if b2 is None else b2))))
    return x * e[:, :, None, None]


def _arrays(case: SECase, margin: float = 1e-2, shift: float = 0.0) -> dict[str, np.ndarray | None]:
    """The SE case's arrays plus a residual r (normal, plus ``shift``: a negative shift clips more outputs),
    nudged so that every x * e + r is at least ``margin`` from the output ReLU's kink (the case itself keeps
    the inner ReLU away from its kink)."""
    a = case.arrays()
    pre = se_numpy(a["x"], a["w1"], a["b1"], a["w2"], a["b2"])
    r = np.random.default_rng(case.seed + 7).standard_normal(pre.shape) + shift
    r += np.where(np.abs(pre + r) < margin, 0.1, 0.0)
    assert np.abs(pre + r).min() >= margin
    return {**a, "r": r}


def _tensors(xp, arrays):  # type: ignore[no-untyped-def]
    return [
        None if arrays[k] is None else minise.Tensor(to_xp(xp, arrays[k].copy()), requires_grad=True) for k in NAMES
    ]


def with_corner_examples(test):  # type: ignore[no-untyped-def]
    for case in (BATCH_1, ONE_CHANNEL, SPATIAL_1X1, NO_BIASES):
        test = example(case=case)(test)
    return test


@settings(max_examples=30, deadline=None)
@given(case=se_cases())
@with_corner_examples
def test_squeeze_excite_add_relu_gradcheck(xp, case: SECase) -> None:
    tensors = _tensors(xp, _arrays(case))
    report = minise.gradcheck(squeeze_excite_add_relu, *tensors)
    assert report.ok and len(report.inputs) == (6 if case.biases else 4)


@settings(max_examples=30, deadline=None)
@given(case=se_cases())
@with_corner_examples
def test_squeeze_excite_add_relu_equals_the_two_ops(xp, case: SECase) -> None:
    arrays = _arrays(case)
    gy = np.random.default_rng(case.seed + 1).standard_normal(arrays["x"].shape)
    results = []
    for fn in (squeeze_excite_add_relu, lambda x, w1, b1, w2, b2, r: F.relu(F.squeeze_excite(x, w1, b1, w2, b2) + r)):
        tensors = _tensors(xp, arrays)
        y = fn(*tensors)
        y.backward(to_xp(xp, gy))
        results.append([y.numpy()] + [None if t is None else backend.to_host(t.grad) for t in tensors])
    for got, want in zip(*results, strict=True):
        if want is not None:
            np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(
        results[0][0],
        np.maximum(se_numpy(*(arrays[k] for k in NAMES[:5])) + arrays["r"], 0),
        rtol=1e-12,
        atol=1e-12,
    )


@requires_torch
@settings(max_examples=15, deadline=None)
@given(case=se_cases())
@with_corner_examples
def test_squeeze_excite_add_relu_matches_torch(case: SECase) -> None:
    import torch

    arrays = _arrays(case)
    gy = np.random.default_rng(case.seed + 2).standard_normal(arrays["x"].shape)
    tensors = _tensors(np, arrays)
    y = squeeze_excite_add_relu(*tensors)
    y.backward(gy)
    tt = {k: None if v is None else torch.tensor(v, requires_grad=True) for k, v in arrays.items()}
    s = tt["x"].mean(dim=(2, 3))
    h = torch.relu(torch.nn.functional.linear(s, tt["w1"], tt["b1"]))
    e = torch.sigmoid(torch.nn.functional.linear(h, tt["w2"], tt["b2"]))
    ty = torch.relu(tt["x"] * e[:, :, None, None] + tt["r"])
    ty.backward(torch.tensor(gy))
    np.testing.assert_allclose(y.numpy(), ty.detach().numpy(), rtol=1e-10, atol=1e-12)
    for name, t in zip(NAMES, tensors, strict=True):
        if t is not None:
            np.testing.assert_allclose(t.grad, tt[name].grad.numpy(), rtol=1e-10, atol=1e-12, err_msg=name)


def test_a_missing_relu_mask_in_the_backward_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """The backward without the output ReLU's mask (g = gy) fails gradcheck on the inputs it reaches."""
    # the body writes gy itself into the result (backend.elementwise hands it ``out``: a body must write there)
    monkeypatch.setattr(se_module, "_relu_grad", lambda gy, y, out=None: np.multiply(gy, 1, out=out))
    arrays = _arrays(SECase(n=3, c=4, r=2, h=3, w=3, seed=11), shift=-1.5)  # many outputs clipped
    report = minise.gradcheck(squeeze_excite_add_relu, *_tensors(np, arrays), raise_on_failure=False)
    assert [r.ok for r in report.inputs] == [False] * 6


def test_a_residual_gradient_left_unmasked_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """dr = gy instead of gy [y > 0] (the SE block's gradients still right): gradcheck fails on r alone."""
    real = se_module.SqueezeExciteAddReLUOp.backward

    def sloppy(self, gy):  # type: ignore[no-untyped-def]
        grads = real(self, gy)
        return (*grads[:5], gy)

    monkeypatch.setattr(se_module.SqueezeExciteAddReLUOp, "backward", sloppy)
    arrays = _arrays(SECase(n=3, c=4, r=2, h=3, w=3, seed=12), shift=-1.5)
    report = minise.gradcheck(squeeze_excite_add_relu, *_tensors(np, arrays), raise_on_failure=False)
    assert [r.ok for r in report.inputs] == [True] * 5 + [False]


def test_a_residual_of_another_shape_is_refused_in_one_clear_line() -> None:
    a = _arrays(SECase(n=2, c=4, r=2, h=3, w=3, seed=3))
    x, w1, b1, w2, b2, _ = _tensors(np, a)
    with pytest.raises(ValueError, match=r"squeeze_excite_add_relu: residual has shape \(2, 8, 3, 3\) but input"):
        squeeze_excite_add_relu(x, w1, b1, w2, b2, np.zeros((2, 8, 3, 3)))
    with pytest.raises(TypeError, match="squeeze_excite_add_relu"):
        squeeze_excite_add_relu(x, w1, b1, w2, b2, np.zeros((2, 4, 3, 3), np.float32))
    with pytest.raises(ValueError, match=r"squeeze_excite_add_relu: w1 has shape"):
        squeeze_excite_add_relu(x, np.zeros((2, 5)), b1, w2, b2, np.zeros((2, 4, 3, 3)))


def test_se_models_end_their_blocks_with_the_fused_op_unless_watched(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []
    for op in (se_module.SqueezeExciteOp, se_module.SqueezeExciteAddReLUOp):
        real = op.forward
        monkeypatch.setattr(op, "forward", lambda self, *a, _real=real: seen.append(self.name) or _real(self, *a))
    x = minise.Tensor(np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32))
    model = create("se_resnet20")
    model(x)
    assert seen == ["squeeze_excite_add_relu"] * 9
    seen.clear()
    model.layer2[1].se.register_forward_hook(lambda m, args, out: seen.append("hook"))
    model(x)
    assert seen.count("squeeze_excite_add_relu") == 8 and seen.count("squeeze_excite") == 1 and "hook" in seen
    seen.clear()
    for placement in ("pre", "post", "identity"):  # other placements: the SE block and add + ReLU stay apart
        create("se_resnet20", placement=placement)(x)
        assert seen == ["squeeze_excite"] * 9, placement
        seen.clear()
    monkeypatch.setenv("MINISE_FUSED", "0")
    model(x)
    assert seen.count("squeeze_excite") == 9 and seen.count("squeeze_excite_add_relu") == 0


def test_fused_and_unfused_se_models_train_alike(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two SGD steps of se_resnet20 in float64, with and without the fused ops: the same losses, the same
    gradients at the first step and the same parameters after the second."""
    from minise import optim

    rng = np.random.default_rng(0)
    x = minise.Tensor(rng.standard_normal((4, 3, 8, 8)))
    y = rng.integers(0, 10, 4)
    grads = []
    for fused in ("1", "0"):
        monkeypatch.setenv("MINISE_FUSED", fused)
        minise.manual_seed(0)
        model = create("se_resnet20", dtype=np.float64)
        opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        record = [loss.item()] + [p.grad.copy() for p in model.parameters()]
        opt.step()
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        grads.append(record + [loss.item()] + [p.data.copy() for p in model.parameters()])
    for got, want in zip(*grads, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
