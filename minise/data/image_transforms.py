"""Transforms for photographs of any size: RandomResizedCrop and flip to train, resize and centre crop to evaluate.

CIFAR images all have one size, so :mod:`minise.data.transforms` augments whole batches of arrays.
Photographs do not: every image has its own width and height until it has been cut and resized to
the model's input size, so these transforms work one image at a time, on a Pillow image, in the
worker processes of :mod:`minise.data.imageloader`.

Each transform first makes a :class:`Crop` *plan* from the image's size and a random generator -
which rectangle of the source, resized to what, flipped or not - and then :func:`apply_crop` carries
it out with one Pillow resize (bilinear, antialiased when shrinking, as torchvision's PIL path).
Separating the two has two uses: the plan is a pure function of (size, generator), which is what
makes the batches reproducible; and knowing the rectangle before the pixels are decoded lets a large
JPEG be decoded at 1/2, 1/4 or 1/8 scale when that still leaves enough pixels (:func:`transform_file`).

The recipes (He et al. 2016, Sec. 3.4; Szegedy et al. 2015 for the crop; fast.ai's Imagenette baseline
for the scale):

* training - :class:`RandomResizedCrop`: a rectangle of 35 %-100 % of the image's area (8 %-100 % in
  the ImageNet recipe) and aspect ratio 3/4-4/3, resized to ``size`` x ``size``, mirrored with
  probability 1/2;
* evaluation - :class:`ResizeCenterCrop`: the short side resized to ``size / 0.875`` (256 for 224),
  then the central ``size`` x ``size``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .imagefolder import decode_image, require_pillow

__all__ = [
    "CenterSquare",
    "Crop",
    "ImageTransform",
    "RandomResizedCrop",
    "ResizeCenterCrop",
    "apply_crop",
    "transform_array",
    "transform_file",
]


@dataclass(frozen=True)
class Crop:
    """What to do to one image: resize the ``box`` of the source to ``size`` x ``size``, cut the central
    ``inner`` x ``inner`` of that if ``inner`` is set, and mirror it if ``flip``.

    ``box`` is (left, top, right, bottom) in source pixels, the convention of Pillow's ``resize(box=)``.
    """

    box: tuple[float, float, float, float]
    size: int
    inner: int | None = None
    flip: bool = False

    def draft_size(self, width: int, height: int) -> tuple[int, int]:
        """The smallest whole-image size that still gives ``box`` at least ``size`` pixels each way: a
        JPEG decoded at a scale down to this loses nothing the resize would keep."""
        bw, bh = self.box[2] - self.box[0], self.box[3] - self.box[1]
        return math.ceil(width * self.size / bw), math.ceil(height * self.size / bh)


def _check_size(fn: str, size: int) -> None:
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"{fn}: size must be a positive int (the output side in pixels), got {size!r}")


@dataclass(frozen=True)
class RandomResizedCrop:
    """Training augmentation: a random rectangle, resized to ``size`` x ``size``, mirrored with probability ``hflip``.

    The rectangle is drawn as torchvision's ``RandomResizedCrop.get_params``: up to 10 tries of an area
    ``uniform(*scale)`` times the image's and an aspect ratio log-uniform in ``ratio``, kept when it fits
    in the image; if none fits, the largest centred crop within ``ratio``. ``scale=(0.35, 1)`` is fast.ai's
    Imagenette baseline, ``(0.08, 1)`` the ImageNet recipe (stronger, for longer training).
    """

    size: int
    scale: tuple[float, float] = (0.35, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.5

    random = True  # plan() draws from the generator

    def __post_init__(self) -> None:
        _check_size("RandomResizedCrop", self.size)
        lo, hi = self.scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"RandomResizedCrop: scale is {self.scale} - use 0 < min <= max <= 1, e.g. (0.35, 1)")
        if not 0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"RandomResizedCrop: ratio is {self.ratio} - use 0 < min <= max, e.g. (3/4, 4/3)")
        if not 0 <= self.hflip <= 1:
            raise ValueError(f"RandomResizedCrop: hflip is {self.hflip} - it must be a probability in [0, 1]")

    def plan(self, width: int, height: int, rng: np.random.Generator | None) -> Crop:
        if rng is None:
            raise ValueError("RandomResizedCrop.plan: needs a random generator - pass rng")
        area = width * height
        log_lo, log_hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        for _ in range(10):
            target = area * rng.uniform(self.scale[0], self.scale[1])
            aspect = math.exp(rng.uniform(log_lo, log_hi))
            w = int(round(math.sqrt(target * aspect)))
            h = int(round(math.sqrt(target / aspect)))
            if 0 < w <= width and 0 < h <= height:
                top = int(rng.integers(0, height - h + 1))
                left = int(rng.integers(0, width - w + 1))
                break
        else:  # no try fitted (a very long image): the largest centred crop within ratio
            if width / height < self.ratio[0]:
                w, h = width, int(round(width / self.ratio[0]))
            elif width / height > self.ratio[1]:
                w, h = int(round(height * self.ratio[1])), height
            else:
                w, h = width, height
            left, top = (width - w) // 2, (height - h) // 2
        flip = bool(rng.random() < self.hflip)  # drawn even when hflip is 0: the draws stay aligned
        return Crop((float(left), float(top), float(left + w), float(top + h)), self.size, None, flip)


def _centre_square(width: int, height: int) -> tuple[float, float, float, float]:
    side = min(width, height)
    left, top = (width - side) / 2, (height - side) / 2
    return (left, top, left + side, top + side)


@dataclass(frozen=True)
class ResizeCenterCrop:
    """Evaluation: resize the short side to ``resize_to = floor(size / crop_fraction)`` (146 for 128,
    256 for 224) and keep the central ``size`` x ``size``.

    Done in two exact stages - the central square of the image resized to ``resize_to`` (one resize),
    then the central ``size`` pixels of that, offset ``(resize_to - size) // 2`` - so that an image
    cached as that square (:class:`CenterSquare`) gives bit for bit the same result as the file.
    """

    size: int
    crop_fraction: float = 0.875

    random = False

    def __post_init__(self) -> None:
        _check_size("ResizeCenterCrop", self.size)
        if not 0 < self.crop_fraction <= 1:
            raise ValueError(f"ResizeCenterCrop: crop_fraction is {self.crop_fraction} - use a value in (0, 1]")

    @property
    def resize_to(self) -> int:
        return int(math.floor(self.size / self.crop_fraction + 1e-9))

    def plan(self, width: int, height: int, rng: np.random.Generator | None = None) -> Crop:
        return Crop(_centre_square(width, height), self.resize_to, self.size, False)


@dataclass(frozen=True)
class CenterSquare:
    """The short side resized to ``size`` and the central square kept: what the decoded-image cache stores."""

    size: int

    random = False

    def __post_init__(self) -> None:
        _check_size("CenterSquare", self.size)

    def plan(self, width: int, height: int, rng: np.random.Generator | None = None) -> Crop:
        return Crop(_centre_square(width, height), self.size, None, False)


ImageTransform = RandomResizedCrop | ResizeCenterCrop | CenterSquare


def apply_crop(image: Any, crop: Crop, scale: float = 1.0) -> np.ndarray:
    """Carry out ``crop`` on a Pillow RGB image; ``scale`` > 1 when the image was decoded at 1/scale of
    the size the plan was made for. Returns uint8 (H, W, 3), C-contiguous."""
    Image = require_pillow()
    box = tuple(v / scale for v in crop.box)
    if image.size == (crop.size, crop.size) and box == (0.0, 0.0, float(crop.size), float(crop.size)):
        arr = np.asarray(image)  # already the size asked for: a resize would only copy
    else:
        arr = np.asarray(image.resize((crop.size, crop.size), Image.Resampling.BILINEAR, box=box))
    if crop.inner is not None:
        o = (crop.size - crop.inner) // 2
        arr = arr[o : o + crop.inner, o : o + crop.inner]  # (inner, inner, 3)
    if crop.flip:
        arr = arr[:, ::-1]
    return np.ascontiguousarray(arr)


def transform_file(
    path: str | Path, transform: ImageTransform, rng: np.random.Generator | None, draft: bool = True
) -> np.ndarray:
    """Decode an image file and transform it: uint8 (S, S, 3).

    The plan is made from the stored size before the pixels are decoded; with ``draft`` a JPEG is then
    decoded at the smallest of 1/1, 1/2, 1/4, 1/8 scale that leaves the crop at least its output size
    (see :meth:`Crop.draft_size`). The choice depends only on the plan, so results stay reproducible.
    Raises :class:`~minise.data.imagefolder.ImageDecodeError` naming the file if it cannot be decoded.
    """
    plans: list[Crop] = []

    def plan_first(width: int, height: int) -> tuple[int, int] | None:
        plans.append(transform.plan(width, height, rng))
        return plans[0].draft_size(width, height) if draft else None

    image, scale = decode_image(path, plan_first)
    crop = plans[0] if plans else transform.plan(image.width, image.height, rng)
    return apply_crop(image, crop, scale)


def transform_array(image: np.ndarray, transform: ImageTransform, rng: np.random.Generator | None) -> np.ndarray:
    """Transform an already decoded uint8 (H, W, 3) image (e.g. a row of the cache): uint8 (S, S, 3)."""
    Image = require_pillow()
    crop = transform.plan(image.shape[1], image.shape[0], rng)
    return apply_crop(Image.fromarray(np.ascontiguousarray(image)), crop)
