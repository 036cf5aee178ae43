"""Winograd F(2x2, 3x3) and F(4x4, 3x3): the 1-D identity behind the matrices, the forward and both gradients
against the naive loop, the im2col path, finite differences and PyTorch; its float32 error next to im2col's;
the rule that picks it per layer and the switches that force a path; and planted mistakes the checks catch."""

from __future__ import annotations

import types

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
    naive_conv2d_grads,
    run_conv,
)

import minise
import minise.functional as F
from minise import cpu
from minise.functional import winograd
from minise.functional.conv import choose_algorithm, conv_algorithm, set_conv_algorithm

TILES = [2, 4]


# --------------------------------------------------------------------------------------------------
# the transform matrices
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("m", TILES)
def test_1d_minimal_filtering_is_correlation(m: int) -> None:
    """y = A^T [(G g) * (B^T d)] equals y_i = sum_r d_{i+r} g_r for m outputs from m + 2 inputs."""
    bt, g_, at = (np.asarray(t, dtype=np.float64) for t in winograd.TRANSFORMS[m])
    assert bt.shape == (m + 2, m + 2) and g_.shape == (m + 2, 3) and at.shape == (m, m + 2)
    rng = np.random.default_rng(m)
    for _ in range(5):
        d, g = rng.standard_normal(m + 2), rng.standard_normal(3)
        direct = np.array([d[i : i + 3] @ g for i in range(m)])
        np.testing.assert_allclose(at @ ((g_ @ g) * (bt @ d)), direct, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("m", TILES)
def test_2d_nesting_is_2d_correlation(m: int) -> None:
    """Y = A^T [(G g G^T) * (B^T d B)] A on one tile equals the 2-D correlation of the tile with g; the
    multiplications per output fall from 9 to (m+2)^2 / m^2."""
    bt, g_, at = (np.asarray(t, dtype=np.float64) for t in winograd.TRANSFORMS[m])
    rng = np.random.default_rng(10 + m)
    d, g = rng.standard_normal((m + 2, m + 2)), rng.standard_normal((3, 3))
    direct = np.array([[(d[i : i + 3, j : j + 3] * g).sum() for j in range(m)] for i in range(m)])
    np.testing.assert_allclose(at @ ((g_ @ g @ g_.T) * (bt @ d @ bt.T)) @ at.T, direct, rtol=1e-12, atol=1e-12)
    assert (m + 2) ** 2 < 9 * m * m  # 16 < 36, 36 < 144


def test_input_tiles_are_the_overlapping_windows() -> None:
    x = np.arange(2 * 1 * 5 * 5, dtype=np.float64).reshape(2, 1, 5, 5)
    tiles = winograd.input_tiles(x, (1, 1), 2)  # output 5x5 -> 3x3 tiles of 2x2 (the last ones partial)
    assert tiles.shape == (2, 1, 3, 3, 4, 4)
    xpad = np.pad(x, ((0, 0), (0, 0), (1, 2), (1, 2)))  # padding 1, plus one row/column to fill the last tile
    np.testing.assert_array_equal(tiles[1, 0, 2, 1], xpad[1, 0, 4:8, 2:6])


# --------------------------------------------------------------------------------------------------
# forward and gradients: naive loop, im2col, finite differences
# --------------------------------------------------------------------------------------------------
@st.composite
def winograd_cases(draw: st.DrawFn, max_out: int = 7) -> ConvCase:
    """A 3x3, stride-1 case: output sides 1..max_out (odd ones leave partial tiles), padding 0-2."""
    padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    oh, ow = draw(st.integers(1, max_out)), draw(st.integers(1, max_out))
    h, w = oh + 2 - 2 * padding[0], ow + 2 - 2 * padding[1]
    if h < 1 or w < 1:  # padding 2 with a 1-pixel output: the input needs at least a row; widen the output
        h, w = max(h, 1), max(w, 1)
    return ConvCase(
        n=draw(st.integers(1, 3)),
        c=draw(st.integers(1, 4)),
        o=draw(st.integers(1, 4)),
        h=h,
        w=w,
        kernel=(3, 3),
        padding=padding,
        bias=draw(st.booleans()),
        seed=draw(seeds),
    )


BATCH_1 = ConvCase(n=1, c=2, o=3, h=5, w=4, kernel=(3, 3), padding=(1, 1), seed=1)
ONE_CHANNEL = ConvCase(n=2, c=1, o=1, h=4, w=6, kernel=(3, 3), padding=(1, 1), seed=2)
SPATIAL_1X1 = ConvCase(n=2, c=3, o=2, h=1, w=1, kernel=(3, 3), padding=(1, 1), seed=3)  # one tile, mostly padding
PARTIAL_TILES = ConvCase(n=2, c=2, o=3, h=7, w=5, kernel=(3, 3), padding=(0, 2), seed=4)  # outputs 5x7
EXACT_TILES = ConvCase(n=3, c=3, o=2, h=8, w=8, kernel=(3, 3), padding=(1, 1), bias=False, seed=5)
CASES = [BATCH_1, ONE_CHANNEL, SPATIAL_1X1, PARTIAL_TILES, EXACT_TILES]


@settings(max_examples=30, deadline=None)
@given(case=winograd_cases(), m=st.sampled_from(TILES))
@example(case=BATCH_1, m=2)
@example(case=ONE_CHANNEL, m=4)
@example(case=SPATIAL_1X1, m=2)
@example(case=SPATIAL_1X1, m=4)
@example(case=PARTIAL_TILES, m=2)
@example(case=PARTIAL_TILES, m=4)
@example(case=EXACT_TILES, m=4)
def test_winograd_matches_naive_loop_and_im2col(xp, case: ConvCase, m: int) -> None:
    gy = np.random.default_rng(case.seed + 1).standard_normal((case.n, case.o, *case.out_hw))
    results = run_conv(xp, case, f"winograd{m}", gy)
    assert results[0].shape == (case.n, case.o, *case.out_hw)
    assert_matches_naive_loop_and_im2col(xp, case, gy, results)


@settings(max_examples=20, deadline=None)
@given(case=winograd_cases(max_out=5), m=st.sampled_from(TILES))
@example(case=BATCH_1, m=2)
@example(case=ONE_CHANNEL, m=2)
@example(case=SPATIAL_1X1, m=4)
@example(case=PARTIAL_TILES, m=4)
def test_winograd_gradcheck(xp, case: ConvCase, m: int) -> None:
    """Float64 central differences against a random cotangent, every element of x, W and b.

    The step is 1e-4, not gradcheck's 1e-6: conv2d is linear in each input, so central differences have
    no truncation error at any step, while F(4x4)'s forward rounding (about 5e-14, its constants 1/24 and 8)
    divided by a 1e-6 step reached gradcheck's 1e-8 tolerance (found by hypothesis)."""
    x, w, b = conv_tensors(xp, *case.arrays())
    with conv_algorithm(f"winograd{m}"):
        report = minise.gradcheck(lambda x, w, b: F.conv2d(x, w, b, padding=case.padding), x, w, b, eps=1e-4)
    assert report.ok and len(report.inputs) == (3 if case.bias else 2)


@pytest.mark.parametrize("m", TILES)
@pytest.mark.parametrize("needs", [(True, False), (False, True)], ids=["only-x", "only-w"])
def test_winograd_gradient_of_one_input(m: int, needs: tuple[bool, bool]) -> None:
    xa, wa, _ = PARTIAL_TILES.arrays()
    x, w = (minise.Tensor(a.copy(), requires_grad=r) for a, r in zip((xa, wa), needs, strict=True))
    with conv_algorithm(f"winograd{m}"):
        report = minise.gradcheck(lambda x, w: F.conv2d(x, w, padding=PARTIAL_TILES.padding), x, w, eps=1e-4)
    assert [r.index for r in report.inputs] == [i for i, r in enumerate(needs) if r]


@pytest.mark.parametrize("m", TILES)
def test_winograd_in_chunks_on_two_threads(monkeypatch: pytest.MonkeyPatch, m: int) -> None:
    """Chunks of one image on two threads: the forward, dx and the summed per-chunk dW are unchanged."""
    monkeypatch.setenv("MINISE_NUM_THREADS", "2")
    monkeypatch.setattr(cpu, "chunk_size", lambda xp, batch, per_item, budget=0: 1)
    case = ConvCase(n=5, c=3, o=4, h=6, w=7, kernel=(3, 3), padding=(1, 1), seed=9)
    gy = np.random.default_rng(0).standard_normal((5, 4, 6, 7))
    assert_matches_naive_loop(case, gy, run_conv(np, case, f"winograd{m}", gy))


def test_the_weight_gradient_reads_the_forwards_transformed_input(monkeypatch: pytest.MonkeyPatch) -> None:
    """x is transformed once per chunk in the forward; the weight gradient reuses those V (only dx, a
    convolution of gy, transforms again)."""
    monkeypatch.setattr(cpu, "chunk_size", lambda xp, batch, per_item, budget=0: 2)
    transforms: list[tuple[int, ...]] = []
    real = winograd.input_transform

    def counted(xpad, *rest):  # type: ignore[no-untyped-def]
        transforms.append(xpad.shape)
        return real(xpad, *rest)

    monkeypatch.setattr(winograd, "input_transform", counted)
    case = ConvCase(n=5, c=3, o=4, h=6, w=7, kernel=(3, 3), padding=(1, 1), seed=9)
    xa, wa, _ = case.arrays()
    gy = np.random.default_rng(0).standard_normal((5, 4, 6, 7))
    _, dx, dw, _ = run_conv(np, case, "winograd2", gy)
    # 3 chunks of x in the forward, 3 of gy for dx, none for dW (sorted: the chunks of a pass run on two threads,
    # which may call input_transform in either order)
    images = [s[2] for s in transforms]
    assert len(images) == 6 and sorted(images[:3]) == sorted(images[3:]) == [1, 2, 2]
    for got, want in zip((dx, dw), naive_conv2d_grads(xa, wa, gy, padding=(1, 1))[:2], strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)


def test_other_chunks_in_the_backward_transform_x_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """If the backward cuts the batch otherwise than the forward did (MINISE_NUM_THREADS changed in
    between), no chunk's V matches and the weight gradient transforms x itself: still the right dW."""
    sizes = iter([2] + [3] * 10)  # the forward's chunks of 2, then chunks of 3
    monkeypatch.setattr(cpu, "chunk_size", lambda xp, batch, per_item, budget=0: next(sizes))
    case = ConvCase(n=5, c=3, o=4, h=6, w=7, kernel=(3, 3), padding=(1, 1), seed=9)
    xa, wa, _ = case.arrays()
    gy = np.random.default_rng(0).standard_normal((5, 4, 6, 7))
    _, dx, dw, _ = run_conv(np, case, "winograd2", gy)
    for got, want in zip((dx, dw), naive_conv2d_grads(xa, wa, gy, padding=(1, 1))[:2], strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)


@requires_torch
@pytest.mark.torch
@pytest.mark.parametrize("m", TILES)
@pytest.mark.parametrize("case", CASES, ids=["batch1", "one-channel", "1x1", "partial", "exact"])
def test_winograd_matches_torch_float64(m: int, case: ConvCase) -> None:
    gy = np.random.default_rng(case.seed + 2).standard_normal((case.n, case.o, *case.out_hw))
    assert_conv_matches_torch_float64(case, f"winograd{m}", gy)


# --------------------------------------------------------------------------------------------------
# float32 error next to im2col's
# --------------------------------------------------------------------------------------------------
# Worst |float32 - float64| / max |float64| of y, dx and dW on the CIFAR ResNet shapes below (batch 4),
# measured: im2col 1.6e-7 .. 1.2e-6; F(2x2, 3x3) 1.6e-7 .. 1.6e-6; F(4x4, 3x3) 2.6e-6 .. 1.0e-5 (its larger
# constants, e.g. 1/24 in G and 8 in A, round more). BENCHMARKS.md lists the numbers per shape.
FLOAT32_BOUND = {"im2col": 3e-6, "winograd2": 4e-6, "winograd4": 3e-5}


@pytest.mark.parametrize("shape", [(4, 16, 32), (4, 32, 16), (4, 64, 8)], ids=["16@32", "32@16", "64@8"])
def test_float32_error_next_to_im2col(shape: tuple[int, int, int]) -> None:
    n, c, h = shape
    rng = np.random.default_rng(c)
    x, gy = rng.standard_normal((n, c, h, h)), rng.standard_normal((n, c, h, h))
    w = rng.standard_normal((c, c, 3, 3)) * np.sqrt(2 / (9 * c))  # He initialisation, as the models
    errors = float32_errors(x, w, gy, FLOAT32_BOUND, padding=1)
    for algorithm, bound in FLOAT32_BOUND.items():
        assert errors[algorithm] < bound, (algorithm, errors)
    assert errors["winograd4"] > errors["im2col"]  # the price of F(4x4): more rounding, measured


# --------------------------------------------------------------------------------------------------
# which path runs
# --------------------------------------------------------------------------------------------------
def algo(x_shape, w_shape, stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=1, xp=np):  # type: ignore[no-untyped-def]
    return choose_algorithm(xp, x_shape, w_shape, stride, padding, dilation, groups)


def test_auto_rule_follows_the_documented_table(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MINISE_CONV_ALGORITHM", raising=False)
    assert algo((128, 3, 32, 32), (16, 3, 3, 3)) == "im2col"  # the stem: 3 channels
    assert algo((128, 16, 32, 32), (16, 16, 3, 3)) == "rows"  # thin GEMMs on a large map
    assert algo((128, 32, 32, 32), (32, 32, 3, 3)) == "rows"
    assert algo((128, 32, 16, 16), (32, 32, 3, 3)) == "rows"
    assert algo((128, 16, 8, 8), (16, 16, 3, 3)) == "rows"  # up to 32 channels: rows on any map
    assert algo((128, 32, 4, 4), (32, 32, 3, 3)) == "rows"
    assert algo((128, 8, 16, 16), (8, 8, 3, 3)) == "rows"
    assert algo((128, 16, 32, 32), (16, 16, 3, 3), padding=(1, 0)) == "im2col"  # thin, but no "same" width
    assert algo((32, 64, 56, 56), (64, 64, 3, 3)) == "winograd4"  # over 32 channels, up to 128: F(4x4)
    assert algo((128, 48, 16, 16), (48, 48, 3, 3)) == "winograd4"
    assert algo((128, 64, 8, 8), (64, 64, 3, 3)) == "winograd4"
    assert algo((128, 64, 4, 4), (64, 64, 3, 3)) == "winograd4"  # 16 pixels
    assert algo((32, 128, 28, 28), (128, 128, 3, 3)) == "winograd4"
    assert algo((32, 128, 7, 7), (128, 128, 3, 3)) == "winograd4"
    assert algo((32, 256, 14, 14), (256, 256, 3, 3)) == "winograd2"  # over 128 channels: F(2x2)
    assert algo((32, 512, 4, 4), (512, 512, 3, 3)) == "winograd2"
    assert algo((16, 256, 2, 2), (256, 256, 3, 3)) == "im2col"  # maps under 4x4: one padded tile, im2col
    assert algo((16, 512, 1, 1), (512, 512, 3, 3)) == "im2col"
    assert algo((128, 64, 8, 8), (64, 64, 3, 3), stride=(2, 2)) == "parity"  # 3x3 at stride 2, even map
    assert algo((128, 64, 7, 7), (64, 64, 3, 3), stride=(2, 2)) == "im2col"  # an odd map: not by planes
    assert algo((128, 64, 9, 9), (64, 64, 3, 3), stride=(3, 3)) == "im2col"  # ineligible for all: stride 3
    assert algo((128, 64, 8, 8), (64, 64, 1, 1), padding=(0, 0)) == "im2col"  # kernel
    assert algo((128, 64, 8, 8), (64, 32, 3, 3), groups=2) == "im2col"  # groups
    assert algo((128, 64, 8, 8), (64, 64, 3, 3), dilation=(2, 2), padding=(2, 2)) == "im2col"  # dilation
    assert algo((128, 16, 32, 32), (16, 16, 3, 3), xp=types.ModuleType("gpu_xp")) == "im2col"  # auto on CuPy


def test_forcing_a_path_with_the_flag_and_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MINISE_CONV_ALGORITHM", raising=False)
    with conv_algorithm("winograd4"):
        assert algo((2, 3, 5, 5), (4, 3, 3, 3)) == "winograd4"
        assert algo((2, 3, 5, 5), (4, 3, 3, 3), stride=(2, 2)) == "im2col"  # forcing never makes a case eligible
        with conv_algorithm("im2col"):
            assert algo((128, 64, 8, 8), (64, 64, 3, 3)) == "im2col"
        assert algo((2, 3, 5, 5), (4, 3, 3, 3)) == "winograd4"  # restored
    monkeypatch.setenv("MINISE_CONV_ALGORITHM", "winograd2")
    assert algo((2, 3, 5, 5), (4, 3, 3, 3)) == "winograd2"
    monkeypatch.setenv("MINISE_CONV_ALGORITHM", "fast")
    with pytest.raises(ValueError, match=r"conv2d: MINISE_CONV_ALGORITHM algorithm 'fast' is not one of"):
        algo((2, 3, 5, 5), (4, 3, 3, 3))
    with pytest.raises(ValueError, match=r"set_conv_algorithm: algorithm 'winograd3' is not one of"):
        set_conv_algorithm("winograd3")


def test_the_chosen_path_is_the_one_that_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MINISE_CONV_ALGORITHM", raising=False)
    calls: list[int] = []
    real = winograd.conv3x3
    monkeypatch.setattr(winograd, "conv3x3", lambda x, w, p, m=2, **kw: calls.append(m) or real(x, w, p, m, **kw))
    x = minise.Tensor(np.zeros((1, 64, 8, 8), np.float32), requires_grad=True)
    w = minise.Tensor(np.zeros((64, 64, 3, 3), np.float32), requires_grad=True)
    F.conv2d(x, w, padding=1).sum().backward()
    assert calls == [4, 4]  # F(4x4) for 64 channels on 8x8: forward and input gradient
    calls.clear()
    F.conv2d(x[:, :16], w[:16, :16], padding=1)  # 16 channels: im2col
    assert calls == []


# --------------------------------------------------------------------------------------------------
# the checks catch planted mistakes
# --------------------------------------------------------------------------------------------------
def test_a_wrong_transform_matrix_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """A sign error in G (g0 - g1 + g2 written g0 + g1 + g2) fails the 1-D identity and the naive-loop check."""
    bt, g_, at = (np.asarray(t, dtype=np.float64) for t in winograd.TRANSFORMS[2])
    wrong_g = g_.copy()
    wrong_g[2, 1] = 0.5
    monkeypatch.setitem(winograd.TRANSFORMS, 2, (bt, wrong_g, at))
    with pytest.raises(AssertionError):
        test_1d_minimal_filtering_is_correlation(2)
    xa, wa, ba = BATCH_1.arrays()
    y = run_conv(np, BATCH_1, "winograd2", np.ones((1, 3, 5, 4)))[0]
    assert not np.allclose(y, naive_conv2d(xa, wa, ba, padding=(1, 1)), rtol=1e-10, atol=1e-10)


def test_a_wrong_weight_gradient_is_caught_by_gradcheck(monkeypatch: pytest.MonkeyPatch) -> None:
    """dW with the rows and columns of the transformed tile swapped (G^T dU^T G, a kernel transposed in
    space) fails gradcheck on the weight, and only there."""
    real = winograd.weight_grad_chunk
    monkeypatch.setattr(winograd, "weight_grad_chunk", lambda *args: real(*args).transpose(1, 0, 2, 3))
    x, w, _ = conv_tensors(np, *EXACT_TILES.arrays())
    with conv_algorithm("winograd2"):
        report = minise.gradcheck(lambda x, w: F.conv2d(x, w, padding=1), x, w, raise_on_failure=False)
    assert [r.index for r in report.inputs if not r.ok] == [1]
