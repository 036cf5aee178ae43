"""Imagenette and Imagewoof: fast.ai's 10-class subsets of ImageNet, downloaded, checked and read as image folders.

Imagenette holds ten easily told apart classes, Imagewoof ten dog breeds that are hard to tell
apart (https://github.com/fastai/imagenette). Each comes in three releases of the same images and
the same ("v2") split, differing only in the stored resolution:

=======  ============================  ============================  =================================
release  Imagenette                    Imagewoof                     stored images
=======  ============================  ============================  =================================
full     imagenette2.tgz, 1.56 GB      imagewoof2.tgz, 1.34 GB       ImageNet's own sizes
320      imagenette2-320.tgz, 342 MB   imagewoof2-320.tgz, 328 MB    short side 320 px
160      imagenette2-160.tgz, 99 MB    imagewoof2-160.tgz, 93 MB     short side 160 px (the default)
=======  ============================  ============================  =================================

Imagenette has 9,469 training and 3,925 validation images, Imagewoof 9,025 and 3,929. The default
release is ``160``: the smallest download, and with the default 128 px crops the images are still
larger than what the model sees, so nothing is lost but decoding time. Pick ``320`` or ``full`` for
larger ``--image-size``.

A release unpacks to ``<folder>/{train,val}/<WordNet id>/<image>.JPEG`` (``imagenette2-160/...``).
Labels follow the sorted WordNet ids, as torchvision's ``ImageFolder`` gives them; the readable
names below are those of the fast.ai README and ImageNet. (French horn is ``n03394916``, parachute
``n03888257``; ``n03888605`` is ImageNet's "parallel bars", not an Imagenette class.)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .cifar import DatasetNotFoundError
from .download import cache_dir, download_url, extract_archive
from .imagefolder import ImageFolder, load_image_folder

__all__ = [
    "IMAGENETTE_CLASSES",
    "IMAGEWOOF_CLASSES",
    "IMAGE_RELEASES",
    "RELEASES",
    "Release",
    "find_image_tree",
    "load_imagenette",
]

IMAGENETTE_CLASSES = {
    "n01440764": "tench",
    "n02102040": "English springer",
    "n02979186": "cassette player",
    "n03000684": "chain saw",
    "n03028079": "church",
    "n03394916": "French horn",
    "n03417042": "garbage truck",
    "n03425413": "gas pump",
    "n03445777": "golf ball",
    "n03888257": "parachute",
}
IMAGEWOOF_CLASSES = {
    "n02086240": "Shih-Tzu",
    "n02087394": "Rhodesian ridgeback",
    "n02088364": "beagle",
    "n02089973": "English foxhound",
    "n02093754": "Border terrier",
    "n02096294": "Australian terrier",
    "n02099601": "golden retriever",
    "n02105641": "Old English sheepdog",
    "n02111889": "Samoyed",
    "n02115641": "dingo",
}
CLASS_NAMES = {"imagenette": IMAGENETTE_CLASSES, "imagewoof": IMAGEWOOF_CLASSES}

IMAGE_RELEASES = ("full", "320", "160")
BASE_URL = "https://s3.amazonaws.com/fast-ai-imageclas/"


@dataclass(frozen=True)
class Release:
    """One tarball: the folder it unpacks to, its size in bytes and MD5 as fast.ai publishes them."""

    folder: str
    size: int
    md5: str
    train_images: int
    val_images: int

    @property
    def url(self) -> str:
        return f"{BASE_URL}{self.folder}.tgz"


RELEASES = {
    ("imagenette", "full"): Release("imagenette2", 1_557_161_267, "2c774ecb40005b35d7937d50f5d42336", 9469, 3925),
    ("imagenette", "320"): Release("imagenette2-320", 341_663_724, "1f1f74f133caff120e575856659b87a2", 9469, 3925),
    ("imagenette", "160"): Release("imagenette2-160", 99_003_388, "c475f8f7617a200ba35b9facc48443c3", 9469, 3925),
    ("imagewoof", "full"): Release("imagewoof2", 1_343_715_595, "2cc1c1e36e20cb6fd24ffb978edcb487", 9025, 3929),
    ("imagewoof", "320"): Release("imagewoof2-320", 328_387_740, "7a1fd92672a559a85de76e4810a20c21", 9025, 3929),
    ("imagewoof", "160"): Release("imagewoof2-160", 92_612_825, "3559b194123981a540b87132dbda412f", 9025, 3929),
}


def _release(name: str, release: str) -> Release:
    if (name, release) not in RELEASES:
        raise ValueError(
            f"load_imagenette: unknown data set or release {name!r}/{release!r} - "
            f"use imagenette or imagewoof and one of {', '.join(IMAGE_RELEASES)}"
        )
    return RELEASES[(name, release)]


def find_image_tree(root: Path, folder: str | None = None) -> Path | None:
    """``root`` itself if it holds ``train/``, else ``root/folder`` if that does, else None."""
    if (root / "train").is_dir():
        return root
    if folder is not None and (root / folder / "train").is_dir():
        return root / folder
    return None


def load_imagenette(
    name: str = "imagenette",
    release: str = "160",
    root: str | Path | None = None,
    train: bool = True,
    download: bool = False,
    url: str | None = None,
    md5: str | None = None,
    size: int | None = None,
    progress: bool = True,
) -> ImageFolder:
    """One split of Imagenette or Imagewoof, downloading the release first if asked to.

    Args:
        name: ``"imagenette"`` or ``"imagewoof"``.
        release: ``"full"``, ``"320"`` or ``"160"`` (see the table above).
        root: an extracted tree (holding ``train/`` and ``val/``; any image folder tree works), or the
            folder holding the release's folder (``imagenette2-160/``), into which ``download`` puts it;
            None means :func:`~minise.data.download.cache_dir`.
        train: the ``train/`` split, else ``val/``.
        download: if no tree is found, download the tarball into ``root`` with a progress bar, check its
            size and MD5, extract it atomically and delete the tarball.
        url, md5, size: override the official address, checksum and size (for mirrors and tests; with
            ``url`` and no ``size`` the size is not checked, the MD5 still is).

    Returns:
        An :class:`~minise.data.imagefolder.ImageFolder`; its ``classes`` are the readable names of the
        WordNet ids it knows (other folders keep their names).

    Raises:
        DatasetNotFoundError: no tree under ``root`` and ``download`` is false.
        DownloadError: the download or the archive failed its checks.
        DatasetCorruptError: the tree is not a valid image folder (see :func:`load_image_folder`).
    """
    rel = _release(name, release)
    base = Path(root).expanduser() if root is not None else cache_dir()
    tree = find_image_tree(base, rel.folder)
    if tree is None and download:
        tarball = base / f"{rel.folder}.tgz"
        if size is None and url is None:
            size = rel.size  # the published size; a mirror or test (url) may serve another
        download_url(url or rel.url, tarball, md5 or rel.md5, size=size, progress=progress)
        try:
            if not (base / rel.folder).exists():
                extract_archive(tarball, base, rel.folder)
        finally:  # extracted, the tarball would double the disk use; unreadable, it must be fetched again
            tarball.unlink(missing_ok=True)
        tree = find_image_tree(base, rel.folder)
    if tree is None:
        raise DatasetNotFoundError(
            f"load_imagenette: no {rel.folder}/ folder (nor train/ and val/) in {base} - pass --download to fetch "
            f"{rel.folder}.tgz ({rel.size / 1e6:,.0f} MB) into it, or --data-dir pointing at an extracted tree"
        )
    return load_image_folder(tree, "train" if train else "val", name=name, class_names=CLASS_NAMES[name])
