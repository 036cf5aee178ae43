"""A pool of worker processes that decode and transform images, and the job they run.

Decoding a JPEG is pure Python-to-C work that a single process does one image at a time; a model
step on two cores takes long enough that a few processes decoding ahead keep it fed. A job is a
*whole batch*, described by plain data (:class:`Job`: file paths or cache rows, the transform, the
seed and epoch), and its result depends on nothing else - not on which worker ran it, nor when -
which is what keeps the batches reproducible with any number of workers.

Workers are started with ``forkserver`` where the platform has it (else ``spawn``), never by forking
the training process itself: that process runs threads (the ops' thread pool, the BLAS library's),
and a child forked from a threaded process can deadlock on a lock some other thread held. As with
PyTorch's ``DataLoader`` under ``spawn``, each worker imports the main module, so a script that uses
workers must keep its work under ``if __name__ == "__main__":`` (the minise commands do). Workers
ignore Ctrl-C, so that the training loop, not a dying worker, decides what an interrupt does.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from .image_transforms import ImageTransform, transform_array, transform_file
from .imagefolder import ImageDecodeError

__all__ = ["DataLoaderError", "DecodePool", "Job", "JobResult", "default_workers", "run_job"]

T = TypeVar("T")


class DataLoaderError(RuntimeError):
    """Batches could not be made: a worker process died, or every image of a batch failed to decode."""


def default_workers() -> int:
    """The number of cores this process may run on (what ``--workers`` defaults to)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _init_worker() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle


class DecodePool:
    """``workers`` processes that run :func:`run_job` (0: run it in the calling process instead).

    The processes start at the first :meth:`submit` and live until :meth:`close` (or the end of a
    ``with`` block), so one pool serves every epoch and can be shared by several loaders.
    """

    def __init__(self, workers: int | None = None) -> None:
        if workers is None:
            workers = default_workers()
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
            raise ValueError(f"DecodePool: workers is {workers!r} - use an int >= 0 (0: decode in this process)")
        self.workers = workers
        self._executor: ProcessPoolExecutor | None = None

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        """Run ``fn(*args)`` in a worker (or now, here, with 0 workers); ``fn`` must be importable by name."""
        if self.workers == 0:
            future: Future[T] = Future()
            try:
                future.set_result(fn(*args))
            except Exception as error:  # delivered by future.result(), as from a worker
                future.set_exception(error)
            return future
        if self._executor is None:
            method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
            self._executor = ProcessPoolExecutor(
                self.workers, mp_context=multiprocessing.get_context(method), initializer=_init_worker
            )
        return self._executor.submit(fn, *args)

    @staticmethod
    def result(future: Future[T]) -> T:
        """``future.result()``, with a worker that died (killed, out of memory) reported in one line."""
        try:
            return future.result()
        except BrokenProcessPool as err:
            raise DataLoaderError(
                f"a worker process decoding images died ({err}) - it may have run out of memory (try fewer "
                "--workers, or 0 to decode in this process); in a script of your own, put the code that "
                'iterates in `if __name__ == "__main__":`, since each worker imports the main module'
            ) from None

    def close(self) -> None:
        """Stop the worker processes (waiting for them); the pool starts new ones if used again."""
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    def __enter__(self) -> DecodePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class Job:
    """One batch to make, as plain data that pickles cheaply.

    Attributes:
        indices: the images' positions in the data set: the random key of each image and its row in the cache.
        paths: the image files, in the order of ``indices`` (read when ``cache`` is None).
        transform: what to make of each image.
        seed_epoch: ``(seed, epoch)`` for a random transform: image ``i`` draws from
            ``default_rng([seed, epoch, i])``; None for a deterministic one.
        cache: a decoded-image cache (``.npy``, (N, S, S, 3) uint8) to read the rows from instead.
        strict: raise on an image that cannot be decoded instead of skipping it.
        channels_first: return (B, 3, S, S) for the model rather than (B, S, S, 3).
    """

    indices: tuple[int, ...]
    paths: tuple[str, ...]
    transform: ImageTransform
    seed_epoch: tuple[int, int] | None = None
    cache: str | None = None
    strict: bool = False
    channels_first: bool = True


@dataclass
class JobResult:
    """``images`` uint8 of the images that decoded, ``ok`` (B,) which those are, and the
    ``failures`` as (path, reason)."""

    images: np.ndarray
    ok: np.ndarray
    failures: list[tuple[str, str]]


_CACHES: dict[str, np.ndarray] = {}  # in each worker: the caches it has memory-mapped, by path


def _cache_rows(path: str) -> np.ndarray:
    if path not in _CACHES:
        _CACHES[path] = np.load(path, mmap_mode="r")
    return _CACHES[path]


def run_job(job: Job) -> JobResult:
    """Make the images of one batch (in a worker process): a pure function of ``job``."""
    out: list[np.ndarray] = []
    ok = np.zeros(len(job.indices), dtype=bool)
    failures: list[tuple[str, str]] = []
    rows = _cache_rows(job.cache) if job.cache is not None else None
    for k, (index, path) in enumerate(zip(job.indices, job.paths)):
        rng = None if job.seed_epoch is None else np.random.default_rng([*job.seed_epoch, index])
        try:
            if rows is not None:
                image = transform_array(rows[index], job.transform, rng)
            else:
                image = transform_file(path, job.transform, rng)
        except ImageDecodeError as err:
            if job.strict:
                raise ImageDecodeError(f"{err} - stopped because of --strict; remove or replace the file") from None
            failures.append((path, str(err)))
            continue
        out.append(image)
        ok[k] = True
    if out:
        images = np.stack(out)  # (B_ok, S, S, 3)
    else:
        side = job.transform.size
        images = np.zeros((0, side, side, 3), dtype=np.uint8)
    if job.channels_first:
        images = np.ascontiguousarray(images.transpose(0, 3, 1, 2))  # (B_ok, 3, S, S)
    return JobResult(images, ok, failures)
