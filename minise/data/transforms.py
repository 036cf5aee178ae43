"""Data augmentation and normalisation, on a whole batch at once.

Each function takes a batch of uint8 images (N, C, H, W) and treats every image differently with
no Python loop over the images: the random choices are arrays of N numbers, and the pixels are
moved by indexing. Randomness always comes from a :class:`numpy.random.Generator` or an
:class:`ImageRandom` (numbers keyed by image) passed in, so the caller decides the seed and the result is
reproducible (see :mod:`minise.data.loader`).

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
    "ImageRandom",
    "Random",
    "Transform",
    "channel_stats",
    "downsample",
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


def _mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser (Steele et al., 2014): a bijection of uint64 that scrambles every input bit
    into every output bit. Arrays of uint64 wrap around on overflow, as this arithmetic wants."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


class ImageRandom:
    """Random numbers drawn *per image*: the k-th number of image i depends only on (seed, epoch, i, k).

    A :class:`numpy.random.Generator` hands out one stream: image 5's crop would depend on how many
    images were augmented before it in the same batch. Data-parallel training splits each batch between
    processes, and the images must not change with the number of processes; so each value here is a hash
    of its key (a *counter-based* generator, like Philox, Salmon et al. 2011):

        bits(i, k) = mix(mix(i + key0) ^ (k * golden + key1)),   (key0, key1) = SeedSequence([seed, epoch])

    computed for all images of a batch at once (no loop). It offers the two methods the transforms use,
    with Generator's meaning: ``integers(low, high, size=n)`` and ``random(n)``, where n (or size[0]) must
    be the number of images; each call is the next draw k for every image.
    """

    GOLDEN = np.uint64(0x9E3779B97F4A7C15)

    def __init__(self, seed: int, epoch: int, index: np.ndarray) -> None:
        k0, k1 = np.random.SeedSequence([seed, epoch]).generate_state(2, np.uint64)
        self.key0, self.key1 = np.uint64(k0), np.uint64(k1)
        self.index = np.asarray(index).astype(np.uint64)  # (n,) the data set indices of the images
        self.image_keys = _mix64(self.index + self.key0)  # (n,)
        self.draws = 0

    def _bits(self, size: int | tuple[int, ...] | None) -> np.ndarray:
        """uint64 random bits of shape ``size`` (first axis: the images), advancing the draw counter."""
        shape = (len(self.index),) if size is None else ((size,) if isinstance(size, (int, np.integer)) else size)
        if not shape or shape[0] != len(self.index):
            raise ValueError(
                f"ImageRandom: asked for shape {tuple(shape)} but holds {len(self.index)} images - draw one value "
                "(or one row) per image: size=len(images)"
            )
        per_image = int(np.prod(shape[1:], dtype=np.int64))
        k = np.arange(self.draws, self.draws + per_image, dtype=np.uint64)  # (K,) the draw counters
        self.draws += per_image
        bits = _mix64(self.image_keys[:, None] ^ (k[None, :] * self.GOLDEN + self.key1))  # (n, K)
        return bits.reshape(shape)

    def random(self, size: int | tuple[int, ...] | None = None) -> np.ndarray:
        """Uniform floats in [0, 1): the top 53 bits of each hash, as NumPy makes doubles."""
        return (self._bits(size) >> np.uint64(11)).astype(np.float64) * 2.0**-53

    def integers(self, low: int, high: int | None = None, size: int | tuple[int, ...] | None = None) -> np.ndarray:
        """Integers in [low, high) (or [0, low) if high is None), int64."""
        if high is None:
            low, high = 0, low
        if high <= low:
            raise ValueError(f"ImageRandom.integers: high {high} <= low {low} - need low < high")
        u = self.random(size)
        return np.minimum(low + np.floor(u * (high - low)).astype(np.int64), high - 1)

    def uniform(self, low: float = 0.0, high: float = 1.0, size: int | tuple[int, ...] | None = None) -> np.ndarray:
        return low + (high - low) * self.random(size)


Random = np.random.Generator | ImageRandom
"""Where a transform takes its random numbers: a Generator (one stream) or :class:`ImageRandom` (per image)."""

Transform = Callable[[np.ndarray, Random], np.ndarray]
"""A batch augmentation: ``transform(images uint8 (N, C, H, W), rng) -> images uint8 (N, C, H, W)``."""


def _check_batch(fn: str, images: np.ndarray) -> None:
    if not isinstance(images, np.ndarray) or images.ndim != 4:
        shape = getattr(images, "shape", type(images).__name__)
        raise ValueError(f"{fn}: expected a batch of images (N, C, H, W), got {shape} - add a batch axis")


def random_crop(images: np.ndarray, padding: int, rng: Random) -> np.ndarray:
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


def random_hflip(images: np.ndarray, rng: Random, p: float = 0.5) -> np.ndarray:
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


def downsample(images: np.ndarray, size: int) -> np.ndarray:
    """Shrink uint8 images (N, C, H, W) to (N, C, size, size) by averaging k x k blocks, k = H / size.

    ``out[n, c, i, j] = round(mean(images[n, c, k*i : k*i+k, k*j : k*j+k]))``: a box filter, what an
    image library's area resize does for a whole factor, so every pixel counts once and nothing aliases.
    The factor must be a whole number (32 -> 16, 8 or 4); ``size == H`` returns the images unchanged.
    One reshape and one mean over two axes: no loop over images or pixels.
    """
    _check_batch("downsample", images)
    n, c, h, w = images.shape
    if h != w or size < 1 or h % size:
        raise ValueError(
            f"downsample: cannot shrink {h}x{w} images to {size}x{size} - the side must divide {h} "
            f"(e.g. {h // 2}, {h // 4} or {h // 8}) and the images must be square"
        )
    if size == h:
        return images
    k = h // size
    blocks = images.reshape(n, c, size, k, size, k)  # a view: block (i, j) is [:, :, i, :, j, :]
    return np.rint(blocks.mean(axis=(3, 5), dtype=np.float32)).astype(np.uint8)


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

    def transform(images: np.ndarray, rng: Random) -> np.ndarray:
        if padding:
            images = random_crop(images, padding, rng)
        if flip:
            images = random_hflip(images, rng)
        return images

    return transform
