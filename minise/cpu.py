"""CPU execution: how big work is cut into chunks and run on the CPU cores, and how the CPU allocator
keeps freed memory for the next step.

* how many threads minise uses (:func:`num_threads`, ``MINISE_NUM_THREADS``);
* how a batch is cut into chunks and the chunks run on all cores (:func:`chunk_size`, :func:`run_chunks`, on
  helper threads that sleep on locks: :class:`Helpers`), with BLAS held to one thread meanwhile
  (:func:`_find_openblas`);
* how a thin matrix product is cut into column blocks (:func:`gemm_columns`);
* elementwise passes split across cores (:func:`elementwise`), per-channel coefficients laid out for
  them (:func:`channel_plane`), and zeros for their ReLUs (:func:`zeros_like`);
* a cache-friendly 2-D transpose (:func:`transpose_into`);
* glibc's ``malloc`` keeping freed memory for the next step (:func:`retain_freed_memory`).

On CuPy all of this is off and costs nothing: a chunk is the whole batch, a product is one GEMM and an
elementwise pass is one call (the GPU does the parallel work). :mod:`minise.backend` holds the other half,
the NumPy/CuPy switch.
"""

from __future__ import annotations

import ctypes
import math
import os
import platform
import threading
from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np


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
_pool: Helpers | None = None


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


MIN_PARALLEL_BYTES = 1 << 20  # below this much data in all, an op runs in one chunk on the calling thread


def chunk_size(xp: ModuleType, batch: int, bytes_per_item: int, budget: int = 4 << 20) -> int:
    """How many images an op handles at a time.

    On the GPU the whole batch is one chunk. On the CPU, working on a few images at a time keeps the
    im2col buffer (``bytes_per_item`` each) within about ``budget`` bytes, so it stays in cache and is
    reused, instead of one whole-batch matrix that streams through memory; and there are at least as
    many chunks as threads so every core has work.

    Work on less than ``MIN_PARALLEL_BYTES`` (1 MB) in all is one chunk: handing a chunk to another
    thread costs about 80 us on the course's VM (waking a sleeping thread, then waiting for it), more
    than a pass over 1 MB takes. A training step of se_resnet20 makes 182 calls of ``run_chunks``. With
    the rule against without it (medians of 8 alternating rounds in one process): batch 16 219.0 against
    189.9 images/s (all 8 rounds won), batch 32 228.0 against 212.5 (7 of 8), batch 128 323.2 against
    324.3 (no change: there nearly every call moves more than 1 MB).
    """
    if xp is not np:
        return batch
    if batch * bytes_per_item < MIN_PARALLEL_BYTES:
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

    The calling thread and ``threads - 1`` helper threads (:class:`Helpers`) each take the next chunk until
    none is left: one hand-off per thread and call, not one per chunk. A training step of se_resnet20 makes
    about 190 calls of a few chunks each, and handing every chunk to a thread pool separately cost 9 % of its
    speed (measured). A helper that has not woken by the time the caller has done every chunk is not waited
    for. On CuPy there is one chunk and the GPU does the parallel work.
    """
    global _blas, _pool
    if xp is not np:  # the GPU: one chunk, nothing of the CPU machinery
        return [work(0, batch)] if size >= batch else [work(i, min(i + size, batch)) for i in range(0, batch, size)]
    spans = [(i, min(i + size, batch)) for i in range(0, batch, size)]
    threads = num_threads()
    if _blas is False:
        _blas = _find_openblas()
        if _blas is not None and os.environ.get("MINISE_NUM_THREADS"):
            _blas[0](threads)  # the user's cap applies to BLAS too
    nested = threading.current_thread().name.startswith("minise")  # called from inside a chunk's work
    if len(spans) == 1 or threads == 1 or _blas is None or nested:
        # one chunk, one thread, no way to hold BLAS to one thread, or already on the pool (waiting for the
        # pool from inside it could wait for ever): run serially
        if len(spans) == 1 and batch > 1 and threads > 1 and _blas is not None and not nested:
            # small work (``chunk_size``): still hold BLAS to one thread, as the chunks do. A BLAS call on its
            # own threads leaves them spinning afterwards while minise's threads want the cores: with the
            # Winograd weight transforms run that way, se_resnet20 trained 15 % slower (measured). A batch
            # of one image keeps BLAS's threads: its one chunk may be a large product.
            return _with_one_blas_thread(lambda: [work(0, batch)])
        return [work(a, b) for a, b in spans]
    if _pool is None or _pool.count != threads - 1:
        if _pool is not None:
            _pool.close()
        _pool = Helpers(threads - 1)
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

    pool = _pool
    helpers = min(threads, len(spans)) - 1
    if not _with_one_blas_thread(lambda: pool.run(drain, helpers)):  # busy with another call, or closed
        return _with_one_blas_thread(lambda: [work(a, b) for a, b in spans])
    return results


class Helpers:
    """``count`` helper threads for :func:`run_chunks`, each asleep on a lock of its own until a call needs it.

    ``run(job, k)`` wakes the first ``k`` helpers (releases their ``wake`` locks), runs ``job`` on the
    calling thread too, then, helper by helper: if the helper has not woken yet, takes its wake-up back
    (acquires its ``wake`` lock again) and does not wait for it, since the caller has done the work; else
    waits until it has finished (its ``finished`` lock). A hand-off is two lock releases, one to wake the
    helper and one to wake the caller back.

    Why not ``concurrent.futures.ThreadPoolExecutor``: it does more for each task (a ``Future``, a work
    queue, a condition variable to wait on the result), and on this course's 2-core VM a thread that sleeps
    takes tens of microseconds to wake. An empty ``run_chunks`` call of two chunks took 55-83 us through the
    executor and 20-22 us here (medians). In A/Bs in one process (executor against these helpers, alternating
    rounds): the SE op 1.063x (won 9 of 10), se_resnet20 evaluation 1.037x (8 of 10), a training step 1.046x
    (5 of 6). A training step makes about 190 calls.

    One call at a time: ``run`` returns False without running anything while another thread of the program
    is inside it (two models evaluated on two threads, say), and the caller then runs its chunks itself.
    The helpers are daemon threads named ``minise-helper-<i>``: a chunk's work that calls ``run_chunks``
    again sees the name and runs serially instead of waiting for helpers that are all busy.
    """

    def __init__(self, count: int) -> None:
        self.count = count
        self.busy = threading.Lock()  # held by the one caller of run at a time
        self.job: Callable[[], None] = _nothing
        self.wake = [threading.Lock() for _ in range(count)]  # released: helper i has a job
        self.finished = [threading.Lock() for _ in range(count)]  # released: helper i is done with it
        self.errors: list[BaseException | None] = [None] * count
        self.closed = False
        self.threads = [
            threading.Thread(target=self._serve, args=(i,), name=f"minise-helper-{i}", daemon=True)
            for i in range(count)
        ]
        for i, thread in enumerate(self.threads):
            self.wake[i].acquire()
            self.finished[i].acquire()
            thread.start()

    def _serve(self, i: int) -> None:
        while True:
            self.wake[i].acquire()  # sleeps until run() has a job
            if self.closed:
                return
            try:
                self.job()
            except BaseException as error:  # handed to the caller, which raises it
                self.errors[i] = error
            finally:
                self.finished[i].release()

    def run(self, job: Callable[[], None], k: int) -> bool:
        """``job()`` on the calling thread and on ``k`` helpers at once; True when done. An error raised by
        ``job`` on any of them is raised here (the caller's own first, else the first helper's). False, with
        nothing run, when another thread is inside ``run``, or after ``close``."""
        if not self.busy.acquire(blocking=False):
            return False
        try:
            if self.closed:
                return False
            self.job = job
            woken = 0
            try:
                for i in range(k):
                    self.wake[i].release()
                    woken += 1
                job()  # the calling thread works too
            finally:  # even if job() raised (its error then goes first), or Ctrl-C came:
                for i in range(woken):
                    if not self.wake[i].acquire(blocking=False):  # helper i woke and took the job ...
                        _acquire_through_interrupts(self.finished[i])  # ... so wait until it is done with it
                errors = [e for e in self.errors[:k] if e is not None]
                self.errors[:k] = [None] * k
                self.job = _nothing  # the job holds its arrays: let them go now, not at the next call
            if errors:
                raise errors[0]
            return True
        finally:
            self.busy.release()

    def close(self) -> None:
        """End the helper threads (when ``MINISE_NUM_THREADS`` changes, a new set replaces them); ``run``
        returns False afterwards. Calling it again does nothing."""
        with self.busy:  # not while a call is running
            if self.closed:
                return
            self.closed = True
            for lock in self.wake:
                lock.release()


def _nothing() -> None:
    """The job of helpers between calls."""


def _acquire_through_interrupts(lock: threading.Lock) -> None:
    """``lock.acquire()`` that a KeyboardInterrupt does not cut short: it waits on, then raises the interrupt.

    A helper releases its ``finished`` lock when it is done with a call. If Ctrl-C stopped the caller's wait,
    that release would come later with nobody waiting for it, and the next call would take it as the end of
    its own job while the helper is still on the interrupted one."""
    interrupted: KeyboardInterrupt | None = None
    while True:
        try:
            lock.acquire()
            break
        except KeyboardInterrupt as interrupt:
            interrupted = interrupt
    if interrupted is not None:
        raise interrupted


_blas_holders = [0, 0]  # [threads of the program inside _with_one_blas_thread, BLAS's thread count before the first]
_blas_lock = threading.Lock()


def _with_one_blas_thread(run: Callable[[], Any]) -> Any:
    """``run()`` with the BLAS held to one thread, its thread count restored afterwards (even on an error).

    Two threads of a program may be in here at once (two models evaluated side by side): the first to enter
    saves BLAS's thread count and the last to leave restores it, so that neither restores a count the other
    set (which could leave BLAS on one thread for good)."""
    setter, getter = _blas
    with _blas_lock:
        if _blas_holders[0] == 0:
            _blas_holders[1] = getter()
            setter(1)
        _blas_holders[0] += 1
    try:
        return run()
    finally:
        with _blas_lock:
            _blas_holders[0] -= 1
            if _blas_holders[0] == 0:
                setter(_blas_holders[1])


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


TRANSPOSE_STRIP = 16  # source rows per strip in transpose_into: one 64-byte cache line of float32 per written run


def transpose_into(src: Any, dst: Any) -> None:
    """dst[...] = src.T for 2-D arrays; on NumPy ``TRANSPOSE_STRIP`` rows of src at a time.

    For a wide transpose such as (pixels, n*K) -> (n*K, pixels), the end of Winograd's pixel-major layout,
    ``dst[...] = src.T`` makes NumPy walk dst row by row, each row gathering one value from every row of
    src, far apart in memory. In strips of 16 source rows, each row of dst receives 16 neighbouring values
    (one cache line) at a time, from 16 rows of src that stay in cache for the whole strip: 2.8x faster on
    the (64, 1024) transpose of 16 images with 64 channels on 8x8 maps (185 -> 67 us on the machine of
    ``BENCHMARKS.md``). On CuPy: one assignment.
    """
    if not isinstance(src, np.ndarray):
        dst[...] = src.T
        return
    for s in range(0, src.shape[0], TRANSPOSE_STRIP):
        dst[:, s : s + TRANSPOSE_STRIP] = src[s : s + TRANSPOSE_STRIP].T


def elementwise(xp: ModuleType, out: Any, fn: Callable[..., Any], *arrays: Any) -> Any:
    """``fn(*arrays, out=out)`` for an elementwise ``fn``, split along axis 0 into chunks that run on
    all cores (``run_chunks``); returns ``out``. On CuPy: one call.

    Arrays with out's number of axes and its length along axis 0 are cut with it; any other array
    (a per-channel (1, C, 1, 1) scale, say) broadcasts whole against each chunk. A ReLU or a residual
    add over a (128, 16, 32, 32) activation is memory-bound work that one core does at a fraction of
    the machine's bandwidth, so a second core shortens it (by how much depends on the machine's memory).
    """
    if xp is not np or out.ndim == 0 or out.shape[0] < 2:  # the GPU, or nothing to cut: one call
        fn(*arrays, out=out)
        return out
    n = out.shape[0]
    cut = [a.ndim == out.ndim and a.shape[0] == n for a in arrays]
    size = chunk_size(xp, n, out[0].nbytes, budget=1 << 20)

    def work(a: int, z: int) -> None:
        fn(*(t[a:z] if c else t for t, c in zip(arrays, cut, strict=True)), out=out[a:z])

    run_chunks(xp, n, size, work)
    return out


PLANE_BYTES = 1 << 20  # channel_plane repeats a coefficient along the pixels while the plane is at most this big


def channel_plane(xp: ModuleType, v: Any, length: int) -> Any:
    """A per-channel coefficient ``v`` (C,) laid out to scale or shift an (N, C, L) array in an elementwise pass.

    The plain layout is a (1, C, 1) view that broadcasts. NumPy then runs its inner loop once per row of L
    values (one per image and channel), and for the short rows of a CIFAR ResNet (L = 64 to 1024 pixels)
    that per-row call costs more than the arithmetic. With ``v`` repeated L times, as a contiguous
    (1, C, L) plane, each image is one run of C*L values against the plane. Timed on the 2-core machine of
    ``BENCHMARKS.md`` on chunks in cache, batch norm's dx = A gy + B x + C (four passes) ran 1.4-1.8x
    faster with planes of at most 1 MB ((C, L) = (64, 256), (64, 1024), (128, 256), (256, 64), (256, 196),
    (512, 49), (64, 3136)); with a 3 MB plane, (256, 3136), the gain was 1.04x, since the plane no longer
    stays in the core's cache, so planes larger than ``PLANE_BYTES`` stay views. On CuPy the (1, C, 1)
    view: one kernel reads it with no per-row cost.
    """
    c = v.shape[0]
    if xp is not np or c * length * v.itemsize > PLANE_BYTES:
        return v.reshape(1, c, 1)
    return np.repeat(v, length).reshape(1, c, length)


ZEROS_BYTES = 4 << 20  # zeros_like() keeps a buffer of zeros up to this size for each dtype
_zeros: dict[Any, Any] = {}


def zeros_like(xp: ModuleType, t: Any) -> Any:
    """Zeros to compare ``t`` with in a ReLU: on NumPy a read-only array of zeros of t's shape and dtype, else
    the scalar 0 (on CuPy, inside ``cupy.fuse`` too, and on NumPy above ``ZEROS_BYTES``).

    The array is a view of one buffer kept for each dtype (grown to the largest request), so asking for it costs
    no allocation and no pass over memory. What it is for: :func:`minise.functional.elementwise.relu_of`, the
    ReLU of the elementwise passes (see there why an array). Only on NumPy is ``t`` looked at: inside
    ``cupy.fuse`` it is a traced variable that has a dtype but no shape.
    """
    if xp is not np:
        return 0
    size = math.prod(t.shape)
    if size * t.dtype.itemsize > ZEROS_BYTES:
        return 0
    buffer = _zeros.get(t.dtype)
    if buffer is None or buffer.size < size:
        buffer = np.zeros(size, dtype=t.dtype)
        buffer.flags.writeable = False
        _zeros[t.dtype] = buffer  # a thread still reading the old buffer keeps it alive
    return buffer[:size].reshape(t.shape)


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
