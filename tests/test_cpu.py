"""minise/cpu.py: how work is cut into chunks and run on the CPU cores, BLAS column blocks, elementwise
passes across cores, and glibc's malloc keeping freed memory; and that none of it runs on CuPy."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import threading
import time
import types

import numpy as np
import pytest

from minise import cpu


# --------------------------------------------------------------------------------------------------
# chunks and CPU threads
# --------------------------------------------------------------------------------------------------
@pytest.fixture
def own_pool(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """Fresh helper threads for the test (as many as its MINISE_NUM_THREADS asks), ended afterwards."""
    monkeypatch.setattr(cpu, "_pool", None)
    yield
    if cpu._pool is not None:
        cpu._pool.close()


@pytest.mark.parametrize("threads", ["1", "2", "4"])
@pytest.mark.parametrize(("batch", "size"), [(10, 1), (10, 3), (10, 4), (10, 10), (10, 25), (1, 1), (0, 3), (17, 5)])
def test_run_chunks_returns_results_in_order_and_covers_the_range(
    batch: int, size: int, threads: str, monkeypatch: pytest.MonkeyPatch, own_pool: None
) -> None:
    monkeypatch.setenv("MINISE_NUM_THREADS", threads)
    assert cpu.num_threads() == int(threads)
    lock = threading.Lock()
    calls: list[tuple[int, int]] = []

    def work(start: int, stop: int) -> list[int]:
        with lock:
            calls.append((start, stop))
        return list(range(start, stop))

    results = cpu.run_chunks(np, batch, size, work)
    assert [i for chunk in results for i in chunk] == list(range(batch))  # in order, each index once
    assert all(0 < len(chunk) <= size for chunk in results)
    assert sorted(calls) == [(a, min(a + size, batch)) for a in range(0, batch, size)]


def test_run_chunks_shares_the_chunks_between_the_caller_and_the_pool(
    monkeypatch: pytest.MonkeyPatch, own_pool: None
) -> None:
    """With 2 threads, the calling thread and one helper thread both take chunks (each chunk here waits
    5 ms, so neither can finish them all alone); the results still come back in order."""
    if cpu._find_openblas() is None:
        pytest.skip("OpenBLAS not found in this process: run_chunks runs serially")
    monkeypatch.setenv("MINISE_NUM_THREADS", "2")
    ran_on: dict[int, str] = {}

    def work(start: int, stop: int) -> int:
        ran_on[start] = threading.current_thread().name
        time.sleep(0.005)
        return start

    assert cpu.run_chunks(np, 12, 2, work) == [0, 2, 4, 6, 8, 10]
    names = set(ran_on.values())
    assert threading.current_thread().name in names
    assert any(n.startswith("minise") for n in names), names
    assert cpu._pool is not None and cpu._pool.count == 1  # threads - 1 helpers


def test_run_chunks_inside_a_chunk_runs_serially(monkeypatch: pytest.MonkeyPatch, own_pool: None) -> None:
    """A chunk's work may itself call run_chunks (an op inside an op): that inner call runs on the thread
    it was made from instead of waiting for a pool whose threads are all busy with the outer call."""
    monkeypatch.setenv("MINISE_NUM_THREADS", "2")

    def inner(start: int, stop: int) -> tuple[int, str]:
        time.sleep(0.002)
        return start, threading.current_thread().name

    def outer(start: int, stop: int) -> list[tuple[int, str]]:
        time.sleep(0.002)
        return cpu.run_chunks(np, 4, 1, inner)

    results = cpu.run_chunks(np, 6, 1, outer)  # would hang if the inner calls waited for the pool
    assert len(results) == 6
    for chunk in results:
        assert [s for s, _ in chunk] == [0, 1, 2, 3]
        if any(name.startswith("minise") for _, name in chunk):  # an inner call made on the pool's thread
            assert {name for _, name in chunk} == {chunk[0][1]}  # stayed on that one thread


def test_a_chunk_that_fails_on_a_helper_thread_raises_in_the_caller(
    monkeypatch: pytest.MonkeyPatch, own_pool: None
) -> None:
    """The error of a chunk run by a helper reaches the caller of run_chunks, and the helpers still serve
    the next call."""
    if cpu._find_openblas() is None:
        pytest.skip("OpenBLAS not found in this process: run_chunks runs serially")
    monkeypatch.setenv("MINISE_NUM_THREADS", "2")

    helper_took_one = threading.Event()

    def work(start: int, stop: int) -> int:
        if threading.current_thread().name.startswith("minise-helper"):
            helper_took_one.set()
            raise KeyError(f"chunk {start} on a helper")
        helper_took_one.wait(5)  # the caller's chunks wait until the helper has one, however slow it wakes
        return start

    with pytest.raises(KeyError, match="on a helper"):
        cpu.run_chunks(np, 12, 1, work)
    assert cpu.run_chunks(np, 6, 1, lambda a, b: a) == [0, 1, 2, 3, 4, 5]


def _returns_within(seconds: float, call) -> bool:  # type: ignore[no-untyped-def]
    """Whether ``call()`` returns within ``seconds`` (it runs on a daemon thread, left behind if it hangs)."""
    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    thread.join(seconds)
    return not thread.is_alive()


def test_a_helper_that_never_took_its_job_is_not_waited_for() -> None:
    """``Helpers.run`` takes back the wake-up of a helper that has not woken by the time the caller has
    finished the work, instead of waiting for it. Here the helper's thread has ended (``close``), so it never
    wakes: run must return at once with the caller's results. A ``run`` that always waits for its helpers
    (planted below) hangs."""
    helpers = cpu.Helpers(1)
    helpers.close()
    helpers.threads[0].join(5)
    assert not helpers.threads[0].is_alive()
    assert not helpers.run(lambda: None, 1)  # closed: nothing runs
    helpers.closed = False  # as if its thread were only slow to wake
    ran: list[str] = []
    assert _returns_within(5, lambda: helpers.run(lambda: ran.append(threading.current_thread().name), 1))
    assert len(ran) == 1 and not ran[0].startswith("minise")

    def always_waits(job, k):  # type: ignore[no-untyped-def]
        for i in range(k):
            helpers.wake[i].release()
        job()
        for i in range(k):
            helpers.finished[i].acquire()

    assert not _returns_within(0.5, lambda: always_waits(lambda: None, 1))  # the check bites


def test_helpers_serve_one_caller_at_a_time() -> None:
    """While one thread of the program is inside ``Helpers.run``, another's call returns False without
    running anything (run_chunks then runs its chunks itself); afterwards the helpers serve again."""
    helpers = cpu.Helpers(1)
    second: list[bool] = []

    def job() -> None:
        if threading.current_thread().name.startswith("minise"):
            return
        other = threading.Thread(target=lambda: second.append(helpers.run(lambda: second.append(True), 1)))
        other.start()
        other.join()

    assert helpers.run(job, 1)
    assert second == [False]
    assert helpers.run(lambda: None, 1)
    helpers.close()


def test_run_chunks_while_another_thread_holds_the_helpers_runs_in_the_calling_thread(
    monkeypatch: pytest.MonkeyPatch, own_pool: None
) -> None:
    """While one thread's run_chunks call has the helpers (its chunks wait on an event), another thread's call
    runs all its chunks itself, in order; then the first call finishes too."""
    if cpu._find_openblas() is None:
        pytest.skip("OpenBLAS not found in this process: run_chunks runs serially")
    monkeypatch.setenv("MINISE_NUM_THREADS", "2")
    inside, go_on = threading.Event(), threading.Event()

    def slow(start: int, stop: int) -> int:
        inside.set()
        go_on.wait(5)
        return start

    first: dict[str, list[int]] = {}
    holder = threading.Thread(target=lambda: first.setdefault("results", cpu.run_chunks(np, 4, 1, slow)))
    holder.start()
    assert inside.wait(5)
    ran_on: list[str] = []
    second = cpu.run_chunks(np, 4, 1, lambda a, b: ran_on.append(threading.current_thread().name) or a * 10)
    go_on.set()
    holder.join(5)
    assert second == [0, 10, 20, 30] and set(ran_on) == {threading.current_thread().name}
    assert first["results"] == [0, 1, 2, 3]


def test_helpers_let_go_of_the_job_when_the_call_ends() -> None:
    """A job holds its op's arrays; after run returns nothing of it is kept (the next call may be far off)."""
    import gc  # noqa: PLC0415
    import weakref  # noqa: PLC0415

    helpers = cpu.Helpers(1)

    class Big:
        pass

    def job_holding(obj: Big):  # type: ignore[no-untyped-def]
        return lambda: obj.__class__

    big = Big()
    alive = weakref.ref(big)
    job = job_holding(big)
    del big
    assert helpers.run(job, 1)
    del job
    gc.collect()
    assert alive() is None
    helpers.close()
    helpers.close()  # a second close does nothing


def test_a_wait_cut_by_ctrl_c_still_waits_for_the_helper() -> None:
    """The wait for a helper's ``finished`` lock goes on through a KeyboardInterrupt and raises it only once
    the lock is held: else the helper's later release would end the next call's wait too early. Planted:
    a lock whose first acquire is interrupted."""

    class InterruptedOnce:
        def __init__(self) -> None:
            self.calls = 0

        def acquire(self) -> bool:
            self.calls += 1
            if self.calls == 1:
                raise KeyboardInterrupt
            return True

    lock = InterruptedOnce()
    with pytest.raises(KeyboardInterrupt):
        cpu._acquire_through_interrupts(lock)  # type: ignore[arg-type]
    assert lock.calls == 2  # it acquired after the interrupt, then raised it


def test_blas_is_restored_when_two_threads_hold_it_to_one(blas_at_two_threads) -> None:  # type: ignore[no-untyped-def]
    """Two threads inside _with_one_blas_thread at once, leaving in either order: BLAS stays on one thread
    while either is inside and gets its count back when the last leaves (a save and restore per thread would
    leave it on one thread for good when the first to enter leaves first)."""
    _, getter = blas_at_two_threads
    if cpu._blas is False:
        cpu._blas = cpu._find_openblas()
    first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()
    seen: list[int] = []

    def first() -> None:
        def inside() -> None:
            first_in.set()
            second_in.wait(5)

        cpu._with_one_blas_thread(inside)
        first_out.set()

    thread = threading.Thread(target=first)
    thread.start()
    first_in.wait(5)

    def second() -> None:
        second_in.set()
        first_out.wait(5)  # the first has left
        seen.append(getter())

    cpu._with_one_blas_thread(second)
    thread.join(5)
    assert seen == [1]  # still one thread while the second was inside
    assert getter() == 2


def test_run_chunks_from_two_threads_at_once_is_right_on_both(monkeypatch: pytest.MonkeyPatch, own_pool: None) -> None:
    """Two threads calling run_chunks at the same time (two models evaluated side by side) both get all
    their chunks, in order: one uses the helpers, the other runs its chunks itself."""
    monkeypatch.setenv("MINISE_NUM_THREADS", "2")
    results: dict[int, list[int]] = {}

    def call(k: int) -> None:
        def work(start: int, stop: int) -> int:
            time.sleep(0.002)
            return start * 10 + k

        results[k] = cpu.run_chunks(np, 8, 1, work)

    threads = [threading.Thread(target=call, args=(k,)) for k in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {k: [i * 10 + k for i in range(8)] for k in (1, 2)}


def test_run_chunks_on_a_device_module_is_one_serial_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MINISE_NUM_THREADS", "4")
    not_numpy = types.ModuleType("fake_xp")
    out = cpu.run_chunks(not_numpy, 7, 3, lambda a, b: (a, b, threading.get_ident()))
    assert [(a, b) for a, b, _ in out] == [(0, 3), (3, 6), (6, 7)]
    assert {t for _, _, t in out} == {threading.get_ident()}  # run in this thread


@pytest.fixture
def blas_at_two_threads():  # type: ignore[no-untyped-def]
    """This process's OpenBLAS (setter, getter), set to 2 threads for the test and restored afterwards."""
    blas = cpu._find_openblas()
    if blas is None:
        pytest.skip("OpenBLAS not found in this process: run_chunks runs serially and leaves BLAS alone")
    setter, getter = blas
    original = getter()
    setter(2)
    yield setter, getter
    setter(original)


def test_run_chunks_holds_blas_to_one_thread_and_restores_it(
    monkeypatch: pytest.MonkeyPatch, own_pool: None, blas_at_two_threads
) -> None:  # type: ignore[no-untyped-def]
    _, getter = blas_at_two_threads
    before = getter()
    monkeypatch.setenv("MINISE_NUM_THREADS", "3")
    seen: list[int] = []
    cpu.run_chunks(np, 9, 2, lambda a, b: seen.append(getter()))
    assert seen and set(seen) == {1}  # BLAS held to one thread while the chunks ran
    assert getter() == before
    with pytest.raises(ZeroDivisionError):  # restored even when a chunk fails
        cpu.run_chunks(np, 9, 2, lambda a, b: 1 / (a - 4))
    assert getter() == before


def test_small_work_in_one_chunk_holds_blas_to_one_thread(
    monkeypatch: pytest.MonkeyPatch, own_pool: None, blas_at_two_threads
) -> None:  # type: ignore[no-untyped-def]
    """One chunk of a batch (small work, ``chunk_size``) runs on the calling thread with BLAS held to one
    thread, as the chunks are; one chunk of a single image leaves BLAS's threads alone (a large product
    may need them); BLAS is restored either way."""
    _, getter = blas_at_two_threads
    monkeypatch.setenv("MINISE_NUM_THREADS", "2")
    seen: list[tuple[int, int]] = []
    cpu.run_chunks(np, 5, 5, lambda a, b: seen.append((threading.get_ident(), getter())))
    assert seen == [(threading.get_ident(), 1)]
    assert getter() == 2
    seen.clear()
    cpu.run_chunks(np, 1, 1, lambda a, b: seen.append((threading.get_ident(), getter())))
    assert seen == [(threading.get_ident(), 2)]


def test_chunk_size_covers_the_batch_within_the_cache_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MINISE_NUM_THREADS", "4")
    assert cpu.chunk_size(np, 64, 1 << 20, budget=4 << 20) == 4  # the budget decides
    assert cpu.chunk_size(np, 8, 1 << 20, budget=64 << 20) == 2  # at least one chunk per thread
    assert cpu.chunk_size(np, 1, 1 << 30) == 1
    assert cpu.chunk_size(types.ModuleType("fake_xp"), 64, 1 << 30) == 64  # a GPU takes the whole batch
    per_image = cpu.MIN_PARALLEL_BYTES // 8
    assert cpu.chunk_size(np, 8, per_image - 1) == 8  # under 1 MB in all: one chunk, no thread hand-off
    assert cpu.chunk_size(np, 8, per_image) == 2  # 1 MB: split across the 4 threads


@pytest.mark.parametrize("threads", ["1", "2"])
@pytest.mark.parametrize("shape", [(), (1, 3), (7, 5, 3), (64, 16, 32, 32)])
def test_elementwise_in_chunks_equals_one_pass(
    shape: tuple[int, ...], threads: str, monkeypatch: pytest.MonkeyPatch, own_pool: None
) -> None:
    """cpu.elementwise splits along axis 0 (for the largest shape: 2 or more chunks, on the pool's
    threads when there are 2) and gives exactly what one whole-array call gives, in the given ``out``."""
    monkeypatch.setenv("MINISE_NUM_THREADS", threads)
    spans: list[int] = []
    real = cpu.run_chunks

    def spy(xp, batch, size, work):  # type: ignore[no-untyped-def]
        spans.append(-(-batch // size))
        return real(xp, batch, size, work)

    monkeypatch.setattr(cpu, "run_chunks", spy)
    rng = np.random.default_rng(0)
    a = rng.standard_normal(shape).astype(np.float32)
    b = rng.standard_normal(shape).astype(np.float32)
    out = np.full(shape, np.nan, dtype=np.float32)
    assert cpu.elementwise(np, out, np.add, a, b) is out
    np.testing.assert_array_equal(out, a + b)
    if len(shape) == 4:
        assert spans and spans[0] >= 2  # 2 MB over a 1 MB budget: cut into chunks
    neg = cpu.elementwise(np, np.empty(shape, np.float32), lambda x, out: np.maximum(x, 0, out=out), a)
    np.testing.assert_array_equal(neg, np.maximum(a, 0))
    if len(shape) == 4:  # operands that broadcast: per image and channel (cut with out), per channel (whole)
        e, t = a[:, :, :1, :1].copy(), b[:1, :, :1, :1].copy()
        scaled = cpu.elementwise(
            np, np.empty(shape, np.float32), lambda x, e_, t_, out: np.add(x * e_, t_, out=out), a, e, t
        )
        np.testing.assert_array_equal(scaled, a * e + t)


# --------------------------------------------------------------------------------------------------
# the CPU allocator
# --------------------------------------------------------------------------------------------------
FAULTS_SCRIPT = """
import resource, sys
import numpy as np
from minise import cpu
applied = cpu.retain_freed_memory()
def step():  # allocate, touch and free an 8 MB array, as a training step does with an activation
    a = np.empty(2 << 20, dtype=np.float32)
    a.fill(1.0)
    del a
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    step()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(
    sys.platform != "linux" or platform.libc_ver()[0] != "glibc", reason="retain_freed_memory is for Linux with glibc"
)
@pytest.mark.parametrize("setting", ["", "system"])
def test_retain_freed_memory_stops_page_faults_on_reused_blocks(setting: str) -> None:
    """With the setting, 20 rounds of an 8 MB array fault in (almost) no new pages; with
    MINISE_MALLOC=system (glibc's defaults) every round faults in its 2,048 pages (or 4 huge pages)
    again. Run in a fresh process, so that this one's allocator keeps its own settings."""
    env = {**os.environ, "MINISE_MALLOC": setting}
    out = subprocess.run([sys.executable, "-c", FAULTS_SCRIPT], capture_output=True, text=True, env=env, check=True)
    applied, faults = out.stdout.split()
    if setting == "system":
        assert applied == "False"
        assert int(faults) >= 20 * 4  # at least the 2 MB huge pages of each round, usually 4 KB pages
    else:
        assert applied == "True"
        assert int(faults) < 20, faults  # at most a stray page or two, not one round's worth


def test_on_cupy_the_cpu_machinery_is_off(standin, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """On the GPU a chunk is the whole batch, a product one GEMM, an elementwise pass one call: no threads, no
    BLAS lookup, no pool (checked with the CuPy stand-in as the array module)."""
    monkeypatch.setattr(cpu, "_blas", False)
    monkeypatch.setattr(cpu, "_pool", None)
    calls: list[tuple[int, int, str]] = []
    size = cpu.chunk_size(standin, 128, 1 << 30)
    assert size == 128
    cpu.run_chunks(standin, 128, size, lambda a, b: calls.append((a, b, threading.current_thread().name)))
    assert calls == [(0, 128, threading.current_thread().name)]
    assert cpu._blas is False and cpu._pool is None  # BLAS never looked up, no thread pool started
    assert cpu.gemm_columns(standin, 16, 144, 1024) == 1024
    seen: list[int] = []
    x = standin.ones((64, 4), dtype=np.float32)

    def body(a, out):  # type: ignore[no-untyped-def]
        seen.append(a.shape[0])
        return standin.multiply(a, 2, out=out)

    out = cpu.elementwise(standin, standin.empty((64, 4), dtype=np.float32), body, x)
    assert seen == [64] and float(out.sum()) == 512.0


@pytest.mark.parametrize("shape", [(64, 1024), (17, 5), (1, 3), (33, 2), (16, 16)])
def test_transpose_into_is_the_transpose_whatever_the_number_of_strips(shape: tuple[int, int]) -> None:
    """Every strip of TRANSPOSE_STRIP source rows lands in its columns of dst, the last (partial) one too."""
    src = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    dst = np.full(shape[::-1], np.nan, dtype=np.float32)
    cpu.transpose_into(src, dst)
    np.testing.assert_array_equal(dst, src.T)


def test_transpose_into_on_a_device_module_is_one_assignment() -> None:
    """Anything that is not a NumPy array (a CuPy array) is transposed in one assignment, no strips."""

    class Recording:
        def __init__(self) -> None:
            self.assigned: list[object] = []

        def __setitem__(self, key: object, value: object) -> None:
            self.assigned.append(key)

    class Source:
        T = "transposed"

    dst = Recording()
    cpu.transpose_into(Source(), dst)
    assert dst.assigned == [Ellipsis]


def test_a_helper_error_does_not_outlive_its_call() -> None:
    """When the caller's part of a job and a helper's part both fail, the caller's error is raised and the
    helper's is dropped with the call: the next call, which does not fail, returns normally."""
    helpers = cpu.Helpers(1)
    started = threading.Event()

    def job() -> None:
        if threading.current_thread().name.startswith("minise"):
            started.set()
            raise KeyError("helper")
        started.wait(5)  # the helper has taken its part and failed before the caller fails
        raise ValueError("caller")

    with pytest.raises(ValueError, match="caller"):
        helpers.run(job, 1)
    assert helpers.run(lambda: None, 1)
    helpers.close()


# --------------------------------------------------------------------------------------------------
# zeros for the elementwise ReLUs
# --------------------------------------------------------------------------------------------------
def test_zeros_are_read_only_views_of_one_kept_buffer(monkeypatch: pytest.MonkeyPatch) -> None:
    """cpu.zeros_like hands out views of one buffer per dtype, grown to the largest request, never writable (a
    write would corrupt every later ReLU); the scalar 0 above ZEROS_BYTES, and off NumPy without looking at
    the argument (inside cupy.fuse it has no shape)."""
    monkeypatch.setattr(cpu, "_zeros", {})
    small = cpu.zeros_like(np, np.ones((2, 3), np.float32))
    assert small.shape == (2, 3) and small.dtype == np.float32 and not small.any()
    with pytest.raises(ValueError, match="read-only"):
        small[0, 0] = 1.0
    large = cpu.zeros_like(np, np.ones((4, 5, 6), np.float32))  # grows the buffer
    again = cpu.zeros_like(np, np.ones((3, 2), np.float32))
    assert np.shares_memory(large, again)  # reused, not allocated again
    assert not np.shares_memory(small, large)  # the first, smaller buffer was replaced; `small` keeps it alive
    assert cpu.zeros_like(np, np.ones(2)).dtype == np.float64
    limit = cpu.ZEROS_BYTES // 4
    assert isinstance(cpu.zeros_like(np, np.ones(limit, np.float32)), np.ndarray)
    assert cpu.zeros_like(np, np.ones(limit + 1, np.float32)) == 0

    class Traced:  # what cupy.fuse traces a body with: a dtype, no shape
        dtype = np.dtype(np.float32)

    assert cpu.zeros_like(types.ModuleType("fake_xp"), Traced()) == 0
