"""CIFAR-10 and CIFAR-100 in their official "python version" format.

The two data sets (Krizhevsky, 2009, https://www.cs.toronto.edu/~kriz/cifar.html) are 32x32 RGB
images: 50,000 for training and 10,000 for testing, in 10 classes or in 100 fine classes grouped
into 20 coarse ones. The official files are Python pickles of a dict::

    {b"data": uint8 array (N, 3072),      # 1024 red, then 1024 green, then 1024 blue values, row-major 32x32
     b"labels": [int, ...],               # CIFAR-10;  CIFAR-100 has b"fine_labels" and b"coarse_labels"
     b"batch_label": bytes, b"filenames": [bytes, ...]}

so ``data.reshape(N, 3, 32, 32)`` is already the (N, C, H, W) layout minise uses.

**Why pickle, and why it is safe enough here.** Pickle is the official format: there is no other
copy of the data to read. Unpickling can run arbitrary code, so two rules hold: only files the user
points at (``root``) or that were downloaded and MD5-checked against the official checksum are read,
and they are read with :class:`_CifarUnpickler`, which refuses every global except the few NumPy
functions needed to rebuild an array.
"""

from __future__ import annotations

import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .download import cache_dir, download_url, extract_archive

__all__ = [
    "CIFAR10_MD5",
    "CIFAR10_URL",
    "CIFAR100_MD5",
    "CIFAR100_URL",
    "DatasetCorruptError",
    "DatasetNotFoundError",
    "Dataset",
    "load_cifar",
]

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
CIFAR100_MD5 = "eb9058c3a382ffc7106e4002c42a8d85"

# name -> (url, md5, the top-level folder inside the tarball)
_SOURCES = {
    "cifar10": (CIFAR10_URL, CIFAR10_MD5, "cifar-10-batches-py"),
    "cifar100": (CIFAR100_URL, CIFAR100_MD5, "cifar-100-python"),
}


@dataclass
class Dataset:
    """An image classification data set held in memory.

    Every data set in minise (CIFAR, shapes) uses this layout, so the loader and the training
    script never need to know which one they have.

    Attributes:
        images: uint8 array (N, 3, H, W), C-contiguous.
        labels: int64 array (N,), each in ``range(len(classes))``.
        classes: the class names; ``classes[labels[i]]`` names image ``i``.
        name: the data set's name, e.g. ``"cifar10"``.
        coarse_labels: CIFAR-100 only: int64 array (N,) of the 20 superclasses.
        coarse_classes: CIFAR-100 only: the 20 superclass names.
    """

    images: np.ndarray
    labels: np.ndarray
    classes: list[str]
    name: str
    coarse_labels: np.ndarray | None = None
    coarse_classes: list[str] | None = None

    def __len__(self) -> int:
        return len(self.labels)


class DatasetNotFoundError(FileNotFoundError):
    """The data set's folder is not where it was looked for."""


class DatasetCorruptError(ValueError):
    """A data set file exists but cannot be read (truncated, corrupt, or not a CIFAR file)."""


# ----------------------------------------------------------------------------------------- reading
class _CifarUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds NumPy arrays and plain containers, and nothing else."""

    _ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),  # how NumPy 1.x (and the official files) pickle arrays
        ("numpy._core.multiarray", "_reconstruct"),  # ... and NumPy 2.x
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),  # pickle protocol 5
        ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),  # bytes written by Python 3 with protocol 2
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR file")
        return super().find_class(module, name)


def _read_pickle(path: Path) -> dict[bytes, Any]:
    """Read one official CIFAR pickle; any failure names the file and says what to do."""
    fix = f"the file is truncated or corrupt - delete {path.parent} and download it again (--download)"
    try:
        with open(path, "rb") as f:
            obj = _CifarUnpickler(f, encoding="bytes").load()
    except FileNotFoundError as err:
        raise DatasetNotFoundError(
            f"load_cifar: {path} is missing - the folder {path.parent} is incomplete; "
            "delete it and download it again (--download)"
        ) from err
    except Exception as err:  # pickle raises many kinds: UnpicklingError, EOFError, ValueError, ...
        raise DatasetCorruptError(f"load_cifar: cannot read {path} ({type(err).__name__}: {err}); {fix}") from err
    if not isinstance(obj, dict):
        raise DatasetCorruptError(f"load_cifar: {path} holds a {type(obj).__name__}, not a dict; {fix}")
    return obj


def _field(batch: dict[bytes, Any], key: bytes, path: Path) -> Any:
    if key not in batch:
        raise DatasetCorruptError(
            f"load_cifar: {path} has no {key!r} entry (it has {sorted(batch)}) - "
            "this is not an official CIFAR file; check the folder"
        )
    return batch[key]


def _read_batch(path: Path, label_keys: dict[bytes, int]) -> tuple[np.ndarray, list[np.ndarray]]:
    """One data file -> images uint8 (N, 3, 32, 32) and one int64 (N,) array per label key.

    ``label_keys`` maps each label entry to read (``b"labels"``, ``b"fine_labels"``, ...) to its
    number of classes, so that out-of-range labels are caught here rather than in the loss.
    """
    batch = _read_pickle(path)
    data = np.asarray(_field(batch, b"data", path))
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DatasetCorruptError(
            f"load_cifar: {path} holds data of shape {data.shape} and dtype {data.dtype}; "
            "expected uint8 (N, 3072) - the file is corrupt or not a CIFAR file"
        )
    all_labels = []
    for key, n_classes in label_keys.items():
        labels = np.asarray(_field(batch, key, path), dtype=np.int64)
        if labels.shape != (len(data),):
            raise DatasetCorruptError(
                f"load_cifar: {path} has {len(data)} images but {key!r} of shape {labels.shape} - the file is corrupt"
            )
        if len(labels) and (labels.min() < 0 or labels.max() >= n_classes):
            raise DatasetCorruptError(
                f"load_cifar: {path} has {key!r} in [{labels.min()}, {labels.max()}], outside [0, {n_classes}) - "
                "the file is corrupt or belongs to another data set"
            )
        all_labels.append(labels)
    images = data.reshape(len(data), 3, 32, 32)  # (N, 3072) -> (N, C, H, W): channel planes, row-major
    return images, all_labels


def _names(meta: dict[bytes, Any], key: bytes, path: Path) -> list[str]:
    return [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in _field(meta, key, path)]


def _batch_number(path: Path) -> int:
    return int(path.name.rsplit("_", 1)[1])


# ----------------------------------------------------------------------------------------- loading
def _find_folder(root: Path, folder: str) -> Path | None:
    """``root`` may be the data folder itself or the folder that contains it."""
    if root.name == folder and root.is_dir():
        return root
    if (root / folder).is_dir():
        return root / folder
    return None


def load_cifar(
    name: Literal["cifar10", "cifar100"],
    root: str | Path | None = None,
    train: bool = True,
    download: bool = False,
    url: str | None = None,
    md5: str | None = None,
) -> Dataset:
    """Load CIFAR-10 or CIFAR-100 from the official python-version files.

    The files are Python pickles because that is the official format (there is no other copy of
    the data to read). Only the files under ``root`` that you point at, or the tarball downloaded
    here and checked against the official MD5, are read, and a restricted unpickler refuses any
    object but NumPy arrays and plain containers.

    Args:
        name: ``"cifar10"`` or ``"cifar100"``.
        root: the folder holding ``cifar-10-batches-py/`` (or ``cifar-100-python/``), or that folder
            itself; ``None`` means :func:`~minise.data.download.cache_dir`.
        train: the training split (CIFAR-10: every ``data_batch_<k>`` present, in order of ``k``;
            CIFAR-100: ``train``) or the test split (``test_batch``; ``test``).
        download: if the folder is missing, download the official tarball into ``root``, check its
            MD5, extract it atomically and delete the tarball.
        url, md5: override the official download address and checksum (for mirrors and tests).

    Returns:
        A :class:`Dataset` with images uint8 (N, 3, 32, 32) and labels int64 (N,). For CIFAR-100
        ``labels``/``classes`` are the 100 fine classes and ``coarse_labels``/``coarse_classes``
        the 20 superclasses.

    Raises:
        DatasetNotFoundError: the folder is missing and ``download`` is false.
        DatasetCorruptError: a file cannot be read; the message names it.
        DownloadError: the download or the archive failed its checks.
    """
    if name not in _SOURCES:
        raise ValueError(f"load_cifar: unknown data set {name!r} - use one of {sorted(_SOURCES)}")
    official_url, official_md5, folder_name = _SOURCES[name]
    root = Path(root).expanduser() if root is not None else cache_dir()

    folder = _find_folder(root, folder_name)
    if folder is None and download:
        tarball = root / Path(official_url).name
        download_url(url or official_url, tarball, md5 or official_md5)
        folder = extract_archive(tarball, root, folder_name)
        tarball.unlink()  # the extracted folder is all we need; the tarball would double the disk use
    if folder is None:
        raise DatasetNotFoundError(
            f"load_cifar: no {folder_name}/ folder in {root} - pass --download to fetch {name} "
            f"(about 170 MB) into it, or --data-dir pointing at a folder holding {folder_name}/"
        )
    if name == "cifar10":
        return _load_cifar10(folder, train)
    return _load_cifar100(folder, train)


def _load_cifar10(folder: Path, train: bool) -> Dataset:
    meta_path = folder / "batches.meta"
    classes = _names(_read_pickle(meta_path), b"label_names", meta_path)
    if train:
        paths = sorted((p for p in folder.iterdir() if re.fullmatch(r"data_batch_\d+", p.name)), key=_batch_number)
        if not paths:
            raise DatasetNotFoundError(
                f"load_cifar: {folder} holds no data_batch_<k> files - the folder is incomplete; "
                "delete it and download it again (--download)"
            )
    else:
        paths = [folder / "test_batch"]
    parts = [_read_batch(p, {b"labels": len(classes)}) for p in paths]
    images = np.ascontiguousarray(np.concatenate([im for im, _ in parts]))  # (N, 3, 32, 32)
    labels = np.concatenate([lb for _, (lb,) in parts])  # (N,)
    return Dataset(images=images, labels=labels, classes=classes, name="cifar10")


def _load_cifar100(folder: Path, train: bool) -> Dataset:
    meta_path = folder / "meta"
    meta = _read_pickle(meta_path)
    classes = _names(meta, b"fine_label_names", meta_path)
    coarse_classes = _names(meta, b"coarse_label_names", meta_path)
    path = folder / ("train" if train else "test")
    images, (labels, coarse) = _read_batch(path, {b"fine_labels": len(classes), b"coarse_labels": len(coarse_classes)})
    return Dataset(
        images=np.ascontiguousarray(images),
        labels=labels,
        classes=classes,
        name="cifar100",
        coarse_labels=coarse,
        coarse_classes=coarse_classes,
    )
