"""The one place where NumPy and CuPy differ.

Every other module takes its array module from the data: ``xp = get_array_module(x)`` and then
writes ``xp.exp``, ``xp.zeros`` ... so one code path serves the CPU and the GPU (the idea comes from
Chainer and DeZero). What truly differs lives here, and this is the only module that imports CuPy:

* choosing the backend: :func:`set_backend`, :func:`use_backend`, the ``MINISE_BACKEND`` variable;
* why CuPy is unavailable, with the fix (:class:`BackendUnavailableError`);
* moving arrays between host and device (:func:`to_host`, :func:`to_device`);
* strided views (:func:`as_strided`), scatter-add (:func:`scatter_add`);
* one elementwise pass, or a little per-channel arithmetic, as one fused kernel on CuPy (:func:`elementwise`,
  :func:`fused`);
* random numbers (:func:`manual_seed`, :func:`default_rng`).

Backend names: ``"numpy"`` (alias ``"cpu"``) and ``"cupy"`` (aliases ``"cuda"``, ``"gpu"``), read by
:func:`canonical_backend` wherever a name comes in (``set_backend``, ``Module.to``, ``Tensor.to``,
``tensor(..., backend_name=)``, ``--backend``, ``MINISE_BACKEND``). How work runs on the CPU cores
(threads, chunks, BLAS column blocks, malloc) lives in :mod:`minise.cpu`.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import threading
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import numpy as np

from minise import cpu

BACKENDS = ("numpy", "cupy")
ALIASES = {"cpu": "numpy", "cuda": "cupy", "gpu": "cupy"}  # PyTorch's device names, and "gpu"
BACKEND_NAMES = ("numpy", "cpu", "cupy", "cuda", "gpu")  # every name accepted (the choices of --backend)
_LISTED = "numpy (or cpu), cupy (or cuda, gpu)"


def canonical_backend(name: str, where: str = "backend") -> str:
    """``"numpy"`` or ``"cupy"`` for an accepted backend name; a one-line ValueError naming ``where`` else.

    >>> canonical_backend("cuda")
    'cupy'
    """
    if isinstance(name, str) and name in BACKENDS:
        return name
    if isinstance(name, str) and name in ALIASES:
        return ALIASES[name]
    raise ValueError(f"{where}: unknown backend {name!r} - use one of {_LISTED}")


class BackendUnavailableError(RuntimeError):
    """Raised when the CuPy backend is asked for but cannot run here; the message says why and how to fix it."""


# --------------------------------------------------------------------------------------------------
# CuPy: imported lazily, and only here
# --------------------------------------------------------------------------------------------------
_cupy: ModuleType | None = None


def _import_cupy() -> ModuleType:
    """Import CuPy and check that it can really run, or raise an error naming the cause and the fix."""
    global _cupy
    if _cupy is not None:
        return _cupy
    try:
        import cupy  # noqa: PLC0415  (the only import of cupy in minise)
    except ImportError as e:
        text = str(e)
        if "libcudart" in text or "libcublas" in text or "libnvrtc" in text or ".so" in text:
            raise BackendUnavailableError(
                f"cupy backend: CuPy is installed but its CUDA libraries do not load ({text}) - the CuPy "
                "wheel does not match the CUDA runtime: `nvidia-smi` shows the driver's CUDA version; install "
                "the matching wheel, `pip install cupy-cuda12x` for CUDA 12 or `pip install cupy-cuda13x` "
                "for CUDA 13, and uninstall the other"
            ) from e
        raise BackendUnavailableError(
            "cupy backend: CuPy is not installed - install it with `pip install 'minise[gpu]'` "
            "(CUDA 12, cupy-cuda12x) or `pip install cupy-cuda13x` (CUDA 13), or use --backend numpy"
        ) from e
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # CUDARuntimeError, or a missing libcudart at first call
        text = str(e)
        if "cudaErrorInsufficientDriver" in text and not _nvidia_driver_present():
            raise BackendUnavailableError(
                f"cupy backend: no NVIDIA driver on this machine ({text}) - run on a machine with an NVIDIA GPU "
                "and its driver, or use --backend numpy"
            ) from e
        if "libcudart" in text or "cudaErrorInsufficientDriver" in text or ".so" in text:
            raise BackendUnavailableError(
                f"cupy backend: the CuPy wheel does not match this machine's CUDA runtime ({text}) - "
                "install the wheel for your CUDA major version (`pip install cupy-cuda12x` or "
                "`pip install cupy-cuda13x`; `nvidia-smi` shows the version)"
            ) from e
        raise BackendUnavailableError(
            f"cupy backend: no CUDA device is available ({text}) - run on a machine with an NVIDIA GPU "
            "and driver, or use --backend numpy"
        ) from e
    if count == 0:
        raise BackendUnavailableError(
            "cupy backend: CuPy is installed but no CUDA device was found - run on a machine with an "
            "NVIDIA GPU, or use --backend numpy"
        )
    _cupy = cupy
    return cupy


def _nvidia_driver_present() -> bool:
    """Whether the NVIDIA driver's library (libcuda) loads: without it CUDA reports an "insufficient driver"."""
    import ctypes  # noqa: PLC0415

    for name in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            ctypes.CDLL(name)
        except OSError:
            continue
        return True
    return False


def cupy_available() -> tuple[bool, str]:
    """(True, "") if the CuPy backend can run here, else (False, the reason)."""
    try:
        _import_cupy()
    except BackendUnavailableError as e:
        return False, str(e)
    return True, ""


def _is_cupy_array(a: Any) -> bool:
    # Checked by the class's module so that testing an array never imports CuPy.
    return type(a).__module__.startswith("cupy")


# --------------------------------------------------------------------------------------------------
# choosing the backend
# --------------------------------------------------------------------------------------------------
def _backend_from_env() -> str:
    name = os.environ.get("MINISE_BACKEND", "numpy").strip().lower() or "numpy"
    return canonical_backend(name, "MINISE_BACKEND")


# Read from MINISE_BACKEND at first use, not at import: a bad value then raises a ValueError where a
# command line can print it in one line (an error while ``import minise`` runs could only be a traceback).
_current: str | None = None


def get_backend() -> str:
    """The name of the current backend: "numpy" or "cupy" (at first use, from ``MINISE_BACKEND``)."""
    global _current
    if _current is None:
        _current = _backend_from_env()
    return _current


def set_backend(name: str) -> None:
    """Select where new arrays are created: ``"numpy"`` (CPU; alias ``"cpu"``) or ``"cupy"`` (GPU; aliases
    ``"cuda"``, ``"gpu"``)."""
    global _current
    name = canonical_backend(name, "set_backend")
    if name == "cupy":
        _import_cupy()
    _current = name


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """``with use_backend("cupy"): ...`` selects a backend for a block and restores the previous one."""
    global _current
    previous = _current
    set_backend(name)
    try:
        yield
    finally:
        _current = previous  # it was valid (or unchecked, from MINISE_BACKEND) before: restore it as it was


def xp_of_backend(name: str | None = None) -> ModuleType:
    """The array module of a backend (the current one by default)."""
    name = canonical_backend(name, "backend") if name is not None else get_backend()
    return _import_cupy() if name == "cupy" else np


def cupy_submodule(name: str) -> ModuleType | None:
    """``cupy.<name>`` (e.g. ``"cuda.nccl"``) imported as a submodule, or None if this CuPy has none. CuPy 14
    loads some submodules only on import, so ``getattr(cupy.cuda, "nccl")`` finds nothing where the import
    works (seen on the first GPU, BENCHMARKS.md). Raises BackendUnavailableError if CuPy itself cannot run."""
    _import_cupy()
    try:
        return importlib.import_module(f"cupy.{name}")
    except ImportError:
        return None


def get_array_module(*arrays: Any) -> ModuleType:
    """numpy or cupy, whichever the arrays live in (like ``cupy.get_array_module``)."""
    for a in arrays:
        if _is_cupy_array(a):
            return _import_cupy()
    return np


def backend_name(a: Any) -> str:
    """ "cupy" for a device array, "numpy" for anything else."""
    return "cupy" if _is_cupy_array(a) else "numpy"


def check_same_backend(op: str, *arrays: Any) -> None:
    """Raise a TypeError naming ``op`` if some arrays live on the host and others on the device."""
    names = {backend_name(a) for a in arrays if a is not None}
    if len(names) > 1:
        raise TypeError(
            f"{op}: inputs live on different backends (numpy and cupy) - move them to one backend first, "
            "e.g. tensor.to('cupy') or tensor.to('numpy')"
        )


# --------------------------------------------------------------------------------------------------
# host <-> device
# --------------------------------------------------------------------------------------------------
def to_host(a: Any) -> np.ndarray:
    """A NumPy array with the values of ``a`` (copied from the GPU if ``a`` lives there)."""
    if _is_cupy_array(a):
        return a.get()  # type: ignore[no-any-return]
    return np.asarray(a)


def to_device(a: Any, name: str | None = None) -> Any:
    """``a`` as an array of backend ``name`` (the current backend by default)."""
    name = canonical_backend(name, "to_device") if name is not None else get_backend()
    if name == "cupy":
        return _import_cupy().asarray(a)
    return to_host(a)


# --------------------------------------------------------------------------------------------------
# what the two array modules spell differently
# --------------------------------------------------------------------------------------------------
def as_strided(a: Any, shape: tuple[int, ...], strides: tuple[int, ...]) -> Any:
    """A strided view of ``a`` (no copy); strides in bytes, as NumPy's."""
    if _is_cupy_array(a):
        return _import_cupy().lib.stride_tricks.as_strided(a, shape=shape, strides=strides)
    return np.lib.stride_tricks.as_strided(a, shape=shape, strides=strides, writeable=False)


def scatter_add(target: Any, index: Any, values: Any) -> None:
    """``target[index] += values`` where repeated indices add up (``np.add.at`` / ``cupy.add.at``; CuPy 14
    deprecates ``cupyx.scatter_add`` in favour of ``cupy.add.at``)."""
    xp = get_array_module(target)
    xp.add.at(target, index, values)


# --------------------------------------------------------------------------------------------------
# one elementwise pass: one fused kernel on CuPy, chunks on all cores on NumPy
# --------------------------------------------------------------------------------------------------
_fused: dict[tuple[Callable[..., Any], int], Any] = {}


def elementwise(body: Callable[..., Any], *arrays: Any, like: Any, shape: tuple[int, ...] | None = None) -> Any:
    """A new array ``body(*arrays)`` with the shape and dtype of ``like``, for an elementwise ``body``.

    ``body(*arrays, out=None)`` is written with ufuncs and operators only, e.g.
    ``def _relu(x, out=None): return get_array_module(x).maximum(x, 0, out=out)``.
    On CuPy the body becomes one kernel (``cupy.fuse``, compiled on first use and cached): a chain such as
    batch norm's ``x * a + b`` is one launch and one pass over memory instead of one per operator, with no
    temporaries. On NumPy it runs in chunks of a few images on all cores (``cpu.elementwise``), each chunk
    written into the result while it is in cache.

    ``shape`` (of like's size) gives the result that shape instead. On NumPy it is allocated in that shape
    and the body writes through a view of like's shape: batch norm works on (N, C, H*W) and returns dx as
    (N, C, H, W) that owns its memory (not a reshaped view), which a leaf can keep as its gradient without
    a copy (``autograd._owned``). On CuPy it is the fused kernel's result reshaped, a view (copied for a leaf).
    """
    if get_array_module(*arrays) is np:
        out = np.empty(like.shape if shape is None else shape, dtype=like.dtype)
        cpu.elementwise(np, out.reshape(like.shape), body, *arrays)
        return out
    result = fused(body, *arrays)
    return result if shape is None else result.reshape(shape)


def fused(body: Callable[..., Any], *args: Any) -> Any:
    """``body(*args)`` as one fused kernel on CuPy, a plain call on NumPy: for the arithmetic on small
    per-channel vectors (batch norm's coefficients), where CuPy would otherwise launch one kernel per
    operator and NumPy gains nothing from chunks. ``body`` uses ufuncs and operators only; ``args`` are
    arrays of one backend and Python scalars."""
    xp = get_array_module(*args)
    if xp is np:
        return body(*args)
    key = (body, id(xp))
    kernel = _fused.get(key)
    if kernel is None:
        kernel = _fused[key] = xp.fuse(kernel_name=body.__name__)(body)
    return kernel(*args)


# --------------------------------------------------------------------------------------------------
# random numbers
# --------------------------------------------------------------------------------------------------
_seed_lock = threading.Lock()
_host_rng = np.random.default_rng()
_device_rng: Any = None


def manual_seed(seed: int) -> None:
    """Seed every random number minise draws (initialisation and dropout, on both backends)."""
    global _host_rng, _device_rng
    with _seed_lock:
        _host_rng = np.random.default_rng(seed)
        _device_rng = _import_cupy().random.default_rng(seed) if _cupy is not None else None
        _seed_state["seed"] = seed


_seed_state: dict[str, int] = {}


def host_rng() -> np.random.Generator:
    """The seeded NumPy generator. Initialisation draws here, so a seed gives the same weights on both backends."""
    return _host_rng


def default_rng(xp: ModuleType) -> Any:
    """The seeded generator of array module ``xp`` (drawing on the device when xp is cupy)."""
    global _device_rng
    if xp is np:
        return _host_rng
    if _device_rng is None:
        _device_rng = xp.random.default_rng(_seed_state.get("seed"))
    return _device_rng


def get_rng_state() -> dict[str, Any]:
    """The host generator's state as plain JSON-able data (for checkpoints)."""
    return dict(_host_rng.bit_generator.state)


def set_rng_state(state: dict[str, Any]) -> None:
    _host_rng.bit_generator.state = state
