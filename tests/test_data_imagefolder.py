"""Image folders: the class mapping, decoding of every image mode, the transforms, the worker-process
loader (determinism, skip and strict), the decoded-image cache, the Imagenette download against a local
HTTP server, and the real images of ``../shared/data/imagenette-mini``.

The trees are built here in the release layout ``root/{train,val}/<WordNet id>/<file>`` from generated
JPEGs and PNGs of odd sizes in the modes real data sets hold: RGB, greyscale (L), palette (P, with and
without a transparent colour), CMYK, RGBA, 16-bit greyscale, and one truncated JPEG.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED_DATA, Server
from PIL import Image
from test_data_download import leftovers, make_tarball, md5

from minise import data
from minise.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    IMAGENETTE_CLASSES,
    IMAGEWOOF_CLASSES,
    RELEASES,
    DatasetCorruptError,
    DatasetNotFoundError,
    DecodePool,
    DownloadError,
    ImageDecodeError,
    ImageFolderLoader,
    RandomResizedCrop,
    ResizeCenterCrop,
    check_same_classes,
    load_image_folder,
    load_imagenette,
    open_cache,
    open_rgb,
    transform_file,
)
from minise.data.image_transforms import CenterSquare, transform_array

WNIDS = ["n03000684", "n01440764", "n02102040"]  # written out of order: labels must follow sorted ids
MINI = SHARED_DATA / "imagenette-mini"
# (mode, extension) of the images written per class, cycled; sizes are odd on purpose
KINDS = [("RGB", "JPEG"), ("L", "JPEG"), ("P", "png"), ("CMYK", "JPEG"), ("RGB", "png"), ("RGBA", "png")]
SIZES = [(37, 53), (61, 29), (45, 45), (80, 51), (33, 70), (52, 38), (71, 64)]


def picture(mode: str, size: tuple[int, int], seed: int) -> Image.Image:
    """A smooth random picture (JPEG-friendly) in ``mode``."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    rgb = np.stack([(xx * rng.uniform(1, 4) + yy * rng.uniform(0, 3) + rng.uniform(0, 255)) % 256 for _ in range(3)])
    image = Image.fromarray(rgb.transpose(1, 2, 0).astype(np.uint8), "RGB")
    if mode == "P":
        return image.quantize(16)
    return image.convert(mode)


def save(image: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="JPEG" if path.suffix.lower() in (".jpeg", ".jpg") else "PNG")


def make_tree(root: Path, train_per_class: tuple[int, ...] = (7, 7, 6), val_per_class: tuple[int, ...] = (4, 3, 3),
              wnids: list[str] = WNIDS, corrupt: bool = True) -> Path:  # fmt: skip
    """A tree in the release layout; the train split of the first WordNet id holds a truncated JPEG
    (counted in ``train_per_class``). Returns ``root``."""
    seed = 0
    for split, counts in (("train", train_per_class), ("val", val_per_class)):
        for wnid, count in zip(wnids, counts):
            for k in range(count):
                mode, ext = KINDS[(seed + k) % len(KINDS)]
                save(picture(mode, SIZES[seed % len(SIZES)], seed), root / split / wnid / f"{wnid}_{k:03d}.{ext}")
                seed += 1
    if corrupt:  # the first JPEG of the first class (in sorted order) becomes a truncated file "_999"
        folder = root / "train" / sorted(wnids)[0]
        good = sorted(folder.glob("*.JPEG"))[0]
        (folder / f"{folder.name}_999.JPEG").write_bytes(good.read_bytes()[:300])  # header reads, pixels do not
        good.unlink()  # keep the count
    (root / "train" / wnids[1] / "notes.txt").write_text("not an image")  # ignored
    (root / "train" / wnids[1] / "._hidden.JPEG").write_bytes(b"macOS metadata")  # ignored
    return root


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tree(tmp_path_factory.mktemp("tree") / "imagenette2-160")


@pytest.fixture(scope="module")
def pool() -> Iterator[DecodePool]:
    with DecodePool(2) as p:
        yield p


def corrupt_path(root: Path) -> str:
    return str(root / "train" / "n01440764" / "n01440764_999.JPEG")


def batches(loader: ImageFolderLoader, epoch: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    return list(loader.iter_epoch(epoch))


def same(a: list[tuple[np.ndarray, np.ndarray]], b: list[tuple[np.ndarray, np.ndarray]]) -> bool:
    return len(a) == len(b) and all(
        np.array_equal(xa, xb) and np.array_equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b)
    )


# ----------------------------------------------------------------------------------------- the class mapping
def test_labels_follow_sorted_wordnet_ids_and_names_ship(tree: Path) -> None:
    train = load_imagenette("imagenette", root=tree.parent)  # the folder holding imagenette2-160/
    assert train.folders == sorted(WNIDS) == ["n01440764", "n02102040", "n03000684"]
    assert train.classes == ["tench", "English springer", "chain saw"]
    assert len(train) == 20 and np.bincount(train.labels).tolist() == [7, 6, 7]
    assert train.labels.dtype == np.int64 and train.split == "train" and train.name == "imagenette"
    # files sorted within each class, labels by folder; the .txt and the hidden file are not images
    for path, label in zip(train.paths, train.labels):
        assert Path(path).parent.name == train.folders[label]
    assert train.paths == sorted(train.paths)
    assert not any(p.endswith((".txt", "._hidden.JPEG")) for p in train.paths)
    val = load_imagenette("imagenette", root=tree, train=False)  # the tree itself works the same way
    assert val.folders == train.folders and len(val) == 10


def test_imagefolder_names_are_folder_names(tree: Path) -> None:
    ds = data.load_image_dataset("imagefolder", tree)
    assert ds.classes == ds.folders == sorted(WNIDS) and ds.name == "imagefolder"
    with pytest.raises(DatasetNotFoundError, match="--data-dir"):
        data.load_image_dataset("imagefolder", None)


def test_name_tables_map_wordnet_ids_to_the_published_names() -> None:
    assert sorted(IMAGENETTE_CLASSES.values()) == sorted(
        ["tench", "English springer", "cassette player", "chain saw", "church", "French horn", "garbage truck",
         "gas pump", "golf ball", "parachute"])  # fmt: skip
    assert IMAGENETTE_CLASSES["n03888257"] == "parachute" and IMAGENETTE_CLASSES["n03394916"] == "French horn"
    assert IMAGEWOOF_CLASSES == {
        "n02086240": "Shih-Tzu", "n02087394": "Rhodesian ridgeback", "n02088364": "beagle",
        "n02089973": "English foxhound", "n02093754": "Border terrier", "n02096294": "Australian terrier",
        "n02099601": "golden retriever", "n02105641": "Old English sheepdog", "n02111889": "Samoyed",
        "n02115641": "dingo",
    }  # fmt: skip


def test_release_table_is_fastai_s() -> None:
    expected = {
        ("imagenette", "full"): ("imagenette2", 1_557_161_267, "2c774ecb40005b35d7937d50f5d42336"),
        ("imagenette", "320"): ("imagenette2-320", 341_663_724, "1f1f74f133caff120e575856659b87a2"),
        ("imagenette", "160"): ("imagenette2-160", 99_003_388, "c475f8f7617a200ba35b9facc48443c3"),
        ("imagewoof", "full"): ("imagewoof2", 1_343_715_595, "2cc1c1e36e20cb6fd24ffb978edcb487"),
        ("imagewoof", "320"): ("imagewoof2-320", 328_387_740, "7a1fd92672a559a85de76e4810a20c21"),
        ("imagewoof", "160"): ("imagewoof2-160", 92_612_825, "3559b194123981a540b87132dbda412f"),
    }
    assert {k: (r.folder, r.size, r.md5) for k, r in RELEASES.items()} == expected
    assert RELEASES[("imagewoof", "320")].url == "https://s3.amazonaws.com/fast-ai-imageclas/imagewoof2-320.tgz"
    assert {(r.train_images, r.val_images) for k, r in RELEASES.items() if k[0] == "imagenette"} == {(9469, 3925)}
    assert {(r.train_images, r.val_images) for k, r in RELEASES.items() if k[0] == "imagewoof"} == {(9025, 3929)}


def test_subset_is_class_balanced_and_fixed(tree: Path) -> None:
    train = load_image_folder(tree)  # classes of 7, 6 and 7 images
    sub = train.subset(9)
    assert len(sub) == 9 and np.bincount(sub.labels).tolist() == [3, 3, 3]
    assert np.bincount(train.subset(10).labels).tolist() == [4, 3, 3]
    assert np.bincount(train.subset(2).labels, minlength=3).tolist() == [1, 0, 1]
    first_of_each = [next(p for p, y in zip(train.paths, train.labels) if y == c) for c in range(3)]
    assert train.subset(3).paths == first_of_each
    assert set(sub.paths) <= set(train.paths) and sub.classes == train.classes
    assert sub.paths == train.subset(9).paths  # fixed
    assert train.subset(100) is train


# ----------------------------------------------------------------------------------------- bad trees
def test_tree_errors_are_clear_and_name_the_folder(tmp_path: Path, tree: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match="no val/ folder.*train,val"):
        load_image_folder(tmp_path, "val")
    (tmp_path / "train").mkdir()
    with pytest.raises(DatasetCorruptError, match="no class folders"):
        load_image_folder(tmp_path)
    save(picture("RGB", (9, 9), 0), tmp_path / "train" / "a" / "x.jpg")
    (tmp_path / "train" / "b").mkdir()
    (tmp_path / "train" / "b" / "readme.txt").write_text("no images here")
    with pytest.raises(DatasetCorruptError, match=r"class folder .*train/b holds no images"):
        load_image_folder(tmp_path)
    with pytest.raises(DatasetNotFoundError, match="pass --download"):
        load_imagenette("imagewoof", root=tmp_path / "nothing")


def test_val_classes_must_equal_train_classes(tmp_path: Path) -> None:
    for split, names in (("train", ["a", "b", "c"]), ("val", ["a", "c", "d"])):
        for name in names:
            save(picture("RGB", (9, 9), 0), tmp_path / split / name / "x.png")
    with pytest.raises(DatasetCorruptError, match=r"1 missing from val/ \(b\); 1 not in train/ \(d\)"):
        check_same_classes(load_image_folder(tmp_path, "train"), load_image_folder(tmp_path, "val"))


# ----------------------------------------------------------------------------------------- decoding
@pytest.mark.parametrize("mode, ext", [*KINDS, ("P", "gif"), ("I;16", "png"), ("LA", "png"), ("1", "png")])
def test_every_mode_decodes_to_rgb(tmp_path: Path, mode: str, ext: str) -> None:
    image = picture("RGB", (23, 17), 3)
    if mode == "I;16":
        image = Image.fromarray(np.asarray(image.convert("L"), dtype=np.uint16) * 257)  # mode I;16
    elif mode == "P":
        image = image.quantize(8)
        image.info["transparency"] = 0  # a transparent palette entry: Pillow wants RGBA on the way
    else:
        image = picture(mode, (23, 17), 3)
    path = tmp_path / f"x.{ext}"
    image.save(path)
    rgb = open_rgb(path)
    assert rgb.mode == "RGB" and rgb.size == (23, 17)
    if mode in ("L", "I;16", "LA", "1"):  # grey stays grey: three equal channels
        arr = np.asarray(rgb)
        assert np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 1], arr[..., 2])
    if mode == "I;16":  # the top 8 bits, not a clipped 16-bit value
        np.testing.assert_array_equal(np.asarray(rgb)[..., 0], np.asarray(picture("RGB", (23, 17), 3).convert("L")))


def test_corrupt_and_non_image_files_raise_naming_the_path(tree: Path, tmp_path: Path) -> None:
    with pytest.raises(ImageDecodeError, match="n01440764_999.JPEG"):
        open_rgb(corrupt_path(tree))
    (tmp_path / "fake.png").write_bytes(b"not a png at all")
    with pytest.raises(ImageDecodeError, match="fake.png.*UnidentifiedImageError"):
        transform_file(tmp_path / "fake.png", ResizeCenterCrop(8), None)
    assert issubclass(ImageDecodeError, DatasetCorruptError)  # so the CLIs report it in one line


# ----------------------------------------------------------------------------------------- transforms
def test_random_resized_crop_boxes_follow_scale_and_ratio() -> None:
    t = RandomResizedCrop(32, scale=(0.35, 1.0))
    rng = np.random.default_rng(0)
    for _ in range(300):
        crop = t.plan(200, 120, rng)
        left, top, right, bottom = crop.box
        w, h = right - left, bottom - top
        assert 0 <= left < right <= 200 and 0 <= top < bottom <= 120
        assert 0.35 * 0.97 <= w * h / (200 * 120) <= 1.0 and 3 / 4 * 0.95 <= w / h <= 4 / 3 * 1.05
        assert crop.size == 32 and crop.inner is None
    flips = [t.plan(200, 120, rng).flip for _ in range(400)]
    assert 0.4 < np.mean(flips) < 0.6
    # an image too long for any try: the largest centred crop within the ratio
    crop = RandomResizedCrop(8, scale=(0.9, 1.0)).plan(1000, 10, np.random.default_rng(0))
    assert crop.box == (493.0, 0.0, 506.0, 10.0)
    with pytest.raises(ValueError, match="scale"):
        RandomResizedCrop(8, scale=(0.5, 0.2))


def test_train_transform_shape_range_and_determinism(tree: Path) -> None:
    path = str(tree / "train" / "n02102040" / "n02102040_000.png")
    t = RandomResizedCrop(24)
    a = transform_file(path, t, np.random.default_rng([1, 2, 3]))
    b = transform_file(path, t, np.random.default_rng([1, 2, 3]))
    c = transform_file(path, t, np.random.default_rng([1, 2, 4]))
    assert a.shape == (24, 24, 3) and a.dtype == np.uint8 and a.flags.c_contiguous
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_eval_transform_resizes_the_short_side_and_cuts_the_centre() -> None:
    assert ResizeCenterCrop(224).resize_to == 256 and ResizeCenterCrop(128).resize_to == 146
    assert ResizeCenterCrop(64).resize_to == 73
    # an image already resize_to x resize_to: evaluation is exactly its central crop
    arr = np.random.default_rng(0).integers(0, 256, (73, 73, 3), dtype=np.uint8)
    np.testing.assert_array_equal(transform_array(arr, ResizeCenterCrop(64), None), arr[4:68, 4:68])
    # a wide image: the left and right thirds are cut away (red | green | blue stripes)
    stripes = np.zeros((40, 120, 3), dtype=np.uint8)
    for k in range(3):
        stripes[:, 40 * k : 40 * (k + 1), k] = 255
    out = transform_array(stripes, ResizeCenterCrop(32), None)
    assert out.shape == (32, 32, 3) and (out[..., 1] == 255).all() and (out[..., [0, 2]] == 0).all()


def test_jpeg_draft_decoding_stays_close_to_full_decoding(tmp_path: Path) -> None:
    """A large JPEG is decoded at a reduced scale when the crop allows it; the result barely changes."""
    path = tmp_path / "big.jpg"
    picture("RGB", (640, 480), 5).save(path, quality=95)
    for t, rng in ((ResizeCenterCrop(64), None), (RandomResizedCrop(64), 7)):
        fast = transform_file(path, t, None if rng is None else np.random.default_rng(rng), draft=True)
        full = transform_file(path, t, None if rng is None else np.random.default_rng(rng), draft=False)
        assert np.abs(fast.astype(int) - full.astype(int)).mean() < 3.0


# ----------------------------------------------------------------------------------------- the loader
def loader(tree: Path, pool: DecodePool, **kw: object) -> ImageFolderLoader:
    options: dict = {
        "transform": RandomResizedCrop(24),
        "shuffle": True,
        "seed": 3,
        "pool": pool,
        "log": lambda s: None,
    }
    return ImageFolderLoader(load_image_folder(tree), 6, **(options | kw))


def test_batches_are_normalised_and_the_same_with_any_number_of_workers(tree: Path, pool: DecodePool) -> None:
    with DecodePool(0) as serial:
        here = batches(loader(tree, serial))
    there = batches(loader(tree, pool))
    assert same(here, there)
    x, y = here[0]
    assert x.shape == (6, 3, 24, 24) and x.dtype == np.float32 and y.dtype == np.int64
    lo = (0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    hi = (1 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    for x, _ in here:
        assert (x.min(axis=(0, 2, 3)) >= lo - 1e-5).all() and (x.max(axis=(0, 2, 3)) <= hi + 1e-5).all()


def test_a_sample_is_a_function_of_seed_epoch_and_image(tree: Path, pool: DecodePool) -> None:
    """Not of the batch size, nor of the batch it falls in; make_batch and a resumed epoch agree."""
    a = loader(tree, pool)
    epoch0 = batches(a, 0)
    assert len(epoch0) == 4 and sum(len(y) for _, y in epoch0) == 19  # 20 files, one truncated
    assert not same(epoch0, batches(a, 1))  # a new order and new crops
    assert same(epoch0[2:], list(a.iter_epoch(0, start_batch=2)))  # resume mid-epoch
    assert same(epoch0[1:3], list(a.iter_epoch(0, start_batch=1, stop_batch=3)))
    assert same([a.make_batch(0, 3)], epoch0[3:])
    # batch size 4 vs 6, shuffle off: image i looks the same in both
    big = loader(tree, pool, shuffle=False)
    small = ImageFolderLoader(big.folder, 4, transform=big.transform, seed=3, pool=pool, log=lambda s: None)
    x6 = np.concatenate([x for x, _ in batches(big, 5)])
    x4 = np.concatenate([x for x, _ in batches(small, 5)])
    np.testing.assert_array_equal(x6, x4)
    # another seed: other crops
    assert not np.array_equal(x6, np.concatenate([x for x, _ in batches(loader(tree, pool, shuffle=False, seed=4), 5)]))


def test_corrupt_file_is_reported_once_skipped_and_counted(tree: Path, pool: DecodePool) -> None:
    lines: list[str] = []
    a = loader(tree, pool, log=lines.append)
    for epoch in range(2):
        sizes = [len(y) for _, y in batches(a, epoch)]
        assert a.skipped == [corrupt_path(tree)]  # counted every epoch ...
        assert sum(sizes) == 19 and sorted(sizes) in ([1, 6, 6, 6], [2, 5, 6, 6])  # one batch an image short
    assert len(lines) == 1 and corrupt_path(tree) in lines[0] and "skipped" in lines[0]  # ... reported once


def test_strict_stops_at_the_corrupt_file(tree: Path, pool: DecodePool) -> None:
    for p in (pool, DecodePool(0)):
        with pytest.raises(ImageDecodeError, match="n01440764_999.JPEG.*--strict"):
            batches(loader(tree, p, strict=True, shuffle=False))


def test_loader_stops_cleanly_when_abandoned(tree: Path, pool: DecodePool) -> None:
    a = loader(tree, pool, prefetch=4)
    for _ in a.iter_epoch(0):
        break  # the queued jobs are cancelled; the pool keeps working for the next epoch
    assert len(batches(a, 0)) == 4


# ----------------------------------------------------------------------------------------- the cache
def test_cache_gives_identical_batches_and_is_reused(tree: Path, pool: DecodePool, tmp_path: Path) -> None:
    train, val = load_image_folder(tree), load_image_folder(tree, "val")
    lines: list[str] = []
    cache, built = open_cache(train, 30, root=tmp_path, pool=pool, progress=False, log=lines.append)
    assert built and cache.array().shape == (20, 30, 30, 3) and cache.array().dtype == np.uint8
    assert list(cache.failed.values()) == [lines[0].removeprefix("warning: ").removesuffix(" - skipped")]
    assert cache.path.name.startswith("imagefolder-train-30px-20-")
    again, built = open_cache(train, 30, root=tmp_path, pool=pool, progress=False)
    assert not built and again.path == cache.path and again.failed == cache.failed
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([cache.path.name, cache.path.stem + ".json"])

    first = batches(loader(tree, pool, cache=cache))
    assert same(first, batches(loader(tree, pool, cache=again)))
    with DecodePool(0) as serial:
        assert same(first, batches(loader(tree, serial, cache=again)))
    assert sum(len(y) for _, y in first) == 19
    skipping = loader(tree, pool, cache=cache)
    batches(skipping)
    assert skipping.skipped == [corrupt_path(tree)]

    # evaluation from a cache at resize_to is bit for bit evaluation from the files
    t = ResizeCenterCrop(24)
    vcache, _ = open_cache(val, t.resize_to, root=tmp_path, pool=pool, progress=False)
    from_files = batches(ImageFolderLoader(val, 4, transform=t, pool=pool))
    assert same(from_files, batches(ImageFolderLoader(val, 4, transform=t, pool=pool, cache=vcache)))

    # the cache holds the central square, resized
    row = cache.array()[1]
    np.testing.assert_array_equal(row, transform_file(train.paths[1], CenterSquare(30), None))


def test_cache_name_changes_with_the_files(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "t", (2, 2, 2), (1, 1, 1), corrupt=False)
    folder = load_image_folder(root)
    name = data.image_cache.cache_name(folder, 16)
    assert name != data.image_cache.cache_name(folder, 17)
    assert name != data.image_cache.cache_name(folder.subset(5), 16)
    path = Path(folder.paths[0])
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    assert name != data.image_cache.cache_name(folder, 16)


def test_interrupted_cache_build_leaves_nothing(tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def ctrl_c(line: str) -> None:
        calls.append(line)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        open_cache(load_image_folder(tree), 20, root=tmp_path, pool=DecodePool(0), progress=False, log=ctrl_c)
    assert calls and leftovers(tmp_path) == []
    with pytest.raises(ImageDecodeError, match="--strict"):
        open_cache(load_image_folder(tree), 20, root=tmp_path, pool=DecodePool(0), progress=False, strict=True)
    assert leftovers(tmp_path) == []


# ----------------------------------------------------------------------------------------- download
@pytest.fixture(scope="module")
def archive(tree: Path) -> bytes:
    """imagenette2-160.tgz holding the tree (about 30 small images)."""
    members = {}
    for path in sorted(tree.rglob("*")):
        if path.is_file() and not path.name.startswith("."):
            members[f"imagenette2-160/{path.relative_to(tree).as_posix()}"] = path.read_bytes()
    members["imagenette2-160/noisy_imagenette.csv"] = b"path,noisy_labels_0\n"
    return make_tarball(members)


def test_download_checks_extracts_and_reads(server: Server, archive: bytes, tmp_path: Path) -> None:
    server.routes["/i.tgz"] = (archive, None)
    kw = {"root": tmp_path, "download": True, "url": server.url("/i.tgz"), "md5": md5(archive), "progress": False}
    train = load_imagenette("imagenette", "160", size=len(archive), **kw)  # type: ignore[arg-type]
    assert len(train) > 0 and train.root == tmp_path / "imagenette2-160" / "train"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["imagenette2-160"]  # the tarball is gone
    val = load_imagenette("imagenette", "160", train=False, **kw)  # type: ignore[arg-type]
    assert len(val) > 0 and server.requests == ["/i.tgz"]  # found, not downloaded again


@pytest.mark.parametrize("how", ["wrong-md5", "wrong-size", "cut-short", "truncated-archive"])
def test_bad_downloads_are_refused_and_leave_nothing(server: Server, archive: bytes, tmp_path: Path, how: str) -> None:
    body, announced, checksum, size = archive, None, md5(archive), len(archive)
    if how == "wrong-md5":
        checksum = "0" * 32
    elif how == "wrong-size":
        size += 1
    elif how == "cut-short":
        body, announced = archive[: len(archive) // 2], len(archive)  # announces all, sends half
    else:  # a truncated archive whose size and checksum are (wrongly) given as right: extraction fails
        body = archive[: len(archive) // 2]
        checksum, size = md5(body), len(body)
    server.routes["/i.tgz"] = (body, announced)
    match = {"wrong-md5": "MD5", "wrong-size": "expected", "cut-short": "announced|IncompleteRead",
             "truncated-archive": "truncated"}  # fmt: skip
    with pytest.raises(DownloadError, match=match[how]):
        load_imagenette("imagenette", "160", root=tmp_path, download=True, url=server.url("/i.tgz"), md5=checksum,
                        size=size, progress=False)  # fmt: skip
    assert leftovers(tmp_path) == []


# ----------------------------------------------------------------------------------------- the real images
def need_mini() -> None:
    if not (MINI / "imagenette" / "train").is_dir():
        pytest.skip(f"the shared images are not here: {MINI} (see ../shared/data/README.md)")


def mode_of(path: str) -> str:
    with Image.open(path) as image:
        return str(image.mode)


def test_real_imagenette_and_imagewoof(pool: DecodePool) -> None:
    need_mini()
    for name, counts, names in (("imagenette", (1000, 300), IMAGENETTE_CLASSES),
                                ("imagewoof", (160, 80), IMAGEWOOF_CLASSES)):  # fmt: skip
        train = load_imagenette(name, root=MINI / name)
        val = load_imagenette(name, root=MINI / name, train=False)
        check_same_classes(train, val)
        assert (len(train), len(val)) == counts
        assert train.folders == sorted(names) and train.classes == [names[w] for w in sorted(names)]
        assert set(np.bincount(train.labels).tolist()) == {counts[0] // 10}
        assert set(np.bincount(val.labels).tolist()) == {counts[1] // 10}
    woof = load_imagenette("imagewoof", root=MINI / "imagewoof")
    woof_val = load_imagenette("imagewoof", root=MINI / "imagewoof", train=False)
    grey = [p for p in woof.paths + woof_val.paths if mode_of(p) == "L"]
    assert len(grey) == 3  # 2 train + 1 val, as the shared README says
    for path in grey:
        arr = np.asarray(open_rgb(path))
        assert arr.ndim == 3 and arr.shape[2] == 3 and min(arr.shape[:2]) == 320
    # a batch of real images through the workers, greyscale ones included
    folder = woof.subset(32)
    x, y = next(iter(ImageFolderLoader(folder, 32, transform=RandomResizedCrop(64), pool=pool)))
    assert x.shape == (32, 3, 64, 64) and np.isfinite(x).all() and len(set(y.tolist())) == 10


def test_pillow_is_imported_only_when_an_image_is_read() -> None:
    """The CIFAR and shapes paths never need Pillow: importing minise.data must not import it."""
    code = "import sys, minise.data; print('PIL' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
