"""The CuPy contract, part 2: the stand-in (tests/cupy_standin) enforces CuPy's rules, and catches what a GPU
would. These tests check the stand-in itself; tests/test_cupy_path.py runs minise under it."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import cupy_standin
import numpy as np
import pytest
from cupy_standin import IMPLICIT, StandinRefusal

import minise
from minise import backend

RECORDED = json.loads((Path(cupy_standin.__file__).parent / "cupy_names.json").read_text())


def test_a_planted_numpy_asarray_of_a_device_array_is_caught(standin: ModuleType, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The classic slip on the CuPy path: ``np.asarray(a)`` where ``a`` lives on the device. Real CuPy raises
    TypeError; so does the stand-in, inside minise's own code."""
    t = minise.tensor(np.arange(6, dtype=np.float32), backend_name="cupy")
    np.testing.assert_array_equal(t.numpy(), np.arange(6))  # the correct path: an explicit copy (.get())
    monkeypatch.setattr(backend, "to_host", lambda a: np.asarray(a))  # the planted mistake
    with pytest.raises(TypeError, match="Implicit conversion to a NumPy array is not allowed"):
        t.numpy()
    with pytest.raises(TypeError, match="Implicit conversion"):
        np.asarray(standin.ones(3))
    with pytest.raises(TypeError, match="Implicit conversion"):
        np.array(standin.ones(3), dtype=np.float64)


def test_host_arrays_are_refused_by_device_ops(standin: ModuleType) -> None:
    d, h = standin.ones(3, dtype=np.float32), np.ones(3, dtype=np.float32)
    for call in (
        lambda: standin.add(d, h),
        lambda: d + h,
        lambda: h * d,  # NumPy hands the ufunc to the device array, which refuses the host operand
        lambda: standin.matmul(h, d),
        lambda: standin.sum(h),
        lambda: standin.maximum(d, 0, out=np.empty(3, np.float32)),
    ):
        with pytest.raises(TypeError, match="numpy.ndarray"):
            call()
    standin.add(d, np.float32(2))  # NumPy and Python scalars are fine, as in CuPy
    assert (d + 2.0).shape == (3,)
    with pytest.raises(ValueError, match="non-scalar numpy.ndarray cannot be used for fill"):
        d[:] = h  # CuPy: basic-indexed assignment of a host array
    d[np.array([0, 2])] = np.array([5.0, 6.0])  # advanced indexing copies host index and values over, as CuPy
    assert d.tolist() == [5.0, 1.0, 6.0]


def test_numpy_functions_on_device_arrays_run_cupys_and_stay_on_the_device(standin: ModuleType) -> None:
    d = standin.arange(6, dtype=np.float32).reshape(2, 3)
    for result in (np.sum(d), np.sum(d, axis=0), np.maximum(d, 1), np.exp(d), np.concatenate([d, d]), np.mean(d)):
        assert type(result) is standin.ndarray  # __array_function__ / __array_ufunc__ dispatch, as CuPy
    assert float(np.sum(d)) == 15.0
    assert type(d.sum()) is standin.ndarray and d.sum().ndim == 0  # reductions give 0-d device arrays
    with pytest.raises(TypeError, match="no implementation found"):
        np.busday_count(d, d)  # a NumPy function CuPy does not have: NumPy refuses the device array


def test_only_real_cupy_names_are_offered(standin: ModuleType) -> None:
    assert not hasattr(standin, "errstate")
    assert not hasattr(standin, "busday_count")
    assert hasattr(standin, "fuse") and hasattr(standin, "add")
    assert set(dir(standin)) <= set(RECORDED["cupy"])
    d = standin.ones(2)
    with pytest.raises(AttributeError):
        d.resize((3,))  # NumPy's ndarray has it, CuPy's does not
    with pytest.raises(AttributeError):
        d.setflags(write=False)
    assert d.ravel().shape == (2,)


def test_the_recorded_names_are_real_cupys() -> None:
    """cupy_names.json was written from the installed CuPy: where real CuPy is importable, it still agrees."""
    real = pytest.importorskip("cupy", reason="real CuPy is not installed (pip install cupy-cuda12x)")
    if getattr(real, "__standin__", False):
        pytest.skip("the stand-in is installed as cupy in this process (MINISE_CUPY_STANDIN=1)")
    import cupyx  # noqa: PLC0415

    assert {n for n in dir(real) if not n.startswith("_")} >= set(RECORDED["cupy"])
    assert set(dir(real.ndarray)) >= set(RECORDED["cupy.ndarray"])
    assert {n for n in dir(cupyx) if not n.startswith("_")} >= set(RECORDED["cupyx"])
    assert real.__version__ == RECORDED["version"] or real.__version__.split(".")[0] == RECORDED["version"][:2]


def test_empty_is_filled_with_nan_so_that_reads_of_unwritten_memory_show(standin: ModuleType) -> None:
    assert np.isnan(standin.empty((2, 3), dtype=np.float32).get()).all()
    assert np.isnan(standin.empty_like(standin.ones(4)).get()).all()
    assert (standin.empty(3, dtype=np.int32).get() == np.iinfo(np.int32).max).all()
    assert np.isnan(standin.ndarray((2,), dtype=np.float32).get()).all()


def test_what_a_cpu_cannot_imitate_is_refused_not_faked(standin: ModuleType) -> None:
    d = standin.ones(3)
    for call in (
        lambda: standin.RawKernel("extern C __global__ void k() {}", "k"),
        lambda: standin.ElementwiseKernel("T x", "T y", "y = x", "copy"),
        lambda: standin.get_default_memory_pool().used_bytes(),
        lambda: standin.cuda.Stream(non_blocking=True),
        lambda: standin.cuda.runtime.memGetInfo(),
        lambda: d.data.ptr,
        lambda: d.get(stream=object()),
    ):
        with pytest.raises(StandinRefusal, match="cupy stand-in: .* is refused"):
            call()
    assert issubclass(StandinRefusal, NotImplementedError)
    assert standin.cuda.runtime.getDeviceCount() == 1  # emulated: one device


def test_fuse_runs_its_body_as_one_counted_call_and_only_ufuncs_inside(standin: ModuleType) -> None:
    @standin.fuse(kernel_name="relu_add")
    def relu_add(x, y):  # type: ignore[no-untyped-def]
        return standin.maximum(x + y, 0)

    x = standin.asarray(np.array([-2.0, 1.0, 3.0], np.float32))
    cupy_standin.reset_counts()
    out = relu_add(x, x)
    assert out.tolist() == [0.0, 2.0, 6.0]
    assert cupy_standin.counts().kernels == 1 and cupy_standin.counts().by_name["cupy.fuse:relu_add"] == 1

    @standin.fuse()
    def axpy(a, x, y):  # type: ignore[no-untyped-def]
        return a * x + y

    assert axpy(2.0, np.array([1.0, 2.0]), np.ones(2)).tolist() == [3.0, 5.0]  # host arrays: a plain call, as CuPy

    @standin.fuse()
    def not_fusable(x):  # type: ignore[no-untyped-def]
        return standin.where(x > 0, x, 0)  # a routine, not a ufunc: refused inside fuse

    with pytest.raises(StandinRefusal, match="inside cupy.fuse"):
        not_fusable(x)

    @standin.fuse()
    def reads_its_shape(x):  # type: ignore[no-untyped-def]
        return x * x.shape[0]  # real CuPy's traced variables have a dtype and ndim, no shape, size or strides

    with pytest.raises(StandinRefusal, match="ndarray.shape inside cupy.fuse"):
        reads_its_shape(x)

    @standin.fuse()
    def reads_dtype_and_ndim(x):  # type: ignore[no-untyped-def]
        return x * (x.ndim if x.dtype == np.float32 else 0)

    assert reads_dtype_and_ndim(x).tolist() == [-2.0, 1.0, 3.0]
    assert x.shape == (3,) and x.nbytes == 12  # outside a fused body, as ever


def test_counts_kernels_not_views(standin: ModuleType) -> None:
    d = standin.ones((4, 6), dtype=np.float32)
    cupy_standin.reset_counts()
    v = d.reshape(6, 4).T[1:]
    _ = d[:, 2]
    assert cupy_standin.counts().kernels == 0
    _ = v * 2
    _ = d.sum(axis=1)
    standin.add(d, 1, out=d)
    _ = d[np.array([0, 1])]
    assert cupy_standin.counts().kernels == 4
    float(d[0, 0])
    assert cupy_standin.counts().transfers == 2  # the host index array, and the scalar read


def test_the_stand_in_is_a_distinct_type_that_minise_sees_as_cupy(standin: ModuleType) -> None:
    d = standin.ones(3)
    assert not isinstance(d, np.ndarray)
    assert backend.backend_name(d) == "cupy" and backend.get_array_module(d) is standin
    assert IMPLICIT.startswith("Implicit conversion to a NumPy array is not allowed")


# ------------------------------------------------------------------ Python floats inside cupy.fuse
def _scalar_kernels(cupy: ModuleType) -> dict[str, object]:
    """Fused bodies that combine a Python float with another scalar, or with an array."""

    def scalar_minus(a, s):  # type: ignore[no-untyped-def]
        return a * (1 - s)  # scalar with scalar, then the array

    def scalar_times(a, s, t):  # type: ignore[no-untyped-def]
        return a * (s * t)

    def array_times(a, s):  # type: ignore[no-untyped-def]
        return a * s  # the scalar meets the array directly

    return {
        f.__name__: cupy.fuse(kernel_name=f"probe_{f.__name__}")(f) for f in (scalar_minus, scalar_times, array_times)
    }


# What real CuPy 14.2 computed on an NVIDIA H200 (cupy-cuda13x 14.2.0, the first GPU run, BENCHMARKS.md "The first
# GPU"): arithmetic among Python floats inside a fused function runs in float16; with an array it is exact.
F16_0_9, F16_0_1 = float(np.float16(0.9)), float(np.float16(0.1))  # 0.89990234375, 0.0999755859375


def _check_fused_scalar_typing(cupy: ModuleType) -> None:
    k = _scalar_kernels(cupy)
    for dtype in (np.float64, np.float32):
        one = cupy.ones(2, dtype=dtype)
        assert float(k["scalar_minus"](one, 0.1)[0]) == float(dtype(F16_0_9))  # not 0.9
        assert float(k["scalar_times"](one, 0.1, 1.0)[0]) == float(dtype(F16_0_1))
        assert float(k["scalar_times"](one, 1e20, 1.0)[0]) == np.inf  # float16 overflows
        assert float(k["array_times"](one, 0.1)[0]) == float(dtype(0.1))  # exact in the array's dtype
        assert k["array_times"](one, 0.1).dtype == dtype
        strong = k["scalar_minus"](one, np.float64(0.1))  # a NumPy scalar is strongly typed: exact, and promotes
        assert float(strong[0]) == 0.9 and strong.dtype == np.float64


@pytest.mark.cupy
def test_python_floats_inside_fuse_are_typed_as_real_cupy_types_them() -> None:
    """On a GPU this checks real CuPy against what the stand-in assumes (under MINISE_CUPY_STANDIN=1, the stand-in)."""
    ok, why = backend.cupy_available()
    if not ok:
        pytest.skip(f"CuPy backend unavailable: {why.split(' - ')[0]}")
    _check_fused_scalar_typing(backend.xp_of_backend("cupy"))


def test_the_stand_in_types_python_floats_inside_fuse_as_cupy_does(standin: ModuleType) -> None:
    _check_fused_scalar_typing(standin)


def test_a_fused_body_that_combines_scalars_shows_cupys_float16_rounding(standin: ModuleType) -> None:
    """The mistake the first GPU found (batch norm's running mean 1e-4 off): ``r * (1 - momentum)`` inside the
    fused body. The stand-in shows it on the CPU; minise's body, given 1 - momentum from Python, is exact."""
    from minise.functional import normalization

    def planted(r, v, momentum, factor):  # type: ignore[no-untyped-def]
        return r * (1 - momentum) + v * (momentum * factor)  # the body before the fix

    r, v = np.array([1.00672432, -2.71116248]), np.array([0.62521528, 0.92394593])
    exact = 0.9 * r + 0.1 * v
    rd, vd = standin.asarray(r), standin.asarray(v)
    wrong = backend.fused(planted, rd, vd, 0.1, 1.0).get()
    assert not np.allclose(wrong, exact, rtol=1e-6)  # float16's 0.8999 and 0.09998
    np.testing.assert_allclose(wrong, F16_0_9 * r + F16_0_1 * v, rtol=1e-15)
    np.testing.assert_allclose(
        backend.fused(normalization._moving_average, rd, vd, 1 - 0.1, 0.1).get(), exact, rtol=1e-15
    )


def test_fused_scalar_follows_one_rule_and_refuses_what_was_not_observed(standin: ModuleType) -> None:
    """FusedScalar (the stand-in's typing of a Python float inside cupy.fuse): float16 among scalars, negation
    included; exact with NumPy scalars (either side) and arrays; comparisons with an array are the array's,
    on scalars alone (and abs, //, %) refused, since CuPy's typing of them was not observed."""
    from cupy_standin._state import FusedScalar

    s = FusedScalar(0.1)
    assert (np.float64(1) - s) == 0.9 and (s * np.int64(2)) == 0.2 and isinstance(np.float32(1) - s, np.floating)
    assert (-s).value == -F16_0_1 and (s / 0).value == np.inf and (True * s).value == F16_0_1
    a = standin.asarray(np.array([0.05, 0.2]))
    assert (s < a).tolist() == [False, True] and (a > s).tolist() == [False, True]
    assert (s * a).tolist() == [0.1 * 0.05, 0.1 * 0.2]
    for unobserved in (lambda: s < 1, lambda: s == 0.1, lambda: abs(s), lambda: s // 1.0, lambda: 2.0 % s):
        with pytest.raises(StandinRefusal, match="not observed"):
            unobserved()
