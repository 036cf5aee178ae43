"""minise.data: data sets, augmentation and batching, in plain NumPy on the host.

This package imports nothing else from minise and never CuPy: batches are NumPy arrays, and the
training loop moves them to the device. Three data sets share one layout (:class:`Dataset`):

* ``shapes``: ten classes of drawn shapes, generated from a seed - no download, no files;
* ``cifar10`` and ``cifar100``: the official python-version files, from a folder or downloaded
  (``download=True``) with a checksum check and an atomic extraction.

Photographs of many sizes do not fit in memory as one array; they stay files, listed by an
:class:`ImageFolder` (``root/{train,val}/<class>/<image>``) and decoded, cropped and batched by worker
processes in an :class:`ImageFolderLoader` (:data:`IMAGE_DATASETS`):

* ``imagenette`` and ``imagewoof``: fast.ai's 10-class ImageNet subsets, in the full, 320 px or 160 px
  release, from a folder or downloaded (:func:`load_imagenette`);
* ``imagefolder``: any tree in that layout, class names = folder names.

::

    from minise.data import load_image_dataset, ImageFolderLoader, RandomResizedCrop
    train = load_image_dataset("imagenette", download=True)            # the 160 px release
    loader = ImageFolderLoader(train, 64, transform=RandomResizedCrop(128), shuffle=True)

::

    from minise.data import load_dataset, DataLoader, train_transform, CIFAR10_MEAN, CIFAR10_STD
    train = load_dataset("cifar10", root="data", download=True)
    loader = DataLoader(train.images, train.labels, 128, shuffle=True, transform=train_transform(),
                        mean=CIFAR10_MEAN, std=CIFAR10_STD)
"""

from __future__ import annotations

from pathlib import Path

from .cifar import (
    CIFAR10_MD5,
    CIFAR10_URL,
    CIFAR100_MD5,
    CIFAR100_URL,
    Dataset,
    DatasetCorruptError,
    DatasetNotFoundError,
    load_cifar,
)
from .download import DownloadError, cache_dir, download_url, extract_archive, md5sum
from .image_cache import DecodedCache, default_cache_size, open_cache
from .image_transforms import CenterSquare, RandomResizedCrop, ResizeCenterCrop, transform_file
from .image_workers import DataLoaderError, DecodePool, default_workers
from .imagefolder import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageDecodeError,
    ImageFolder,
    check_same_classes,
    decode_image,
    load_image_folder,
    open_rgb,
)
from .imageloader import ImageFolderLoader
from .imagenette import IMAGE_RELEASES, IMAGENETTE_CLASSES, IMAGEWOOF_CLASSES, RELEASES, load_imagenette
from .loader import DataLoader
from .shapes import CLASSES as SHAPES_CLASSES
from .shapes import load_shapes, make_shapes
from .transforms import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_MEAN,
    CIFAR100_STD,
    Transform,
    channel_stats,
    downsample,
    normalize,
    random_crop,
    random_hflip,
    train_transform,
)

__all__ = [
    "CIFAR10_MD5",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR10_URL",
    "CIFAR100_MD5",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "CIFAR100_URL",
    "DATASETS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGENETTE_CLASSES",
    "IMAGEWOOF_CLASSES",
    "IMAGE_DATASETS",
    "IMAGE_RELEASES",
    "RELEASES",
    "CenterSquare",
    "DataLoader",
    "DataLoaderError",
    "Dataset",
    "DatasetCorruptError",
    "DatasetNotFoundError",
    "DecodePool",
    "DecodedCache",
    "DownloadError",
    "ImageDecodeError",
    "ImageFolder",
    "ImageFolderLoader",
    "RandomResizedCrop",
    "ResizeCenterCrop",
    "SHAPES_CLASSES",
    "Transform",
    "cache_dir",
    "channel_stats",
    "downsample",
    "check_same_classes",
    "decode_image",
    "default_cache_size",
    "default_workers",
    "download_url",
    "extract_archive",
    "load_cifar",
    "load_dataset",
    "load_image_dataset",
    "load_image_folder",
    "load_imagenette",
    "load_shapes",
    "make_shapes",
    "md5sum",
    "normalize",
    "open_cache",
    "open_rgb",
    "random_crop",
    "random_hflip",
    "train_transform",
    "transform_file",
]

DATASETS = ("shapes", "cifar10", "cifar100")  # held in memory as a Dataset
IMAGE_DATASETS = ("imagenette", "imagewoof", "imagefolder")  # files on disk, an ImageFolder per split


def load_dataset(name: str, root: str | Path | None = None, train: bool = True, download: bool = False) -> Dataset:
    """Load a data set by name: one of :data:`DATASETS`.

    ``root`` and ``download`` apply to CIFAR (see :func:`load_cifar`); ``shapes`` is generated and
    ignores them.
    """
    if name == "shapes":
        return load_shapes(train=train)
    if name == "cifar10":
        return load_cifar("cifar10", root=root, train=train, download=download)
    if name == "cifar100":
        return load_cifar("cifar100", root=root, train=train, download=download)
    raise ValueError(f"load_dataset: unknown data set {name!r} - use one of {', '.join(DATASETS)}")


def load_image_dataset(
    name: str,
    root: str | Path | None = None,
    train: bool = True,
    release: str = "160",
    download: bool = False,
    progress: bool = True,
) -> ImageFolder:
    """One split of an image-folder data set by name: one of :data:`IMAGE_DATASETS`.

    ``imagenette``/``imagewoof`` go through :func:`load_imagenette` (``root``: an extracted tree or the
    folder holding the release's folder; ``release`` and ``download`` apply). ``imagefolder`` reads any
    ``root/{train,val}/<class>/<image>`` tree, class names = folder names; it needs ``root``.
    """
    if name in ("imagenette", "imagewoof"):
        return load_imagenette(name, release, root=root, train=train, download=download, progress=progress)
    if name == "imagefolder":
        if root is None:
            raise DatasetNotFoundError(
                "load_image_dataset: imagefolder needs a folder - pass --data-dir DIR, DIR holding train/ and val/"
            )
        return load_image_folder(root, "train" if train else "val", name="imagefolder")
    raise ValueError(f"load_image_dataset: unknown data set {name!r} - use one of {', '.join(IMAGE_DATASETS)}")
