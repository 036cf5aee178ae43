"""conv2d: every gradient proven (gradcheck over drawn cases), the forward and backward held equal to a
naive loop over output pixels and to PyTorch, and every internal path of the backward exercised:
stride 1 (the input gradient as a convolution with the flipped kernel, with padding or a crop),
stride > 1 (col2im), groups > 1, and the batch cut into chunks run on one or two threads."""

from __future__ import annotations

import threading
import time
import types

import numpy as np
import pytest
from conftest import non_contiguous_leaf, requires_torch, to_xp
from hypothesis import example, given, settings
from hypothesis import strategies as st
from strategies import ConvCase, conv_cases

import minise
import minise.functional as F
from minise import backend, cpu
from minise.functional import conv as conv_module


# --------------------------------------------------------------------------------------------------
# the naive reference: a loop over output pixels
# --------------------------------------------------------------------------------------------------
def _patch(xpad: np.ndarray, i: int, j: int, w_shape, stride, dilation) -> tuple[slice, slice]:
    _, _, kh, kw = w_shape
    (sh, sw), (dh, dw) = stride, dilation
    return slice(i * sh, i * sh + dh * (kh - 1) + 1, dh), slice(j * sw, j * sw + dw * (kw - 1) + 1, dw)


def naive_conv2d(x, w, b, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1) -> np.ndarray:
    """y[n, o, i, j] = b[o] + sum over the window of output pixel (i, j) of x_pad * W[o]."""
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    xpad = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    oh, ow = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (wd + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    og = o // groups
    y = np.zeros((n, o, oh, ow))
    for i in range(oh):
        for j in range(ow):
            rows, cols = _patch(xpad, i, j, w.shape, stride, dilation)
            for oc in range(o):
                g = oc // og
                window = xpad[:, g * cg : (g + 1) * cg, rows, cols]  # (N, Cg, KH, KW)
                y[:, oc, i, j] = (window * w[oc]).sum(axis=(1, 2, 3))
    if b is not None:
        y += b.reshape(1, o, 1, 1)
    return y


def naive_conv2d_grads(x, w, gy, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1):
    """dx, dW, db of <conv2d(x, W, b), gy>: the same loop run backwards, adding into each window."""
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    ph, pw = padding
    xpad = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    dxpad = np.zeros_like(xpad)
    dw = np.zeros_like(w)
    og = o // groups
    for i in range(gy.shape[2]):
        for j in range(gy.shape[3]):
            rows, cols = _patch(xpad, i, j, w.shape, stride, dilation)
            for oc in range(o):
                g = oc // og
                gs = gy[:, oc, i, j][:, None, None, None]  # (N, 1, 1, 1)
                dw[oc] += (xpad[:, g * cg : (g + 1) * cg, rows, cols] * gs).sum(axis=0)
                dxpad[:, g * cg : (g + 1) * cg, rows, cols] += gs * w[oc]
    return dxpad[:, :, ph : ph + h, pw : pw + wd], dw, gy.sum(axis=(0, 2, 3))


def conv_tensors(xp, *arrays, requires_grad=True):  # type: ignore[no-untyped-def]
    """Tensors on ``xp`` of copies of the host arrays (None stays None): x, W, b of a case."""
    return [None if a is None else minise.Tensor(to_xp(xp, a.copy()), requires_grad=requires_grad) for a in arrays]


def run_conv(xp, case: ConvCase, algorithm: str, gy: np.ndarray):  # type: ignore[no-untyped-def]
    """y, dx, dW, db (db None without a bias) of conv2d on ``case`` under ``algorithm``, as host arrays."""
    x, w, b = conv_tensors(xp, *case.arrays())
    with conv_module.conv_algorithm(algorithm):
        y = F.conv2d(x, w, b, **case.kwargs())
        y.backward(to_xp(xp, gy))
    host = backend.to_host
    return host(y.data), host(x.grad), host(w.grad), None if b is None else host(b.grad)


def assert_matches_naive_loop(case: ConvCase, gy: np.ndarray, results) -> None:  # type: ignore[no-untyped-def]
    """y, dx, dW and db (db where the case has a bias) from ``run_conv`` equal the naive loop's to 1e-10."""
    xa, wa, ba = case.arrays()
    y, *grads = results
    np.testing.assert_allclose(y, naive_conv2d(xa, wa, ba, **case.kwargs()), rtol=1e-10, atol=1e-10)
    for got, want in zip(grads, naive_conv2d_grads(xa, wa, gy, **case.kwargs()), strict=True):
        if got is not None:
            np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)


def assert_matches_naive_loop_and_im2col(xp, case: ConvCase, gy: np.ndarray, results) -> None:  # type: ignore[no-untyped-def]
    """``assert_matches_naive_loop``, and y, dx, dW, db equal the im2col path's on the same backend to 1e-10:
    what every other convolution algorithm (kernel rows, Winograd, parity planes) is held to."""
    assert_matches_naive_loop(case, gy, results)
    for got, want in zip(results, run_conv(xp, case, "im2col", gy), strict=True):
        if want is not None:
            np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)


def assert_conv_matches_torch_float64(case: ConvCase, algorithm: str, gy: np.ndarray) -> None:
    """conv2d under ``algorithm`` equals torch.nn.functional.conv2d in float64: y, dx, dW and db to 1e-10."""
    import torch  # noqa: PLC0415

    xa, wa, ba = case.arrays()
    y, dx, dw, db = run_conv(np, case, algorithm, gy)
    xt, wt = torch.tensor(xa, requires_grad=True), torch.tensor(wa, requires_grad=True)
    bt = None if ba is None else torch.tensor(ba, requires_grad=True)
    yt = torch.nn.functional.conv2d(xt, wt, bt, **case.kwargs())
    yt.backward(torch.tensor(gy))
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(dw, wt.grad.numpy(), rtol=1e-10, atol=1e-10)
    if bt is not None:
        np.testing.assert_allclose(db, bt.grad.numpy(), rtol=1e-10, atol=1e-10)


def float32_errors(x, w, gy, algorithms, **conv_kwargs) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """Per algorithm, the worst |float32 - float64| / max |float64| over y, dx and dW, against float64 im2col."""

    def run(dtype, algorithm):  # type: ignore[no-untyped-def]
        xt, wt = minise.tensor(x.astype(dtype), requires_grad=True), minise.tensor(w.astype(dtype), requires_grad=True)
        with conv_module.conv_algorithm(algorithm):
            y = F.conv2d(xt, wt, **conv_kwargs)
            y.backward(gy.astype(dtype))
        return [np.asarray(a, dtype=np.float64) for a in (y.data, xt.grad, wt.grad)]

    exact = run(np.float64, "im2col")
    return {
        a: max(float(np.abs(g - e).max() / np.abs(e).max()) for g, e in zip(run(np.float32, a), exact, strict=True))
        for a in algorithms
    }


def _conv_fn(case: ConvCase):
    return lambda x, w, b: F.conv2d(x, w, b, **case.kwargs())


# explicit corner cases (also used as @examples below)
BATCH_1 = ConvCase(n=1, c=2, o=3, h=4, w=5, kernel=(3, 2), stride=(1, 2), padding=(1, 0), seed=1)
ONE_CHANNEL = ConvCase(n=2, c=1, o=1, h=4, w=4, kernel=(2, 2), padding=(1, 1), seed=2)
SPATIAL_1X1 = ConvCase(n=2, c=3, o=2, h=1, w=1, kernel=(1, 1), seed=3)
SPATIAL_1X1_PADDED = ConvCase(n=2, c=2, o=2, h=1, w=1, kernel=(3, 3), padding=(1, 1), seed=4)
KERNEL_EQUALS_PADDED_INPUT = ConvCase(n=2, c=2, o=2, h=3, w=2, kernel=(3, 2), padding=(1, 0), dilation=(2, 1), seed=5)
CROP = ConvCase(n=2, c=2, o=2, h=3, w=3, kernel=(1, 2), padding=(2, 2), seed=6)  # padding > d(K-1) in both axes
GROUPS_STRIDED = ConvCase(n=2, c=6, o=3, h=5, w=6, kernel=(3, 3), stride=(2, 3), padding=(1, 2), groups=3, seed=7)
CORNER_CASES = [BATCH_1, ONE_CHANNEL, SPATIAL_1X1, SPATIAL_1X1_PADDED, KERNEL_EQUALS_PADDED_INPUT, CROP, GROUPS_STRIDED]


def test_corner_cases_are_what_they_claim() -> None:
    assert BATCH_1.n == 1
    assert ONE_CHANNEL.c == ONE_CHANNEL.o == 1
    assert (SPATIAL_1X1.h, SPATIAL_1X1.w) == (1, 1) and SPATIAL_1X1.out_hw == (1, 1)
    k = KERNEL_EQUALS_PADDED_INPUT
    spans = [k.dilation[i] * (k.kernel[i] - 1) + 1 for i in range(2)]
    assert spans == [k.h + 2 * k.padding[0], k.w + 2 * k.padding[1]] and k.out_hw == (1, 1)
    assert all(CROP.padding[i] > CROP.dilation[i] * (CROP.kernel[i] - 1) for i in range(2))


# --------------------------------------------------------------------------------------------------
# gradients proven by finite differences
# --------------------------------------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(case=conv_cases(max_out=2))
@example(case=BATCH_1)
@example(case=ONE_CHANNEL)
@example(case=SPATIAL_1X1)
@example(case=SPATIAL_1X1_PADDED)
@example(case=KERNEL_EQUALS_PADDED_INPUT)
@example(case=CROP)
@example(case=GROUPS_STRIDED)
def test_conv2d_gradcheck(xp, case: ConvCase) -> None:
    x, w, b = conv_tensors(xp, *case.arrays())
    report = minise.gradcheck(_conv_fn(case), x, w, b)
    assert report.ok and len(report.inputs) == (3 if case.bias else 2)


@pytest.mark.parametrize(
    "needs", [(True, False, False), (False, True, False), (False, False, True), (True, True, False)]
)
@pytest.mark.parametrize("case", [CROP, GROUPS_STRIDED, KERNEL_EQUALS_PADDED_INPUT], ids=["crop", "strided", "fill"])
def test_conv2d_gradcheck_on_a_subset_of_inputs(xp, case: ConvCase, needs) -> None:
    """Backward skips what no input needs: each gradient on its own is still right."""
    arrays = case.arrays()
    x, w, b = [minise.Tensor(to_xp(xp, a.copy()), requires_grad=r) for a, r in zip(arrays, needs)]
    report = minise.gradcheck(_conv_fn(case), x, w, b)
    assert [r.index for r in report.inputs] == [i for i, r in enumerate(needs) if r]


# --------------------------------------------------------------------------------------------------
# forward and backward against the naive loop
# --------------------------------------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(case=conv_cases())
@example(case=BATCH_1)
@example(case=ONE_CHANNEL)
@example(case=SPATIAL_1X1)
@example(case=KERNEL_EQUALS_PADDED_INPUT)
@example(case=CROP)
def test_conv2d_matches_naive_loop(xp, case: ConvCase) -> None:
    xa, wa, ba = case.arrays()
    x, w, b = conv_tensors(xp, xa, wa, ba)
    y = F.conv2d(x, w, b, **case.kwargs())
    assert y.shape == (case.n, case.o, *case.out_hw)
    kw = case.kwargs()
    np.testing.assert_allclose(y.numpy(), naive_conv2d(xa, wa, ba, **kw), rtol=1e-12, atol=1e-12)
    gy = np.random.default_rng(case.seed + 1).standard_normal(y.shape)
    y.backward(to_xp(xp, gy))
    dx, dw, db = naive_conv2d_grads(xa, wa, gy, case.stride, case.padding, case.dilation, case.groups)
    np.testing.assert_allclose(backend.to_host(x.grad), dx, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(backend.to_host(w.grad), dw, rtol=1e-12, atol=1e-12)
    if case.bias:
        np.testing.assert_allclose(backend.to_host(b.grad), db, rtol=1e-12, atol=1e-12)


@settings(max_examples=30, deadline=None)
@given(case=conv_cases(), block=st.integers(1, 3))
@example(case=GROUPS_STRIDED, block=2)
@example(case=CROP, block=1)
def test_conv2d_in_column_blocks_matches_naive_loop(case: ConvCase, block: int) -> None:
    """The GEMMs cut into blocks of a few output columns (as cpu.gemm_columns does for OpenBLAS's
    small-matrix kernels, forced here to 1-3 columns) give the same forward and gradients."""
    xa, wa, ba = case.arrays()
    x, w, b = conv_tensors(np, xa, wa, ba)
    widths: list[int] = []

    def blocks(xp, m, k, n):  # type: ignore[no-untyped-def]
        widths.append(n)
        return min(block, n)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(conv_module.cpu, "gemm_columns", blocks)
        mp.setattr(conv_module, "_one_gemm", lambda m, length, n: False)  # per-image GEMMs, cut into blocks
        y = F.conv2d(x, w, b, **case.kwargs())
        gy = np.random.default_rng(case.seed + 1).standard_normal(y.shape)
        y.backward(gy)
    assert widths  # every GEMM asked for its block width
    np.testing.assert_allclose(y.numpy(), naive_conv2d(xa, wa, ba, **case.kwargs()), rtol=1e-12, atol=1e-12)
    dx, dw, db = naive_conv2d_grads(xa, wa, gy, case.stride, case.padding, case.dilation, case.groups)
    np.testing.assert_allclose(x.grad, dx, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(w.grad, dw, rtol=1e-12, atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(case=conv_cases(max_padding=3), out_given=st.booleans())
def test_col2im_is_the_adjoint_of_im2col(case: ConvCase, out_given: bool) -> None:
    """<im2col(x), c> = <x, col2im(c)> for drawn shapes, strides, paddings (up to 3, so whole kernel rows can
    fall into the padding) and dilations, in float64; with ``out=`` a buffer of NaNs is overwritten, not added to."""
    from minise.functional.im2col import col2im, im2col

    rng = np.random.default_rng(case.seed)
    x = rng.standard_normal((case.n, case.c, case.h, case.w))
    args = (case.kernel, case.stride, case.padding, case.dilation)
    cols = im2col(x, *args)
    c = rng.standard_normal(cols.shape)
    out = np.full(x.shape, np.nan) if out_given else None
    back = col2im(c, x.shape, *args, out=out)
    assert back.shape == x.shape and (out is None or back is out)
    np.testing.assert_allclose(np.sum(cols * c), np.sum(x * back), rtol=1e-12, atol=1e-12)
    # and element by element: the transpose of the 0/1 matrix that im2col applies
    basis = np.zeros(x.size)
    for idx in rng.choice(x.size, size=min(5, x.size), replace=False):
        basis[:] = 0
        basis[idx] = 1
        np.testing.assert_allclose(back.reshape(-1)[idx], np.sum(im2col(basis.reshape(x.shape), *args) * c), atol=1e-12)


def test_col2im_checker_bites_on_a_dropped_offset(monkeypatch: pytest.MonkeyPatch) -> None:
    """The adjoint check fails for a col2im that skips one kernel offset (a planted mistake)."""
    from minise.functional import im2col as im2col_module

    real_inside = im2col_module._inside
    calls = [0]

    def planted(start: int, step: int, count: int, size: int) -> tuple[int, int]:
        calls[0] += 1
        first, last = real_inside(start, step, count, size)
        return (first, first) if calls[0] == 3 else (first, last)  # the third offset adds nothing

    monkeypatch.setattr(im2col_module, "_inside", planted)
    case = ConvCase(n=2, c=2, o=1, h=5, w=6, kernel=(3, 3), stride=(2, 1), padding=(1, 1), seed=3)
    with pytest.raises(AssertionError):
        test_col2im_is_the_adjoint_of_im2col.hypothesis.inner_test(case=case, out_given=True)


def test_a_strided_convolution_keeps_its_columns_for_the_weight_gradient(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stride 2: the forward's columns, chunk by chunk (three chunks here), serve the weight gradient (im2col runs
    once per chunk, not twice) with the same gradients as building them again; nothing is kept under no_grad,
    for a frozen weight (Winograd's transformed input neither), or at stride 1."""
    calls = []
    real = conv_module.im2col
    monkeypatch.setattr(conv_module, "im2col", lambda *a: calls.append(a[2]) or real(*a))
    monkeypatch.setattr(cpu, "chunk_size", lambda xp, n, *a, **k: 2)  # 5 images: chunks 0-2, 2-4, 4-5
    kept_by_save = []
    real_save = conv_module.Conv2dOp.save
    monkeypatch.setattr(conv_module.Conv2dOp, "save", lambda op, *t: kept_by_save.append(t[2]) or real_save(op, *t))
    rng = np.random.default_rng(0)
    x = minise.Tensor(rng.standard_normal((5, 2, 7, 6)), requires_grad=True)
    w = minise.Tensor(rng.standard_normal((4, 2, 3, 3)), requires_grad=True)
    y = F.conv2d(x, w, stride=2, padding=1)
    assert set(kept_by_save[-1]) == {(0, 2), (2, 4), (4, 5)} and calls == [(2, 2)] * 3
    gy = rng.standard_normal(y.shape)
    y.backward(gy)
    assert len(calls) == 3  # the backward built no columns
    _, dw, _ = naive_conv2d_grads(x.data, w.data, gy, (2, 2), (1, 1))
    np.testing.assert_allclose(w.grad, dw, rtol=1e-12, atol=1e-12)
    calls.clear()
    y2 = F.conv2d(x, w, stride=2, padding=1)
    y2.creator.saved = (*y2.creator.saved[:2], None, *y2.creator.saved[3:])  # as if nothing had been kept
    x.grad = w.grad = None
    y2.backward(gy)
    assert len(calls) == 6  # built again in the backward: the same gradient
    np.testing.assert_allclose(w.grad, dw, rtol=1e-12, atol=1e-12)
    with minise.no_grad():
        F.conv2d(x, w, stride=2, padding=1)
    assert kept_by_save[-1] is None
    F.conv2d(x, minise.Tensor(w.data), stride=2, padding=1)  # a frozen weight: no dW, so no columns kept
    assert kept_by_save[-1] is None
    F.conv2d(x, w, stride=1, padding=1)
    assert kept_by_save[-1] is None
    with conv_module.conv_algorithm("winograd4"):  # Winograd's V, the same rule: kept only for a dW
        F.conv2d(x, w, padding=1)
        assert kept_by_save[-1] is not None
        F.conv2d(x, minise.Tensor(w.data), padding=1)
        assert kept_by_save[-1] is None


def test_gemm_columns_keeps_each_product_within_the_small_kernel_bound() -> None:
    """Blocks of a power of two with M*K*block <= 10^6, at least 16 wide, only when that cuts the columns."""
    assert cpu.gemm_columns(np, 16, 144, 1024) == 256  # the 16-channel 3x3 layer of a CIFAR ResNet
    assert cpu.gemm_columns(np, 32, 288, 256) == 64
    assert cpu.gemm_columns(np, 64, 576, 64) == 16
    assert cpu.gemm_columns(np, 16, 144, 200) == 200  # 256 would not cut 200 columns: one product
    assert cpu.gemm_columns(np, 512, 4608, 49) == 49  # a block would be under 16 columns: one product
    for m, k, n in [(16, 144, 1024), (32, 288, 256), (64, 576, 64), (3, 5, 100_000)]:
        width = cpu.gemm_columns(np, m, k, n)
        assert width == n or (m * k * width <= cpu.SMALL_GEMM_MNK and width & (width - 1) == 0)
    assert cpu.gemm_columns(types.ModuleType("fake_xp"), 16, 144, 1024) == 1024  # a GPU: one product


def test_naive_loop_is_a_convolution() -> None:
    """The reference itself, on a case worked by hand: a 2x2 kernel of ones sums each 2x2 window."""
    x = np.arange(9.0).reshape(1, 1, 3, 3)
    y = naive_conv2d(x, np.ones((1, 1, 2, 2)), np.array([0.5]))
    np.testing.assert_array_equal(
        y[0, 0], [[0 + 1 + 3 + 4 + 0.5, 1 + 2 + 4 + 5 + 0.5], [3 + 4 + 6 + 7 + 0.5, 4 + 5 + 7 + 8 + 0.5]]
    )
    dx, dw, db = naive_conv2d_grads(x, np.ones((1, 1, 2, 2)), np.ones((1, 1, 2, 2)))
    np.testing.assert_array_equal(dx[0, 0], [[1, 2, 1], [2, 4, 2], [1, 2, 1]])
    np.testing.assert_array_equal(db, [4.0])


# --------------------------------------------------------------------------------------------------
# the internal paths of the backward, each by name
# --------------------------------------------------------------------------------------------------
PATHS = {
    # name: (case, the input-gradient path, whether the transposed convolution crops gy)
    "stride1-padded": (
        ConvCase(n=2, c=2, o=3, h=5, w=4, kernel=(3, 2), padding=(1, 0), dilation=(2, 1)),
        "flip",
        False,
    ),
    "stride1-crop": (CROP, "flip", True),
    "stride1-crop-one-axis": (ConvCase(n=2, c=2, o=2, h=4, w=3, kernel=(3, 1), padding=(1, 2)), "flip", True),
    "stride1-groups": (ConvCase(n=2, c=4, o=6, h=4, w=4, kernel=(2, 3), padding=(1, 1), groups=2), "flip", False),
    "stride1-depthwise": (ConvCase(n=2, c=3, o=3, h=4, w=5, kernel=(3, 3), padding=(2, 1), groups=3), "flip", False),
    "stride2-col2im": (
        ConvCase(n=2, c=2, o=3, h=6, w=7, kernel=(3, 3), stride=(2, 2), padding=(1, 1)),
        "col2im",
        False,
    ),
    "stride-1x2-col2im": (
        ConvCase(n=2, c=2, o=2, h=4, w=7, kernel=(2, 3), stride=(1, 2), padding=(1, 1)),
        "col2im",
        False,
    ),
    "stride3-dilated-col2im": (
        ConvCase(n=2, c=2, o=2, h=8, w=8, kernel=(2, 3), stride=(3, 3), padding=(2, 1), dilation=(2, 2)),
        "col2im",
        False,
    ),
    "stride2-groups-col2im": (GROUPS_STRIDED, "col2im", False),
}


@pytest.mark.parametrize("name", list(PATHS))
def test_backward_path(xp, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """Each path is taken where the docstring says (spied on), and agrees with the naive loop and gradcheck."""
    case, path, crops = PATHS[name]
    calls: dict[str, list] = {"flip": [], "col2im": [], "pad": []}
    real_flipped, real_col2im, real_chunk = conv_module._flipped, conv_module.col2im, conv_module._conv_chunk
    monkeypatch.setattr(conv_module, "_flipped", lambda *a: calls["flip"].append(a) or real_flipped(*a))
    monkeypatch.setattr(conv_module, "col2im", lambda *a, **k: calls["col2im"].append(a) or real_col2im(*a, **k))

    def chunk_spy(x, w, stride, padding, *rest):  # records the padding of every convolution run
        calls["pad"].append(padding)
        return real_chunk(x, w, stride, padding, *rest)

    monkeypatch.setattr(conv_module, "_conv_chunk", chunk_spy)

    xa, wa, ba = case.arrays()
    x, w, b = conv_tensors(xp, xa, wa, ba)
    y = F.conv2d(x, w, b, **case.kwargs())
    gy = np.random.default_rng(0).standard_normal(y.shape)
    y.backward(to_xp(xp, gy))
    assert calls[path], f"{name}: the {path} path was not taken"
    assert not calls["col2im" if path == "flip" else "flip"]
    if path == "flip":
        assert any(min(q) < 0 for q in calls["pad"]) == crops, calls["pad"]
    dx, dw, db = naive_conv2d_grads(xa, wa, gy, case.stride, case.padding, case.dilation, case.groups)
    np.testing.assert_allclose(backend.to_host(x.grad), dx, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(backend.to_host(w.grad), dw, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(backend.to_host(b.grad), db, rtol=1e-12, atol=1e-12)
    x2, w2, b2 = conv_tensors(xp, xa, wa, ba)
    assert minise.gradcheck(_conv_fn(case), x2, w2, b2).ok


# --------------------------------------------------------------------------------------------------
# chunks and threads
# --------------------------------------------------------------------------------------------------
def _spy_run_chunks(monkeypatch: pytest.MonkeyPatch) -> tuple[list[tuple[int, int]], set[str]]:
    """Record (batch, chunk size) of every run_chunks call and the threads the chunks ran on."""
    sizes: list[tuple[int, int]] = []
    threads: set[str] = set()
    real = cpu.run_chunks

    def spy(xp, batch, size, work):
        sizes.append((batch, size))

        def traced(a, z):
            threads.add(threading.current_thread().name)
            time.sleep(0.002)  # long enough that the pool's thread takes chunks before the caller has done them all
            return work(a, z)

        return real(xp, batch, size, traced)

    monkeypatch.setattr(cpu, "run_chunks", spy)
    return sizes, threads


CHUNK_CASES = {
    "stride1": ConvCase(n=5, c=2, o=3, h=5, w=5, kernel=(3, 3), padding=(1, 1), seed=11),
    "stride1-crop-groups": ConvCase(n=5, c=4, o=2, h=4, w=4, kernel=(1, 1), padding=(1, 1), groups=2, seed=12),
    "stride2": ConvCase(n=5, c=2, o=2, h=7, w=6, kernel=(3, 2), stride=(2, 2), padding=(1, 1), seed=13),
    "stride2-groups": ConvCase(
        n=5, c=6, o=3, h=5, w=5, kernel=(2, 2), stride=(2, 1), groups=3, dilation=(2, 1), seed=14
    ),
}


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("chunk", [1, 2])
@pytest.mark.parametrize("name", list(CHUNK_CASES))
def test_chunked_conv_matches_naive_loop(monkeypatch: pytest.MonkeyPatch, name: str, chunk: int, threads: int) -> None:
    """A batch of 5 cut into chunks of 1 or 2 images, run on 1 or 2 threads: same values as the loop."""
    case = CHUNK_CASES[name]
    monkeypatch.setenv("MINISE_NUM_THREADS", str(threads))
    monkeypatch.setattr(cpu, "chunk_size", lambda *args, **kwargs: chunk)
    sizes, names = _spy_run_chunks(monkeypatch)
    xa, wa, ba = case.arrays()
    x, w, b = conv_tensors(np, xa, wa, ba)
    y = F.conv2d(x, w, b, **case.kwargs())
    gy = np.random.default_rng(1).standard_normal(y.shape)
    y.backward(gy)
    assert sizes == [(5, chunk), (5, chunk)]  # forward and backward, each in ceil(5 / chunk) > 1 chunks
    if threads == 2 and cpu._find_openblas() is not None:
        assert any(n.startswith("minise") for n in names), names  # the chunks ran on the pool
    if threads == 1:
        assert names == {threading.current_thread().name}
    np.testing.assert_allclose(y.numpy(), naive_conv2d(xa, wa, ba, **case.kwargs()), rtol=1e-12, atol=1e-12)
    dx, dw, db = naive_conv2d_grads(xa, wa, gy, case.stride, case.padding, case.dilation, case.groups)
    np.testing.assert_allclose(x.grad, dx, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(w.grad, dw, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(b.grad, db, rtol=1e-12, atol=1e-12)


def test_chunked_conv_gradcheck(monkeypatch: pytest.MonkeyPatch) -> None:
    """gradcheck through the chunked, threaded path (chunks of one image on two threads)."""
    monkeypatch.setenv("MINISE_NUM_THREADS", "2")
    monkeypatch.setattr(cpu, "chunk_size", lambda *args, **kwargs: 1)
    for case in (CHUNK_CASES["stride1-crop-groups"], ConvCase(n=3, c=2, o=2, h=4, w=3, kernel=(2, 2), stride=(2, 1))):
        x, w, b = conv_tensors(np, *case.arrays())
        assert minise.gradcheck(_conv_fn(case), x, w, b).ok


def test_default_chunk_size_splits_the_batch_across_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unpatched but for the small-work rule: with two threads a batch of 6 is cut into chunks of at most 3,
    and the result is unchanged. (This case is far below ``cpu.MIN_PARALLEL_BYTES``, under which it would
    be one chunk on the calling thread.)"""
    monkeypatch.setenv("MINISE_NUM_THREADS", "2")
    monkeypatch.setattr(cpu, "MIN_PARALLEL_BYTES", 0)
    sizes, _ = _spy_run_chunks(monkeypatch)
    case = ConvCase(n=6, c=2, o=2, h=5, w=5, kernel=(3, 3), padding=(1, 1), seed=21)
    xa, wa, ba = case.arrays()
    x, w, b = conv_tensors(np, xa, wa, ba)
    y = F.conv2d(x, w, b, padding=1)
    y.backward(np.ones(y.shape))
    assert len(sizes) == 2 and all(1 <= size <= 3 for _, size in sizes)
    np.testing.assert_allclose(y.numpy(), naive_conv2d(xa, wa, ba, padding=(1, 1)), rtol=1e-12, atol=1e-12)
    dx, dw, _ = naive_conv2d_grads(xa, wa, np.ones(y.shape), padding=(1, 1))
    np.testing.assert_allclose(x.grad, dx, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(w.grad, dw, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------------------------------
# inputs that are views
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "stride"),
    [
        ("nhwc", 1),
        ("swap-hw", 2),
        ("fortran", 2),
        ("swap-hw", 1),
        ("fortran", 1),
    ],
)
def test_conv2d_input_gradient_of_a_non_contiguous_input(kind: str, stride: int) -> None:
    """conv2d of a non-contiguous input must get the same gradient as of a contiguous one.

    BUG (stride 1, layouts where H and W cannot merge): Conv2dOp.backward allocates
    ``dx = xp.empty_like(x)``, which copies x's memory layout; then ``dx[a:z]`` is not C-contiguous,
    ``_conv_chunk`` writes into ``out.reshape(n, o, -1)``, a temporary copy, and dx is left as
    uninitialised memory. Stride > 1 assigns ``dx[a:z] = col2im(...)`` and is right; an NHWC batch
    permuted to NCHW happens to work because its H and W axes still merge. Fix:
    ``xp.empty(x.shape, dtype=x.dtype)``.
    """
    rng = np.random.default_rng(0)
    x_nchw, w = rng.standard_normal((2, 3, 5, 4)), rng.standard_normal((2, 3, 3, 3))
    leaf, x, back = non_contiguous_leaf(x_nchw, kind)  # a view of another layout (conftest)
    assert not x.data.flags.c_contiguous
    y = F.conv2d(x, minise.Tensor(w), stride=stride, padding=1)
    np.testing.assert_allclose(y.numpy(), naive_conv2d(x_nchw, w, None, (stride, stride), (1, 1)), atol=1e-12)
    gy = rng.standard_normal(y.shape)
    y.backward(gy)
    dx, _, _ = naive_conv2d_grads(x_nchw, w, gy, (stride, stride), (1, 1))
    np.testing.assert_allclose(back(leaf.grad), dx, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------------------------------
# PyTorch
# --------------------------------------------------------------------------------------------------
@requires_torch
@pytest.mark.torch
@settings(max_examples=40, deadline=None)
@given(case=conv_cases())
@example(case=BATCH_1)
@example(case=SPATIAL_1X1_PADDED)
@example(case=KERNEL_EQUALS_PADDED_INPUT)
@example(case=CROP)
@example(case=GROUPS_STRIDED)
def test_conv2d_matches_torch(xp, case: ConvCase) -> None:
    import torch

    xa, wa, ba = case.arrays()
    x, w, b = conv_tensors(xp, xa, wa, ba)
    y = F.conv2d(x, w, b, **case.kwargs())
    gy = np.random.default_rng(case.seed).standard_normal(y.shape)
    y.backward(to_xp(xp, gy))
    tx, tw = torch.tensor(xa, requires_grad=True), torch.tensor(wa, requires_grad=True)
    tb = None if ba is None else torch.tensor(ba, requires_grad=True)
    ty = torch.nn.functional.conv2d(tx, tw, tb, **case.kwargs())
    ty.backward(torch.tensor(gy))
    np.testing.assert_allclose(y.numpy(), ty.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(backend.to_host(x.grad), tx.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(backend.to_host(w.grad), tw.grad.numpy(), rtol=1e-10, atol=1e-12)
    if tb is not None:
        np.testing.assert_allclose(backend.to_host(b.grad), tb.grad.numpy(), rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------------------------------
# small maps, many channels: one GEMM over all the images (conv._one_gemm)
# --------------------------------------------------------------------------------------------------
SMALL_MAPS = [
    ConvCase(n=4, c=8, o=24, h=2, w=2, kernel=(3, 3), padding=(1, 1), seed=1),  # L = 4 < 24
    ConvCase(n=3, c=6, o=16, h=4, w=4, kernel=(3, 3), stride=(2, 2), padding=(1, 1), seed=2),  # stride 2, L = 4
    ConvCase(n=2, c=8, o=24, h=3, w=3, kernel=(3, 3), padding=(1, 1), groups=2, bias=False, seed=3),  # L = 9 < 12
    ConvCase(n=5, c=4, o=9, h=1, w=1, kernel=(1, 1), seed=4),  # 1x1 maps: per image a matrix-vector product
]


def test_one_gemm_rule() -> None:
    assert conv_module._one_gemm(512, 1, 16) and conv_module._one_gemm(256, 64, 8)  # ResNet-18 stages 4 and 3
    assert not conv_module._one_gemm(16, 1024, 8) and not conv_module._one_gemm(64, 64, 8)  # CIFAR ResNets
    assert not conv_module._one_gemm(512, 1, 1)  # one image: nothing to gather


@pytest.mark.parametrize("case", SMALL_MAPS, ids=["2x2", "stride2", "groups", "1x1"])
def test_small_maps_one_gemm_matches_naive_loop_and_gradcheck(case: ConvCase) -> None:
    out = case.out_hw[0] * case.out_hw[1]
    assert conv_module._one_gemm(case.o // case.groups, out, case.n), "the case must take the one-GEMM path"
    xa, wa, ba = case.arrays()
    x, w, b = conv_tensors(np, xa, wa, ba)
    kw = case.kwargs()
    y = F.conv2d(x, w, b, **kw)
    np.testing.assert_allclose(y.numpy(), naive_conv2d(xa, wa, ba, **kw), rtol=1e-12, atol=1e-12)
    gy = np.random.default_rng(case.seed + 1).standard_normal(y.shape)
    y.backward(gy)
    dx, dw, _ = naive_conv2d_grads(xa, wa, gy, case.stride, case.padding, case.dilation, case.groups)
    np.testing.assert_allclose(x.grad, dx, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(w.grad, dw, rtol=1e-12, atol=1e-12)
    x2, w2, b2 = conv_tensors(np, xa, wa, ba)
    assert minise.gradcheck(_conv_fn(case), x2, w2, b2).ok
