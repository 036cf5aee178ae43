"""The stand-in's shared parts: the names real CuPy has, the call counters, and how arguments cross into a
device call (device arrays unwrapped, host arrays refused) and results come back (wrapped as device arrays)."""

from __future__ import annotations

import json
import operator
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

# The public names of real CuPy 14.2 (cupy-cuda12x), recorded from the installed package by
# tests/test_cupy_standin.py::test_the_recorded_names_are_real_cupys, which re-checks them whenever CuPy is
# importable. The stand-in offers nothing outside these lists.
NAMES: dict[str, Any] = {
    k: (frozenset(v) if isinstance(v, list) else v)
    for k, v in json.loads((Path(__file__).parent / "cupy_names.json").read_text()).items()
}


class StandinRefusal(NotImplementedError):
    """What the stand-in cannot imitate on a CPU (raw kernels, streams, memory statistics): refused, never faked."""


def refuse(what: str, why: str) -> Any:
    raise StandinRefusal(
        f"cupy stand-in: {what} is refused - {why} (a CPU cannot imitate it; see tests/cupy_standin/README.md)"
    )


# methods of cupy.ndarray the stand-in refuses (everything else in NAMES["cupy.ndarray"] runs on NumPy)
REFUSED_METHODS = {
    "toDlpack": "DLPack exchange of device memory is not emulated",
    "reduced_view": "CuPy's internal views are not emulated",
    "cstruct": "kernel argument structs are not emulated",
    "mdspan": "kernel argument structs are not emulated",
    "dump": "pickling device memory to files is not emulated",
    "dumps": "pickling device memory is not emulated",
    "tofile": "writing device memory to files is not emulated",
}


# ------------------------------------------------------------------ counting device calls
class Counts:
    """Calls that run on the device: ``kernels`` (one per call that computes: a ufunc, a routine, a method,
    an operator, an advanced index, an assignment; a fused function counts once, whatever it does inside)
    and ``transfers`` (host <-> device copies). Views, shapes and ``empty`` launch nothing and count nothing."""

    def __init__(self) -> None:
        self.kernels = 0
        self.transfers = 0
        self.by_name: Counter[str] = Counter()
        self.fusing = 0  # > 0 while a fused function's body runs


COUNTS = Counts()


def count_kernel(name: str) -> None:
    if COUNTS.fusing:
        return
    COUNTS.kernels += 1
    COUNTS.by_name[name] += 1


def count_transfer() -> None:
    COUNTS.transfers += 1


def reset_counts() -> Counts:
    global COUNTS
    old, COUNTS = COUNTS, Counts()
    return old


# ------------------------------------------------------------------ memory CuPy does not initialise
def uninitialised(shape: Any, dtype: Any = float, order: str = "C") -> np.ndarray:
    """What cupy.empty returns: uninitialised device memory. Floats read NaN, integers their largest value, so
    that a read of memory nobody wrote shows up in results."""
    dt = np.dtype(dtype)
    if dt.kind in "fc":
        return np.full(shape, np.nan, dtype=dt, order=order)  # type: ignore[arg-type]
    if dt.kind in "iu":
        return np.full(shape, np.iinfo(dt).max, dtype=dt, order=order)  # type: ignore[arg-type]
    return np.ones(shape, dtype=dt, order=order)  # type: ignore[arg-type]


# ------------------------------------------------------------------ crossing into a device call
def _device_type() -> type:
    from cupy_standin._array import ndarray  # noqa: PLC0415

    return ndarray


class FusedScalar:
    """A Python float argument inside a ``cupy.fuse`` body, typed as real CuPy 14.2 types it there.

    Seen on an NVIDIA H200 with cupy-cuda13x 14.2.0 (BENCHMARKS.md, "The first GPU"; re-checked on any GPU by
    tests/test_cupy_standin.py): inside a fused function a Python float is a *weak* scalar. With an array
    it takes the array's dtype (``a * 0.1`` is exact in float64), but an operation whose operands are all such
    scalars (or Python numbers) runs in float16, whatever the values: ``1 - s`` with ``s = 0.1`` gave
    0.89990234375, ``s * 1.0`` gave 0.0999755859375, ``1e20 * 1.0`` gave inf. The stand-in computes the same
    way (negation too, by the same rule), so a fused body that combines scalars before they reach an array
    shows CuPy's float16 rounding on the CPU too. With a NumPy scalar (strongly typed) it promotes as NumPy 2
    promotes a Python float: exactly, in the NumPy scalar's type or float64. Anything else on scalars alone
    (comparisons, ``abs``, ``//``, ``%``) was not observed and is refused rather than guessed.
    """

    __slots__ = ("value",)
    __array_ufunc__ = None  # NumPy scalars and arrays defer to the reflected operators below
    __hash__ = None  # type: ignore[assignment]  (comparisons are refused, so no hashing either)

    def __init__(self, value: float) -> None:
        self.value = float(value)

    def __repr__(self) -> str:
        return f"FusedScalar({self.value!r})"

    def _apply(self, other: Any, op: Callable[[Any, Any], Any], reflected: bool) -> Any:
        if isinstance(other, FusedScalar):
            other = other.value
        elif isinstance(other, np.generic) or not isinstance(other, (int, float)):
            # a NumPy scalar or an array: NumPy's promotion of a weak Python float, exact
            return op(other, self.value) if reflected else op(self.value, other)
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # scalars alone: float16
            a, b = np.float16(self.value), np.float16(other)
            return FusedScalar(float(op(b, a) if reflected else op(a, b)))

    def __add__(self, o: Any) -> Any:
        return self._apply(o, operator.add, False)

    def __radd__(self, o: Any) -> Any:
        return self._apply(o, operator.add, True)

    def __sub__(self, o: Any) -> Any:
        return self._apply(o, operator.sub, False)

    def __rsub__(self, o: Any) -> Any:
        return self._apply(o, operator.sub, True)

    def __mul__(self, o: Any) -> Any:
        return self._apply(o, operator.mul, False)

    def __rmul__(self, o: Any) -> Any:
        return self._apply(o, operator.mul, True)

    def __truediv__(self, o: Any) -> Any:
        return self._apply(o, operator.truediv, False)

    def __rtruediv__(self, o: Any) -> Any:
        return self._apply(o, operator.truediv, True)

    def __pow__(self, o: Any) -> Any:
        return self._apply(o, operator.pow, False)

    def __rpow__(self, o: Any) -> Any:
        return self._apply(o, operator.pow, True)

    def __neg__(self) -> FusedScalar:
        return FusedScalar(float(-np.float16(self.value)))

    def __float__(self) -> float:
        return self.value

    def _unobserved(self, other: Any = None) -> Any:
        """A comparison, ``//`` or ``%`` with an array is the array's business (Python then asks the array);
        on scalars alone, and ``abs``/unary plus, CuPy's typing was not observed: refused."""
        if other is not None and not isinstance(other, (int, float, FusedScalar)):
            return NotImplemented
        refuse("a comparison, abs, // or % on scalars alone inside cupy.fuse", "how CuPy types it was not observed")

    __lt__ = __le__ = __gt__ = __ge__ = __eq__ = __ne__ = _unobserved  # type: ignore[assignment]
    __floordiv__ = __rfloordiv__ = __mod__ = __rmod__ = __abs__ = __pos__ = _unobserved


def unwrap(value: Any, where: str, host_ok: bool = False) -> Any:
    """Device arrays -> their NumPy storage; a host ``numpy.ndarray`` -> TypeError (as CuPy's kernels:
    "Unsupported type <class 'numpy.ndarray'>"); lists, tuples and dicts recursively."""
    dev = _device_type()
    if isinstance(value, dev):
        return value._a
    if isinstance(value, FusedScalar):  # with an array (a ufunc, an operator): the array's dtype, as in CuPy
        return value.value
    if isinstance(value, np.ndarray):
        if host_ok:
            return value
        raise TypeError(
            f"Unsupported type {type(value)} (cupy stand-in: a host numpy.ndarray of shape {value.shape} was passed "
            f"to {where}; CuPy does not copy host arrays implicitly - move it with cupy.asarray first)"
        )
    if isinstance(value, (list, tuple)):
        return type(value)(unwrap(v, where, host_ok) for v in value)
    if isinstance(value, dict):
        return {k: unwrap(v, where, host_ok) for k, v in value.items()}
    return value


def wrap(value: Any) -> Any:
    """NumPy results -> device arrays (a NumPy scalar becomes a 0-d device array, as CuPy returns)."""
    dev = _device_type()
    if isinstance(value, np.ndarray):
        return dev._wrap(value)
    if isinstance(value, np.generic):
        return dev._wrap(np.asarray(value))
    if isinstance(value, tuple):
        return tuple(wrap(v) for v in value)
    if isinstance(value, list):
        return [wrap(v) for v in value]
    return value


def _arrays_in(value: Any) -> list[np.ndarray]:
    if isinstance(value, np.ndarray):
        return [value]
    if isinstance(value, (list, tuple)):
        return [a for v in value for a in _arrays_in(v)]
    return []


def device_call(
    name: str, fn: Callable[..., Any], inputs: tuple[Any, ...] = (), host_ok: bool = False
) -> Callable[..., Any]:
    """``fn`` as a device call: arguments unwrapped (host arrays refused), the result wrapped, one kernel counted
    when it computes (a result that is a view of an input, with no ``out=``, launched nothing)."""

    def call(*args: Any, **kwargs: Any) -> Any:
        if COUNTS.fusing:
            refuse(f"{name} inside cupy.fuse", "a fused function may only use ufuncs and operators here")
        a, k = unwrap(args, name, host_ok), unwrap(kwargs, name, host_ok)
        out = fn(*a, **k)
        sources = [*inputs, *_arrays_in(a)]
        view = isinstance(out, np.ndarray) and "out" not in k and any(np.may_share_memory(out, s) for s in sources)
        if not view:
            count_kernel(name)
        if "out" in kwargs and isinstance(kwargs["out"], _device_type()):
            return kwargs["out"]
        return wrap(out)

    call.__name__ = name.rsplit(".", 1)[-1]
    return call


# ------------------------------------------------------------------ indices
def is_advanced(key: Any) -> bool:
    keys = key if isinstance(key, tuple) else (key,)
    return any(isinstance(k, (np.ndarray, list, _device_type())) for k in keys)


def index_to_host(key: Any) -> Any:
    """An index with device arrays unwrapped; host index arrays are allowed (CuPy copies them to the device)."""
    if isinstance(key, tuple):
        return tuple(index_to_host(k) for k in key)
    if isinstance(key, _device_type()):
        return key._a
    if isinstance(key, np.ndarray):
        count_transfer()
    return key
