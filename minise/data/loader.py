"""DataLoader: batches of (images, labels), shuffled, augmented and prefetched, exactly reproducible.

**Determinism by construction.** A batch is a pure function of ``(seed, epoch, batch index)``:

* the order of epoch ``e`` is ``np.random.default_rng([seed, e]).permutation(N)``;
* the augmentation of image ``j`` in epoch ``e`` draws from
  :class:`~minise.data.transforms.ImageRandom` keyed by ``(seed, e, j)``: numbers per image, not per batch.

No random state is carried from one batch to the next, so the batches do not depend on which
thread made them or when, and a run stopped after batch ``k - 1`` resumes with
``set_epoch(e, start_batch=k)`` and sees exactly the batches an uninterrupted run would have seen.
(A single generator shared by all batches could not do this: to resume it, every earlier batch
would have to be drawn again.)

**Sharding** (data-parallel training, as PyTorch's ``DistributedSampler``). With ``num_replicas = R``
processes of batch ``b`` each, step ``t`` takes the *global* batch ``order[t R b : (t + 1) R b]`` - exactly
the batch one process with batch ``R b`` takes at step ``t`` - and process ``rank`` keeps its share, the
``rank``-th of ``R`` nearly equal consecutive parts (``np.array_split``; exactly ``b`` images each when the
global batch is full). Since augmentation is keyed by image, the union of the R shares is the
single-process batch pixel for pixel, whatever R is.

**Prefetching.** While the model works on batch ``i``, a background thread prepares batches
``i + 1 .. i + prefetch`` and puts them in a bounded queue. NumPy releases Python's global
interpreter lock in its copying and arithmetic loops, so the two really overlap. The thread stops
as soon as the iteration ends, is abandoned (``break``) or fails; an exception raised while making
a batch is raised again in the training loop, with its original traceback.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Sequence
from typing import cast

import numpy as np

from .transforms import ImageRandom, Transform, normalize

__all__ = ["DataLoader"]

Batch = tuple[np.ndarray, np.ndarray]


class _Failed:
    """Carries an exception from the worker thread to the consumer."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


_DONE = object()  # the worker's last item: the epoch is complete


def check_epoch_start(owner: str, epoch: int, start_batch: int, batches: int) -> None:
    """The checks of ``set_epoch`` shared by the loaders: epoch >= 0 and 0 <= start_batch <= batches."""
    if epoch < 0:
        raise ValueError(f"{owner}.set_epoch: epoch is {epoch} - it must be >= 0")
    if not 0 <= start_batch <= batches:
        raise ValueError(
            f"{owner}.set_epoch: start_batch is {start_batch} but an epoch has "
            f"{batches} batches - use 0 <= start_batch <= {batches}"
        )


def epoch_order(n: int, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    """The visiting order of n items in epoch ``epoch`` (N,): a permutation drawn from (seed, epoch) when
    shuffling, so any epoch can be replayed on its own (``--resume``), else 0..n-1."""
    if shuffle:
        return np.random.default_rng([seed, epoch]).permutation(n)
    return np.arange(n)


class DataLoader:
    """Iterate over ``(x, y)`` batches: x float32 (B, C, H, W), y int64 (B,).

    Args:
        images: uint8 (N, C, H, W).
        labels: integer (N,).
        batch_size: images per batch; the last batch may be smaller unless ``drop_last``.
        shuffle: visit the images in a new random order every epoch.
        drop_last: skip a last batch smaller than ``batch_size``.
        seed: with the epoch and the batch index, determines every random choice.
        transform: an augmentation ``transform(images uint8, rng) -> images uint8``, e.g.
            :func:`~minise.data.transforms.train_transform`; ``None`` for none (evaluation).
        mean, std: per-channel statistics on the [0, 1] scale for
            :func:`~minise.data.transforms.normalize`; ``None`` only scales the pixels to [0, 1].
        prefetch: batches prepared ahead in a background thread; 0 makes them in the caller's thread.
        num_replicas, rank: data-parallel sharding (see above): this process is ``rank`` of
            ``num_replicas``, and ``batch_size`` is per process. 1 and 0: no sharding.

    Usage::

        loader = DataLoader(ds.images, ds.labels, 128, shuffle=True, transform=train_transform(),
                            mean=CIFAR10_MEAN, std=CIFAR10_STD)
        for epoch in range(epochs):
            loader.set_epoch(epoch)          # like PyTorch's DistributedSampler: one call per epoch
            for x, y in loader:
                ...

    To resume after ``k`` batches of epoch ``e`` call ``loader.set_epoch(e, start_batch=k)``.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        batch_size: int,
        shuffle: bool = False,
        drop_last: bool = False,
        seed: int = 0,
        transform: Transform | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        prefetch: int = 2,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        images, labels = np.asarray(images), np.asarray(labels)
        if images.ndim != 4 or images.dtype != np.uint8:
            raise ValueError(
                f"DataLoader: images are {images.dtype} of shape {images.shape}; expected uint8 "
                "(N, C, H, W) - pass Dataset.images, the raw pixels"
            )
        if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(
                f"DataLoader: labels are {labels.dtype} of shape {labels.shape} for {len(images)} "
                "images - pass one integer label per image"
            )
        if batch_size < 1:
            raise ValueError(f"DataLoader: batch_size is {batch_size} - it must be >= 1")
        if prefetch < 0:
            raise ValueError(f"DataLoader: prefetch is {prefetch} - it must be >= 0 (0: no thread)")
        if (mean is None) != (std is None):
            raise ValueError("DataLoader: give both mean and std, or neither")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(
                f"DataLoader: rank {rank} of num_replicas {num_replicas} - need num_replicas >= 1 and "
                "0 <= rank < num_replicas"
            )
        self.num_replicas, self.rank = num_replicas, rank
        self.images, self.labels = images, labels.astype(np.int64, copy=False)
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last
        self.seed, self.transform, self.prefetch = seed, transform, prefetch
        self.mean, self.std = mean, std
        self.epoch = 0
        self.start_batch = 0

    @property
    def global_batch_size(self) -> int:
        """Images per step over all processes: ``batch_size * num_replicas``."""
        return self.batch_size * self.num_replicas

    def __len__(self) -> int:
        """Number of batches (steps) in an epoch; with sharding, of global batches."""
        n, g = len(self.images), self.global_batch_size
        return n // g if self.drop_last else -(-n // g)

    def _stop(self) -> int:
        """The step to stop before: len(self), minus a last global batch too small to give this rank an image."""
        steps = len(self)
        if steps and len(self.share(np.arange(len(self.images)), steps - 1)) == 0:
            return steps - 1
        return steps

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Make the next iteration go over epoch ``epoch``, starting at batch ``start_batch``.

        ``start_batch`` applies to the next iteration only: skipped batches are not computed, and the
        ones that follow are identical to those of an uninterrupted epoch.
        """
        check_epoch_start("DataLoader", epoch, start_batch, len(self))
        self.epoch, self.start_batch = epoch, start_batch

    # ------------------------------------------------------------------------- one batch, purely
    def order(self, epoch: int) -> np.ndarray:
        """The image indices of epoch ``epoch``, in visiting order (N,)."""
        return epoch_order(len(self.images), self.seed, epoch, self.shuffle)

    def share(self, order: np.ndarray, index: int) -> np.ndarray:
        """This rank's image indices of global batch ``index`` of the visiting ``order``."""
        g = self.global_batch_size
        global_batch = order[index * g : (index + 1) * g]  # (R b,) or fewer at the end
        if self.num_replicas == 1:
            return global_batch
        return np.array_split(global_batch, self.num_replicas)[self.rank]  # (b,) when the batch is full

    def make_batch(self, epoch: int, index: int, order: np.ndarray | None = None) -> Batch:
        """Batch ``index`` of epoch ``epoch`` (this rank's share): a pure function of (seed, epoch, index)."""
        if order is None:
            order = self.order(epoch)
        idx = self.share(order, index)  # (B,) data set indices
        x = self.images[idx]  # (B, C, H, W) uint8, a copy
        if self.transform is not None:
            x = self.transform(x, ImageRandom(self.seed, epoch, idx))  # random numbers keyed by image
        if self.mean is not None and self.std is not None:
            xf = normalize(x, self.mean, self.std)
        else:
            xf = x.astype(np.float32) * np.float32(1 / 255)
        return xf, self.labels[idx]

    # ------------------------------------------------------------------------- iteration
    def __iter__(self) -> Iterator[Batch]:
        """Iterate over the current epoch (see :meth:`set_epoch`), from its ``start_batch``."""
        epoch, start = self.epoch, self.start_batch
        self.start_batch = 0  # a resume point is used once
        return self.iter_epoch(epoch, start)

    def iter_epoch(self, epoch: int, start_batch: int = 0) -> Iterator[Batch]:
        """Iterate over batches ``start_batch, start_batch + 1, ...`` of epoch ``epoch``."""
        order = self.order(epoch)
        indices = range(start_batch, max(self._stop(), start_batch))
        if self.prefetch == 0:
            return (self.make_batch(epoch, i, order) for i in indices)
        return self._prefetched(epoch, indices, order)

    def _prefetched(self, epoch: int, indices: range, order: np.ndarray) -> Iterator[Batch]:
        q: queue.Queue[object] = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()

        def put(item: object) -> bool:
            """Put into the queue unless told to stop; returns False if stopped."""
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.05)
                    return True
                except queue.Full:
                    continue
            return False

        def work() -> None:
            try:
                for i in indices:
                    if stop.is_set() or not put(self.make_batch(epoch, i, order)):
                        return
            except BaseException as error:  # handed to the consumer, which raises it
                put(_Failed(error))
                return
            put(_DONE)

        thread = threading.Thread(target=work, name="minise-data-prefetch", daemon=True)
        thread.start()
        try:
            while True:
                item = q.get()
                if item is _DONE:
                    return
                if isinstance(item, _Failed):
                    raise item.error
                yield cast(Batch, item)
        finally:
            # Runs on normal end, on an exception, and when the loop is abandoned (break): the
            # generator is closed then. Tell the worker to stop and wait for it.
            stop.set()
            thread.join()
