"""The stand-in modules ``cupy`` and ``cupyx``: every name real CuPy has, and nothing else, each either run on
NumPy under CuPy's rules or refused."""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any

import numpy as np

from cupy_standin import _state
from cupy_standin._array import ndarray

VERSION = _state.NAMES["version"]

# functions that take host data and copy it to the device (every other one refuses a host array)
TRANSFERS = {"array", "asarray", "asanyarray"}


class ufunc:  # noqa: N801  (CuPy's name)
    """A CuPy ufunc: NumPy's ufunc of the same name, on device arrays only. Its ``at`` takes host index
    arrays and values, which CuPy copies to the device (``ufunc.at`` goes through ``_scatter_op``)."""

    def __init__(self, name: str, np_ufunc: np.ufunc) -> None:
        self._np = np_ufunc
        self.name = f"cupy_{name}"  # real CuPy's ufunc names carry this prefix
        self.nin, self.nout, self.nargs, self.types = np_ufunc.nin, np_ufunc.nout, np_ufunc.nargs, np_ufunc.types
        self.__name__ = name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if "out" in kwargs and kwargs["out"] is not None and not isinstance(kwargs["out"], ndarray):
            raise TypeError(
                f"Output arguments must be cupy.ndarray (cupy stand-in: {self.__name__} got {type(kwargs['out'])})"
            )
        if kwargs.get("out", 0) is None:
            del kwargs["out"]
        a, k = _state.unwrap(args, f"cupy.{self.__name__}"), _state.unwrap(kwargs, f"cupy.{self.__name__}")
        _state.count_kernel(f"cupy.{self.__name__}")
        result = self._np(*a, **k)
        return kwargs["out"] if "out" in kwargs else _state.wrap(result)

    def at(self, a: ndarray, indices: Any, b: Any = None) -> None:
        if not isinstance(a, ndarray):
            raise TypeError(f"cupy.{self.__name__}.at: the target must be a cupy.ndarray, got {type(a)}")
        idx = _state.index_to_host(indices)
        vals = b._a if isinstance(b, ndarray) else b
        if isinstance(b, np.ndarray):
            _state.count_transfer()
        _state.count_kernel(f"cupy.{self.__name__}.at")
        if b is None:
            self._np.at(a._a, idx)
        else:
            self._np.at(a._a, idx, vals)

    def reduce(self, *args: Any, **kwargs: Any) -> Any:
        return _state.device_call(f"cupy.{self.__name__}.reduce", self._np.reduce)(*args, **kwargs)

    def accumulate(self, *args: Any, **kwargs: Any) -> Any:
        return _state.device_call(f"cupy.{self.__name__}.accumulate", self._np.accumulate)(*args, **kwargs)

    def outer(self, *args: Any, **kwargs: Any) -> Any:
        return _state.device_call(f"cupy.{self.__name__}.outer", self._np.outer)(*args, **kwargs)

    def reduceat(self, *args: Any, **kwargs: Any) -> Any:
        return _state.device_call(f"cupy.{self.__name__}.reduceat", self._np.reduceat)(*args, **kwargs)


# ------------------------------------------------------------------ what moves data between host and device
def array(
    obj: Any,
    dtype: Any = None,
    copy: bool = True,
    order: str = "K",
    subok: bool = False,
    ndmin: int = 0,
    blocking: bool = False,
) -> ndarray:
    if isinstance(obj, ndarray):
        _state.count_kernel("cupy.array")
        return ndarray._wrap(np.array(obj._a, dtype=dtype, copy=True, order=order, ndmin=ndmin))
    host = _state.unwrap(obj, "cupy.array", host_ok=True)  # a list may hold device arrays: CuPy refuses those
    _state.count_transfer()
    return ndarray._wrap(np.array(host, dtype=dtype, copy=True, order=order, ndmin=ndmin))


def asarray(a: Any, dtype: Any = None, order: Any = None, *, copy: Any = None, blocking: bool = False) -> ndarray:
    if isinstance(a, ndarray) and (dtype is None or np.dtype(dtype) == a.dtype) and not copy:
        return a
    if isinstance(a, ndarray):
        _state.count_kernel("cupy.asarray")
        return ndarray._wrap(np.array(a._a, dtype=dtype, copy=True))
    host = _state.unwrap(a, "cupy.asarray", host_ok=True)
    _state.count_transfer()
    return ndarray._wrap(np.array(host, dtype=dtype, copy=True, order=order or "K"))


def asanyarray(a: Any, dtype: Any = None, order: Any = None, *, blocking: bool = False) -> ndarray:
    return asarray(a, dtype, order)


def asnumpy(a: Any, stream: Any = None, order: str = "C", out: Any = None, blocking: bool = True) -> np.ndarray:
    if isinstance(a, ndarray):
        return a.get(stream=stream, order=order, out=out)
    return np.asarray(a, order=order)  # type: ignore[no-any-return]


def get_array_module(*args: Any) -> Any:
    return cupy if any(isinstance(a, ndarray) for a in args) else np


def empty(shape: Any, dtype: Any = float, order: str = "C") -> ndarray:
    return ndarray._wrap(_state.uninitialised(shape, dtype, order))


def empty_like(
    prototype: ndarray, dtype: Any = None, order: str = "K", subok: Any = None, shape: Any = None
) -> ndarray:
    if not isinstance(prototype, ndarray):
        _state.unwrap(prototype, "cupy.empty_like")
    return ndarray._wrap(
        _state.uninitialised(shape if shape is not None else prototype.shape, dtype or prototype.dtype)
    )


# ------------------------------------------------------------------ cupy.fuse: the body as a plain call
class Fusion:
    """``cupy.fuse(f)``. Real CuPy traces ``f`` on its first call and compiles one kernel; here ``f`` runs as a
    plain Python call on device arrays, counted as one kernel, and its body may use only ufuncs and operators
    (anything else is refused, since it would not fuse). Python float arguments are typed as CuPy types them
    inside a fused function (``_state.FusedScalar``: float16 arithmetic among scalars). Called with no device
    array, real CuPy calls ``f`` itself on the host arrays; so does the stand-in."""

    def __init__(self, func: Callable[..., Any], name: str | None) -> None:
        self.func, self.name = func, name or getattr(func, "__name__", "fused")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if kwargs:
            _state.refuse(f"keyword arguments to the fused function {self.name}", "pass arrays positionally")
        if not any(isinstance(a, ndarray) for a in args):
            return self.func(*args)
        for a in args:
            _state.unwrap(a, f"the fused function {self.name}")  # host arrays refused
        _state.count_kernel(f"cupy.fuse:{self.name}")
        _state.COUNTS.fusing += 1
        # Python floats become CuPy's weak fused scalars (float16 arithmetic among themselves, see FusedScalar)
        args = tuple(_state.FusedScalar(a) if type(a) is float else a for a in args)
        try:
            result = self.func(*args)
            return result.value if isinstance(result, _state.FusedScalar) else result
        finally:
            _state.COUNTS.fusing -= 1


def fuse(*args: Any, **kwargs: Any) -> Any:
    if len(args) == 1 and callable(args[0]) and not kwargs:
        return Fusion(args[0], None)
    return lambda f: Fusion(f, kwargs.get("kernel_name"))


# ------------------------------------------------------------------ submodules
class _Refused:
    def __init__(self, name: str, why: str) -> None:
        self._name, self._why = name, why

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        _state.refuse(self._name, self._why)

    def __getattr__(self, attr: str) -> Any:
        _state.refuse(f"{self._name}.{attr}", self._why)


class _Device:
    """cupy.cuda.Device: device 0 only; ``synchronize`` has nothing to wait for on the CPU."""

    def __init__(self, device: int | None = None) -> None:
        self.id = 0 if device is None else int(device)
        if self.id != 0:
            raise RuntimeError(f"cupy stand-in: one device (0), not {self.id}")

    def synchronize(self) -> None:
        pass

    def use(self) -> None:
        pass

    def __enter__(self) -> _Device:
        return self

    def __exit__(self, *exc: Any) -> None:
        pass

    def __getattr__(self, attr: str) -> Any:
        if attr in _state.NAMES["cupy.cuda.Device"]:
            _state.refuse(f"cupy.cuda.Device.{attr}", "device properties are not emulated")
        raise AttributeError(attr)


class _Runtime(types.SimpleNamespace):
    def __getattr__(self, attr: str) -> Any:
        if attr in _state.NAMES["cupy.cuda.runtime"]:
            return _Refused(f"cupy.cuda.runtime.{attr}", "the CUDA runtime is not emulated")
        raise AttributeError(f"module 'cupy.cuda.runtime' has no attribute {attr!r}")


class _Cuda(types.SimpleNamespace):
    def __getattr__(self, attr: str) -> Any:
        if attr in _state.NAMES["cupy.cuda"]:
            return _Refused(f"cupy.cuda.{attr}", "streams, events, memory pools and raw CUDA are not emulated")
        raise AttributeError(f"module 'cupy.cuda' has no attribute {attr!r}")


cuda = _Cuda(
    Device=_Device,
    runtime=_Runtime(
        getDeviceCount=lambda: 1,
        getDevice=lambda: 0,
        # only the name is emulated; real CuPy returns a dict of every property, the name as bytes
        getDeviceProperties=lambda device: {"name": b"CuPy stand-in (NumPy on the CPU)"},
    ),
)


class Generator:
    """cupy.random.Generator: NumPy's Generator drawing the numbers (they differ from CuPy's, which draws with
    its own bit generators on the device), the results on the device."""

    def __init__(self, seed: Any = None) -> None:
        self._g = np.random.default_rng(seed)

    def __getattr__(self, attr: str) -> Any:
        if attr not in _state.NAMES["cupy.random.Generator"] or not hasattr(self._g, attr):
            raise AttributeError(f"'cupy.random.Generator' object has no attribute {attr!r}")
        return _state.device_call(f"cupy.random.Generator.{attr}", getattr(self._g, attr))


random = types.SimpleNamespace(default_rng=lambda seed=None: Generator(seed), Generator=Generator)


def as_strided(x: ndarray, shape: Any = None, strides: Any = None) -> ndarray:
    if not isinstance(x, ndarray):
        _state.unwrap(x, "cupy.lib.stride_tricks.as_strided")
        raise TypeError(f"cupy.lib.stride_tricks.as_strided: expected cupy.ndarray, got {type(x)}")
    return ndarray._wrap(np.lib.stride_tricks.as_strided(x._a, shape=shape, strides=strides))


lib = types.SimpleNamespace(stride_tricks=types.SimpleNamespace(as_strided=as_strided))

REFUSED = {
    "RawKernel": "raw CUDA kernels are not emulated",
    "RawModule": "raw CUDA modules are not emulated",
    "ElementwiseKernel": "CUDA C kernels are not emulated",
    "ReductionKernel": "CUDA C kernels are not emulated",
    "get_default_memory_pool": "memory pool statistics are not emulated",
    "get_default_pinned_memory_pool": "memory pool statistics are not emulated",
    "cuda": "",
}

SPECIAL: dict[str, Any] = {
    "ndarray": ndarray,
    "ufunc": ufunc,
    "array": array,
    "asarray": asarray,
    "asanyarray": asanyarray,
    "asnumpy": asnumpy,
    "get_array_module": get_array_module,
    "empty": empty,
    "empty_like": empty_like,
    "fuse": fuse,
    "cuda": cuda,
    "random": random,
    "lib": lib,
    "__version__": f"{VERSION}",
}

_cache: dict[str, Any] = {}


def lookup(name: str, missing: Any = AttributeError) -> Any:
    """``cupy.<name>`` of the stand-in: only names real CuPy has; NumPy's function of that name as a device
    call, NumPy's ufunc as a CuPy ufunc, NumPy's types and constants as they are; refused otherwise."""
    if name in _cache:
        return _cache[name]
    if name not in _state.NAMES["cupy"] and name not in SPECIAL:
        if missing is AttributeError:
            raise AttributeError(f"module 'cupy' has no attribute {name!r}")
        return missing
    if name in SPECIAL:
        value = SPECIAL[name]
    elif name in REFUSED:
        value = _Refused(f"cupy.{name}", REFUSED[name])
    else:
        obj = getattr(np, name, None)
        if isinstance(obj, np.ufunc):
            value = ufunc(name, obj)
        elif isinstance(obj, type) or isinstance(obj, (int, float, np.dtype)) or obj is None and name == "newaxis":
            value = obj
        elif callable(obj):
            value = _state.device_call(f"cupy.{name}", obj)
        else:
            value = _Refused(f"cupy.{name}", "this part of CuPy is not emulated")
    _cache[name] = value
    return value


def _cupy_getattr(name: str) -> Any:
    return lookup(name)


cupy = types.ModuleType("cupy", "CPU stand-in for CuPy (tests only): see tests/cupy_standin/README.md")
cupy.__getattr__ = _cupy_getattr  # type: ignore[method-assign]
cupy.__dir__ = lambda: sorted(_state.NAMES["cupy"])  # type: ignore[method-assign]
cupy.__standin__ = True  # type: ignore[attr-defined]


def _scatter_add(a: ndarray, slices: Any, value: Any) -> None:
    cupy.add.at(a, slices, value)


def _cupyx_getattr(name: str) -> Any:
    if name == "scatter_add":  # deprecated in CuPy 14 in favour of cupy.add.at; emulated as that
        return _scatter_add
    if name in _state.NAMES["cupyx"]:
        return _Refused(f"cupyx.{name}", "cupyx is not emulated beyond scatter_add")
    raise AttributeError(f"module 'cupyx' has no attribute {name!r}")


cupyx = types.ModuleType("cupyx", "CPU stand-in for cupyx (tests only)")
cupyx.__getattr__ = _cupyx_getattr  # type: ignore[method-assign]
