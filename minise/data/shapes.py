"""shapes: a small image data set drawn on the fly, so minise runs with no download at all.

Ten classes of 32x32 RGB images, each a filled or outlined shape of random size, rotation,
position and colour on a noisy background of random colour with a random gradient. Everything is
drawn from one seed, so the same seed gives the same bytes on every machine.

How an image is drawn, without a Python loop over pixels or images:

1. A coordinate grid ``(x, y)`` of pixel centres, shared by every image.
2. For each image, the grid is moved to the shape's centre, rotated by its angle and divided by its
   radius: ``u, v`` are the pixel's coordinates *in the shape's own frame*, arrays (m, H, W) for the
   ``m`` images of one class at once.
3. Each class is an *implicit function*: ``inside(u, v)`` is true where the pixel lies in the shape
   (``u**2 + v**2 <= 1`` is the unit disk). Evaluating it at 2x2 points inside each pixel and
   averaging gives a soft edge (anti-aliasing): the coverage, between 0 and 1.
4. ``image = background * (1 - coverage) + colour * coverage + noise``.

Why it is a fair test: a linear classifier on raw pixels scores poorly (the colours, the positions
and the polarity of the contrast are random, so no fixed pixel weighting separates the classes),
while a small CNN, whose filters respond to edges and corners wherever they are, learns it.
``diamond`` and ``X`` are not classes: under a random rotation they are a square and a cross.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from .cifar import Dataset

__all__ = ["CLASSES", "load_shapes", "make_shapes"]

CLASSES = [
    "circle",
    "square",
    "triangle",
    "ring",
    "cross",
    "star",
    "ellipse",
    "hollow square",
    "crescent",
    "bowtie",
]
TRAIN_SIZE = 5000
TEST_SIZE = 1000

Array = np.ndarray


# ------------------------------------------------------------------------------------ the shapes
# Each function takes u, v (m, H, W) in the shape's frame (radius 1) and returns a boolean mask.
def _circle(u: Array, v: Array) -> Array:
    return u * u + v * v <= 1.0


def _square(u: Array, v: Array) -> Array:
    return np.maximum(np.abs(u), np.abs(v)) <= 0.8


def _triangle(u: Array, v: Array) -> Array:
    # Equilateral, circumradius 1.1: inside all three edges, each at distance 0.55 from the centre.
    inside = np.ones(u.shape, dtype=bool)
    for k in range(3):
        a = -np.pi / 2 + 2 * np.pi * k / 3  # direction of the edge's outward normal
        inside &= u * np.cos(a) + v * np.sin(a) <= 0.55
    return inside


def _ring(u: Array, v: Array) -> Array:
    r2 = u * u + v * v
    return (r2 <= 1.0) & (r2 >= 0.6**2)


def _cross(u: Array, v: Array) -> Array:
    au, av = np.abs(u), np.abs(v)
    return ((au <= 0.3) & (av <= 1.0)) | ((av <= 0.3) & (au <= 1.0))


def _star(u: Array, v: Array, points: int = 5, inner: float = 0.45) -> Array:
    # Fold every point into half a sector: a = 0 on a tip's axis, a = sector / 2 between two tips.
    sector = 2 * np.pi / points
    rho, phi = np.hypot(u, v), np.arctan2(v, u)
    a = np.abs(np.mod(phi, sector) - sector / 2)
    x, y = rho * np.cos(a), rho * np.sin(a)
    # Inside iff on the centre's side of the edge from the tip T = (1, 0) to the inner vertex I:
    # the cross product (I - T) x (P - T) has the sign it has at the centre, which is positive.
    ix, iy = inner * np.cos(sector / 2), inner * np.sin(sector / 2)
    return (ix - 1.0) * y - iy * (x - 1.0) >= 0.0


def _ellipse(u: Array, v: Array) -> Array:
    return u * u + (v / 0.45) ** 2 <= 1.0


def _hollow_square(u: Array, v: Array) -> Array:
    m = np.maximum(np.abs(u), np.abs(v))
    return (m <= 0.85) & (m >= 0.5)


def _crescent(u: Array, v: Array) -> Array:
    return (u * u + v * v <= 1.0) & ((u - 0.5) ** 2 + v * v >= 0.8**2)


def _bowtie(u: Array, v: Array) -> Array:
    return (np.abs(u) <= 1.0) & (np.abs(v) <= 0.8 * np.abs(u) + 0.1)


_INSIDE: list[Callable[[Array, Array], Array]] = [
    _circle,
    _square,
    _triangle,
    _ring,
    _cross,
    _star,
    _ellipse,
    _hollow_square,
    _crescent,
    _bowtie,
]
assert len(_INSIDE) == len(CLASSES)

_SUBPIXELS = (-0.25, 0.25)  # 2x2 samples per pixel for anti-aliased edges


def _coverage(
    inside: Callable[[Array, Array], Array], cx: Array, cy: Array, r: Array, theta: Array, size: int
) -> Array:
    """Fraction of each pixel covered by the shape: float32 (m, size, size)."""
    grid = np.arange(size, dtype=np.float32) + 0.5  # pixel centres
    cos = np.cos(theta)[:, None, None]  # (m, 1, 1)
    sin = np.sin(theta)[:, None, None]
    cover = np.zeros((len(cx), size, size), dtype=np.float32)
    for oy in _SUBPIXELS:
        for ox in _SUBPIXELS:
            dx = (grid + ox)[None, None, :] - cx[:, None, None]  # (m, 1, W)
            dy = (grid + oy)[None, :, None] - cy[:, None, None]  # (m, H, 1)
            u = (dx * cos + dy * sin) / r[:, None, None]  # (m, H, W): rotate into the shape's frame
            v = (dy * cos - dx * sin) / r[:, None, None]
            cover += inside(u, v)
    return cover / len(_SUBPIXELS) ** 2


def make_shapes(n: int, seed: int | Sequence[int] = 0, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``n`` shape images, deterministically from ``seed``.

    Args:
        n: number of images; the classes are balanced (counts differ by at most one).
        seed: anything :func:`numpy.random.default_rng` accepts as a seed (an int or a list of ints).
        size: height and width in pixels.

    Returns:
        ``(images, labels)``: uint8 (n, 3, size, size), C-contiguous, and int64 (n,) in ``range(10)``.
    """
    if n < 0 or size < 8:
        raise ValueError(f"make_shapes: got n={n}, size={size} - n must be >= 0 and size >= 8")
    rng = np.random.default_rng(seed)
    k = len(CLASSES)
    labels = rng.permutation(np.arange(n) % k).astype(np.int64)  # balanced, in random order

    # Every random number is drawn for all images at once, so images never depend on the class loop.
    f32 = np.float32
    r = (rng.uniform(0.2, 0.38, n) * size).astype(f32)  # shape radius in pixels
    cx = rng.uniform(r, size - r).astype(f32)  # centre: the shape's circle stays inside the image
    cy = rng.uniform(r, size - r).astype(f32)
    theta = rng.uniform(0, 2 * np.pi, n).astype(f32)
    bg = rng.uniform(0, 255, (n, 3)).astype(f32)  # background colour
    # The shape's colour differs from the background by 64..192 in every channel (modulo 256), so it
    # is always visible but brighter or darker at random: no pixel weighting can rely on the polarity.
    fg = np.mod(bg + rng.uniform(64, 192, (n, 3)), 256).astype(f32)
    grad_amp = rng.uniform(-60, 60, (n, 3)).astype(f32)  # background gradient, per channel
    grad_dir = rng.uniform(0, 2 * np.pi, n).astype(f32)
    noise_std = rng.uniform(4, 20, n).astype(f32)
    noise = rng.standard_normal((n, 3, size, size), dtype=f32)

    cover = np.empty((n, size, size), dtype=f32)
    for c, inside in enumerate(_INSIDE):
        idx = np.flatnonzero(labels == c)
        cover[idx] = _coverage(inside, cx[idx], cy[idx], r[idx], theta[idx], size)

    ramp = (np.arange(size, dtype=f32) + 0.5) / size - 0.5  # in [-0.5, 0.5]
    slope = (
        np.cos(grad_dir)[:, None, None] * ramp[None, None, :] + np.sin(grad_dir)[:, None, None] * ramp[None, :, None]
    )  # (n, H, W)
    background = bg[:, :, None, None] + grad_amp[:, :, None, None] * slope[:, None]  # (n, 3, H, W)
    cover4 = cover[:, None]  # (n, 1, H, W): the same coverage in every channel
    images = background * (1 - cover4) + fg[:, :, None, None] * cover4
    images += noise_std[:, None, None, None] * noise
    images = np.clip(np.rint(images), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(images), labels


def load_shapes(train: bool = True, n: int | None = None, seed: int = 0) -> Dataset:
    """The shapes data set: 5,000 training or 1,000 test images by default.

    The training and test splits are drawn from different random streams (``[seed, 0]`` and
    ``[seed, 1]``), so no test image is a training image.

    Args:
        train: the training split or the test split.
        n: number of images (default 5,000 for training, 1,000 for testing).
        seed: picks the whole data set; the same seed gives the same bytes.
    """
    if n is None:
        n = TRAIN_SIZE if train else TEST_SIZE
    images, labels = make_shapes(n, seed=[seed, 0 if train else 1])
    return Dataset(images=images, labels=labels, classes=list(CLASSES), name="shapes")
