"""A 3x3, stride-2 convolution by parity planes (``minise.functional.conv_parity``): its columns against
im2col's, its col2im as their adjoint, the forward and both gradients against the naive loop, the im2col
path, finite differences and PyTorch over drawn shapes; its float32 error next to im2col's; the rule that
picks it; and planted mistakes the checks catch."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import NON_CONTIGUOUS_LAYOUTS, non_contiguous_leaf, requires_torch, to_xp
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
    naive_conv2d_grads,
    run_conv,
)
from test_winograd import algo

import minise
import minise.functional as F
from minise import backend, cpu
from minise.functional import conv_parity
from minise.functional.conv import conv_algorithm
from minise.functional.im2col import col2im, im2col

S2 = {"stride": (2, 2), "padding": (1, 1)}


@st.composite
def parity_cases(draw: st.DrawFn, max_half: int = 5) -> ConvCase:
    """An eligible case: 3x3, stride 2, padding 1, an input of even height and width (2 to 2 max_half)."""
    return ConvCase(
        n=draw(st.integers(1, 3)),
        c=draw(st.integers(1, 4)),
        o=draw(st.integers(1, 4)),
        h=2 * draw(st.integers(1, max_half)),
        w=2 * draw(st.integers(1, max_half)),
        kernel=(3, 3),
        stride=(2, 2),
        padding=(1, 1),
        bias=draw(st.booleans()),
        seed=draw(seeds),
    )


BATCH_1 = ConvCase(n=1, c=2, o=3, h=6, w=4, kernel=(3, 3), stride=(2, 2), padding=(1, 1), seed=1)
ONE_CHANNEL = ConvCase(n=2, c=1, o=1, h=4, w=6, kernel=(3, 3), stride=(2, 2), padding=(1, 1), seed=2)
OUTPUT_1X1 = ConvCase(n=2, c=3, o=2, h=2, w=2, kernel=(3, 3), stride=(2, 2), padding=(1, 1), seed=3)  # 5 taps padding
WIDE = ConvCase(n=2, c=2, o=3, h=2, w=10, kernel=(3, 3), stride=(2, 2), padding=(1, 1), bias=False, seed=4)
CASES = [BATCH_1, ONE_CHANNEL, OUTPUT_1X1, WIDE]
IDS = ["batch1", "one-channel", "1x1-output", "one-row"]


def _tap_order(cols: np.ndarray, c: int) -> np.ndarray:
    """im2col's rows (c, i, j) reordered to (i, j, c), the order of conv_parity's columns."""
    n, _, length = cols.shape
    return cols.reshape(n, c, 3, 3, length).transpose(0, 2, 3, 1, 4).reshape(n, 9 * c, length)


# --------------------------------------------------------------------------------------------------
# the columns and their adjoint
# --------------------------------------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(case=parity_cases())
@example(case=OUTPUT_1X1)
@example(case=WIDE)
def test_columns_are_im2cols_in_tap_order(xp, case: ConvCase) -> None:
    x = case.arrays()[0]
    got = backend.to_host(conv_parity.im2col(to_xp(xp, x)))
    np.testing.assert_array_equal(got, _tap_order(im2col(x, (3, 3), (2, 2), (1, 1), (1, 1)), case.c))


@settings(max_examples=40, deadline=None)
@given(case=parity_cases())
@example(case=OUTPUT_1X1)
@example(case=WIDE)
def test_col2im_is_the_adjoint_and_im2cols_col2im_in_tap_order(xp, case: ConvCase) -> None:
    """<im2col(x), d> = <x, col2im(d)> in float64, and the same numbers as the generic col2im."""
    rng = np.random.default_rng(case.seed)
    x = rng.standard_normal(case.x_shape)
    oh, ow = case.out_hw
    d = rng.standard_normal((case.n, 9 * case.c, oh * ow))  # in tap order
    dx = backend.to_host(conv_parity.col2im(to_xp(xp, d.copy()), case.x_shape))
    cols = backend.to_host(conv_parity.im2col(to_xp(xp, x)))
    assert np.isclose(np.vdot(cols, d), np.vdot(x, dx), rtol=1e-12, atol=1e-12)
    generic_rows = d.reshape(case.n, 3, 3, case.c, oh * ow).transpose(0, 3, 1, 2, 4).reshape(d.shape)
    want = col2im(generic_rows, case.x_shape, (3, 3), (2, 2), (1, 1), (1, 1))
    np.testing.assert_allclose(dx, want, rtol=1e-12, atol=1e-12)


def test_col2im_writes_into_out_and_reads_a_non_contiguous_gradient() -> None:
    rng = np.random.default_rng(0)
    d = rng.standard_normal((2, 2 * 18, 4))[:, ::2]  # every other row: (2, 18, 4), not contiguous
    out = np.full((2, 2, 4, 4), np.nan)
    got = conv_parity.col2im(d, (2, 2, 4, 4), out=out)
    assert got is out
    want = conv_parity.col2im(np.ascontiguousarray(d), (2, 2, 4, 4))
    np.testing.assert_array_equal(out, want)


def test_col2im_refuses_an_out_it_could_not_write_through() -> None:
    out = np.empty((2, 2, 4, 4)).transpose(0, 1, 3, 2)  # a view whose reshape would be a copy
    with pytest.raises(ValueError, match="C-contiguous"):
        conv_parity.col2im(np.zeros((2, 18, 4)), (2, 2, 4, 4), out=out)


def test_weight_matrix_follows_the_tap_order_and_comes_back() -> None:
    w = np.arange(4 * 3 * 3 * 3, dtype=np.float64).reshape(4, 3, 3, 3)
    m = conv_parity.weight_matrix(w)
    assert m.shape == (4, 27)
    assert m[1, (3 * 2 + 1) * 3 + 2] == w[1, 2, 2, 1]  # tap (2, 1), channel 2
    back = conv_parity.weight_from_matrix(m, 3)
    np.testing.assert_array_equal(back, w)
    assert back.flags.c_contiguous


# --------------------------------------------------------------------------------------------------
# forward and gradients: naive loop, im2col, finite differences, torch
# --------------------------------------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(case=parity_cases())
@example(case=BATCH_1)
@example(case=ONE_CHANNEL)
@example(case=OUTPUT_1X1)
@example(case=WIDE)
def test_parity_matches_naive_loop_and_im2col(xp, case: ConvCase) -> None:
    gy = np.random.default_rng(case.seed + 1).standard_normal((case.n, case.o, *case.out_hw))
    assert_matches_naive_loop_and_im2col(xp, case, gy, run_conv(xp, case, "parity", gy))


@settings(max_examples=20, deadline=None)
@given(case=parity_cases(max_half=3))
@example(case=BATCH_1)
@example(case=ONE_CHANNEL)
@example(case=OUTPUT_1X1)
def test_parity_gradcheck(xp, case: ConvCase) -> None:
    """Float64 central differences against a random cotangent, every element of x, W and b (step 1e-4: the
    convolution is linear in each input, so central differences have no truncation error)."""
    x, w, b = conv_tensors(xp, *case.arrays())
    with conv_algorithm("parity"):
        report = minise.gradcheck(lambda x, w, b: F.conv2d(x, w, b, **S2), x, w, b, eps=1e-4)
    assert report.ok and len(report.inputs) == (3 if case.bias else 2)


@pytest.mark.parametrize("needs", [(True, False), (False, True)], ids=["only-x", "only-w"])
def test_parity_gradient_of_one_input(needs: tuple[bool, bool]) -> None:
    xa, wa, _ = BATCH_1.arrays()
    x, w = (minise.Tensor(a.copy(), requires_grad=r) for a, r in zip((xa, wa), needs, strict=True))
    with conv_algorithm("parity"):
        report = minise.gradcheck(lambda x, w: F.conv2d(x, w, **S2), x, w, eps=1e-4)
    assert report.ok and [r.index for r in report.inputs] == [i for i, r in enumerate(needs) if r]


def test_parity_in_chunks_on_two_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunks of one image on two threads: the forward, dx and the summed per-chunk dW are unchanged, and each
    chunk's columns kept by the forward serve its weight gradient."""
    monkeypatch.setenv("MINISE_NUM_THREADS", "2")
    monkeypatch.setattr(cpu, "chunk_size", lambda xp, batch, per_item, budget=0: 1)
    built: list[tuple[int, ...]] = []
    real = conv_parity.im2col
    monkeypatch.setattr(conv_parity, "im2col", lambda x: built.append(x.shape) or real(x))
    case = ConvCase(n=5, c=3, o=4, h=6, w=8, kernel=(3, 3), stride=(2, 2), padding=(1, 1), seed=9)
    gy = np.random.default_rng(0).standard_normal((5, 4, 3, 4))
    results = run_conv(np, case, "parity", gy)
    assert len(built) == 5  # one per chunk in the forward; the backward reused them
    assert_matches_naive_loop(case, gy, results)


@pytest.mark.parametrize("layout", NON_CONTIGUOUS_LAYOUTS)
def test_parity_of_a_non_contiguous_input(layout: str) -> None:
    """A view in another memory layout (im2col by planes reshapes x, which then copies): the same forward and
    gradients as the contiguous input."""
    xa, wa, _ = BATCH_1.arrays()
    gy = np.random.default_rng(3).standard_normal((1, 3, 3, 2))
    leaf, x, back = non_contiguous_leaf(xa, layout)
    assert not x.data.flags.c_contiguous
    w = minise.Tensor(wa.copy(), requires_grad=True)
    with conv_algorithm("parity"):
        y = F.conv2d(x, w, **S2)
        y.backward(gy)
    np.testing.assert_allclose(y.numpy(), naive_conv2d(xa, wa, None, **S2), rtol=1e-10, atol=1e-10)
    ndx, ndw, _ = naive_conv2d_grads(xa, wa, gy, **S2)
    np.testing.assert_allclose(back(leaf.grad), ndx, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(w.grad, ndw, rtol=1e-10, atol=1e-10)


@requires_torch
@pytest.mark.torch
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_parity_matches_torch_float64(case: ConvCase) -> None:
    gy = np.random.default_rng(case.seed + 2).standard_normal((case.n, case.o, *case.out_hw))
    assert_conv_matches_torch_float64(case, "parity", gy)


@pytest.mark.parametrize("shape", [(4, 16, 32, 32), (4, 32, 16, 64)], ids=["16->32@32", "32->64@16"])
def test_float32_error_next_to_im2col(shape: tuple[int, int, int, int]) -> None:
    """Float32 y, dx and dW against float64 im2col: the same products summed in another order (tap by tap
    instead of channel by channel), so errors of im2col's size."""
    n, c, h, o = shape
    rng = np.random.default_rng(c)
    x, gy = rng.standard_normal((n, c, h, h)), rng.standard_normal((n, o, h // 2, h // 2))
    w = rng.standard_normal((o, c, 3, 3)) * np.sqrt(2 / (9 * c))
    errors = float32_errors(x, w, gy, ("im2col", "parity"), **S2)
    assert errors["parity"] < 3e-6 and errors["parity"] < 4 * errors["im2col"], errors


# --------------------------------------------------------------------------------------------------
# which path runs
# --------------------------------------------------------------------------------------------------
def test_forced_parity_applies_only_where_eligible(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MINISE_CONV_ALGORITHM", raising=False)
    with conv_algorithm("parity"):
        assert algo((2, 3, 6, 8), (4, 3, 3, 3), stride=(2, 2)) == "parity"
        assert algo((2, 3, 5, 8), (4, 3, 3, 3), stride=(2, 2)) == "im2col"  # odd height
        assert algo((2, 3, 6, 6), (4, 3, 3, 3)) == "im2col"  # stride 1
        assert algo((2, 3, 6, 6), (4, 3, 3, 3), stride=(2, 1)) == "im2col"  # stride 2 along one side only
        assert algo((2, 3, 6, 6), (4, 3, 3, 3), stride=(2, 2), padding=(0, 0)) == "im2col"  # padding
        assert algo((2, 3, 6, 6), (4, 3, 1, 1), stride=(2, 2)) == "im2col"  # 1x1
        assert algo((2, 4, 6, 6), (4, 2, 3, 3), stride=(2, 2), groups=2) == "im2col"  # groups
        assert algo((2, 3, 6, 6), (4, 3, 3, 3), stride=(2, 2), dilation=(2, 2)) == "im2col"  # dilation
    monkeypatch.setenv("MINISE_CONV_ALGORITHM", "parity")
    assert algo((2, 3, 6, 8), (4, 3, 3, 3), stride=(2, 2)) == "parity"


def test_the_chosen_path_is_the_one_that_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Auto runs an even 3x3 stride-2 layer by planes, an odd one by im2col."""
    monkeypatch.delenv("MINISE_CONV_ALGORITHM", raising=False)
    calls: list[tuple[int, ...]] = []
    real = conv_parity.col2im
    monkeypatch.setattr(conv_parity, "col2im", lambda d, shape, out=None: calls.append(shape) or real(d, shape, out))
    w = minise.Tensor(np.zeros((8, 4, 3, 3), np.float32), requires_grad=True)
    x = minise.Tensor(np.zeros((2, 4, 16, 16), np.float32), requires_grad=True)
    F.conv2d(x, w, **S2).sum().backward()
    assert calls and {s[1:] for s in calls} == {(4, 16, 16)}
    calls.clear()
    x = minise.Tensor(np.zeros((2, 4, 15, 15), np.float32), requires_grad=True)
    F.conv2d(x, w, **S2).sum().backward()
    assert calls == []


# --------------------------------------------------------------------------------------------------
# the checks catch planted mistakes
# --------------------------------------------------------------------------------------------------
def test_columns_that_keep_the_padding_are_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """im2col with ones where the padding's zeros belong (as if its last step, zeroing what the shifts carried
    over from the previous row or channel, were left out): the naive-loop check fails."""
    real = conv_parity.im2col
    monkeypatch.setattr(conv_parity, "im2col", lambda x: _junk_padding(real, x))
    xa, wa, ba = BATCH_1.arrays()
    y = run_conv(np, BATCH_1, "parity", np.ones((1, 3, 3, 2)))[0]
    assert not np.allclose(y, naive_conv2d(xa, wa, ba, **S2), rtol=1e-10, atol=1e-10)


def _junk_padding(real, x):  # type: ignore[no-untyped-def]
    """conv_parity.im2col with ones where the padding's zeros belong."""
    cols = real(x)
    n, c, h, w = x.shape
    grid = cols.reshape(n, 3, 3, c, h // 2, w // 2)
    grid[:, 0, :, :, 0, :] = 1.0
    grid[:, :, 0, :, :, 0] = 1.0
    return cols


def test_a_col2im_that_adds_the_padding_back_is_caught_by_gradcheck(monkeypatch: pytest.MonkeyPatch) -> None:
    """col2im without zeroing the taps' padding values first carries them, through the shifted adds, onto the
    last row and column of the previous row or channel: gradcheck on x fails, and only there."""

    real = conv_parity.col2im

    def no_zeroing(dcols, x_shape, out=None):  # type: ignore[no-untyped-def]
        with pytest.MonkeyPatch.context() as inside:  # only col2im skips it; im2col still zeroes its padding
            inside.setattr(conv_parity, "_zero_padding", lambda grid: None)
            return real(dcols, x_shape, out)

    monkeypatch.setattr(conv_parity, "col2im", no_zeroing)
    x, w, _ = conv_tensors(np, *ONE_CHANNEL.arrays())
    with conv_algorithm("parity"):
        report = minise.gradcheck(lambda x, w: F.conv2d(x, w, **S2), x, w, eps=1e-4, raise_on_failure=False)
    assert [r.index for r in report.inputs if not r.ok] == [0]
