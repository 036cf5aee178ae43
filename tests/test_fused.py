"""Fused passes: batch norm + ReLU and add + ReLU equal the two ops they replace (forward, gradients, running
statistics) and pass gradcheck and PyTorch; folding batch norm into the convolutions keeps a model's logits;
the models use the fused ops; and planted mistakes are caught."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import requires_torch, to_xp
from hypothesis import example, given, settings
from strategies import BatchNormCase, batch_norm_cases

import minise
import minise.functional as F
from minise import backend
from minise.functional import fused
from minise.functional.fused import add_relu, batch_norm_relu, fold_batch_norm
from minise.models import create
from minise.nn import BatchNorm2d


def _away_from_kink(case: BatchNormCase, training: bool, margin: float = 1e-3) -> dict[str, np.ndarray | None]:
    """The case's arrays with x nudged so that every batch-norm output is at least ``margin`` from relu's kink.

    Gradcheck perturbs x by 1e-6; an output that close to 0 would cross the kink. The arrays are redrawn from
    the next seeds until none is (a handful of draws at most)."""
    for k in range(100):
        arrays = BatchNormCase(case.shape, case.affine, case.momentum, case.eps, case.seed + k).arrays()
        x = arrays["x"]
        axes = (0, *range(2, x.ndim))
        mu, var = (x.mean(axis=axes), x.var(axis=axes)) if training else (arrays["running_mean"], arrays["running_var"])
        shape = (1, -1) + (1,) * (x.ndim - 2)
        xhat = (x - mu.reshape(shape)) / np.sqrt(var.reshape(shape) + case.eps)
        w = 1.0 if arrays["weight"] is None else arrays["weight"].reshape(shape)
        b = 0.0 if arrays["bias"] is None else arrays["bias"].reshape(shape)
        if np.abs(w * xhat + b).min() >= margin:
            return arrays
    raise RuntimeError("no draw away from the kink")  # pragma: no cover


BATCH_1 = BatchNormCase(shape=(1, 3, 2, 2), seed=1)
ONE_CHANNEL = BatchNormCase(shape=(3, 1, 2, 3), seed=2)
SPATIAL_1X1 = BatchNormCase(shape=(4, 2, 1, 1), affine=False, seed=3)


def _tensors(xp, arrays):  # type: ignore[no-untyped-def]
    t = {
        k: None if v is None else minise.Tensor(to_xp(xp, v.copy()), requires_grad=k in ("x", "weight", "bias"))
        for k, v in arrays.items()
    }
    for k in ("running_mean", "running_var"):
        t[k] = to_xp(xp, arrays[k].copy())
    return t


# --------------------------------------------------------------------------------------------------
# batch norm + ReLU
# --------------------------------------------------------------------------------------------------
@settings(max_examples=30, deadline=None)
@given(case=batch_norm_cases(ndim=4))
@example(case=BATCH_1)
@example(case=ONE_CHANNEL)
@example(case=SPATIAL_1X1)
@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_relu_gradcheck(xp, case: BatchNormCase, training: bool) -> None:
    arrays = _away_from_kink(case, training)
    t = _tensors(xp, arrays)

    def fn(x, weight, bias):  # type: ignore[no-untyped-def]
        rm, rv = t["running_mean"].copy(), t["running_var"].copy()  # fresh statistics for every evaluation
        return batch_norm_relu(x, rm, rv, weight, bias, training, case.momentum, case.eps)

    report = minise.gradcheck(fn, t["x"], t["weight"], t["bias"])
    assert report.ok and len(report.inputs) == (3 if case.affine else 1)


@settings(max_examples=30, deadline=None)
@given(case=batch_norm_cases())
@example(case=BATCH_1)
@example(case=SPATIAL_1X1)
@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_relu_equals_the_two_ops(xp, case: BatchNormCase, training: bool) -> None:
    """Output, every gradient and the updated running statistics equal relu(batch_norm(...))'s."""
    arrays = case.arrays()
    gy = np.random.default_rng(case.seed + 1).standard_normal(case.shape)
    results = []
    for fn in (batch_norm_relu, lambda *a: F.relu(F.batch_norm(*a))):
        t = _tensors(xp, arrays)
        y = fn(t["x"], t["running_mean"], t["running_var"], t["weight"], t["bias"], training, case.momentum, case.eps)
        y.backward(to_xp(xp, gy))
        grads = [None if t[k] is None else backend.to_host(t[k].grad) for k in ("x", "weight", "bias")]
        results.append([y.numpy(), *grads, backend.to_host(t["running_mean"]), backend.to_host(t["running_var"])])
    for got, want in zip(*results, strict=True):
        if want is not None:
            np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_batch_norm_relu_float32_equals_the_two_ops() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 8, 6, 6)).astype(np.float32)
    gy = rng.standard_normal(x.shape).astype(np.float32)
    out = []
    for fn in (batch_norm_relu, lambda *a: F.relu(F.batch_norm(*a))):
        bn = BatchNorm2d(8)
        xt = minise.Tensor(x.copy(), requires_grad=True)
        y = fn(xt, bn.running_mean, bn.running_var, bn.weight, bn.bias, True)
        y.backward(gy)
        assert y.dtype == np.float32 and xt.grad.dtype == np.float32
        out.append([y.numpy(), xt.grad, bn.weight.grad, bn.bias.grad])
    for got, want in zip(*out, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@requires_torch
@pytest.mark.torch
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("case", [BATCH_1, ONE_CHANNEL, SPATIAL_1X1, BatchNormCase((5, 4, 3, 2), seed=7)])
def test_batch_norm_relu_matches_torch(case: BatchNormCase, training: bool) -> None:
    import torch  # noqa: PLC0415

    a = case.arrays()
    gy = np.random.default_rng(case.seed).standard_normal(case.shape)
    t = _tensors(np, a)
    y = batch_norm_relu(t["x"], t["running_mean"], t["running_var"], t["weight"], t["bias"], training, 0.1, case.eps)
    y.backward(gy)
    xt = torch.tensor(a["x"], requires_grad=True)
    wt = None if a["weight"] is None else torch.tensor(a["weight"], requires_grad=True)
    bt = None if a["bias"] is None else torch.tensor(a["bias"], requires_grad=True)
    rm, rv = torch.tensor(a["running_mean"]), torch.tensor(a["running_var"])
    yt = torch.relu(torch.nn.functional.batch_norm(xt, rm, rv, wt, bt, training, 0.1, case.eps))
    yt.backward(torch.tensor(gy))
    np.testing.assert_allclose(y.numpy(), yt.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(t["x"].grad, xt.grad.numpy(), rtol=1e-9, atol=1e-11)
    if wt is not None:
        np.testing.assert_allclose(t["weight"].grad, wt.grad.numpy(), rtol=1e-9, atol=1e-11)
        np.testing.assert_allclose(t["bias"].grad, bt.grad.numpy(), rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(t["running_mean"], rm.numpy(), rtol=1e-12)
    np.testing.assert_allclose(t["running_var"], rv.numpy(), rtol=1e-12)


def test_batch_norm_relu_errors_are_batch_norms() -> None:
    x = minise.Tensor(np.zeros((2, 3, 4, 4)))
    with pytest.raises(ValueError, match=r"batch_norm: weight has shape \(4,\) but input \(2, 3, 4, 4\) has 3"):
        batch_norm_relu(x, None, None, np.ones(4), np.zeros(3), training=True)
    with pytest.raises(ValueError, match=r"batch_norm: evaluation \(training=False\) needs running_mean"):
        batch_norm_relu(x, None, None)


# --------------------------------------------------------------------------------------------------
# add + ReLU
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (3, 2, 4, 5), (2, 7)])
def test_add_relu_gradcheck_and_equals_the_two_ops(xp, shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(len(shape))
    a = rng.standard_normal(shape)
    b = rng.standard_normal(shape)
    b += np.where(np.abs(a + b) < 1e-3, 1e-2, 0.0)  # away from the kink
    ta, tb = (minise.Tensor(to_xp(xp, v.copy()), requires_grad=True) for v in (a, b))
    assert minise.gradcheck(add_relu, ta, tb).ok
    gy = rng.standard_normal(shape)
    ta.grad = tb.grad = None
    y = add_relu(ta, tb)
    y.backward(to_xp(xp, gy))
    np.testing.assert_array_equal(y.numpy(), np.maximum(a + b, 0))
    np.testing.assert_array_equal(backend.to_host(ta.grad), gy * (a + b > 0))
    np.testing.assert_array_equal(backend.to_host(tb.grad), gy * (a + b > 0))


def test_add_relu_with_broadcasting_falls_back_to_the_two_ops() -> None:
    a = minise.Tensor(np.array([[-1.0, 2.0]]), requires_grad=True)
    b = minise.Tensor(np.array([[0.5], [3.0]]), requires_grad=True)
    y = add_relu(a, b)
    y.backward(np.ones((2, 2)))
    np.testing.assert_array_equal(y.numpy(), [[0.0, 2.5], [2.0, 5.0]])
    np.testing.assert_array_equal(a.grad, [[1.0, 2.0]])


# --------------------------------------------------------------------------------------------------
# models: fused in training, batch norm folded for evaluation
# --------------------------------------------------------------------------------------------------
def test_models_run_the_fused_ops_unless_watched(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []
    for op in (fused.BatchNormReLUOp, fused.AddReLUOp):
        real = op.forward
        monkeypatch.setattr(op, "forward", lambda self, *a, _real=real: seen.append(self.name) or _real(self, *a))
    model = create("resnet20")  # (SE models end their blocks with squeeze_excite_add_relu: test_se_add_relu.py)
    model(minise.Tensor(np.zeros((2, 3, 8, 8), np.float32)))
    assert seen.count("batch_norm_relu") == 1 + 9  # the stem and the first BN of each of the 9 blocks
    assert seen.count("add_relu") == 9
    seen.clear()
    block = model.layer1[0]
    calls: list[str] = []
    block.bn1.register_forward_hook(lambda m, args, out: calls.append("bn1"))
    block.relu.register_forward_hook(lambda m, args, out: calls.append("relu"))
    model(minise.Tensor(np.zeros((2, 3, 8, 8), np.float32)))
    assert calls == ["bn1", "relu", "relu"]  # a watched module is called as itself: its hooks see every call
    assert seen.count("batch_norm_relu") == 1 + 8 and seen.count("add_relu") == 8
    seen.clear()
    monkeypatch.setenv("MINISE_FUSED", "0")  # the switch for A/B measurements
    model(minise.Tensor(np.zeros((2, 3, 8, 8), np.float32)))
    assert seen == []


@pytest.mark.parametrize(("dtype", "tol"), [(np.float32, 1e-5), (np.float64, 1e-10)])
@pytest.mark.parametrize("name", ["se_resnet20", "resnet20"])
def test_folded_model_gives_the_same_logits(name: str, dtype, tol: float) -> None:  # type: ignore[no-untyped-def]
    model = create(name, dtype=dtype)
    rng = np.random.default_rng(0)
    for bn in (m for m in model.modules() if isinstance(m, BatchNorm2d)):  # statistics as after training
        bn.running_mean[...] = rng.standard_normal(bn.num_features) * 0.1
        bn.running_var[...] = rng.uniform(0.5, 2.0, bn.num_features)
        bn.weight.data[...] = rng.uniform(0.5, 1.5, bn.num_features)
        bn.bias.data[...] = rng.standard_normal(bn.num_features) * 0.1
    x = minise.Tensor(rng.standard_normal((4, 3, 16, 16)).astype(dtype))
    folded = fold_batch_norm(model)
    assert not any(isinstance(m, BatchNorm2d) for m in folded.modules())
    assert sum(isinstance(m, BatchNorm2d) for m in model.modules()) == 21  # stem, 2 per block, 2 projections
    assert model.training  # the original is untouched, still training, still with its BN layers
    with minise.no_grad():
        with fused.unfused():  # the reference: every batch norm as its own op (fused, eval folds on the fly)
            want = model.eval()(x).numpy()
        got = folded(x).numpy()
    assert got.dtype == dtype
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * np.abs(want).max())


def test_folding_without_the_mean_shift_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """A planted mistake (the bias a (c - mu) + beta written beta) makes the logits differ: the check bites."""
    real = fused.fold_conv_bn

    def forgetful(conv, bn):  # type: ignore[no-untyped-def]
        bn.running_mean[...] = 0
        real(conv, bn)

    monkeypatch.setattr(fused, "fold_conv_bn", forgetful)
    with pytest.raises(AssertionError):
        test_folded_model_gives_the_same_logits("resnet20", np.float64, 1e-10)


def test_a_missing_relu_mask_in_the_backward_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """batch_norm_relu's backward without the ReLU's mask (g = gy) fails gradcheck on every input."""
    monkeypatch.setattr(fused, "_masked", lambda g, y: g)
    t = _tensors(np, _away_from_kink(BatchNormCase((4, 2, 3, 3), seed=5), True))

    def fn(x, weight, bias):  # type: ignore[no-untyped-def]
        return batch_norm_relu(x, t["running_mean"].copy(), t["running_var"].copy(), weight, bias, True)

    report = minise.gradcheck(fn, t["x"], t["weight"], t["bias"], raise_on_failure=False)
    assert [r.ok for r in report.inputs] == [False, False, False]


# --------------------------------------------------------------------------------------------------
# evaluation under no_grad: batch norm folded into the convolution for each call
# --------------------------------------------------------------------------------------------------
def _trained_like(name: str, dtype=np.float32):  # type: ignore[no-untyped-def]
    model = create(name, dtype=dtype)
    rng = np.random.default_rng(1)
    for bn in (m for m in model.modules() if isinstance(m, BatchNorm2d)):
        bn.running_mean[...] = rng.standard_normal(bn.num_features) * 0.1
        bn.running_var[...] = rng.uniform(0.5, 2.0, bn.num_features)
        bn.weight.data[...] = rng.uniform(0.5, 1.5, bn.num_features)
        bn.bias.data[...] = rng.standard_normal(bn.num_features) * 0.1
    return model


@pytest.fixture
def always_fold(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fold wherever folding is allowed, whatever the batch: these tests use small inputs, where the rule of
    ``_folding_pays`` (tested on its own below) would leave the deep layers' batch norms alone."""
    monkeypatch.setattr(fused, "_folding_pays", lambda *args: True)


def _count_ops(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of the ops run from now on (batch norm, batch norm + ReLU, convolutions with their fused ReLU)."""
    from minise.functional import conv as conv_module
    from minise.functional.normalization import BatchNormOp

    seen: list[str] = []
    for op in (BatchNormOp, fused.BatchNormReLUOp, conv_module.Conv2dOp):
        real = op.forward

        def counted(self, *a, _real=real):  # type: ignore[no-untyped-def]
            seen.append("conv2d_relu" if getattr(self, "relu", False) else self.name)
            return _real(self, *a)

        monkeypatch.setattr(op, "forward", counted)
    return seen


@pytest.mark.parametrize(("dtype", "tol"), [(np.float32, 1e-5), (np.float64, 1e-10)])
@pytest.mark.parametrize("name", ["se_resnet20", "resnet50"])
def test_evaluation_without_gradients_folds_every_batch_norm_on_the_fly(
    monkeypatch: pytest.MonkeyPatch, always_fold: None, name: str, dtype, tol: float
) -> None:  # type: ignore[no-untyped-def]
    """model.eval() under no_grad runs no batch-norm op: each conv + BN (+ ReLU) is one convolution with the
    BN folded into its weights for the call; the logits are those of the unfused model, the model unchanged."""
    model = _trained_like(name, dtype).eval()
    size = 16 if name == "se_resnet20" else 32
    x = minise.Tensor(np.random.default_rng(2).standard_normal((2, 3, size, size)).astype(dtype))
    before = [p.data.copy() for p in model.parameters()]
    seen = _count_ops(monkeypatch)
    with minise.no_grad():
        with fused.unfused():
            want = model(x).numpy()
        bns = seen.count("batch_norm") + seen.count("batch_norm_relu")
        seen.clear()
        got = model(x).numpy()
    convs = sum(isinstance(m, minise.nn.Conv2d) for m in model.modules())
    assert bns == sum(isinstance(m, BatchNorm2d) for m in model.modules()) > 0
    assert "batch_norm" not in seen and "batch_norm_relu" not in seen
    assert len(seen) == convs and seen.count("conv2d_relu") > 0
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * np.abs(want).max())
    for p, b in zip(model.parameters(), before, strict=True):
        np.testing.assert_array_equal(p.data, b)  # folding for a call never touches the model


def test_no_folding_in_training_with_gradients_or_when_watched(
    monkeypatch: pytest.MonkeyPatch, always_fold: None
) -> None:
    """Where folding would be wrong or hide something, the batch norms run as themselves: in training (batch
    statistics), in evaluation with gradients on (the BN parameters need their gradients), and where a hook
    watches the batch norm."""
    model = _trained_like("resnet20")
    x = minise.Tensor(np.random.default_rng(3).standard_normal((2, 3, 8, 8)).astype(np.float32))
    seen = _count_ops(monkeypatch)
    with minise.no_grad():
        model.train()(x)
    assert seen.count("batch_norm") + seen.count("batch_norm_relu") == 21
    seen.clear()
    model.eval()
    y = model(x)  # gradients on
    y.sum().backward()
    assert seen.count("batch_norm") + seen.count("batch_norm_relu") == 21
    assert model.bn1.weight.grad is not None
    seen.clear()
    model.layer1[0].bn2.register_forward_hook(lambda m, args, out: seen.append("hook"))
    with minise.no_grad():
        model(x)
    assert seen.count("hook") == 1 and seen.count("batch_norm") == 1  # only the watched one runs as itself


def test_a_fold_that_forgets_the_mean_is_caught_in_evaluation(monkeypatch: pytest.MonkeyPatch) -> None:
    """A planted mistake in the on-the-fly folding (the running mean taken as 0) makes evaluation differ from
    the unfused model: the check above bites."""
    real = fused.folded_conv_parameters

    class NoMean:
        def __init__(self, bn):  # type: ignore[no-untyped-def]
            self.weight, self.bias, self.running_var, self.eps = bn.weight, bn.bias, bn.running_var, bn.eps
            self.running_mean = bn.running_mean * 0

    monkeypatch.setattr(fused, "folded_conv_parameters", lambda w, c, bn: real(w, c, NoMean(bn)))
    monkeypatch.setattr(fused, "_folding_pays", lambda *args: True)
    with pytest.raises(AssertionError):
        test_evaluation_without_gradients_folds_every_batch_norm_on_the_fly(
            monkeypatch, None, "se_resnet20", np.float64, 1e-10
        )


def test_folding_for_a_call_only_where_it_pays() -> None:
    """Folding costs passes over the weight and saves one over the output: it is done where the output has at
    least as many values per channel as the weight (n OH OW >= C/groups KH KW)."""
    from minise.nn import Conv2d

    conv3 = Conv2d(512, 512, 3, padding=1, bias=False)  # ResNet-50's last stage: 4,608 weights per channel
    assert not fused._folding_pays((1, 512, 7, 7), conv3.weight.shape, conv3)  # 49 outputs per channel
    assert fused._folding_pays((128, 512, 7, 7), conv3.weight.shape, conv3)  # 6,272
    conv16 = Conv2d(16, 16, 3, padding=1, bias=False)  # se_resnet20's first stage: 144 weights per channel
    assert fused._folding_pays((1, 16, 32, 32), conv16.weight.shape, conv16)
    strided = Conv2d(16, 32, 3, stride=2, padding=1, groups=2, bias=False)  # 72 weights, 4 x 4 outputs
    assert not fused._folding_pays((4, 16, 8, 8), strided.weight.shape, strided)  # 64 < 72
    assert fused._folding_pays((5, 16, 8, 8), strided.weight.shape, strided)  # 80 >= 72
    # where it does not pay, the batch norm runs as itself, and the logits are the same
    model = _trained_like("resnet50").eval()
    x = minise.Tensor(np.random.default_rng(4).standard_normal((1, 3, 32, 32)).astype(np.float32))
    with minise.no_grad():
        with fused.unfused():
            want = model(x).numpy()
        got = model(x).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("bias", [False, True])
def test_conv_bn_folds_biased_grouped_dilated_strided_convolutions(
    monkeypatch: pytest.MonkeyPatch, always_fold: None, bias: bool
) -> None:
    from minise.nn import Conv2d

    rng = np.random.default_rng(5)
    conv = Conv2d(4, 6, 3, stride=2, padding=2, dilation=2, groups=2, bias=bias, dtype=np.float64)
    bn = BatchNorm2d(6, dtype=np.float64).eval()
    bn.running_mean[...] = rng.standard_normal(6)
    bn.running_var[...] = rng.uniform(0.5, 2.0, 6)
    bn.weight.data[...] = rng.uniform(0.5, 1.5, 6)
    bn.bias.data[...] = rng.standard_normal(6)
    x = minise.Tensor(rng.standard_normal((3, 4, 9, 8)))
    seen = _count_ops(monkeypatch)
    with minise.no_grad():
        got = fused.conv_bn(conv, bn, x)
        got_relu = fused.conv_bn_relu(conv, bn, minise.nn.ReLU(), x)
        assert seen == ["conv2d", "conv2d_relu"]  # one convolution each, no batch-norm op
        want = bn(conv(x))
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(got_relu.numpy(), np.maximum(want.numpy(), 0), rtol=1e-10, atol=1e-10)


def test_batch_norms_that_do_not_fit_the_convolution_are_not_folded_and_say_why(always_fold: None) -> None:
    """A batch norm of another width or dtype than its convolution is not folded (the broadcast would hide the
    mistake): it runs as itself and its own check names the problem."""
    from minise.nn import Conv2d

    x = minise.Tensor(np.ones((2, 3, 4, 4), np.float32))
    with minise.no_grad():
        with pytest.raises(ValueError, match="batch_norm"):
            fused.conv_bn(Conv2d(3, 4, 3), BatchNorm2d(5).eval(), x)
        with pytest.raises(TypeError, match="batch_norm"):
            fused.conv_bn(Conv2d(3, 4, 3), BatchNorm2d(4, dtype=np.float64).eval(), x)
