"""Pooling: max_pool2d, avg_pool2d, global_avg_pool2d, adaptive_avg_pool2d.

Gradients proven by gradcheck over drawn kernels, strides and paddings; the forward and backward held
equal to a loop over output pixels and to PyTorch. max_pool2d is kinked where two values of a window
tie, so its drawn inputs have distinct values and the tie rule (the whole gradient to the FIRST
maximum in row-major window order, as PyTorch) is tested on its own.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import NON_CONTIGUOUS_LAYOUTS, non_contiguous_leaf, requires_torch, to_xp
from hypothesis import example, given, settings
from hypothesis import strategies as st
from strategies import PoolCase, pool_cases, seeds

import minise
import minise.functional as F
from minise import backend, cpu


# --------------------------------------------------------------------------------------------------
# naive references: loops over output pixels
# --------------------------------------------------------------------------------------------------
def _windows(case_shape, kernel, stride, padding):
    """Yield (i, j, rows, cols) of every output pixel: the slices of the padded input it reads."""
    _, _, h, w = case_shape
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    for i in range((h + 2 * ph - kh) // sh + 1):
        for j in range((w + 2 * pw - kw) // sw + 1):
            yield i, j, slice(i * sh, i * sh + kh), slice(j * sw, j * sw + kw)


def naive_max_pool2d(x, kernel, stride, padding, gy=None):
    """y, and (with gy) dx where each window hands gy to its first maximum in row-major order."""
    n, c, h, w = x.shape
    ph, pw = padding
    xpad = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=-np.inf)
    oh, ow = (h + 2 * ph - kernel[0]) // stride[0] + 1, (w + 2 * pw - kernel[1]) // stride[1] + 1
    y = np.empty((n, c, oh, ow))
    dxpad = np.zeros_like(xpad)
    for i, j, rows, cols in _windows(x.shape, kernel, stride, padding):
        for a in range(n):
            for b in range(c):
                window = xpad[a, b, rows, cols]
                k = int(np.argmax(window))  # np.argmax: the first occurrence, row-major
                y[a, b, i, j] = window.flat[k]
                if gy is not None:
                    r, s = divmod(k, kernel[1])
                    dxpad[a, b, rows.start + r, cols.start + s] += gy[a, b, i, j]
    return y, dxpad[:, :, ph : ph + h, pw : pw + w]


def naive_avg_pool2d(x, kernel, stride, padding, count_include_pad=True, gy=None):
    n, c, h, w = x.shape
    ph, pw = padding
    xpad = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    real = np.pad(np.ones((h, w)), ((ph, ph), (pw, pw)))  # 1 on real pixels, 0 on padding
    oh, ow = (h + 2 * ph - kernel[0]) // stride[0] + 1, (w + 2 * pw - kernel[1]) // stride[1] + 1
    y = np.empty((n, c, oh, ow))
    dxpad = np.zeros_like(xpad)
    for i, j, rows, cols in _windows(x.shape, kernel, stride, padding):
        count = kernel[0] * kernel[1] if count_include_pad else real[rows, cols].sum()
        y[:, :, i, j] = xpad[:, :, rows, cols].sum(axis=(2, 3)) / count
        if gy is not None:
            dxpad[:, :, rows, cols] += (gy[:, :, i, j] / count)[:, :, None, None]
    return y, dxpad[:, :, ph : ph + h, pw : pw + w]


def _tensor(xp, a):
    return minise.Tensor(to_xp(xp, a.copy()), requires_grad=True)


BATCH_1 = PoolCase(n=1, c=2, h=5, w=4, kernel=(3, 2), stride=(2, 1), padding=(1, 1), seed=1)
ONE_CHANNEL = PoolCase(n=2, c=1, h=4, w=4, kernel=(2, 2), stride=(2, 2), seed=2)
SPATIAL_1X1 = PoolCase(n=2, c=3, h=1, w=1, kernel=(1, 1), stride=(1, 1), seed=3)
KERNEL_EQUALS_PADDED_INPUT = PoolCase(n=2, c=2, h=2, w=1, kernel=(4, 3), stride=(1, 1), padding=(1, 1), seed=4)
OVERLAPPING = PoolCase(n=2, c=2, h=5, w=5, kernel=(3, 3), stride=(1, 2), padding=(1, 1), seed=5)


def test_corner_cases_are_what_they_claim() -> None:
    assert BATCH_1.n == 1 and ONE_CHANNEL.c == 1
    assert (SPATIAL_1X1.h, SPATIAL_1X1.w) == (1, 1) and SPATIAL_1X1.out_hw == (1, 1)
    k = KERNEL_EQUALS_PADDED_INPUT
    assert k.kernel == (k.h + 2 * k.padding[0], k.w + 2 * k.padding[1]) and k.out_hw == (1, 1)


CORNERS = (BATCH_1, ONE_CHANNEL, SPATIAL_1X1, KERNEL_EQUALS_PADDED_INPUT, OVERLAPPING)


def with_corner_examples(**extra):
    """Add an @example for each corner case (``extra``: values for the test's other drawn arguments)."""

    def add(test):
        for case in CORNERS:
            test = example(case=case, **extra)(test)
        return test

    return add


# --------------------------------------------------------------------------------------------------
# max_pool2d
# --------------------------------------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(case=pool_cases())
@with_corner_examples()
def test_max_pool2d_gradcheck(xp, case: PoolCase) -> None:
    x = _tensor(xp, case.x("distinct"))
    assert minise.gradcheck(lambda t: F.max_pool2d(t, case.kernel, case.stride, case.padding), x).ok


@settings(max_examples=40, deadline=None)
@given(case=pool_cases())
@with_corner_examples()
def test_max_pool2d_matches_naive_loop(xp, case: PoolCase) -> None:
    xa = case.x("distinct")
    x = _tensor(xp, xa)
    y = F.max_pool2d(x, case.kernel, case.stride, case.padding)
    gy = np.random.default_rng(case.seed).standard_normal(y.shape)
    y.backward(to_xp(xp, gy))
    y_ref, dx_ref = naive_max_pool2d(xa, case.kernel, case.stride, case.padding, gy)
    assert y.shape == (case.n, case.c, *case.out_hw)
    np.testing.assert_array_equal(y.numpy(), y_ref)
    np.testing.assert_allclose(backend.to_host(x.grad), dx_ref, rtol=1e-14, atol=1e-14)


def test_max_pool2d_ties_go_to_the_first_maximum() -> None:
    """All values equal: every window hands its whole gradient to its top-left pixel."""
    x = minise.Tensor(np.ones((1, 1, 3, 4)), requires_grad=True)
    y = F.max_pool2d(x, 2, stride=1)
    gy = np.arange(1.0, 7.0).reshape(1, 1, 2, 3)
    y.backward(gy)
    expected = np.zeros((3, 4))
    expected[:2, :3] = gy[0, 0]  # window (i, j) starts at pixel (i, j)
    np.testing.assert_array_equal(x.grad[0, 0], expected)


def test_max_pool2d_tie_in_row_major_order() -> None:
    """A tie between the top-right and the bottom-left of a 2x2 window: top-right comes first row-major."""
    x = minise.Tensor(np.array([[[[0.0, 5.0], [5.0, 1.0]]]]), requires_grad=True)
    F.max_pool2d(x, 2).backward(np.array([[[[3.0]]]]))
    np.testing.assert_array_equal(x.grad[0, 0], [[0.0, 3.0], [0.0, 0.0]])


@settings(max_examples=25, deadline=None)
@given(case=pool_cases(), levels=st.integers(1, 3))
def test_max_pool2d_ties_match_naive_first_maximum(case: PoolCase, levels: int) -> None:
    """Inputs with many ties (a few integer levels): the gradient goes where np.argmax (first) points."""
    xa = np.random.default_rng(case.seed).integers(0, levels, case.x_shape).astype(np.float64)
    x = minise.Tensor(xa, requires_grad=True)
    y = F.max_pool2d(x, case.kernel, case.stride, case.padding)
    gy = np.random.default_rng(case.seed + 1).standard_normal(y.shape)
    y.backward(gy)
    y_ref, dx_ref = naive_max_pool2d(xa, case.kernel, case.stride, case.padding, gy)
    np.testing.assert_array_equal(y.numpy(), y_ref)
    np.testing.assert_allclose(x.grad, dx_ref, rtol=1e-14, atol=1e-14)


# --------------------------------------------------------------------------------------------------
# avg_pool2d
# --------------------------------------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(case=pool_cases(), count_include_pad=st.booleans())
@with_corner_examples(count_include_pad=True)
def test_avg_pool2d_gradcheck(xp, case: PoolCase, count_include_pad: bool) -> None:
    x = _tensor(xp, case.x())
    fn = lambda t: F.avg_pool2d(t, case.kernel, case.stride, case.padding, count_include_pad=count_include_pad)
    assert minise.gradcheck(fn, x).ok


@settings(max_examples=40, deadline=None)
@given(case=pool_cases(), count_include_pad=st.booleans())
@with_corner_examples(count_include_pad=False)
def test_avg_pool2d_matches_naive_loop(xp, case: PoolCase, count_include_pad: bool) -> None:
    xa = case.x()
    x = _tensor(xp, xa)
    y = F.avg_pool2d(x, case.kernel, case.stride, case.padding, count_include_pad=count_include_pad)
    gy = np.random.default_rng(case.seed).standard_normal(y.shape)
    y.backward(to_xp(xp, gy))
    y_ref, dx_ref = naive_avg_pool2d(xa, case.kernel, case.stride, case.padding, count_include_pad, gy)
    np.testing.assert_allclose(y.numpy(), y_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(backend.to_host(x.grad), dx_ref, rtol=1e-12, atol=1e-12)


def test_avg_pool2d_count_include_pad_differs_at_the_border() -> None:
    """A 3x3 window over a padded corner sees 4 real ones: 4/9 counting the padding, 4/4 without."""
    x = np.ones((1, 1, 2, 2))
    with_pad = F.avg_pool2d(minise.Tensor(x), 3, stride=1, padding=1).numpy()
    without = F.avg_pool2d(minise.Tensor(x), 3, stride=1, padding=1, count_include_pad=False).numpy()
    np.testing.assert_allclose(with_pad[0, 0], np.full((2, 2), 4 / 9))
    np.testing.assert_allclose(without[0, 0], np.ones((2, 2)))


# --------------------------------------------------------------------------------------------------
# global and adaptive average pooling
# --------------------------------------------------------------------------------------------------
@st.composite
def image_shapes(draw, max_side: int = 4):
    return (
        draw(st.integers(1, 3)),
        draw(st.integers(1, 3)),
        draw(st.integers(1, max_side)),
        draw(st.integers(1, max_side)),
    )


@settings(max_examples=30, deadline=None)
@given(shape=image_shapes(), seed=seeds)
@example(shape=(1, 1, 1, 1), seed=0)
@example(shape=(1, 3, 4, 2), seed=1)
def test_global_avg_pool2d(xp, shape, seed: int) -> None:
    xa = np.random.default_rng(seed).standard_normal(shape)
    x = _tensor(xp, xa)
    y = F.global_avg_pool2d(x)
    assert y.shape == shape[:2]
    ref = np.array([[xa[n, c].sum() / (shape[2] * shape[3]) for c in range(shape[1])] for n in range(shape[0])])
    np.testing.assert_allclose(y.numpy(), ref, rtol=1e-12, atol=1e-14)
    assert minise.gradcheck(F.global_avg_pool2d, _tensor(xp, xa)).ok


@settings(max_examples=30, deadline=None)
@given(
    out=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    factor=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    seed=seeds,
)
@example(out=(1, 1), factor=(1, 1), seed=0)
@example(out=(1, 1), factor=(3, 2), seed=0)
def test_adaptive_avg_pool2d(xp, out, factor, seed: int) -> None:
    """Output 1x1 or an exact divisor of the input: the mean of each (H/OH) x (W/OW) block."""
    shape = (2, 2, out[0] * factor[0], out[1] * factor[1])
    xa = np.random.default_rng(seed).standard_normal(shape)
    y = F.adaptive_avg_pool2d(_tensor(xp, xa), out)
    ref = xa.reshape(2, 2, out[0], factor[0], out[1], factor[1]).mean(axis=(3, 5))
    np.testing.assert_allclose(y.numpy(), ref, rtol=1e-12, atol=1e-14)
    assert minise.gradcheck(lambda t: F.adaptive_avg_pool2d(t, out), _tensor(xp, xa)).ok


# --------------------------------------------------------------------------------------------------
# PyTorch
# --------------------------------------------------------------------------------------------------
@requires_torch
@pytest.mark.torch
@settings(max_examples=40, deadline=None)
@given(case=pool_cases(), ties=st.booleans(), count_include_pad=st.booleans())
@example(case=KERNEL_EQUALS_PADDED_INPUT, ties=False, count_include_pad=False)
@example(case=OVERLAPPING, ties=True, count_include_pad=False)
def test_pooling_matches_torch(xp, case: PoolCase, ties: bool, count_include_pad: bool) -> None:
    import torch
    import torch.nn.functional as TF

    rng = np.random.default_rng(case.seed)
    xa = rng.integers(0, 2, case.x_shape).astype(np.float64) if ties else case.x("distinct")
    k, st_, p = case.kernel, case.stride, case.padding
    for name in ("max", "avg"):
        x, tx = _tensor(xp, xa), torch.tensor(xa, requires_grad=True)
        if name == "max":
            y, ty = F.max_pool2d(x, k, st_, p), TF.max_pool2d(tx, k, st_, p)
        else:
            y = F.avg_pool2d(x, k, st_, p, count_include_pad=count_include_pad)
            ty = TF.avg_pool2d(tx, k, st_, p, count_include_pad=count_include_pad)
        gy = rng.standard_normal(y.shape)
        y.backward(to_xp(xp, gy))
        ty.backward(torch.tensor(gy))
        np.testing.assert_allclose(y.numpy(), ty.detach().numpy(), rtol=1e-12, atol=1e-14, err_msg=name)
        np.testing.assert_allclose(backend.to_host(x.grad), tx.grad.numpy(), rtol=1e-12, atol=1e-14, err_msg=name)


@requires_torch
@pytest.mark.torch
def test_global_and_adaptive_match_torch(xp) -> None:
    import torch
    import torch.nn.functional as TF

    xa = np.random.default_rng(0).standard_normal((2, 3, 6, 4))
    for out in [(1, 1), (3, 2), (2, 4), (6, 1)]:
        x = _tensor(xp, xa)
        y = F.adaptive_avg_pool2d(x, out)
        gy = np.random.default_rng(1).standard_normal(y.shape)
        y.backward(to_xp(xp, gy))
        tx = torch.tensor(xa, requires_grad=True)
        ty = TF.adaptive_avg_pool2d(tx, out)
        ty.backward(torch.tensor(gy))
        np.testing.assert_allclose(y.numpy(), ty.detach().numpy(), rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(backend.to_host(x.grad), tx.grad.numpy(), rtol=1e-12, atol=1e-14)
    y = F.global_avg_pool2d(minise.Tensor(to_xp(xp, xa)))
    np.testing.assert_allclose(y.numpy(), TF.adaptive_avg_pool2d(torch.tensor(xa), 1).numpy()[:, :, 0, 0], rtol=1e-12)


# --------------------------------------------------------------------------------------------------
# chunks, threads and memory layouts
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("chunk", [1, 2])
@pytest.mark.parametrize(
    "case", [OVERLAPPING, BATCH_1, PoolCase(n=5, c=2, h=7, w=6, kernel=(3, 2), stride=(2, 3), padding=(1, 1))]
)
def test_chunked_pooling_matches_naive_loop(
    monkeypatch: pytest.MonkeyPatch, case: PoolCase, chunk: int, threads: int
) -> None:
    """A batch cut into chunks of 1 or 2 images on 1 or 2 threads: the same values and gradients as the loops."""
    monkeypatch.setenv("MINISE_NUM_THREADS", str(threads))
    monkeypatch.setattr(cpu, "chunk_size", lambda *args, **kwargs: chunk)
    xa = case.x("distinct")
    gy = np.random.default_rng(0).standard_normal((case.n, case.c, *case.out_hw))
    for name in ("max", "avg"):
        x = minise.Tensor(xa.copy(), requires_grad=True)
        if name == "max":
            y = F.max_pool2d(x, case.kernel, case.stride, case.padding)
            y_ref, dx_ref = naive_max_pool2d(xa, case.kernel, case.stride, case.padding, gy)
        else:
            y = F.avg_pool2d(x, case.kernel, case.stride, case.padding)
            y_ref, dx_ref = naive_avg_pool2d(xa, case.kernel, case.stride, case.padding, True, gy)
        y.backward(gy)
        np.testing.assert_allclose(y.numpy(), y_ref, rtol=1e-12, atol=1e-14, err_msg=name)
        np.testing.assert_allclose(x.grad, dx_ref, rtol=1e-12, atol=1e-14, err_msg=name)


@pytest.mark.parametrize("layout", NON_CONTIGUOUS_LAYOUTS)
def test_pooling_of_a_non_contiguous_input(layout: str) -> None:
    """Pooling a view in another memory layout gives the values and gradients of the contiguous input."""
    case = PoolCase(n=2, c=3, h=5, w=4, kernel=(3, 2), stride=(2, 1), padding=(1, 1))
    xa = case.x("distinct")
    gy = np.random.default_rng(1).standard_normal((case.n, case.c, *case.out_hw))
    ops = {
        "max": lambda t: F.max_pool2d(t, case.kernel, case.stride, case.padding),
        "avg": lambda t: F.avg_pool2d(t, case.kernel, case.stride, case.padding, count_include_pad=False),
        "global": lambda t: F.global_avg_pool2d(t),
    }
    for name, op in ops.items():
        leaf, x, back = non_contiguous_leaf(xa, layout)
        ref = minise.Tensor(xa.copy(), requires_grad=True)
        y, y_ref = op(x), op(ref)
        g = gy if name != "global" else gy[:, :, 0, 0]
        y.backward(g)
        y_ref.backward(g)
        np.testing.assert_allclose(y.numpy(), y_ref.numpy(), rtol=1e-12, atol=1e-14, err_msg=name)
        np.testing.assert_allclose(back(leaf.grad), ref.grad, rtol=1e-12, atol=1e-14, err_msg=name)


@pytest.mark.parametrize(
    "kernel", [(15, 17), (16, 17)], ids=["255 offsets (uint8 argmax)", "272 offsets (int32 argmax)"]
)
def test_max_pool2d_large_kernels(xp, kernel: tuple[int, int]) -> None:
    """The winning offset is stored in the smallest integer type that holds KH*KW: both sides of 256 work."""
    case = PoolCase(n=2, c=2, h=kernel[0] + 2, w=kernel[1] + 1, kernel=kernel, stride=(1, 1), seed=9)
    xa = case.x("distinct")
    x = _tensor(xp, xa)
    y = F.max_pool2d(x, kernel, 1)
    gy = np.random.default_rng(2).standard_normal(y.shape)
    y.backward(to_xp(xp, gy))
    y_ref, dx_ref = naive_max_pool2d(xa, kernel, (1, 1), (0, 0), gy)
    np.testing.assert_array_equal(y.numpy(), y_ref)
    np.testing.assert_allclose(backend.to_host(x.grad), dx_ref, rtol=1e-14, atol=1e-14)
