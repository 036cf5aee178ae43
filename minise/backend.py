"""The one place where NumPy and CuPy differ.

Every other module takes its array module from the data: ``xp = get_array_module(x)`` and then
writes ``xp.exp``, ``xp.zeros`` ... so one code path serves the CPU and the GPU (the idea comes from
Chainer and DeZero). What truly differs lives here, and this is the only module that imports CuPy:

* choosing the backend: :func:`set_backend`, :func:`use_backend`, the ``MINISE_BACKEND`` variable;
* why CuPy is unavailable, with the fix (:class:`BackendUnavailableError`);
* moving arrays between host and device (:func:`to_host`, :func:`to_device`);
* strided views (:func:`as_strided`), scatter-add (:func:`scatter_add`);
* random numbers (:func:`manual_seed`, :func:`default_rng`);
* how big work is cut into chunks and run on the CPU cores (:func:`run_chunks`, :func:`elementwise`);
* how the CPU allocator keeps freed memory for the next step (:func:`retain_freed_memory`).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from types import ModuleType
from typing import Any

import numpy as np

BACKENDS = ("numpy", "cupy")


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
    if name not in BACKENDS:
        raise ValueError(f"MINISE_BACKEND={name!r} is not a backend - use one of {', '.join(BACKENDS)}")
    return name


_current = _backend_from_env()


def get_backend() -> str:
    """The name of the current backend: "numpy" or "cupy"."""
    return _current


def set_backend(name: str) -> None:
    """Select where new arrays are created: ``"numpy"`` (CPU) or ``"cupy"`` (GPU)."""
    global _current
    if name not in BACKENDS:
        raise ValueError(f"set_backend: unknown backend {name!r} - use one of {', '.join(BACKENDS)}")
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
    name = name or _current
    return _import_cupy() if name == "cupy" else np


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
    name = name or _current
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
    """``target[index] += values`` where repeated indices add up (``np.add.at`` / ``cupyx.scatter_add``)."""
    if _is_cupy_array(target):
        import cupyx  # noqa: PLC0415

        cupyx.scatter_add(target, index, values)
    else:
        np.add.at(target, index, values)


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


# --------------------------------------------------------------------------------------------------
# chunks and CPU threads
# --------------------------------------------------------------------------------------------------
def _find_openblas() -> Any:
    """The loaded OpenBLAS library (NumPy's wheels ship one), to set its thread count; None if not found."""
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "openblas" in line.lower() and ".so" in line}
    except OSError:
        return None
    for path in sorted(paths):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix in ("scipy_openblas_", "openblas_"):
            for suffix in ("64_", ""):
                setter = getattr(lib, f"{prefix}set_num_threads{suffix}", None)
                getter = getattr(lib, f"{prefix}get_num_threads{suffix}", None)
                if setter is not None and getter is not None:
                    getter.restype = ctypes.c_int
                    return setter, getter
    return None


_blas: Any = False  # False: not looked up yet; None: not found
_pool: ThreadPoolExecutor | None = None


def num_threads() -> int:
    """CPU threads minise uses: ``MINISE_NUM_THREADS`` or the number of cores.

    Setting ``MINISE_NUM_THREADS`` also caps BLAS at that many threads (e.g. 1 to run two trainings
    side by side on two cores without four BLAS threads fighting over them).
    """
    env = os.environ.get("MINISE_NUM_THREADS")
    if env:
        return max(1, int(env))
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def chunk_size(xp: ModuleType, batch: int, bytes_per_item: int, budget: int = 4 << 20) -> int:
    """How many images an op handles at a time.

    On the GPU the whole batch is one chunk. On the CPU, working on a few images at a time keeps the
    im2col buffer (``bytes_per_item`` each) within about ``budget`` bytes, so it stays in cache and is
    reused, instead of one whole-batch matrix that streams through memory; and there are at least as
    many chunks as threads so every core has work.
    """
    if xp is not np:
        return batch
    threads = num_threads()
    by_cache = max(1, budget // max(1, bytes_per_item))
    chunks = -(-batch // by_cache)  # as few chunks as fit the budget ...
    chunks = -(-chunks // threads) * threads  # ... rounded up to a multiple of the threads, so none idles
    return max(1, -(-batch // chunks))


def run_chunks(xp: ModuleType, batch: int, size: int, work: Callable[[int, int], Any]) -> list[Any]:
    """Call ``work(start, stop)`` for consecutive chunks of ``range(batch)`` and return the results in order.

    On NumPy the chunks run on all cores (NumPy releases the GIL inside copies and BLAS) with BLAS
    itself held to one thread meanwhile, so the cores split the batch instead of fighting over small
    matrix products. That needs a BLAS whose thread count minise can set: the OpenBLAS of NumPy's
    Linux wheels. Without it (another BLAS, or no ``/proc/self/maps``), and for a call made from inside
    a chunk, the chunks run one after the other in the calling thread.

    The calling thread and ``threads - 1`` pool threads each take the next chunk until none is left:
    one hand-off per thread and call, not one per chunk. A training step of se_resnet20 makes about 190
    calls of a few chunks each, and handing every chunk to the pool separately cost 9 % of its speed
    (measured). On CuPy there is one chunk and the GPU does the parallel work.
    """
    global _blas, _pool
    spans = [(i, min(i + size, batch)) for i in range(0, batch, size)]
    threads = num_threads()
    if xp is not np:
        return [work(a, b) for a, b in spans]
    if _blas is False:
        _blas = _find_openblas()
        if _blas is not None and os.environ.get("MINISE_NUM_THREADS"):
            _blas[0](threads)  # the user's cap applies to BLAS too
    nested = threading.current_thread().name.startswith("minise")  # called from inside a chunk's work
    if len(spans) == 1 or threads == 1 or _blas is None or nested:
        # one chunk, one thread, no way to hold BLAS to one thread, or already on the pool (waiting for the
        # pool from inside it could wait for ever): run serially
        return [work(a, b) for a, b in spans]
    if _pool is None or _pool._max_workers != threads - 1:
        _pool = ThreadPoolExecutor(threads - 1, thread_name_prefix="minise")
    results: list[Any] = [None] * len(spans)
    taken = [0]  # how many chunks have been handed out
    lock = threading.Lock()

    def drain() -> None:
        while True:
            with lock:
                i = taken[0]
                taken[0] += 1
            if i >= len(spans):
                return
            results[i] = work(*spans[i])

    setter, getter = _blas
    before = getter()
    setter(1)
    try:
        helpers = [_pool.submit(drain) for _ in range(min(threads, len(spans)) - 1)]
        try:
            drain()  # the calling thread works too
        finally:
            errors = [f.exception() for f in helpers]  # waits for every helper, even if drain() raised
        for e in errors:
            if e is not None:
                raise e
    finally:
        setter(before)
    return results


SMALL_GEMM_MNK = 1_000_000  # OpenBLAS's unpacked small-matrix kernels take products with M*N*K up to this


def gemm_columns(xp: ModuleType, m: int, k: int, n: int) -> int:
    """How many columns of an (m, k) x (k, n) product to hand the BLAS at a time.

    OpenBLAS (0.3.16 and later, with its AVX-512 "SkylakeX" kernels) multiplies a product with
    M*N*K <= 10^6 by a kernel that reads the operands in place, without first copying them into packed
    panels (for most operand layouts; a few transposed ones are excluded). For the thin products of
    small convolutions the packing costs as much as the arithmetic: four products of 256 columns each
    take about half the time of one (16, 144) x (144, 1024) product, the forward GEMM of a 16-channel
    3x3 layer (timed with NumPy's matmul on the 2-core machine of ``BENCHMARKS.md``). So on the CPU the
    columns are cut into blocks of a power of two that keeps M*N*K within that bound, when such a block
    still has at least 16 columns (narrower ones were slower); otherwise, and on the GPU, all n at once.
    With another BLAS the blocks only cost a few extra calls.
    """
    if xp is not np:
        return n
    block = 1 << max(0, (SMALL_GEMM_MNK // max(1, m * k)).bit_length() - 1)  # largest power of two within
    return block if 16 <= block < n else n


def elementwise(xp: ModuleType, out: Any, fn: Callable[..., Any], *arrays: Any) -> Any:
    """``fn(*arrays, out=out)`` for an elementwise ``fn``, split along axis 0 into chunks that run on
    all cores (``run_chunks``); returns ``out``.

    Arrays with out's number of axes and its length along axis 0 are cut with it; any other array
    (a per-channel (1, C, 1, 1) scale, say) broadcasts whole against each chunk. A ReLU or a residual
    add over a (128, 16, 32, 32) activation is memory-bound work that one core does at a fraction of
    the machine's bandwidth, so a second core shortens it (by how much depends on the machine's memory).
    """
    if out.ndim == 0 or out.shape[0] < 2:
        fn(*arrays, out=out)
        return out
    n = out.shape[0]
    cut = [a.ndim == out.ndim and a.shape[0] == n for a in arrays]
    size = chunk_size(xp, n, out[0].nbytes, budget=1 << 20)

    def work(a: int, z: int) -> None:
        fn(*(t[a:z] if c else t for t, c in zip(arrays, cut, strict=True)), out=out[a:z])

    run_chunks(xp, n, size, work)
    return out


# --------------------------------------------------------------------------------------------------
# the CPU allocator
# --------------------------------------------------------------------------------------------------
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt() parameters, from glibc's <malloc.h>
MMAP_THRESHOLD = 32 << 20  # glibc's largest allowed value on 64-bit systems
TRIM_THRESHOLD = 1 << 30


def retain_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed memory for the next step instead of handing it back to the OS.

    A training step allocates and frees the same arrays every time: activations, gradients and
    im2col buffers of a few MB each. By default glibc gives blocks that size their own ``mmap`` or
    trims them off the top of the heap when they are freed, so on the next step the kernel has to
    fault in and zero every page again, one page fault at a time under a lock that all threads share.
    Measured with ``python -m minise.bench train`` on 2 cores, that cost se_resnet20 about a fifth
    of its speed. Raising ``M_MMAP_THRESHOLD`` to 32 MB and ``M_TRIM_THRESHOLD`` to 1 GB keeps such
    blocks in the heap, where the next step reuses them. The price: between steps the process keeps
    the memory of its busiest moment instead of shrinking.

    The minise command lines (train, evaluate, bench) call this at start; a program that imports
    minise may call it too. ``MINISE_MALLOC=system`` leaves malloc alone. Returns whether the
    settings were applied: only on Linux with glibc, and only for the NumPy backend's memory (CuPy
    has its own memory pool on the GPU).
    """
    if os.environ.get("MINISE_MALLOC", "").lower() == "system":
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt returns 1 on success; the trim threshold first, so that no moment has mmap raised alone
    return bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) and mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))
