"""batch_norm: gradients proven in training and in evaluation mode, the forward and the running
statistics (updated in place, with the unbiased variance) held to the formula and to PyTorch,
weight/bias None, 2-D and 4-D inputs, and the batch cut into chunks on one or two threads."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import NON_CONTIGUOUS_LAYOUTS, non_contiguous_leaf, requires_torch, to_xp
from hypothesis import example, given, settings
from strategies import BatchNormCase, batch_norm_cases

import minise
import minise.functional as F
from minise import backend, cpu
from minise.functional.fused import batch_norm_relu


def reference_batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps):
    """The textbook formula in NumPy: y and the new running statistics (the inputs are not touched)."""
    axes = (0, *range(2, x.ndim))
    per_channel = (1, -1) + (1,) * (x.ndim - 2)
    if training:
        m = x.size // x.shape[1]
        mu, var = x.mean(axis=axes), x.var(axis=axes)  # biased, for normalising
        new_mean = (1 - momentum) * running_mean + momentum * mu
        new_var = (1 - momentum) * running_var + momentum * var * m / (m - 1)  # unbiased, for the running estimate
    else:
        mu, var = running_mean, running_var
        new_mean, new_var = running_mean, running_var
    y = (x - mu.reshape(per_channel)) / np.sqrt(var.reshape(per_channel) + eps)
    if weight is not None:
        y = y * weight.reshape(per_channel)
    if bias is not None:
        y = y + bias.reshape(per_channel)
    return y, new_mean, new_var


def _inputs(xp, case: BatchNormCase):
    a = case.arrays()
    t = {
        k: None if a[k] is None else minise.Tensor(to_xp(xp, a[k].copy()), requires_grad=True)
        for k in ("x", "weight", "bias")
    }
    return a, t


BATCH_1 = BatchNormCase(shape=(1, 3, 2, 2), seed=1)
ONE_CHANNEL = BatchNormCase(shape=(4, 1, 2, 3), seed=2)
SPATIAL_1X1 = BatchNormCase(shape=(3, 2, 1, 1), seed=3)
TWO_VALUES = BatchNormCase(shape=(2, 3), affine=False, momentum=1.0, seed=4)  # the least a variance needs
NO_AFFINE_4D = BatchNormCase(shape=(2, 2, 2, 2), affine=False, seed=5)


def with_corner_examples(**extra):
    def add(test):
        for case in (BATCH_1, ONE_CHANNEL, SPATIAL_1X1, TWO_VALUES, NO_AFFINE_4D):
            test = example(case=case, **extra)(test)
        return test

    return add


# --------------------------------------------------------------------------------------------------
# gradients proven by finite differences
# --------------------------------------------------------------------------------------------------
@settings(max_examples=30, deadline=None)
@given(case=batch_norm_cases())
@with_corner_examples()
def test_batch_norm_gradcheck_training(xp, case: BatchNormCase) -> None:
    _, t = _inputs(xp, case)
    fn = lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True, momentum=case.momentum, eps=case.eps)
    report = minise.gradcheck(fn, t["x"], t["weight"], t["bias"])
    assert report.ok and len(report.inputs) == (3 if case.affine else 1)


@settings(max_examples=30, deadline=None)
@given(case=batch_norm_cases())
@with_corner_examples()
def test_batch_norm_gradcheck_eval(xp, case: BatchNormCase) -> None:
    a, t = _inputs(xp, case)
    rm, rv = to_xp(xp, a["running_mean"]), to_xp(xp, a["running_var"])
    fn = lambda x, w, b: F.batch_norm(x, rm, rv, w, b, training=False, eps=case.eps)
    assert minise.gradcheck(fn, t["x"], t["weight"], t["bias"]).ok


@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_gradcheck_with_only_weight_or_only_bias(xp, training: bool) -> None:
    a = BatchNormCase(shape=(3, 2, 2, 1), seed=9).arrays()
    x, w, b = (minise.Tensor(to_xp(xp, a[k].copy()), requires_grad=True) for k in ("x", "weight", "bias"))
    rm, rv = to_xp(xp, a["running_mean"]), to_xp(xp, a["running_var"])
    assert minise.gradcheck(lambda x, w: F.batch_norm(x, rm, rv, w, None, training=training), x, w).ok
    assert minise.gradcheck(lambda x, b: F.batch_norm(x, rm, rv, None, b, training=training), x, b).ok
    x_const = x.detach()
    assert minise.gradcheck(lambda w, b: F.batch_norm(x_const, rm, rv, w, b, training=training), w, b).ok


# --------------------------------------------------------------------------------------------------
# the formula and the running statistics
# --------------------------------------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(case=batch_norm_cases())
@with_corner_examples()
def test_batch_norm_training_matches_formula_and_updates_running_stats_in_place(xp, case: BatchNormCase) -> None:
    a, t = _inputs(xp, case)
    rm, rv = to_xp(xp, a["running_mean"].copy()), to_xp(xp, a["running_var"].copy())
    rm_id, rv_id = id(rm), id(rv)
    y = F.batch_norm(t["x"], rm, rv, t["weight"], t["bias"], training=True, momentum=case.momentum, eps=case.eps)
    y_ref, mean_ref, var_ref = reference_batch_norm(
        a["x"], a["running_mean"], a["running_var"], a["weight"], a["bias"], True, case.momentum, case.eps
    )
    np.testing.assert_allclose(y.numpy(), y_ref, rtol=1e-10, atol=1e-12)
    assert id(rm) == rm_id and id(rv) == rv_id  # the very arrays passed in
    np.testing.assert_allclose(backend.to_host(rm), mean_ref, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(backend.to_host(rv), var_ref, rtol=1e-12, atol=1e-14)


def test_running_var_uses_the_unbiased_variance() -> None:
    """Two values 0 and 2 per channel: biased variance 1, unbiased 2; momentum 1 copies the batch statistics."""
    x = np.array([[0.0, 10.0], [2.0, 14.0]])  # (N=2, C=2)
    rm, rv = np.zeros(2), np.ones(2)
    y = F.batch_norm(minise.Tensor(x), rm, rv, training=True, momentum=1.0, eps=0.0)
    np.testing.assert_allclose(rm, [1.0, 12.0])
    np.testing.assert_allclose(rv, [2.0, 8.0])
    np.testing.assert_allclose(y.numpy(), [[-1.0, -1.0], [1.0, 1.0]])  # normalised with the biased variance


def test_running_stats_given_as_tensors_are_updated_in_place() -> None:
    x = np.random.default_rng(0).standard_normal((5, 3))
    rm, rv = minise.Tensor(np.zeros(3)), minise.Tensor(np.ones(3))
    data_m, data_v = rm.data, rv.data
    F.batch_norm(minise.Tensor(x), rm, rv, training=True, momentum=0.1)
    assert rm.data is data_m and rv.data is data_v
    np.testing.assert_allclose(rm.data, 0.1 * x.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(rv.data, 0.9 + 0.1 * x.var(axis=0, ddof=1), rtol=1e-12)


@settings(max_examples=40, deadline=None)
@given(case=batch_norm_cases())
@with_corner_examples()
def test_batch_norm_eval_uses_running_stats_and_leaves_them(xp, case: BatchNormCase) -> None:
    a, t = _inputs(xp, case)
    rm, rv = to_xp(xp, a["running_mean"].copy()), to_xp(xp, a["running_var"].copy())
    y = F.batch_norm(t["x"], rm, rv, t["weight"], t["bias"], training=False, eps=case.eps)
    y_ref, _, _ = reference_batch_norm(
        a["x"], a["running_mean"], a["running_var"], a["weight"], a["bias"], False, 0, case.eps
    )
    np.testing.assert_allclose(y.numpy(), y_ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(backend.to_host(rm), a["running_mean"])
    np.testing.assert_array_equal(backend.to_host(rv), a["running_var"])
    gy = np.random.default_rng(case.seed).standard_normal(y.shape)
    y.backward(to_xp(xp, gy))
    per_channel = (1, -1) + (1,) * (len(case.shape) - 2)
    scale = (1.0 if a["weight"] is None else a["weight"]) / np.sqrt(a["running_var"] + case.eps)
    np.testing.assert_allclose(
        backend.to_host(t["x"].grad), gy * np.reshape(scale, per_channel), rtol=1e-10, atol=1e-12
    )


def test_batch_norm_training_output_is_normalised() -> None:
    x = np.random.default_rng(3).standard_normal((6, 4, 3, 3)) * 5 + 2
    y = F.batch_norm(minise.Tensor(x), None, None, training=True, eps=0.0).numpy()
    np.testing.assert_allclose(y.mean(axis=(0, 2, 3)), 0.0, atol=1e-12)
    np.testing.assert_allclose(y.var(axis=(0, 2, 3)), 1.0, rtol=1e-12)


# --------------------------------------------------------------------------------------------------
# chunks, threads and memory layouts
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("training", [True, False])
def test_chunked_batch_norm_matches_formula(monkeypatch: pytest.MonkeyPatch, training: bool, threads: int) -> None:
    """The batch cut into chunks of one image, on 1 or 2 threads: same values and gradients as the formula."""
    monkeypatch.setenv("MINISE_NUM_THREADS", str(threads))
    monkeypatch.setattr(cpu, "chunk_size", lambda *args, **kwargs: 1)
    case = BatchNormCase(shape=(5, 3, 3, 2), seed=7)
    a = case.arrays()
    rm, rv = a["running_mean"].copy(), a["running_var"].copy()
    x, w, b = (minise.Tensor(a[k].copy(), requires_grad=True) for k in ("x", "weight", "bias"))
    y = F.batch_norm(x, rm, rv, w, b, training=training)
    y_ref, mean_ref, var_ref = reference_batch_norm(
        a["x"], a["running_mean"], a["running_var"], a["weight"], a["bias"], training, 0.1, 1e-5
    )
    np.testing.assert_allclose(y.numpy(), y_ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(rm, mean_ref, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(rv, var_ref, rtol=1e-12, atol=1e-14)
    fn = lambda x, w, b: F.batch_norm(x, a["running_mean"], a["running_var"], w, b, training=training)
    assert minise.gradcheck(fn, x, w, b).ok


@pytest.mark.parametrize("plane_bytes", [0, cpu.PLANE_BYTES], ids=["views", "planes"])
@pytest.mark.parametrize("fused_relu", [False, True], ids=["bn", "bn-relu"])
def test_per_channel_coefficients_as_planes_or_views(
    monkeypatch: pytest.MonkeyPatch, plane_bytes: int, fused_relu: bool
) -> None:
    """The coefficients repeated along the pixels (cpu.channel_plane) or broadcast as (1, C, 1) views (planes
    over PLANE_BYTES): the same values as the formula and gradients that pass gradcheck, in training."""
    monkeypatch.setattr(cpu, "PLANE_BYTES", plane_bytes)
    case = BatchNormCase(shape=(3, 4, 3, 5), seed=11)
    a = case.arrays()
    x, w, b = (minise.Tensor(a[k].copy(), requires_grad=True) for k in ("x", "weight", "bias"))
    op = batch_norm_relu if fused_relu else F.batch_norm
    y = op(x, None, None, w, b, training=True)
    y_ref = reference_batch_norm(a["x"], np.zeros(4), np.ones(4), a["weight"], a["bias"], True, 0.1, 1e-5)[0]
    np.testing.assert_allclose(y.numpy(), np.maximum(y_ref, 0) if fused_relu else y_ref, rtol=1e-10, atol=1e-12)
    assert minise.gradcheck(lambda x, w, b: op(x, None, None, w, b, training=True), x, w, b).ok


def test_coefficients_laid_out_channel_after_channel_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """A planted mistake: a plane tiled (c0 c1 c2 c0 c1 c2 ...) instead of repeated (c0 c0 ... c1 c1 ...) gives
    every pixel another channel's coefficient, and the check against the formula fails."""
    monkeypatch.setattr(cpu, "channel_plane", lambda xp, v, length: np.tile(v, length).reshape(1, v.shape[0], length))
    a = BatchNormCase(shape=(3, 4, 3, 5), seed=11).arrays()
    y = F.batch_norm(minise.Tensor(a["x"]), None, None, a["weight"], a["bias"], training=True)
    y_ref = reference_batch_norm(a["x"], np.zeros(4), np.ones(4), a["weight"], a["bias"], True, 0.1, 1e-5)[0]
    assert not np.allclose(y.numpy(), y_ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("fused_relu", [False, True], ids=["bn", "bn-relu"])
def test_a_leaf_input_keeps_batch_norms_dx_without_a_copy(monkeypatch: pytest.MonkeyPatch, fused_relu: bool) -> None:
    """dx is allocated as (N, C, H, W) and written through its (N, C, H*W) view (backend.elementwise's shape=),
    so it owns its memory and becomes the leaf's .grad as it is: autograd copies nothing."""
    import minise.autograd as autograd  # noqa: PLC0415

    returned: list[object] = []
    real = autograd._owned
    monkeypatch.setattr(autograd, "_owned", lambda gx, *rest: returned.append(gx) or real(gx, *rest))
    x = minise.Tensor(np.random.default_rng(0).standard_normal((2, 3, 4, 5)), requires_grad=True)
    op = batch_norm_relu if fused_relu else F.batch_norm
    op(x, None, None, training=True).backward(np.ones((2, 3, 4, 5)))
    assert x.grad is returned[0] and x.grad.base is None


def test_channel_plane_repeats_each_channel_along_its_pixels() -> None:
    plane = cpu.channel_plane(np, np.array([1.0, 2.0, 3.0]), 4)
    np.testing.assert_array_equal(plane, [[[1.0] * 4, [2.0] * 4, [3.0] * 4]])
    big = cpu.channel_plane(np, np.zeros(64, np.float32), cpu.PLANE_BYTES // (64 * 4) + 1)  # over the limit
    assert big.shape == (1, 64, 1)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("layout", NON_CONTIGUOUS_LAYOUTS)
def test_batch_norm_of_a_non_contiguous_input(layout: str, training: bool) -> None:
    """batch_norm of a view in another memory layout must equal batch_norm of the contiguous input.

    BUG (swap-hw, fortran): the chunked BatchNormOp allocates ``y = xp.empty_like(x)`` (and ``dx``
    likewise), which keeps x's memory layout, then writes through ``y.reshape(n, c, -1)``; where H
    and W cannot merge into one axis (a spatially transposed or column-major x) that reshape is a
    copy, so y and dx are left as uninitialised memory. Fix: ``xp.empty(x.shape, dtype=x.dtype)``.
    """
    rng = np.random.default_rng(0)
    x_nchw = rng.standard_normal((3, 2, 4, 5))
    leaf, x, back = non_contiguous_leaf(x_nchw, layout)
    assert not x.data.flags.c_contiguous
    rm, rv = np.zeros(2), np.ones(2)
    y = F.batch_norm(x, rm, rv, training=training)
    gy = rng.standard_normal(y.shape)
    y.backward(gy)
    ref = minise.Tensor(x_nchw.copy(), requires_grad=True)
    y_ref = F.batch_norm(ref, np.zeros(2), np.ones(2), training=training)
    y_ref.backward(gy)
    np.testing.assert_allclose(y.numpy(), y_ref.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(back(leaf.grad), ref.grad, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------------------------------
# PyTorch
# --------------------------------------------------------------------------------------------------
@requires_torch
@pytest.mark.torch
@settings(max_examples=40, deadline=None)
@given(case=batch_norm_cases())
@with_corner_examples()
@example(case=BatchNormCase(shape=(3, 2, 4), seed=8))  # (N, C, L) too
def test_batch_norm_matches_torch(xp, case: BatchNormCase) -> None:
    import torch

    for training in (True, False):
        a, t = _inputs(xp, case)
        rm, rv = to_xp(xp, a["running_mean"].copy()), to_xp(xp, a["running_var"].copy())
        y = F.batch_norm(
            t["x"], rm, rv, t["weight"], t["bias"], training=training, momentum=case.momentum, eps=case.eps
        )
        gy = np.random.default_rng(case.seed).standard_normal(y.shape)
        y.backward(to_xp(xp, gy))
        tt = {k: None if a[k] is None else torch.tensor(a[k], requires_grad=True) for k in ("x", "weight", "bias")}
        trm, trv = torch.tensor(a["running_mean"]), torch.tensor(a["running_var"])
        ty = torch.nn.functional.batch_norm(
            tt["x"], trm, trv, tt["weight"], tt["bias"], training=training, momentum=case.momentum, eps=case.eps
        )
        ty.backward(torch.tensor(gy))
        np.testing.assert_allclose(y.numpy(), ty.detach().numpy(), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(backend.to_host(rm), trm.numpy(), rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(backend.to_host(rv), trv.numpy(), rtol=1e-12, atol=1e-14)
        for k in ("x", "weight", "bias"):
            if tt[k] is not None:
                np.testing.assert_allclose(
                    backend.to_host(t[k].grad), tt[k].grad.numpy(), rtol=1e-9, atol=1e-11, err_msg=k
                )


@requires_torch
@pytest.mark.torch
@pytest.mark.parametrize("which", ["weight only", "bias only", "neither"])
def test_batch_norm_optional_affine_matches_torch(xp, which: str) -> None:
    import torch

    a = BatchNormCase(shape=(4, 3, 2, 2), seed=6).arrays()
    w = a["weight"] if which == "weight only" else None
    b = a["bias"] if which == "bias only" else None
    x = minise.Tensor(to_xp(xp, a["x"].copy()), requires_grad=True)
    y = F.batch_norm(
        x, None, None, None if w is None else to_xp(xp, w), None if b is None else to_xp(xp, b), training=True
    )
    y.backward(to_xp(xp, np.arange(y.size, dtype=np.float64).reshape(y.shape) % 3))
    tx = torch.tensor(a["x"], requires_grad=True)
    tw = None if w is None else torch.tensor(w)
    tb = None if b is None else torch.tensor(b)
    ty = torch.nn.functional.batch_norm(tx, None, None, tw, tb, training=True)
    ty.backward(torch.tensor(np.arange(y.size, dtype=np.float64).reshape(y.shape) % 3))
    np.testing.assert_allclose(y.numpy(), ty.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(backend.to_host(x.grad), tx.grad.numpy(), rtol=1e-9, atol=1e-11)
