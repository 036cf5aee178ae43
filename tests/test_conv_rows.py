"""Kernel-row GEMMs (``minise.functional.conv_rows``): the layout of the shifted rows, the forward and both
gradients against the naive loop, the im2col path, finite differences and PyTorch over drawn stride-1
cases (kernels 2-4, dilation 1-2, every padding 0..d(K-1)); its float32 error next to im2col's; the rule
that picks it; and planted mistakes the checks catch."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import requires_torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from strategies import ConvCase, seeds
from test_ops_conv import (
    assert_conv_matches_torch_float64,
    assert_matches_naive_loop,
    assert_matches_naive_loop_and_im2col,
    conv_tensors,
    float32_errors,
    naive_conv2d,
    run_conv,
)
from test_winograd import algo

import minise
import minise.functional as F
from minise import cpu
from minise.functional import conv_rows
from minise.functional.conv import conv_algorithm


# --------------------------------------------------------------------------------------------------
# the layout
# --------------------------------------------------------------------------------------------------
def test_shifted_rows_are_the_flat_map_shifted_by_each_kernel_column_with_wrapped_columns_zeroed() -> None:
    """Per kernel column j: the map (with p_h zero rows above and below) read flat and shifted by
    s = d_w j - p_w, and the columns whose reads wrapped round to a neighbouring row set to zero: for every
    row r and column v, R[(c, j), r W + v] = x[c, r - p_h, v + s], zero off the map. Built here from a padded
    copy, the way lesson 05 checks it."""
    x = np.arange(1, 2 * 3 * 4 * 5 + 1, dtype=np.float64).reshape(2, 3, 4, 5)  # no zeros of its own
    rows = conv_rows.shifted_rows(x, 3, (1, 2), 2)  # KW = 3, padding (1, 2), dilation 2 along the width
    hp, w = 4 + 2, 5
    assert conv_rows.padded_size(4, 5, (3, 3), (1, 2), (1, 2)) == (hp, w, 4, 5)
    assert rows.shape == (2, 3 * 3, hp * w)
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (2, 2)))  # the zero-padded map, 2 columns each side
    for c in range(3):
        for j in range(3):
            np.testing.assert_array_equal(rows[:, c * 3 + j].reshape(2, hp, w), padded[:, c, :, 2 * j : 2 * j + w])
    assert (rows[:, 0].reshape(2, hp, w)[:, 1:-1, :2] == 0).all()  # shift -2: the first two columns
    assert (rows[:, 2].reshape(2, hp, w)[:, 1:-1, 3:] == 0).all()  # shift +2: the last two
    assert rows[:, 1].reshape(2, hp, w)[:, 1:-1].all()  # no shift: the map itself


def test_shifted_rows_zero_everything_when_the_shift_passes_the_whole_row() -> None:
    """A map one pixel wide with padding 2 and dilation 2: only the middle kernel column reads the map."""
    x = np.arange(1, 2 * 3 + 1, dtype=np.float64).reshape(1, 2, 3, 1)
    rows = conv_rows.shifted_rows(x, 3, (0, 2), 2).reshape(1, 2, 3, 3)
    np.testing.assert_array_equal(rows[:, :, 1], x[:, :, :, 0])
    assert not rows[:, :, 0].any() and not rows[:, :, 2].any()


def test_kernel_rows_hold_one_kernel_row_each() -> None:
    w = np.arange(4 * 3 * 2 * 5, dtype=np.float64).reshape(4, 3, 2, 5)
    wr = conv_rows.kernel_rows(w)
    assert wr.shape == (2, 4, 3 * 5)
    np.testing.assert_array_equal(wr[1, 2].reshape(3, 5), w[2, :, 1, :])


# --------------------------------------------------------------------------------------------------
# forward and gradients: naive loop, im2col, finite differences, torch
# --------------------------------------------------------------------------------------------------
@st.composite
def rows_cases(draw: st.DrawFn, max_out: int = 6) -> ConvCase:
    """An eligible case: stride 1, one group, kernels 2-4 per side, dilation 1-2, padding 0..d_h (KH - 1) on
    the height and "same" on the width (p_w = d_w (KW - 1) / 2: an even-width kernel gets dilation 2)."""
    kernel = (draw(st.integers(2, 4)), draw(st.integers(2, 4)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    if dilation[1] * (kernel[1] - 1) % 2:
        dilation = (dilation[0], 2)
    padding = (draw(st.integers(0, dilation[0] * (kernel[0] - 1))), dilation[1] * (kernel[1] - 1) // 2)
    out_h = draw(st.integers(1, max_out))
    h = max(1, out_h + dilation[0] * (kernel[0] - 1) - 2 * padding[0])  # input height for that output height
    return ConvCase(
        n=draw(st.integers(1, 3)),
        c=draw(st.integers(1, 4)),
        o=draw(st.integers(1, 4)),
        h=h,
        w=draw(st.integers(1, max_out)),  # the output is as wide
        kernel=kernel,
        padding=padding,
        dilation=dilation,
        bias=draw(st.booleans()),
        seed=draw(seeds),
    )


BATCH_1 = ConvCase(n=1, c=2, o=3, h=5, w=4, kernel=(3, 3), padding=(1, 1), seed=1)
ONE_CHANNEL = ConvCase(n=2, c=1, o=1, h=4, w=6, kernel=(3, 3), padding=(1, 1), seed=2)
SPATIAL_1X1 = ConvCase(n=2, c=3, o=2, h=1, w=1, kernel=(3, 3), padding=(1, 1), seed=3)  # all but one tap padding
NO_PADDING = ConvCase(n=2, c=2, o=3, h=6, w=5, kernel=(3, 3), padding=(0, 1), seed=4)  # none on the height
FULL_PADDING = ConvCase(n=2, c=3, o=2, h=3, w=4, kernel=(3, 3), padding=(2, 1), seed=5)  # p_h = K - 1: dx uncropped
DILATED = ConvCase(n=2, c=2, o=2, h=7, w=6, kernel=(3, 3), padding=(2, 1), dilation=(2, 1), bias=False, seed=6)
# hypothesis's find in CI: at gradcheck's default step (1e-6) the rounding of this case's forward passed tolerance
TALL_DILATED = ConvCase(n=3, c=4, o=3, h=4, w=5, kernel=(4, 3), padding=(3, 1), dilation=(2, 1), bias=False, seed=8863)
# an even kernel width: "same" padding needs an even dilation, p_w = 2 (2 - 1) / 2
EVEN_WIDTH = ConvCase(n=2, c=2, o=3, h=4, w=5, kernel=(3, 2), padding=(1, 1), dilation=(1, 2), seed=10)
CASES = [BATCH_1, ONE_CHANNEL, SPATIAL_1X1, NO_PADDING, FULL_PADDING, DILATED, EVEN_WIDTH]
IDS = ["batch1", "one-channel", "1x1", "no-padding", "full-padding", "dilated", "even-width"]


@settings(max_examples=40, deadline=None)
@given(case=rows_cases())
@example(case=BATCH_1)
@example(case=ONE_CHANNEL)
@example(case=SPATIAL_1X1)
@example(case=NO_PADDING)
@example(case=FULL_PADDING)
@example(case=DILATED)
@example(case=TALL_DILATED)
@example(case=EVEN_WIDTH)
@pytest.mark.parametrize("gy_copy", [False, True], ids=["gy-view", "gy-transposed-copy"])
def test_rows_match_naive_loop_and_im2col(xp, case: ConvCase, gy_copy: bool) -> None:
    """Both ways dW's GEMMs read gy' (a transposed view, or from TRANSPOSED_GY_FROM channels a copy)."""
    assert conv_rows.eligible((case.o, case.c, *case.kernel), (1, 1), case.padding, case.dilation, 1)
    gy = np.random.default_rng(case.seed + 1).standard_normal((case.n, case.o, *case.out_hw))
    before = conv_rows.TRANSPOSED_GY_FROM
    conv_rows.TRANSPOSED_GY_FROM = 1 if gy_copy else 10**9
    try:
        results = run_conv(xp, case, "rows", gy)
    finally:
        conv_rows.TRANSPOSED_GY_FROM = before
    assert results[0].shape == (case.n, case.o, *case.out_hw)
    assert_matches_naive_loop_and_im2col(xp, case, gy, results)


@settings(max_examples=20, deadline=None)
@given(case=rows_cases(max_out=4))
@example(case=BATCH_1)
@example(case=ONE_CHANNEL)
@example(case=SPATIAL_1X1)
@example(case=DILATED)
@example(case=TALL_DILATED)
def test_rows_gradcheck(xp, case: ConvCase) -> None:
    """Float64 central differences against a random cotangent, every element of x, W and b.

    The step is 1e-4, not gradcheck's 1e-6 (as for Winograd): conv2d is linear in each input, so central
    differences have no truncation error at any step, while the forward's rounding divided by a 1e-6 step
    reached gradcheck's tolerance on a 4x3 kernel with dilation 2 (found by hypothesis in CI: 1.7e-8
    absolute on a gradient of 4e-3; the same case agrees with the naive loop to 1e-10)."""
    x, w, b = conv_tensors(xp, *case.arrays())
    with conv_algorithm("rows"):
        report = minise.gradcheck(
            lambda x, w, b: F.conv2d(x, w, b, padding=case.padding, dilation=case.dilation), x, w, b, eps=1e-4
        )
    assert report.ok and len(report.inputs) == (3 if case.bias else 2)


@pytest.mark.parametrize("needs", [(True, False), (False, True)], ids=["only-x", "only-w"])
def test_rows_gradient_of_one_input(needs: tuple[bool, bool]) -> None:
    xa, wa, _ = NO_PADDING.arrays()
    x, w = (minise.Tensor(a.copy(), requires_grad=r) for a, r in zip((xa, wa), needs, strict=True))
    with conv_algorithm("rows"):
        report = minise.gradcheck(lambda x, w: F.conv2d(x, w), x, w, eps=1e-4)
    assert report.ok and [r.index for r in report.inputs] == [i for i, r in enumerate(needs) if r]


def test_conv_chunk_into_an_output_that_is_not_contiguous() -> None:
    """``conv_chunk`` writes its first GEMM straight into a C-contiguous ``out``; any other ``out`` (here every
    other channel of a larger array) gets the same values through a buffer, and nothing around it changes."""
    x, w, _ = BATCH_1.arrays()
    w_rows = conv_rows.kernel_rows(w)
    direct = np.empty((1, 3, 5, 4))
    conv_rows.conv_chunk(x, w_rows, (1, 1), (1, 1), direct)
    np.testing.assert_allclose(direct, naive_conv2d(x, w, None, padding=(1, 1)), rtol=1e-10, atol=1e-10)
    wide = np.full((1, 6, 5, 4), 7.0)
    conv_rows.conv_chunk(x, w_rows, (1, 1), (1, 1), wide[:, ::2])
    np.testing.assert_array_equal(wide[:, ::2], direct)
    assert (wide[:, 1::2] == 7.0).all()


def test_rows_in_chunks_on_two_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunks of one image on two threads: the forward, dx and the summed per-chunk dW are unchanged."""
    monkeypatch.setenv("MINISE_NUM_THREADS", "2")
    monkeypatch.setattr(cpu, "chunk_size", lambda xp, batch, per_item, budget=0: 1)
    case = ConvCase(n=5, c=3, o=4, h=6, w=7, kernel=(3, 3), padding=(1, 1), seed=9)
    gy = np.random.default_rng(0).standard_normal((5, 4, 6, 7))
    assert_matches_naive_loop(case, gy, run_conv(np, case, "rows", gy))


@requires_torch
@pytest.mark.torch
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_rows_match_torch_float64(case: ConvCase) -> None:
    gy = np.random.default_rng(case.seed + 2).standard_normal((case.n, case.o, *case.out_hw))
    assert_conv_matches_torch_float64(case, "rows", gy)


@pytest.mark.parametrize("shape", [(4, 16, 32), (4, 32, 16), (4, 64, 8)], ids=["16@32", "32@16", "64@8"])
def test_float32_error_next_to_im2col(shape: tuple[int, int, int]) -> None:
    """Float32 y, dx and dW against float64 im2col: the same sums in another order, so rounding errors of
    im2col's size (measured on these shapes: rows 2.5e-7 .. 3.8e-7, im2col 4.4e-7 .. 9.3e-7; rows add
    three partial products of C KW terms where im2col has one of C KH KW)."""
    n, c, h = shape
    rng = np.random.default_rng(c)
    x, gy = rng.standard_normal((n, c, h, h)), rng.standard_normal((n, c, h, h))
    w = rng.standard_normal((c, c, 3, 3)) * np.sqrt(2 / (9 * c))
    errors = float32_errors(x, w, gy, ("im2col", "rows"), padding=1)
    assert errors["rows"] < 3e-6 and errors["rows"] < 4 * errors["im2col"], errors


# --------------------------------------------------------------------------------------------------
# which path runs
# --------------------------------------------------------------------------------------------------
def test_forced_rows_apply_only_where_eligible(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MINISE_CONV_ALGORITHM", raising=False)
    with conv_algorithm("rows"):
        assert algo((2, 3, 5, 5), (4, 3, 3, 3)) == "rows"
        assert algo((2, 3, 5, 5), (4, 3, 2, 3), padding=(0, 1)) == "rows"
        assert algo((2, 3, 5, 5), (4, 3, 3, 2), padding=(1, 1), dilation=(1, 2)) == "rows"  # p_w = d_w (KW - 1) / 2
        assert algo((2, 3, 5, 5), (4, 3, 3, 3), padding=(1, 0)) == "im2col"  # the output narrower than the input
        assert algo((2, 3, 5, 5), (4, 3, 3, 3), padding=(1, 2)) == "im2col"  # ... or wider
        assert algo((2, 3, 5, 5), (4, 3, 3, 4), padding=(1, 1)) == "im2col"  # no "same" padding for an even KW
        assert algo((2, 3, 5, 5), (4, 3, 3, 3), stride=(2, 2)) == "im2col"  # stride
        assert algo((2, 4, 5, 5), (4, 2, 3, 3), groups=2) == "im2col"  # groups
        assert algo((2, 3, 5, 5), (4, 3, 1, 1), padding=(0, 0)) == "im2col"  # a 1x1 kernel is a plain GEMM
        assert algo((2, 3, 5, 5), (4, 3, 3, 3), padding=(3, 1)) == "im2col"  # p > d (K - 1): dx would crop
    monkeypatch.setenv("MINISE_CONV_ALGORITHM", "rows")
    assert algo((2, 3, 5, 5), (4, 3, 3, 3)) == "rows"


def test_the_chosen_path_is_the_one_that_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MINISE_CONV_ALGORITHM", raising=False)
    calls: list[tuple[int, ...]] = []
    real = conv_rows.conv_chunk
    monkeypatch.setattr(conv_rows, "conv_chunk", lambda x, *rest: calls.append(x.shape) or real(x, *rest))
    x = minise.Tensor(np.zeros((2, 16, 32, 32), np.float32), requires_grad=True)
    w = minise.Tensor(np.zeros((16, 16, 3, 3), np.float32), requires_grad=True)
    F.conv2d(x, w, padding=1).sum().backward()
    assert calls and {s[1:] for s in calls} == {(16, 32, 32)}  # forward and input gradient, in chunks
    calls.clear()
    F.conv2d(x, w, padding=1, stride=2)  # stride 2: im2col
    assert calls == []


# --------------------------------------------------------------------------------------------------
# the checks catch planted mistakes
# --------------------------------------------------------------------------------------------------
def test_a_wrong_shift_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """Shifted rows that all start one place too far (xf[p + j + 1]) move every output by one column:
    the naive-loop check fails."""
    real = conv_rows.shifted_rows

    def off_by_one(x, kw, padding, dilation_w):  # type: ignore[no-untyped-def]
        rows = real(x, kw, padding, dilation_w)
        return np.concatenate([rows[:, :, 1:], np.zeros_like(rows[:, :, :1])], axis=2)

    monkeypatch.setattr(conv_rows, "shifted_rows", off_by_one)
    xa, wa, ba = BATCH_1.arrays()
    y = run_conv(np, BATCH_1, "rows", np.ones((1, 3, 5, 4)))[0]
    assert not np.allclose(y, naive_conv2d(xa, wa, ba, padding=(1, 1)), rtol=1e-10, atol=1e-10)


def test_a_wrong_weight_gradient_is_caught_by_gradcheck(monkeypatch: pytest.MonkeyPatch) -> None:
    """dW with its kernel rows in reverse order (a kernel flipped upside down) fails gradcheck on the
    weight, and only there."""
    real = conv_rows.weight_grad_chunk
    monkeypatch.setattr(conv_rows, "weight_grad_chunk", lambda *args: real(*args)[::-1])
    x, w, _ = conv_tensors(np, *BATCH_1.arrays())
    with conv_algorithm("rows"):
        report = minise.gradcheck(lambda x, w: F.conv2d(x, w, padding=1), x, w, raise_on_failure=False)
    assert [r.index for r in report.inputs if not r.ok] == [1]


def test_wrapped_columns_left_in_the_shifted_rows_are_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """Shifted copies of the flat map whose wrapped columns keep the neighbouring row's values (the zeroing
    left out) give the edge outputs the wrong neighbours: the naive-loop check fails. gradcheck alone would
    not catch it: the wrong forward, its dW (the same rows) and its dx (the same layout, transposed) are a
    consistent linear op and its gradients, only not the convolution's; that is why every path is also
    compared with the naive loop."""

    def not_zeroed(x, kw, padding, dilation_w):  # type: ignore[no-untyped-def]
        n, c, h, w = x.shape
        ph, pw = padding
        flat = np.pad(x.reshape(n, c, h * w), ((0, 0), (0, 0), (ph * w + pw, ph * w + pw)))
        hpw = (h + 2 * ph) * w
        shifts = [flat[:, :, dilation_w * j : dilation_w * j + hpw] for j in range(kw)]
        return np.stack(shifts, axis=2).reshape(n, c * kw, hpw)

    xa, wa, ba = BATCH_1.arrays()
    y = run_conv(np, BATCH_1, "rows", np.ones((1, 3, 5, 4)))[0]
    assert np.allclose(y, naive_conv2d(xa, wa, ba, padding=(1, 1)), rtol=1e-10, atol=1e-10)  # the real one
    monkeypatch.setattr(conv_rows, "shifted_rows", not_zeroed)
    y = run_conv(np, BATCH_1, "rows", np.ones((1, 3, 5, 4)))[0]
    assert not np.allclose(y, naive_conv2d(xa, wa, ba, padding=(1, 1)), rtol=1e-3, atol=1e-3)
