"""Data augmentation and normalisation, on a whole batch at once.

Each function takes a batch of uint8 images (N, C, H, W) and treats every image differently with
no Python loop over the images: the random choices are arrays of N numbers, and the pixels are
moved by indexing. Randomness always comes from a :class:`numpy.random.Generator` passed in, so the
caller decides the seed and the result is reproducible (see :mod:`minise.data.loader`).

The standard CIFAR recipe (He et al., 2016, Sec. 4.2): pad 4 pixels with zeros, take a random
32x32 crop, flip horizontally with probability 1/2, then standardise each channel.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "Transform",
    "channel_stats",
    "normalize",
    "random_crop",
    "random_hflip",
    "train_transform",
]

# Per-channel mean and standard deviation of the training pixels, scaled to [0, 1].
# (The often-copied CIFAR-10 std (0.2023, 0.1994, 0.2010) is the mean of per-image stds, not the
# std of the pixels; channel_stats on the training set gives the values below.)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)

Transform = Callable[[np.ndarray, np.random.Generator], np.ndarray]
"""A batch augmentation: ``transform(images uint8 (N, C, H, W), rng) -> images uint8 (N, C, H, W)``."""


def _check_batch(fn: str, images: np.ndarray) -> None:
    if not isinstance(images, np.ndarray) or images.ndim != 4:
        shape = getattr(images, "shape", type(images).__name__)
        raise ValueError(f"{fn}: expected a batch of images (N, C, H, W), got {shape} - add a batch axis")


def random_crop(images: np.ndarray, padding: int, rng: np.random.Generator) -> np.ndarray:
    """Pad every image with ``padding`` zeros on each side, then cut a random H x W crop from each.

    How, without a loop: :func:`~numpy.lib.stride_tricks.sliding_window_view` makes a *view* of
    every possible crop, shape (N, C, 2p+1, 2p+1, H, W), without copying a pixel; indexing it with
    one random offset pair per image copies just the chosen crops.

    Args:
        images: (N, C, H, W), any dtype.
        padding: pixels added on each side; 0 returns a copy of the input.
        rng: the source of the random offsets.

    Returns:
        A new array of the same shape and dtype.
    """
    _check_batch("random_crop", images)
    if padding < 0:
        raise ValueError(f"random_crop: padding is {padding} - it must be >= 0")
    n, _, h, w = images.shape
    p = padding
    padded = np.pad(images, ((0, 0), (0, 0), (p, p), (p, p)))  # (N, C, H+2p, W+2p), zeros around
    windows = sliding_window_view(padded, (h, w), axis=(2, 3))  # (N, C, 2p+1, 2p+1, H, W), a view
    dy = rng.integers(0, 2 * p + 1, size=n)  # (N,) top edge of each crop in the padded image
    dx = rng.integers(0, 2 * p + 1, size=n)  # (N,) left edge
    # The three index arrays broadcast to (N,) and are separated by a slice, so NumPy puts that
    # axis first: (N, C, H, W), image i cut at (dy[i], dx[i]).
    return np.ascontiguousarray(windows[np.arange(n), :, dy, dx])


def random_hflip(images: np.ndarray, rng: np.random.Generator, p: float = 0.5) -> np.ndarray:
    """Mirror each image left-right with probability ``p``; returns a new (N, C, H, W) array."""
    _check_batch("random_hflip", images)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"random_hflip: p is {p} - it must be a probability in [0, 1]")
    flip = rng.random(len(images)) < p  # (N,) which images to mirror
    return np.where(flip[:, None, None, None], images[..., ::-1], images)


def _per_channel(fn: str, name: str, values: Sequence[float] | np.ndarray, channels: int) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float32).reshape(-1)
    if arr.shape != (channels,):
        raise ValueError(
            f"{fn}: {name} has {arr.size} values but the images have {channels} channels - give one value per channel"
        )
    return arr[:, None, None]  # (C, 1, 1): broadcasts over H and W


def normalize(images: np.ndarray, mean: Sequence[float] | np.ndarray, std: Sequence[float] | np.ndarray) -> np.ndarray:
    """Scale uint8 pixels to [0, 1], then standardise each channel: ``(x / 255 - mean) / std``.

    Args:
        images: uint8 (N, C, H, W).
        mean, std: one value per channel, on the [0, 1] scale (e.g. :data:`CIFAR10_MEAN`).

    Returns:
        float32 (N, C, H, W).
    """
    _check_batch("normalize", images)
    if images.dtype != np.uint8:
        raise TypeError(f"normalize: images have dtype {images.dtype}, expected uint8 - pass the raw pixels")
    c = images.shape[1]
    m = _per_channel("normalize", "mean", mean, c)
    s = _per_channel("normalize", "std", std, c)
    if np.any(s <= 0):
        raise ValueError(f"normalize: std {s.ravel().tolist()} has a value <= 0 - every std must be positive")
    x = images.astype(np.float32) * np.float32(1 / 255)  # (N, C, H, W) in [0, 1]
    x -= m
    x /= s
    return x


def channel_stats(images: np.ndarray, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation of uint8 images (N, C, H, W), on the [0, 1] scale.

    The sums are taken in float64 over chunks of images, so even 50,000 images need little memory
    and no precision is lost. Returns two float64 arrays of shape (C,).
    """
    _check_batch("channel_stats", images)
    n, c, h, w = images.shape
    if n == 0:
        raise ValueError("channel_stats: the batch is empty - pass at least one image")
    total = np.zeros(c)
    total_sq = np.zeros(c)
    for start in range(0, n, chunk):  # a loop over chunks of thousands of images, not over images
        x = images[start : start + chunk].astype(np.float64) / 255.0
        total += x.sum(axis=(0, 2, 3))
        total_sq += (x * x).sum(axis=(0, 2, 3))
    count = n * h * w
    mean = total / count
    var = np.maximum(total_sq / count - mean * mean, 0.0)  # E[x^2] - E[x]^2, clipped against rounding
    return mean, np.sqrt(var)


def train_transform(padding: int = 4, flip: bool = True) -> Transform:
    """The standard augmentation: a random crop with ``padding``, then a random horizontal flip.

    Returns a :data:`Transform` for :class:`~minise.data.loader.DataLoader`'s ``transform``.
    """
    if padding < 0:
        raise ValueError(f"train_transform: padding is {padding} - it must be >= 0")

    def transform(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if padding:
            images = random_crop(images, padding, rng)
        if flip:
            images = random_hflip(images, rng)
        return images

    return transform
