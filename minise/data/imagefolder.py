"""ImageFolder: a labelled tree of image files, ``root/{train,val}/<class>/<image>``, read lazily.

The layout is torchvision's ``ImageFolder`` and the one the Imagenette, Imagewoof and ImageNet
releases use::

    imagenette2-160/
        train/n01440764/n01440764_10026.JPEG      <- class folder = WordNet id, then the images
        train/n02102040/...
        val/n01440764/ILSVRC2012_val_00009111.JPEG
        ...

**Labels.** The class folders are sorted by name and numbered from 0, so label ``k`` is the
``k``-th folder name in sorted order (``n01440764`` is 0 in Imagenette) - the rule every PyTorch
user knows. ``classes`` holds readable names when they are known (``"tench"``), else the folder
names. The images of a class are every file below its folder (sub-folders included) whose name
ends in one of :data:`IMG_EXTENSIONS`, in sorted order; hidden files (``._x.jpg``) are ignored.

**Checks before any training.** A missing split folder, a split with no class folders, an empty
class folder or a ``val/`` whose classes are not those of ``train/`` is an error that names the
folder; an image that cannot be decoded is found only when it is read (see
:mod:`minise.data.imageloader`), because opening 13,000 files up front would cost an epoch.

**Decoding** uses Pillow (``pip install pillow`` or ``pip install "minise[images]"``), imported only
here and only when an image is read. Greyscale (``L``), palette (``P``), CMYK, RGBA and the other
modes are converted to RGB, so every image has 3 channels.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from .cifar import DatasetCorruptError, DatasetNotFoundError

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMG_EXTENSIONS",
    "ImageDecodeError",
    "ImageFolder",
    "check_same_classes",
    "load_image_folder",
    "decode_image",
    "open_rgb",
    "require_pillow",
]

# torchvision's list; Pillow reads them all. Compared case-insensitively (".JPEG" in the releases).
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")

# Per-channel mean and std of the ImageNet training pixels on the [0, 1] scale: what every
# ImageNet-style model normalises with, Imagenette and Imagewoof included (they are ImageNet images).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ImageDecodeError(DatasetCorruptError):
    """An image file exists but Pillow cannot decode it (truncated, corrupt, not an image)."""


def require_pillow() -> ModuleType:
    """``PIL.Image``, or an ImportError that says how to install it."""
    try:
        from PIL import Image  # noqa: PLC0415  (optional: only image folders need it)
    except ImportError as err:  # pragma: no cover - Pillow is installed where the tests run
        raise ImportError(
            "image folders need Pillow to decode JPEG and PNG files - install it with "
            '`pip install pillow` (or `pip install "minise[images]"`)'
        ) from err
    return Image


@dataclass
class ImageFolder:
    """One split of an image tree: file paths and labels, the pixels stay on disk.

    Attributes:
        root: the split folder, e.g. ``.../imagenette2-160/train``.
        paths: the image files, ``paths[i]`` has label ``labels[i]`` (strings: cheap to send to
            worker processes).
        labels: int64 (N,), each in ``range(len(classes))``.
        folders: the class folder names in label order (sorted), e.g. WordNet ids.
        classes: a readable name per label (``folders`` where no name is known).
        name: the data set's name, e.g. ``"imagenette"``.
        split: ``"train"`` or ``"val"``.
    """

    root: Path
    paths: list[str]
    labels: np.ndarray
    folders: list[str]
    classes: list[str]
    name: str
    split: str

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, n: int) -> ImageFolder:
        """A fixed, class-balanced choice of ``n`` images (all of them if ``n >= len``).

        Each class keeps ``n`` times its share of the images, give or take one (the classes take turns
        in proportion to their sizes), and within a class the chosen files are evenly spaced over its
        sorted list. "The first n files" would instead be the first class only, the files being sorted
        by class. The same ``n`` always gives the same files.
        """
        if n < 1:
            raise ValueError(f"ImageFolder.subset: n is {n} - it must be >= 1")
        if n >= len(self):
            return self
        k = len(self.folders)
        members = [np.flatnonzero(self.labels == c) for c in range(k)]  # each class's indices, in file order
        # Class c's j-th turn comes at (j + 1/2) / size_c: the n earliest turns give each class its share.
        turns = np.concatenate([(np.arange(len(m)) + 0.5) / max(len(m), 1) for m in members])
        owner = np.concatenate([np.full(len(m), c) for c, m in enumerate(members)])
        take = np.bincount(owner[np.argsort(turns, kind="stable")[:n]], minlength=k)  # (K,) images per class
        keep = np.sort(np.concatenate([m[(np.arange(t) * len(m)) // t] for m, t in zip(members, take) if t]))
        return ImageFolder(
            self.root,
            [self.paths[i] for i in keep],
            self.labels[keep],
            self.folders,
            self.classes,
            self.name,
            self.split,
        )


def _is_image(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMG_EXTENSIONS)


def _class_files(folder: Path) -> list[str]:
    """Every image file below ``folder`` (sub-folders included), sorted."""
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        found.extend(os.path.join(dirpath, f) for f in filenames if _is_image(f))
    return sorted(found)


def load_image_folder(
    root: str | Path,
    split: str = "train",
    name: str = "imagefolder",
    class_names: Mapping[str, str] | None = None,
) -> ImageFolder:
    """Scan ``root/split/<class>/...``: one class per sub-folder, labels in sorted folder order.

    Args:
        root: the tree holding ``train/`` and ``val/`` (or whichever ``split`` names).
        split: the sub-folder to read.
        name: the data set's name, kept in :attr:`ImageFolder.name`.
        class_names: readable names for folder names (e.g. WordNet id -> "tench"); folders not in it
            keep their folder name.

    Raises:
        DatasetNotFoundError: ``root/split`` does not exist.
        DatasetCorruptError: it holds no class folders, or a class folder holds no image.
    """
    root = Path(root).expanduser()
    split_dir = root / split
    layout = "root/{train,val}/<class>/<image>"
    if not split_dir.is_dir():
        raise DatasetNotFoundError(
            f"load_image_folder: no {split}/ folder in {root} - an image folder is laid out as {layout}; "
            "point --data-dir at the folder holding train/ and val/"
        )
    folders = sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise DatasetCorruptError(
            f"load_image_folder: {split_dir} holds no class folders - expected {layout}, one folder per class"
        )
    paths: list[str] = []
    labels: list[int] = []
    for label, folder in enumerate(folders):
        files = _class_files(split_dir / folder)
        if not files:
            raise DatasetCorruptError(
                f"load_image_folder: the class folder {split_dir / folder} holds no images "
                f"({', '.join(IMG_EXTENSIONS)}) - add its images or remove the folder"
            )
        paths.extend(files)
        labels.extend([label] * len(files))
    names = dict(class_names or {})
    return ImageFolder(
        root=split_dir,
        paths=paths,
        labels=np.asarray(labels, dtype=np.int64),
        folders=folders,
        classes=[names.get(f, f) for f in folders],
        name=name,
        split=split,
    )


def check_same_classes(train: ImageFolder, val: ImageFolder) -> None:
    """Refuse a held-out split whose class folders are not exactly those of the training split
    (a label would then mean different classes in the two)."""
    if train.folders == val.folders:
        return

    def some(names: Iterable[str]) -> str:
        names = sorted(names)
        return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")

    missing = set(train.folders) - set(val.folders)
    extra = set(val.folders) - set(train.folders)
    what = "; ".join(
        part
        for part in (
            f"{len(missing)} missing from {val.split}/ ({some(missing)})" if missing else "",
            f"{len(extra)} not in {train.split}/ ({some(extra)})" if extra else "",
        )
        if part
    )
    raise DatasetCorruptError(
        f"image folder: the classes of {val.root} differ from those of {train.root}: {what} - "
        "both splits need the same class folders so that a label means the same class in each"
    )


# ----------------------------------------------------------------------------------------- decoding
def _to_rgb(image: Any) -> Any:
    """Any Pillow mode -> RGB. A palette image with a transparent colour goes through RGBA (as Pillow
    asks); alpha is dropped, as torchvision's loader does."""
    if image.mode == "RGB":
        return image
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode.startswith("I"):  # 16-bit greyscale (older Pillows open it as "I"): keep the top 8 bits
        arr = np.clip(np.asarray(image, dtype=np.int64), 0, 65535)
        image = require_pillow().fromarray((arr >> 8).astype(np.uint8))
    return image.convert("RGB")


Draft = Callable[[int, int], "tuple[int, int] | None"]
"""``draft(width, height) -> (w, h) | None``: the smallest decoded size a caller needs (see :func:`decode_image`)."""


def decode_image(path: str | Path, draft: Draft | None = None) -> tuple[Any, float]:
    """Decode ``path`` into an RGB ``PIL.Image``, possibly at a reduced scale.

    Args:
        path: the image file.
        draft: for a JPEG, called with the stored (width, height) before any pixel is decoded; it may
            return the smallest (w, h) the caller needs. libjpeg then decodes at 1/2, 1/4 or 1/8 scale
            where that still gives at least (w, h) - several times faster than decoding every pixel of a
            large photo only to shrink it afterwards.

    Returns:
        ``(image, scale)``: the RGB image and how many times smaller than the stored size it was
        decoded (1.0 without a draft; a pixel coordinate ``x`` of the stored image is ``x / scale`` in it).

    Raises:
        ImageDecodeError: the file cannot be opened or decoded; the message names it.
    """
    Image = require_pillow()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Corrupt EXIF data": the pixels are still fine
            with Image.open(path) as image:
                scale = 1.0
                if draft is not None and image.format == "JPEG":
                    width = image.width
                    wanted = draft(image.width, image.height)
                    if wanted is not None:
                        drafted = image.draft("RGB", wanted)
                        if drafted is not None:  # (mode, (0, 0, width / scale, height / scale))
                            scale = width / drafted[1][2]
                image.load()
                return _to_rgb(image), scale
    except Exception as err:  # Pillow raises many kinds: UnidentifiedImageError, OSError, SyntaxError, ...
        raise ImageDecodeError(f"cannot decode {path} ({type(err).__name__}: {err})") from None


def open_rgb(path: str | Path) -> Any:
    """Decode ``path`` into an RGB ``PIL.Image`` at full size; ImageDecodeError naming the file if it cannot."""
    return decode_image(path)[0]
