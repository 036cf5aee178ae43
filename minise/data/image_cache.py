"""A cache of decoded images: decode every JPEG once, then read pixels from a memory-mapped ``.npy``.

Decoding is most of what the data pipeline costs. With ``--cache`` every image of a split is decoded
once, resized so that its **short side is** ``side`` **pixels and its central** ``side`` x ``side``
**square kept** (:class:`~minise.data.image_transforms.CenterSquare`), and stored as uint8
(N, side, side, 3) in one ``.npy`` file. Every epoch - the first included - then reads its pixels from
that file through :func:`numpy.load` ``(mmap_mode="r")``: the operating system pages them in on
demand and shares them between the worker processes, and no JPEG is decoded again.

**The sizes chosen, and what they change.**

* held-out split: ``side = floor(image_size / 0.875)`` (146 for 128), the size evaluation resizes
  to anyway: evaluating from the cache gives *bit for bit* the batches evaluating from the files does.
* training split: ``side = round(1.25 * image_size)`` by default (160 for 128; ``--cache-size``). The
  random crops are then drawn from the central square instead of the whole image: for a 4:3 photo the
  outer eighth on each side is never seen, and a crop of area fraction ``s`` is resized from
  ``sqrt(s) * side`` pixels, so crops smaller than ``(image_size / side)^2`` (64 % at the default) are
  enlarged a little more than from the file. At the default 160 px release and 128 px crops that is
  what the files hold anyway (their short side is 160). Training batches from the cache are therefore
  reproducible but not identical to those made from the files.

**Keyed and atomic.** The file name holds the data set, split, side and image count and a digest of
the file list (relative paths, sizes, modification times) and of this format's version, so a changed
tree or subset gets a new cache rather than stale pixels. The ``.npy`` is written to a temporary file
and renamed into place; a ``.json`` beside it, renamed last, lists the files that could not be decoded
and marks the cache as complete. A cache with a ``.npy`` but no ``.json`` is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .download import cache_dir
from .image_transforms import CenterSquare
from .image_workers import DecodePool, Job, JobResult, run_job
from .imagefolder import ImageFolder

__all__ = ["CACHE_FORMAT", "DecodedCache", "cache_name", "default_cache_size", "open_cache"]

CACHE_FORMAT = 1  # bump when what is stored changes: old caches then get new names
CHUNK = 32  # images per job while building


def default_cache_size(image_size: int) -> int:
    """The training cache's side for ``image_size`` crops: 1.25 x (160 for 128)."""
    return int(round(1.25 * image_size))


@dataclass
class DecodedCache:
    """A complete cache: ``path`` holds uint8 (N, side, side, 3); ``failed`` maps the rows whose file
    could not be decoded (their pixels are zeros) to the reason."""

    path: Path
    side: int
    images: int
    failed: dict[int, str]

    def array(self) -> np.ndarray:
        """The pixels, memory-mapped read-only: (N, side, side, 3) uint8."""
        return np.load(self.path, mmap_mode="r")


def cache_name(folder: ImageFolder, side: int) -> str:
    """``<name>-<split>-<side>px-<N>-<digest>``: what the cache of ``folder`` at ``side`` is called."""
    digest = hashlib.sha1(f"minise image cache {CACHE_FORMAT} side {side}\n".encode(), usedforsecurity=False)
    for path, label in zip(folder.paths, folder.labels.tolist()):
        st = os.stat(path)
        digest.update(f"{os.path.relpath(path, folder.root)}\t{label}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return f"{folder.name}-{folder.split}-{side}px-{len(folder)}-{digest.hexdigest()[:12]}"


def _read_meta(meta: Path, npy: Path, n: int, side: int) -> dict[int, str] | None:
    """The failures recorded for a complete cache, or None if the cache is absent or unusable."""
    if not (meta.is_file() and npy.is_file()):
        return None
    try:
        info = json.loads(meta.read_text())
        shape = np.load(npy, mmap_mode="r").shape
        if info["format"] != CACHE_FORMAT or tuple(shape) != (n, side, side, 3):
            return None
        return {int(k): str(v) for k, v in info["failed"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


class _CountBar:
    """``images i/N`` on standard error, redrawn at most ten times a second."""

    def __init__(self, total: int, desc: str, enabled: bool) -> None:
        self.total, self.desc, self.enabled, self.done, self._last = total, desc, enabled, 0, 0.0

    def update(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if self.enabled and (now - self._last >= 0.1 or self.done >= self.total):
            self._last = now
            sys.stderr.write(f"\r{self.desc}: {self.done}/{self.total} images")
            sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")
            sys.stderr.flush()


def open_cache(
    folder: ImageFolder,
    side: int,
    root: str | Path | None = None,
    pool: DecodePool | None = None,
    strict: bool = False,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> tuple[DecodedCache, bool]:
    """Reuse the cache of ``folder`` at ``side`` if a complete one exists, else build it.

    Args:
        folder: the split to cache.
        side: the stored images' side in pixels (see the module's notes on choosing it).
        root: the folder for cache files; default ``cache_dir() / "decoded"`` ($MINISE_DATA or
            ~/.cache/minise), never the data tree, which may be read-only or shared.
        pool: the processes that decode (default: one per core for the build, then closed).
        strict: raise on an image that cannot be decoded instead of recording and skipping it.
        progress: count the decoded images on standard error while building.
        log: where a skipped file is reported (default: standard error).

    Returns:
        ``(cache, built)``: the cache, and whether it was built now (False: reused).
    """
    root = Path(root) if root is not None else cache_dir() / "decoded"
    name = cache_name(folder, side)
    npy, meta = root / f"{name}.npy", root / f"{name}.json"
    failed = _read_meta(meta, npy, len(folder), side)
    if failed is not None:
        return DecodedCache(npy, side, len(folder), failed), False
    say = log or (lambda line: print(line, file=sys.stderr))
    root.mkdir(parents=True, exist_ok=True)
    tmp_npy = root / f".{name}.{os.getpid()}.npy.tmp"
    tmp_meta = root / f".{name}.{os.getpid()}.json.tmp"
    own_pool = pool is None
    pool = pool or DecodePool()
    failed = {}
    bar = _CountBar(len(folder), f"caching {folder.name}/{folder.split} at {side} px", progress)
    try:
        pixels = np.lib.format.open_memmap(tmp_npy, mode="w+", dtype=np.uint8, shape=(len(folder), side, side, 3))
        transform = CenterSquare(side)
        starts = deque(range(0, len(folder), CHUNK))
        pending: deque[tuple[int, Future[JobResult]]] = deque()
        while starts or pending:
            while starts and len(pending) < 2 * max(pool.workers, 1):
                s = starts.popleft()
                rows = tuple(range(s, min(s + CHUNK, len(folder))))
                job = Job(rows, tuple(folder.paths[i] for i in rows), transform, strict=strict, channels_first=False)
                pending.append((s, pool.submit(run_job, job)))
            s, future = pending.popleft()
            result = pool.result(future)
            rows_ok = s + np.flatnonzero(result.ok)
            pixels[rows_ok] = result.images
            for k in np.flatnonzero(~result.ok):
                failed[s + int(k)] = result.failures.pop(0)[1]
                say(f"warning: {failed[s + int(k)]} - skipped")
            bar.update(len(result.ok))
        pixels.flush()
        del pixels
        info = {"format": CACHE_FORMAT, "images": len(folder), "side": side, "failed": failed}
        tmp_meta.write_text(json.dumps(info, indent=1))
        os.replace(tmp_npy, npy)
        os.replace(tmp_meta, meta)  # last: its presence says the .npy is complete
    except BaseException:  # Ctrl-C included: leave no temporary file behind
        tmp_npy.unlink(missing_ok=True)
        tmp_meta.unlink(missing_ok=True)
        raise
    finally:
        bar.close()
        if own_pool:
            pool.close()
    return DecodedCache(npy, side, len(folder), failed), True
