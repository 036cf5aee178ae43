"""The stand-in's device array: a NumPy array ("device memory") that NumPy cannot see into implicitly.

Every rule here copies one of CuPy's; README.md cites the source of each.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cupy_standin import _state

IMPLICIT = (
    "Implicit conversion to a NumPy array is not allowed. Please use `.get()` to construct a NumPy array explicitly."
)


class ndarray:  # noqa: N801  (CuPy's name)
    """A device array of the stand-in. ``_a`` is the NumPy array that plays the device memory."""

    __slots__ = ("_a",)

    def __init__(self, shape: Any, dtype: Any = float, memptr: Any = None, strides: Any = None, order: str = "C"):
        # cupy.ndarray(shape, dtype) allocates without initialising: the stand-in fills floats with NaN
        if memptr is not None or strides is not None:
            _state.refuse("cupy.ndarray(memptr=..., strides=...)", "raw device memory is not emulated")
        self._a = _state.uninitialised(shape, dtype, order)

    @classmethod
    def _wrap(cls, a: np.ndarray) -> ndarray:
        out = cls.__new__(cls)
        out._a = a
        return out

    # ------------------------------------------------------------------ what CuPy refuses
    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        raise TypeError(IMPLICIT)

    @property
    def __cuda_array_interface__(self) -> Any:
        _state.refuse("ndarray.__cuda_array_interface__", "raw device pointers are not emulated")

    @property
    def data(self) -> Any:
        _state.refuse("ndarray.data", "raw device memory (MemoryPointer) is not emulated")

    # ------------------------------------------------------------------ NumPy calls dispatched to CuPy
    def __array_ufunc__(self, ufunc: np.ufunc, method: str, *inputs: Any, **kwargs: Any) -> Any:
        from cupy_standin import _module  # noqa: PLC0415

        target = _module.lookup(ufunc.__name__, missing=None)
        if target is None:
            return NotImplemented
        if "out" in kwargs and isinstance(kwargs["out"], tuple):
            (kwargs["out"],) = kwargs["out"]
        return (target if method == "__call__" else getattr(target, method))(*inputs, **kwargs)

    def __array_function__(self, func: Any, types: Any, args: Any, kwargs: Any) -> Any:
        from cupy_standin import _module  # noqa: PLC0415

        target = _module.lookup(func.__name__, missing=None)
        if target is None:
            return NotImplemented
        return target(*args, **kwargs)

    # ------------------------------------------------------------------ metadata (no device work)
    # Inside cupy.fuse the body sees traced variables that know their dtype and ndim only: real CuPy 14 raises
    # on .shape (``NotImplementedError: `shape` is not supported, currently``) and has no .size, .strides, ...
    shape = property(lambda self: _outside_fuse(self, "shape"))
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: _outside_fuse(self, "size"))
    strides = property(lambda self: _outside_fuse(self, "strides"))
    itemsize = property(lambda self: _outside_fuse(self, "itemsize"))
    nbytes = property(lambda self: _outside_fuse(self, "nbytes"))
    flags = property(lambda self: _outside_fuse(self, "flags"))
    T = property(lambda self: ndarray._wrap(self._a.T))

    @property
    def base(self) -> Any:
        return None if self._a.base is None else ndarray._wrap(self._a.base)  # type: ignore[arg-type]

    @shape.setter  # type: ignore[attr-defined,untyped-decorator]
    def shape(self, value: Any) -> None:
        self._a.shape = value

    def __len__(self) -> int:
        return len(self._a)

    def __repr__(self) -> str:
        return repr(self._a)

    def __str__(self) -> str:
        return str(self._a)

    def __iter__(self) -> Any:
        return (ndarray._wrap(np.asarray(self._a[i])) for i in range(len(self._a)))

    # ------------------------------------------------------------------ to the host, explicitly
    def get(self, stream: Any = None, order: str = "C", out: Any = None, blocking: bool = True) -> np.ndarray:
        if stream is not None:
            _state.refuse("ndarray.get(stream=...)", "streams are not emulated")
        _state.count_transfer()
        host = np.array(self._a, order=order, copy=True)
        if out is not None:
            out[...] = host
            return out  # type: ignore[no-any-return]
        return host

    def set(self, arr: np.ndarray, stream: Any = None) -> None:
        if stream is not None:
            _state.refuse("ndarray.set(stream=...)", "streams are not emulated")
        if not isinstance(arr, np.ndarray):
            raise TypeError(f"Only numpy.ndarray can be set to cupy.ndarray; got {type(arr)}")
        _state.count_transfer()
        self._a[...] = arr

    # scalars: a synchronising copy of one element, as CuPy
    def item(self, *args: Any) -> Any:
        _state.count_transfer()
        return self._a.item(*args)

    def tolist(self) -> Any:
        _state.count_transfer()
        return self._a.tolist()

    def __float__(self) -> float:
        _state.count_transfer()
        return float(self._a)

    def __int__(self) -> int:
        _state.count_transfer()
        return int(self._a)

    def __bool__(self) -> bool:
        _state.count_transfer()
        return bool(self._a)

    def __index__(self) -> int:
        _state.count_transfer()
        return self._a.__index__()

    def __complex__(self) -> complex:
        _state.count_transfer()
        return complex(self._a)

    # ------------------------------------------------------------------ indexing
    def __getitem__(self, key: Any) -> ndarray:
        key = _state.index_to_host(key)  # host index arrays are copied to the device, as CuPy does
        out = self._a[key]
        if not isinstance(out, np.ndarray) or not np.may_share_memory(out, self._a):
            _state.count_kernel("ndarray.__getitem__ (advanced)")
        return ndarray._wrap(np.asarray(out))

    def __setitem__(self, key: Any, value: Any) -> None:
        advanced = _state.is_advanced(key)
        key = _state.index_to_host(key)
        if isinstance(value, np.ndarray) and value.ndim > 0 and not advanced:
            # CuPy: a basic-indexed assignment of a host value goes through ndarray.fill
            raise ValueError("non-scalar numpy.ndarray cannot be used for fill")
        if isinstance(value, ndarray):
            value = value._a
        _state.count_kernel("ndarray.__setitem__")
        self._a[key] = value

    # ------------------------------------------------------------------ every other method of cupy.ndarray
    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name not in _state.NAMES["cupy.ndarray"]:
            raise AttributeError(f"'cupy.ndarray' object has no attribute {name!r}")
        if name == "device":
            from cupy_standin import _module  # noqa: PLC0415

            return _module.cuda.Device()
        if name in _state.REFUSED_METHODS:
            _state.refuse(f"ndarray.{name}", _state.REFUSED_METHODS[name])
        attr = getattr(self._a, name, None)
        if attr is None:
            _state.refuse(f"ndarray.{name}", "this method is not emulated")
        if not callable(attr):
            return _state.wrap(attr)
        return _state.device_call(f"ndarray.{name}", attr, inputs=(self._a,))

    # ------------------------------------------------------------------ operators: CuPy's ufuncs
    def _op(self, name: str, *others: Any, out: Any = None) -> Any:
        from cupy_standin import _module  # noqa: PLC0415

        fn = _module.lookup(name)
        return fn(self, *others) if out is None else fn(self, *others, out=out)

    def _rop(self, name: str, other: Any) -> Any:
        from cupy_standin import _module  # noqa: PLC0415

        return _module.lookup(name)(other, self)

    def __add__(self, o: Any) -> Any:
        return self._op("add", o)

    def __radd__(self, o: Any) -> Any:
        return self._rop("add", o)

    def __iadd__(self, o: Any) -> Any:
        return self._op("add", o, out=self)

    def __sub__(self, o: Any) -> Any:
        return self._op("subtract", o)

    def __rsub__(self, o: Any) -> Any:
        return self._rop("subtract", o)

    def __isub__(self, o: Any) -> Any:
        return self._op("subtract", o, out=self)

    def __mul__(self, o: Any) -> Any:
        return self._op("multiply", o)

    def __rmul__(self, o: Any) -> Any:
        return self._rop("multiply", o)

    def __imul__(self, o: Any) -> Any:
        return self._op("multiply", o, out=self)

    def __truediv__(self, o: Any) -> Any:
        return self._op("true_divide", o)

    def __rtruediv__(self, o: Any) -> Any:
        return self._rop("true_divide", o)

    def __itruediv__(self, o: Any) -> Any:
        return self._op("true_divide", o, out=self)

    def __floordiv__(self, o: Any) -> Any:
        return self._op("floor_divide", o)

    def __rfloordiv__(self, o: Any) -> Any:
        return self._rop("floor_divide", o)

    def __mod__(self, o: Any) -> Any:
        return self._op("remainder", o)

    def __pow__(self, o: Any) -> Any:
        return self._op("power", o)

    def __rpow__(self, o: Any) -> Any:
        return self._rop("power", o)

    def __ipow__(self, o: Any) -> Any:
        return self._op("power", o, out=self)

    def __matmul__(self, o: Any) -> Any:
        return self._op("matmul", o)

    def __rmatmul__(self, o: Any) -> Any:
        return self._rop("matmul", o)

    def __neg__(self) -> Any:
        return self._op("negative")

    def __pos__(self) -> Any:
        return self._op("positive")

    def __abs__(self) -> Any:
        return self._op("absolute")

    def __invert__(self) -> Any:
        return self._op("invert")

    def __and__(self, o: Any) -> Any:
        return self._op("bitwise_and", o)

    def __or__(self, o: Any) -> Any:
        return self._op("bitwise_or", o)

    def __xor__(self, o: Any) -> Any:
        return self._op("bitwise_xor", o)

    def __lt__(self, o: Any) -> Any:
        return self._op("less", o)

    def __le__(self, o: Any) -> Any:
        return self._op("less_equal", o)

    def __gt__(self, o: Any) -> Any:
        return self._op("greater", o)

    def __ge__(self, o: Any) -> Any:
        return self._op("greater_equal", o)

    def __eq__(self, o: Any) -> Any:  # type: ignore[override]
        return self._op("equal", o)

    def __ne__(self, o: Any) -> Any:  # type: ignore[override]
        return self._op("not_equal", o)

    __hash__ = None  # type: ignore[assignment]


ndarray.__module__ = "cupy"  # as real CuPy's class reports (``cupy.ndarray``)


def _outside_fuse(a: ndarray, name: str) -> Any:
    """``a.<name>`` of the array underneath, refused inside a fused function's body (see the metadata above)."""
    if _state.COUNTS.fusing:
        _state.refuse(
            f"ndarray.{name} inside cupy.fuse",
            "a fused function's variables know only their dtype and ndim: read it outside the fused body",
        )
    return getattr(a._a, name)
