"""conv2d_relu: convolution, bias and ReLU as one op (what conv + batch norm + ReLU become once the batch norm
is folded), on every convolution path: gradcheck, equality with relu(conv2d(...)), the chunked epilogue on
real sizes, the models' use of it, and a planted mistake the checks catch."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from conftest import to_xp
from hypothesis import example, given, settings
from strategies import ConvCase, conv_cases
from test_ops_conv import conv_tensors

import minise
import minise.functional as F
from minise import backend
from minise.functional import conv as conv_module
from minise.functional import fused
from minise.functional.conv import conv2d_relu, conv_algorithm
from minise.functional.fused import fold_batch_norm
from minise.models import create
from minise.nn import BatchNorm2d

PATHS = ["im2col", "rows", "winograd2", "parity"]  # forced where eligible (else im2col: choose_algorithm)

BATCH_1 = ConvCase(n=1, c=2, o=3, h=4, w=5, kernel=(3, 3), padding=(1, 1), seed=1)
ONE_CHANNEL = ConvCase(n=2, c=1, o=1, h=4, w=4, kernel=(3, 3), padding=(1, 1), seed=2)
SPATIAL_1X1 = ConvCase(n=2, c=3, o=2, h=1, w=1, kernel=(1, 1), seed=3)
STRIDED_NO_BIAS = ConvCase(n=2, c=2, o=3, h=5, w=6, kernel=(3, 3), stride=(2, 2), padding=(1, 1), bias=False, seed=4)
STRIDED_EVEN = ConvCase(n=2, c=2, o=3, h=6, w=4, kernel=(3, 3), stride=(2, 2), padding=(1, 1), seed=5)  # parity's


def _away_from_kink(case: ConvCase, margin: float = 1e-2) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The case's arrays, redrawn from the next seeds until every pre-activation conv2d(x, w) + b is at least
    ``margin`` from 0: gradcheck's steps (1e-4 here) must not carry an output across the ReLU's kink. Exact
    zeros are allowed: they are outputs that see only padding and no bias, which no input moves."""
    for k in range(200):
        x, w, b = dataclasses.replace(case, seed=case.seed + k).arrays()
        with minise.no_grad():
            pre = F.conv2d(x, w, b, **case.kwargs()).numpy()
        if not ((np.abs(pre) < margin) & (pre != 0)).any():
            return x, w, b
    raise RuntimeError("no draw away from the kink")  # pragma: no cover


@settings(max_examples=25, deadline=None)
@given(case=conv_cases(max_out=2))
@example(case=BATCH_1)
@example(case=ONE_CHANNEL)
@example(case=SPATIAL_1X1)
@example(case=STRIDED_NO_BIAS)
@example(case=STRIDED_EVEN)
@pytest.mark.parametrize("path", PATHS)
def test_conv2d_relu_gradcheck(xp, case: ConvCase, path: str) -> None:
    x, w, b = conv_tensors(xp, *_away_from_kink(case))
    with conv_algorithm(path):
        report = minise.gradcheck(lambda x, w, b: conv2d_relu(x, w, b, **case.kwargs()), x, w, b, eps=1e-4)
    assert report.ok and len(report.inputs) == (3 if case.bias else 2)


@settings(max_examples=25, deadline=None)
@given(case=conv_cases())
@example(case=BATCH_1)
@example(case=STRIDED_NO_BIAS)
@example(case=STRIDED_EVEN)
@pytest.mark.parametrize("path", PATHS)
def test_conv2d_relu_equals_the_two_ops(xp, case: ConvCase, path: str) -> None:
    """Output and every gradient equal relu(conv2d(...))'s, on the same path."""
    arrays = case.arrays()
    results = []
    with conv_algorithm(path):
        for fn in (conv2d_relu, lambda *a, **k: F.relu(F.conv2d(*a, **k))):
            x, w, b = conv_tensors(xp, *arrays)
            y = fn(x, w, b, **case.kwargs())
            gy = np.random.default_rng(case.seed + 1).standard_normal(y.shape)
            y.backward(to_xp(xp, gy))
            results.append([y.numpy()] + [None if t is None else backend.to_host(t.grad) for t in (x, w, b)])
    for got, want in zip(*results, strict=True):
        if want is not None:
            np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    ("shape", "out", "stride", "path"),
    [
        ((32, 16, 32, 32), 16, 1, "rows"),
        ((64, 64, 8, 8), 64, 1, "winograd2"),
        ((32, 16, 32, 32), 32, 2, "im2col"),
    ],
)
def test_conv2d_relu_in_chunks_equals_the_two_ops_in_float32(shape, out, stride, path) -> None:  # type: ignore[no-untyped-def]
    """Real sizes, many chunks on all cores: the epilogue adds the bias and clips each chunk exactly as the
    separate ops do (the same float32 operations in the same order: equal, not just close)."""
    rng = np.random.default_rng(0)
    x = minise.Tensor(rng.standard_normal(shape, dtype=np.float32), requires_grad=True)
    w = minise.Tensor(0.1 * rng.standard_normal((out, shape[1], 3, 3), dtype=np.float32), requires_grad=True)
    b = minise.Tensor(rng.standard_normal(out, dtype=np.float32), requires_grad=True)
    with conv_algorithm(path):
        y = conv2d_relu(x, w, b, stride=stride, padding=1)
        assert y.creator.algorithm == path  # type: ignore[union-attr]
        want = np.maximum(F.conv2d(x, w, b, stride=stride, padding=1).numpy(), 0)
        np.testing.assert_array_equal(y.numpy(), want)
        assert (y.numpy() == 0).mean() > 0.2  # the ReLU did clip
        gy = rng.standard_normal(y.shape, dtype=np.float32)
        y.backward(gy)
        got = [t.grad.copy() for t in (x, w, b)]
        for t in (x, w, b):
            t.grad = None
        F.conv2d(x, w, b, stride=stride, padding=1).backward(gy * (want > 0))
    for g, t in zip(got, (x, w, b), strict=True):
        np.testing.assert_array_equal(g, t.grad)


def test_a_missing_relu_mask_in_the_backward_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """conv2d_relu's backward without the ReLU's mask (g = gy) fails gradcheck on every input."""
    # the body writes gy itself into the result (backend.elementwise hands it ``out``: a body must write there)
    monkeypatch.setattr(conv_module, "_relu_grad", lambda gy, y, out=None: np.multiply(gy, 1, out=out))
    x, w, b = conv_tensors(
        np, *_away_from_kink(ConvCase(n=2, c=2, o=3, h=4, w=4, kernel=(3, 3), padding=(1, 1), seed=9))
    )
    report = minise.gradcheck(lambda x, w, b: conv2d_relu(x, w, b, padding=1), x, w, b, raise_on_failure=False)
    assert [r.ok for r in report.inputs] == [False, False, False]


def test_a_bias_left_out_of_the_fused_op_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fused op that clips but forgets the bias: the equality with the two ops fails."""
    real = conv_module.Conv2dOp.forward

    def no_bias(self, x, w, b):  # type: ignore[no-untyped-def]
        return real(self, x, w, None if self.relu else b)

    monkeypatch.setattr(conv_module.Conv2dOp, "forward", no_bias)
    with pytest.raises(AssertionError):
        test_conv2d_relu_in_chunks_equals_the_two_ops_in_float32((32, 16, 32, 32), 16, 1, "rows")


def test_folded_models_run_conv2d_relu_unless_watched(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fused, "_folding_pays", lambda *args: True)  # fold on the fly even for this small batch
    relus: list[bool] = []
    real = conv_module.Conv2dOp.forward
    monkeypatch.setattr(conv_module.Conv2dOp, "forward", lambda self, *a: relus.append(self.relu) or real(self, *a))
    model = create("se_resnet20")
    rng = np.random.default_rng(0)
    for bn in (m for m in model.modules() if isinstance(m, BatchNorm2d)):
        bn.running_mean[...] = rng.standard_normal(bn.num_features) * 0.1
        bn.running_var[...] = rng.uniform(0.5, 2.0, bn.num_features)
    x = minise.Tensor(rng.standard_normal((2, 3, 8, 8)).astype(np.float32))
    model.eval()
    with minise.no_grad(), fused.unfused():
        want = model(x).numpy()
    assert relus.count(True) == 0 and len(relus) == 21  # unfused: plain convolutions, batch norm separate
    relus.clear()
    folded = fold_batch_norm(model)
    with minise.no_grad():
        got = folded(x).numpy()
    assert relus.count(True) == 1 + 9 and len(relus) == 21  # the stem and every block's first convolution
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    relus.clear()
    with minise.no_grad():
        np.testing.assert_array_equal(model(x).numpy(), got)  # unfolded, in eval: folded for the call, the same
    assert relus.count(True) == 1 + 9 and len(relus) == 21
    relus.clear()
    seen: list[str] = []
    folded.layer1[0].conv1.register_forward_hook(lambda m, args, out: seen.append("conv1"))
    with minise.no_grad():
        folded(x)
    assert seen == ["conv1"] and relus.count(True) == 1 + 8  # a watched convolution is called as itself
    relus.clear()
    monkeypatch.setenv("MINISE_FUSED", "0")
    with minise.no_grad():
        folded(x)
    assert relus.count(True) == 0
    assert fused.fusion_enabled() is False


@pytest.mark.parametrize("plane_bytes", [0, 1 << 20], ids=["bias-view", "bias-plane"])
@pytest.mark.parametrize("path", PATHS)
def test_the_epilogues_bias_as_a_plane_or_a_view(monkeypatch: pytest.MonkeyPatch, plane_bytes: int, path: str) -> None:
    """The epilogue adds the bias as a (1, O, OH*OW) plane (cpu.channel_plane) or, over PLANE_BYTES, a (1, O, 1)
    view: both give the naive loop's max(conv + b, 0)."""
    from test_ops_conv import naive_conv2d  # noqa: PLC0415

    monkeypatch.setattr(fused.cpu, "PLANE_BYTES", plane_bytes)
    case = STRIDED_EVEN if path == "parity" else BATCH_1
    x, w, b = case.arrays()
    with conv_algorithm(path):
        y = conv2d_relu(x, w, b, **case.kwargs()).numpy()
    want = np.maximum(naive_conv2d(x, w, b, stride=case.stride, padding=(1, 1)), 0)
    np.testing.assert_allclose(y, want, rtol=1e-12, atol=1e-12)
