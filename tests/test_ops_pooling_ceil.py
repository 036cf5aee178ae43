"""max_pool2d with PyTorch's ceil_mode, and its rules for -inf and NaN windows, against PyTorch.

ceil_mode keeps a last partial window when it starts inside the input or the left padding. Padding
never wins a window (a window of real -inf values hands its gradient to its first real input), and a
window holding a NaN outputs NaN and hands its gradient to the NaN, as torch's CPU kernel.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import requires_torch, to_xp
from hypothesis import example, given, settings
from hypothesis import strategies as st
from strategies import PoolCase, pool_cases

import minise
import minise.functional as F
import minise.nn as nn
from minise import backend
from minise.functional.pooling import MaxPool2dOp, pool_out_size


def _tensor(xp, a):
    return minise.Tensor(to_xp(xp, np.array(a, dtype=np.float64)), requires_grad=True)


# hypothesis can draw the same kernel, stride and padding that pool_cases draws, plus ceil_mode
CEIL_CORNERS = (
    PoolCase(n=1, c=1, h=5, w=5, kernel=(2, 2), stride=(2, 2), seed=1),  # batch 1, one channel, odd size
    PoolCase(n=2, c=3, h=1, w=1, kernel=(1, 1), stride=(1, 1), seed=2),  # 1x1 spatial
    PoolCase(n=2, c=2, h=6, w=7, kernel=(3, 3), stride=(2, 3), padding=(1, 1), seed=3),  # ResNet's stem, ceiled
    PoolCase(n=1, c=2, h=4, w=4, kernel=(3, 2), stride=(3, 3), padding=(1, 1), seed=4),  # last window in padding
)


def with_ceil_corners(test):
    for case in CEIL_CORNERS:
        test = example(case=case, ceil_mode=True)(test)
    return test


# --------------------------------------------------------------------------------------------------
# the output size
# --------------------------------------------------------------------------------------------------
def test_pool_out_size_is_floor_or_the_ceil_rule() -> None:
    for size in range(1, 10):
        for k in range(1, 5):
            for s in range(1, 4):
                for p in range(k // 2 + 1):
                    if k > size + 2 * p:
                        continue
                    floor = pool_out_size(size, k, s, p)
                    ceil = pool_out_size(size, k, s, p, ceil_mode=True)
                    assert floor == (size + 2 * p - k) // s + 1
                    assert ceil in (floor, floor + 1)
                    assert (ceil - 1) * s < size + p  # the last window starts inside input or left padding
                    if ceil == floor + 1:  # the extra window is partial: it runs past the padded input
                        assert (ceil - 1) * s + k > size + 2 * p


@requires_torch
@pytest.mark.torch
def test_pool_out_size_matches_torch_everywhere_in_a_grid() -> None:
    import torch

    checked = 0
    for size in range(1, 10):
        for k in range(1, 5):
            for s in range(1, 5):
                for p in range(k // 2 + 1):
                    if k > size + 2 * p:
                        continue
                    for ceil_mode in (False, True):
                        x = torch.zeros(1, 1, size, size)
                        theirs = torch.nn.functional.max_pool2d(x, k, s, p, ceil_mode=ceil_mode).shape[-1]
                        assert pool_out_size(size, k, s, p, ceil_mode) == theirs, (size, k, s, p, ceil_mode)
                        checked += 1
    assert checked > 300


# --------------------------------------------------------------------------------------------------
# gradcheck and torch over drawn shapes, ceil_mode on and off
# --------------------------------------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(case=pool_cases(), ceil_mode=st.booleans())
@with_ceil_corners
def test_max_pool2d_ceil_mode_gradcheck(xp, case: PoolCase, ceil_mode: bool) -> None:
    x = _tensor(xp, case.x("distinct"))
    y = F.max_pool2d(x, case.kernel, case.stride, case.padding, ceil_mode=ceil_mode)
    oh = pool_out_size(case.h, case.kernel[0], case.stride[0], case.padding[0], ceil_mode)
    ow = pool_out_size(case.w, case.kernel[1], case.stride[1], case.padding[1], ceil_mode)
    assert y.shape == (case.n, case.c, oh, ow)
    assert np.isfinite(y.numpy()).all()  # every window, the partial ones too, holds a real input
    fn = lambda t: F.max_pool2d(t, case.kernel, case.stride, case.padding, ceil_mode=ceil_mode)  # noqa: E731
    assert minise.gradcheck(fn, x).ok


@requires_torch
@pytest.mark.torch
@settings(max_examples=40, deadline=None)
@given(case=pool_cases(), ceil_mode=st.booleans())
@with_ceil_corners
def test_max_pool2d_ceil_mode_matches_torch(xp, case: PoolCase, ceil_mode: bool) -> None:
    import torch

    xa = case.x("distinct")
    x, tx = _tensor(xp, xa), torch.tensor(xa, requires_grad=True)
    y = F.max_pool2d(x, case.kernel, case.stride, case.padding, ceil_mode=ceil_mode)
    ty = torch.nn.functional.max_pool2d(tx, case.kernel, case.stride, case.padding, ceil_mode=ceil_mode)
    gy = np.random.default_rng(case.seed).standard_normal(tuple(ty.shape))
    y.backward(to_xp(xp, gy))
    ty.backward(torch.tensor(gy))
    np.testing.assert_array_equal(y.numpy(), ty.detach().numpy())
    np.testing.assert_allclose(backend.to_host(x.grad), tx.grad.numpy(), rtol=1e-14, atol=1e-14)


def test_max_pool2d_layer_passes_ceil_mode() -> None:
    x = minise.tensor(np.random.default_rng(0).normal(size=(1, 1, 5, 5)))
    assert nn.MaxPool2d(2)(x).shape == (1, 1, 2, 2)
    layer = nn.MaxPool2d(2, ceil_mode=True)
    assert layer(x).shape == (1, 1, 3, 3) and "ceil_mode=True" in repr(layer)


# --------------------------------------------------------------------------------------------------
# -inf and NaN windows
# --------------------------------------------------------------------------------------------------
def _special_inputs(seed: int, shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape)
    all_inf = np.full(shape, -np.inf)
    some_inf = np.where(rng.random(shape) < 0.6, -np.inf, x)
    nans = np.where(rng.random(shape) < 0.2, np.nan, x)
    inf_and_nan = np.where(rng.random(shape) < 0.3, np.nan, some_inf)
    return {"all -inf": all_inf, "mostly -inf": some_inf, "NaN": nans, "-inf and NaN": inf_and_nan}


def _compare_with_torch(xp, xa, kernel, stride, padding, ceil_mode, op=None):
    """Our y and dx, and torch's, for the same input and a random upstream gradient."""
    import torch

    x = _tensor(xp, xa)
    if op is None:
        y = F.max_pool2d(x, kernel, stride, padding, ceil_mode=ceil_mode)
    else:
        y = op.apply(x)
    tx = torch.tensor(xa, requires_grad=True)
    ty = torch.nn.functional.max_pool2d(tx, kernel, stride, padding, ceil_mode=ceil_mode)
    gy = np.random.default_rng(0).uniform(1, 2, size=tuple(ty.shape))
    y.backward(to_xp(xp, gy))
    ty.backward(torch.tensor(gy))
    return (y.numpy(), backend.to_host(x.grad)), (ty.detach().numpy(), tx.grad.numpy())


@requires_torch
@pytest.mark.torch
@settings(max_examples=30, deadline=None)
@given(
    case=pool_cases(), ceil_mode=st.booleans(), kind=st.sampled_from(["all -inf", "mostly -inf", "NaN", "-inf and NaN"])
)
@example(case=CEIL_CORNERS[2], ceil_mode=True, kind="all -inf")
@example(case=CEIL_CORNERS[3], ceil_mode=True, kind="NaN")
def test_max_pool2d_inf_and_nan_windows_match_torch(xp, case: PoolCase, ceil_mode: bool, kind: str) -> None:
    xa = _special_inputs(case.seed, case.x_shape)[kind]
    (y, dx), (ty, tdx) = _compare_with_torch(xp, xa, case.kernel, case.stride, case.padding, ceil_mode)
    np.testing.assert_array_equal(y, ty)  # NaN where torch has NaN, -inf where torch has -inf
    np.testing.assert_allclose(dx, tdx, rtol=1e-14, atol=0)
    # every window hands its whole gradient to a real input: nothing is lost to padding
    gy_total = np.random.default_rng(0).uniform(1, 2, size=y.shape).sum()
    np.testing.assert_allclose(dx.sum(), gy_total, rtol=1e-12)


def test_all_inf_window_sends_its_gradient_to_its_first_real_input_not_to_padding() -> None:
    x = _tensor(np, np.full((1, 1, 2, 2), -np.inf))
    y = F.max_pool2d(x, 2, stride=1, padding=1)  # 3x3 windows of 2x2, each with padding in its top-left
    y.backward(np.ones(y.shape))
    assert (y.numpy() == -np.inf).all()
    np.testing.assert_array_equal(x.grad[0, 0], [[4.0, 2.0], [2.0, 1.0]])  # each window's first real input


def test_nan_window_outputs_nan_and_routes_its_gradient_to_the_nan() -> None:
    xa = np.array([[[[1.0, 7.0], [np.nan, 2.0]]]])
    x = _tensor(np, xa)
    y = F.max_pool2d(x, 2)
    y.backward(np.array([[[[5.0]]]]))
    assert np.isnan(y.item())
    np.testing.assert_array_equal(x.grad[0, 0], [[0.0, 0.0], [5.0, 0.0]])


@requires_torch
@pytest.mark.torch
def test_the_torch_comparison_catches_padding_that_wins() -> None:
    """The -inf test bites: an op whose argmax starts at the window's top-left (padding) differs from torch."""

    class PaddingWins(MaxPool2dOp):
        def _first_real(self, xp, oh, ow, dtype):
            return xp.zeros((oh, ow), dtype=dtype)  # planted: the first offset, padding or not

    xa = np.full((1, 1, 3, 3), -np.inf)
    (y, dx), (ty, tdx) = _compare_with_torch(np, xa, (3, 3), (2, 2), (1, 1), False)
    np.testing.assert_array_equal(dx, tdx)
    (y, dx), (ty, tdx) = _compare_with_torch(np, xa, (3, 3), (2, 2), (1, 1), False, PaddingWins((3, 3), (2, 2), (1, 1)))
    assert not np.array_equal(dx, tdx) and dx.sum() < tdx.sum()  # gradient lost to padding
