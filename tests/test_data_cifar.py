"""load_cifar on the real mini CIFAR folders in ../shared/data, and on small folders written here."""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from minise.data import (
    DATASETS,
    DatasetCorruptError,
    DatasetNotFoundError,
    load_cifar,
    load_dataset,
)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
CIFAR10_MINI = SHARED / "cifar10-mini"
CIFAR100_MINI = SHARED / "cifar100-mini"


def need(folder: Path) -> None:
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent: the shared mini CIFAR data is not in this checkout")


def write_cifar10(folder: Path, sizes: dict[str, int], seed: int = 0) -> dict[str, np.ndarray]:
    """Write a CIFAR-10 folder in the official format; returns each file's data array."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    arrays = {}
    for name, n in sizes.items():
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, n).tolist()
        batch = {b"batch_label": name.encode(), b"labels": labels, b"data": data,
                 b"filenames": [f"{name}_{i}.png".encode() for i in range(n)]}  # fmt: skip
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
        arrays[name] = data
    names = [f"class{i}".encode() for i in range(10)]
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": names}, protocol=2))
    return arrays


# ----------------------------------------------------------------------------------------- real data
def test_cifar10_mini() -> None:
    need(CIFAR10_MINI)
    train = load_cifar("cifar10", root=CIFAR10_MINI)
    test = load_cifar("cifar10", root=CIFAR10_MINI / "cifar-10-batches-py", train=False)  # the folder itself
    assert (len(train), len(test)) == (4068, 1017)
    for ds in (train, test):
        assert ds.images.shape == (len(ds), 3, 32, 32) and ds.images.dtype == np.uint8
        assert ds.images.flags.c_contiguous
        assert ds.labels.dtype == np.int64 and ds.labels.min() >= 0 and ds.labels.max() <= 9
        assert ds.classes[0] == "airplane" and len(ds.classes) == 10 and ds.name == "cifar10"
    assert set(np.unique(train.labels)) == set(range(10))
    # The layout: the first 1024 bytes of a row are the red plane, row-major.
    with open(CIFAR10_MINI / "cifar-10-batches-py" / "data_batch_2", "rb") as f:
        raw = pickle.load(f, encoding="bytes")
    np.testing.assert_array_equal(train.images[1017, 0], raw[b"data"][0, :1024].reshape(32, 32))
    np.testing.assert_array_equal(train.images[1017, 2, 31], raw[b"data"][0, -32:])
    assert train.labels[1017] == raw[b"labels"][0]


def test_cifar100_mini() -> None:
    need(CIFAR100_MINI)
    train = load_cifar("cifar100", root=CIFAR100_MINI)
    test = load_cifar("cifar100", root=CIFAR100_MINI, train=False)
    assert (len(train), len(test)) == (1117, 458)
    for ds in (train, test):
        assert ds.images.shape == (len(ds), 3, 32, 32) and ds.images.dtype == np.uint8
        assert len(ds.classes) == 100 and ds.coarse_classes is not None and len(ds.coarse_classes) == 20
        assert ds.coarse_labels is not None and ds.coarse_labels.shape == ds.labels.shape
        assert ds.labels.max() < 100 and ds.coarse_labels.max() < 20
    assert set(np.unique(train.labels)) == set(range(100))
    assert train.classes[0] == "apple" and train.coarse_classes is not None
    # Every fine class belongs to exactly one superclass.
    assert train.coarse_labels is not None
    pairs = set(zip(train.labels.tolist(), train.coarse_labels.tolist()))
    assert len(pairs) == 100


def test_load_dataset_by_name() -> None:
    need(CIFAR10_MINI)
    assert DATASETS == ("shapes", "cifar10", "cifar100")
    assert len(load_dataset("cifar10", root=CIFAR10_MINI, train=False)) == 1017
    with pytest.raises(ValueError, match="shapes, cifar10, cifar100"):
        load_dataset("mnist")


# ----------------------------------------------------------------------------------------- written here
def test_any_number_of_batches_in_numeric_order(tmp_path: Path) -> None:
    sizes = {f"data_batch_{k}": k for k in (1, 2, 10, 3)} | {"test_batch": 2, "data_batch_1.bak": 7}
    arrays = write_cifar10(tmp_path / "cifar-10-batches-py", sizes)
    ds = load_cifar("cifar10", root=tmp_path)
    order = ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_10"]  # 10 after 3; .bak ignored
    np.testing.assert_array_equal(ds.images.reshape(-1, 3072), np.concatenate([arrays[n] for n in order]))
    assert ds.classes == [f"class{i}" for i in range(10)]
    assert len(load_cifar("cifar10", root=tmp_path, train=False)) == 2


def test_missing_folder_says_how_to_fix(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError) as info:
        load_cifar("cifar10", root=tmp_path)
    message = str(info.value)
    assert "--download" in message and "--data-dir" in message
    assert str(tmp_path) in message and "cifar-10-batches-py" in message
    assert isinstance(info.value, FileNotFoundError)


def test_root_defaults_to_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MINISE_DATA", str(tmp_path))
    write_cifar10(tmp_path / "cifar-10-batches-py", {"data_batch_1": 3, "test_batch": 1})
    assert len(load_cifar("cifar10")) == 3


@pytest.mark.parametrize(
    "damage",
    [
        lambda b: b[: len(b) // 2],  # truncated
        lambda b: b"this is not a pickle at all",
        lambda b: pickle.dumps([1, 2, 3], protocol=2),  # a pickle, but not a CIFAR dict
        lambda b: pickle.dumps({b"labels": [0]}, protocol=2),  # no data
        lambda b: pickle.dumps({b"labels": [0, 1], b"data": np.zeros((1, 3072), np.uint8)}, protocol=2),
        lambda b: pickle.dumps({b"labels": [11], b"data": np.zeros((1, 3072), np.uint8)}, protocol=2),
        lambda b: pickle.dumps({b"labels": [0], b"data": np.zeros((1, 100), np.uint8)}, protocol=2),
    ],
    ids=["truncated", "garbage", "not-a-dict", "no-data", "label-count", "label-range", "data-shape"],
)
def test_corrupt_file_is_named(tmp_path: Path, damage: Callable[[bytes], bytes]) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10(folder, {"data_batch_1": 2, "data_batch_2": 2})
    path = folder / "data_batch_2"
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(DatasetCorruptError, match="data_batch_2"):
        load_cifar("cifar10", root=tmp_path)


class Evil:
    def __reduce__(self) -> tuple[Callable[[str], int], tuple[str]]:
        return (os.system, ("echo pwned > pwned.txt",))


def test_pickle_with_foreign_code_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10(folder, {"data_batch_1": 2})
    (folder / "data_batch_1").write_bytes(pickle.dumps({b"data": Evil()}, protocol=2))
    with pytest.raises(DatasetCorruptError, match="system is not allowed"):
        load_cifar("cifar10", root=tmp_path)
    assert not (tmp_path / "pwned.txt").exists()


def test_missing_test_batch_is_named(tmp_path: Path) -> None:
    write_cifar10(tmp_path / "cifar-10-batches-py", {"data_batch_1": 2})
    with pytest.raises(DatasetNotFoundError, match="test_batch"):
        load_cifar("cifar10", root=tmp_path, train=False)


def test_unknown_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cifar10"):
        load_cifar("cifar11", root=tmp_path)  # type: ignore[arg-type]
