"""ImageFolderLoader: batches of photographs, decoded and augmented by worker processes, exactly reproducible.

It keeps :class:`~minise.data.loader.DataLoader`'s contract - ``len``, ``set_epoch(epoch, start_batch)``,
``iter_epoch``, batches ``(x float32 (B, 3, S, S), y int64 (B,))`` - so the training loop and
``--resume`` treat both alike, and extends its determinism scheme from batches to single images:

* the order of epoch ``e`` is ``np.random.default_rng([seed, e]).permutation(N)``, as there;
* image ``i`` (its position in the data set) draws its crop and flip in epoch ``e`` from
  ``np.random.default_rng([seed, e, i])``.

So what a sample looks like depends on (seed, epoch, image) only: not on the batch size, the
number of workers, which worker decoded it, or whether the epoch was resumed half-way. (A crop is
planned from a whole image's size, so it draws from one ``Generator`` per image; the array transforms
of :mod:`~minise.data.transforms` get the same keying, vectorised, from ``ImageRandom``.)

**Sharding** (data-parallel training), exactly as :class:`~minise.data.loader.DataLoader`: with
``num_replicas = R`` processes of batch ``b``, step ``t`` takes the global batch ``order[t R b : (t + 1) R b]``
- the batch one process with batch ``R b`` takes at step ``t`` - and process ``rank`` keeps the ``rank``-th
of R nearly equal consecutive parts. Since every image's crop and flip are keyed by the image, the
union of the R shares is the single-process batch pixel for pixel.

**Prefetching.** Batch ``k`` is one :class:`~minise.data.image_workers.Job` sent to the
:class:`~minise.data.image_workers.DecodePool`; ``prefetch`` jobs (default two per worker) are in
flight at any time, so while the model trains on batch ``k`` the workers are already decoding the
next ones. Results come back in order. Workers return uint8 pixels (a quarter of the bytes of
float32); the normalisation to float happens here, as the batch is handed out.

**Files that cannot be decoded** are left out of their batch (which is then one image smaller),
reported once by path through ``log``, and listed in :attr:`ImageFolderLoader.skipped` for the
epoch; with ``strict=True`` the first one raises :class:`~minise.data.imagefolder.ImageDecodeError`.
"""

from __future__ import annotations

import sys
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future

import numpy as np

from .image_cache import DecodedCache
from .image_transforms import ImageTransform
from .image_workers import DataLoaderError, DecodePool, Job, JobResult, run_job
from .imagefolder import IMAGENET_MEAN, IMAGENET_STD, ImageFolder
from .loader import check_epoch_start, epoch_order
from .transforms import normalize

__all__ = ["ImageFolderLoader"]

Batch = tuple[np.ndarray, np.ndarray]


class ImageFolderLoader:
    """Iterate over ``(x, y)`` batches of an :class:`~minise.data.imagefolder.ImageFolder`.

    Args:
        folder: the images (paths and labels).
        batch_size: images per batch; the last may be smaller unless ``drop_last`` (and a batch is one
            image smaller for each file that cannot be decoded).
        transform: what to make of each image, e.g. ``RandomResizedCrop(128)`` to train,
            ``ResizeCenterCrop(128)`` to evaluate.
        shuffle, drop_last, seed: as :class:`~minise.data.loader.DataLoader`.
        num_replicas, rank: data-parallel sharding, as :class:`~minise.data.loader.DataLoader`: this process
            is ``rank`` of ``num_replicas`` and ``batch_size`` is per process. 1 and 0: no sharding.
        mean, std: per-channel statistics on the [0, 1] scale (default ImageNet's).
        workers: decoding processes if no ``pool`` is given (default: one per core; 0: in this process).
        pool: a :class:`~minise.data.image_workers.DecodePool` to share with other loaders; the caller closes it.
        prefetch: batches in flight (default: two per worker).
        cache: a :class:`~minise.data.image_cache.DecodedCache` of ``folder`` to read pixels from.
        strict: stop at the first file that cannot be decoded.
        log: where a skipped file is reported, once per file (default: standard error).

    Usage::

        with ImageFolderLoader(train, 64, transform=RandomResizedCrop(128), shuffle=True, workers=2) as loader:
            for epoch in range(epochs):
                loader.set_epoch(epoch)
                for x, y in loader:
                    ...
    """

    def __init__(
        self,
        folder: ImageFolder,
        batch_size: int,
        *,
        transform: ImageTransform,
        shuffle: bool = False,
        drop_last: bool = False,
        seed: int = 0,
        mean: Sequence[float] | None = IMAGENET_MEAN,
        std: Sequence[float] | None = IMAGENET_STD,
        workers: int | None = None,
        pool: DecodePool | None = None,
        prefetch: int | None = None,
        cache: DecodedCache | None = None,
        strict: bool = False,
        log: Callable[[str], None] | None = None,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"ImageFolderLoader: batch_size is {batch_size} - it must be >= 1")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(
                f"ImageFolderLoader: rank {rank} of num_replicas {num_replicas} - need num_replicas >= 1 and "
                "0 <= rank < num_replicas"
            )
        if (mean is None) != (std is None):
            raise ValueError("ImageFolderLoader: give both mean and std, or neither")
        if cache is not None and cache.images != len(folder):
            raise ValueError(
                f"ImageFolderLoader: the cache holds {cache.images} images but the folder {len(folder)} - "
                "open the cache of this folder (open_cache)"
            )
        if prefetch is not None and prefetch < 1:
            raise ValueError(f"ImageFolderLoader: prefetch is {prefetch} - it must be >= 1")
        self.folder, self.batch_size, self.transform = folder, batch_size, transform
        self.shuffle, self.drop_last, self.seed = shuffle, drop_last, seed
        self.num_replicas, self.rank = num_replicas, rank
        self.mean, self.std, self.cache, self.strict = mean, std, cache, strict
        self._own_pool = pool is None
        self.pool = pool if pool is not None else DecodePool(workers)
        self.prefetch = prefetch if prefetch is not None else 2 * max(self.pool.workers, 1)
        self.log = log or (lambda line: print(line, file=sys.stderr))
        self.epoch = self.start_batch = 0
        self.skipped: list[str] = []  # the files left out in the epoch being (or last) iterated
        self._reported: set[str] = set()

    @property
    def global_batch_size(self) -> int:
        """Images per step over all processes: ``batch_size * num_replicas``."""
        return self.batch_size * self.num_replicas

    def __len__(self) -> int:
        """Number of batches (steps) in an epoch; with sharding, of global batches."""
        n, g = len(self.folder), self.global_batch_size
        return n // g if self.drop_last else -(-n // g)

    def _stop(self) -> int:
        """The step to stop before: len(self), minus a last global batch too small to give this rank an image."""
        steps = len(self)
        if steps and len(self.share(np.arange(len(self.folder)), steps - 1)) == 0:
            return steps - 1
        return steps

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Make the next iteration go over epoch ``epoch`` from batch ``start_batch`` (for ``--resume``)."""
        check_epoch_start("ImageFolderLoader", epoch, start_batch, len(self))
        self.epoch, self.start_batch = epoch, start_batch

    def order(self, epoch: int) -> np.ndarray:
        """The image indices of epoch ``epoch``, in visiting order (N,)."""
        return epoch_order(len(self.folder), self.seed, epoch, self.shuffle)

    def share(self, order: np.ndarray, index: int) -> np.ndarray:
        """This rank's image indices of global batch ``index`` of the visiting ``order``."""
        g = self.global_batch_size
        global_batch = order[index * g : (index + 1) * g]  # (R b,) or fewer at the end
        if self.num_replicas == 1:
            return global_batch
        return np.array_split(global_batch, self.num_replicas)[self.rank]  # (b,) when the batch is full

    # ------------------------------------------------------------------------- one batch
    def _job(self, epoch: int, index: int, order: np.ndarray) -> tuple[Job, np.ndarray, list[str]]:
        """The job of batch ``index``, the indices it covers, and the files the cache knows are bad."""
        idx = self.share(order, index)  # (B,) this rank's share of global batch `index`
        known_bad: list[str] = []
        if self.cache is not None and self.cache.failed:
            bad = np.isin(idx, list(self.cache.failed))
            known_bad = [self.folder.paths[i] for i in idx[bad]]
            for i in idx[bad]:
                self._report(self.folder.paths[i], self.cache.failed[int(i)])
            idx = idx[~bad]
        job = Job(
            indices=tuple(int(i) for i in idx),
            paths=tuple(self.folder.paths[i] for i in idx),
            transform=self.transform,
            seed_epoch=(self.seed, epoch) if self.transform.random else None,
            cache=None if self.cache is None else str(self.cache.path),
            strict=self.strict,
        )
        return job, idx, known_bad

    def _finish(self, index: int, idx: np.ndarray, known_bad: list[str], result: JobResult) -> Batch:
        for path, reason in result.failures:
            self._report(path, reason)
        self.skipped.extend(known_bad + [path for path, _ in result.failures])
        if not result.ok.any():
            raise DataLoaderError(
                f"ImageFolderLoader: none of the images of batch {index} could be decoded (see the warnings) - "
                "check the files, or use a larger batch size"
            )
        x = result.images  # (B_ok, 3, S, S) uint8
        y = self.folder.labels[idx[result.ok]]  # (B_ok,)
        if self.mean is not None and self.std is not None:
            return normalize(x, self.mean, self.std), y
        return x.astype(np.float32) * np.float32(1 / 255), y

    def _report(self, path: str, reason: str) -> None:
        if path not in self._reported:
            self._reported.add(path)
            self.log(f"warning: {reason} - skipped")

    def make_batch(self, epoch: int, index: int, order: np.ndarray | None = None) -> Batch:
        """Batch ``index`` of epoch ``epoch``, made in this process: a pure function of (seed, epoch, index)."""
        if order is None:
            order = self.order(epoch)
        job, idx, known_bad = self._job(epoch, index, order)
        return self._finish(index, idx, known_bad, run_job(job))

    # ------------------------------------------------------------------------- iteration
    def __iter__(self) -> Iterator[Batch]:
        epoch, start = self.epoch, self.start_batch
        self.start_batch = 0  # a resume point is used once
        return self.iter_epoch(epoch, start)

    def iter_epoch(self, epoch: int, start_batch: int = 0, stop_batch: int | None = None) -> Iterator[Batch]:
        """Iterate over batches ``start_batch, start_batch + 1, ...`` of epoch ``epoch``, up to the end or
        to ``stop_batch`` (excluded; nothing past it is decoded).

        :attr:`skipped` is emptied when the iteration starts and lists the files left out so far."""
        self.skipped = []
        order = self.order(epoch)
        stop = self._stop() if stop_batch is None else min(stop_batch, self._stop())
        indices = range(start_batch, max(stop, start_batch))
        if self.pool.workers == 0:
            return (self.make_batch(epoch, i, order) for i in indices)
        return self._pooled(epoch, indices, order)

    def _pooled(self, epoch: int, indices: range, order: np.ndarray) -> Iterator[Batch]:
        todo = iter(indices)
        pending: deque[tuple[int, np.ndarray, list[str], Future[JobResult]]] = deque()

        def submit_next() -> None:
            index = next(todo, None)
            if index is not None:
                job, idx, known_bad = self._job(epoch, index, order)
                pending.append((index, idx, known_bad, self.pool.submit(run_job, job)))

        try:
            for _ in range(self.prefetch):
                submit_next()
            while pending:
                index, idx, known_bad, future = pending.popleft()
                result = self.pool.result(future)
                submit_next()  # keep `prefetch` batches in flight
                yield self._finish(index, idx, known_bad, result)
        finally:  # finished, failed or abandoned (break): drop what is still queued
            for *_, future in pending:
                future.cancel()

    def close(self) -> None:
        """Stop the worker processes if this loader started them (not those of a shared ``pool``)."""
        if self._own_pool:
            self.pool.close()

    def __enter__(self) -> ImageFolderLoader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
