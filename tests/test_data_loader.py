"""Transforms (crop, flip, normalize) and the DataLoader: exact determinism, resume, clean threads."""

from __future__ import annotations

import threading
import time
from collections.abc import Generator

import numpy as np
import pytest

from minise.data import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    DataLoader,
    channel_stats,
    normalize,
    random_crop,
    random_hflip,
    train_transform,
)

Batch = tuple[np.ndarray, np.ndarray]
Data = tuple[np.ndarray, np.ndarray]


def random_images(n: int, c: int = 3, h: int = 8, w: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(1, 256, (n, c, h, w), dtype=np.uint8)


def prefetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "minise-data-prefetch" and t.is_alive()]


def same_batches(a: list[Batch], b: list[Batch]) -> bool:
    return len(a) == len(b) and all(
        np.array_equal(xa, xb) and np.array_equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b)
    )


# ----------------------------------------------------------------------------------------- transforms
def test_random_crop_keeps_shape_and_padding_0_is_identity() -> None:
    x = random_images(5)
    rng = np.random.default_rng(0)
    out = random_crop(x, 2, rng)
    assert out.shape == x.shape and out.dtype == x.dtype and out.flags.c_contiguous
    np.testing.assert_array_equal(random_crop(x, 0, rng), x)


def test_random_crop_is_a_shifted_copy() -> None:
    """Each output is the zero-padded input seen through a window at some offset in [0, 2p]."""
    n, p = 200, 3
    x = random_images(n, h=6, w=7)  # values 1..255: a zero in the output can only be padding
    out = random_crop(x, p, np.random.default_rng(1))
    padded = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    offsets = set()
    for i in range(n):  # a loop in the test, as the naive reference
        found = [(dy, dx) for dy in range(2 * p + 1) for dx in range(2 * p + 1)
                 if np.array_equal(out[i], padded[i, :, dy : dy + 6, dx : dx + 7])]  # fmt: skip
        assert len(found) == 1, f"image {i} is not a single shifted copy"
        offsets.add(found[0])
    assert len(offsets) > 30  # the offsets differ between images and cover most of the 49 choices


def test_random_crop_errors() -> None:
    with pytest.raises(ValueError, match="padding"):
        random_crop(random_images(2), -1, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        random_crop(random_images(2)[0], 1, np.random.default_rng(0))


def test_random_hflip() -> None:
    x = random_images(64)
    rng = np.random.default_rng(0)
    np.testing.assert_array_equal(random_hflip(x, rng, p=1.0), x[..., ::-1])
    np.testing.assert_array_equal(random_hflip(x, rng, p=0.0), x)
    out = random_hflip(x, rng)
    flipped = np.array([np.array_equal(o, i[..., ::-1]) for o, i in zip(out, x)])
    kept = np.array([np.array_equal(o, i) for o, i in zip(out, x)])
    assert np.all(flipped ^ kept) and 16 < flipped.sum() < 48  # each image one or the other, about half


def test_normalize_values() -> None:
    x = random_images(4)
    out = normalize(x, CIFAR10_MEAN, CIFAR10_STD)
    assert out.dtype == np.float32 and out.shape == x.shape
    mean = np.array(CIFAR10_MEAN)[:, None, None]
    std = np.array(CIFAR10_STD)[:, None, None]
    np.testing.assert_allclose(out, (x / 255.0 - mean) / std, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="2 values but the images have 3 channels"):
        normalize(x, (0.5, 0.5), (0.2, 0.2))
    with pytest.raises(TypeError, match="uint8"):
        normalize(x.astype(np.float32), CIFAR10_MEAN, CIFAR10_STD)


def test_channel_stats() -> None:
    x = random_images(50, h=5, w=6)
    mean, std = channel_stats(x, chunk=7)  # several chunks
    ref = x.astype(np.float64) / 255
    np.testing.assert_allclose(mean, ref.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(std, ref.std(axis=(0, 2, 3)), rtol=1e-9)
    z = normalize(x, mean, std)
    np.testing.assert_allclose(z.mean(axis=(0, 2, 3)), 0, atol=1e-5)
    np.testing.assert_allclose(z.std(axis=(0, 2, 3)), 1, atol=1e-4)


def test_train_transform_is_a_function_of_the_rng() -> None:
    x = random_images(16)
    t = train_transform(padding=2)
    a = t(x, np.random.default_rng(7))
    assert np.array_equal(a, t(x, np.random.default_rng(7)))
    assert not np.array_equal(a, t(x, np.random.default_rng(8)))


# ----------------------------------------------------------------------------------------- loader
N = 103


@pytest.fixture
def data() -> tuple[np.ndarray, np.ndarray]:
    return random_images(N), np.arange(N)  # label i marks image i


def test_number_of_batches(data: Data) -> None:
    images, labels = data
    loader = DataLoader(images, labels, batch_size=10)
    batches = list(loader)
    assert len(loader) == len(batches) == 11 and [len(y) for _, y in batches][-2:] == [10, 3]
    dropping = DataLoader(images, labels, batch_size=10, drop_last=True)
    assert len(dropping) == len(list(dropping)) == 10
    assert len(DataLoader(images[:100], labels[:100], 10)) == 10


def test_batch_contents_and_types(data: Data) -> None:
    images, labels = data
    for x, y in DataLoader(images, labels, batch_size=16, shuffle=True):
        assert x.dtype == np.float32 and y.dtype == np.int64 and x.shape == (len(y), 3, 8, 8)
        np.testing.assert_allclose(x, images[y] / 255.0, rtol=1e-6)  # the right image for each label
    x, y = next(iter(DataLoader(images, labels, 8, mean=CIFAR10_MEAN, std=CIFAR10_STD)))
    np.testing.assert_allclose(x, normalize(images[:8], CIFAR10_MEAN, CIFAR10_STD))


def test_every_sample_once_per_epoch(data: Data) -> None:
    images, labels = data
    loader = DataLoader(images, labels, batch_size=10, shuffle=True)
    orders = []
    for epoch in range(3):
        loader.set_epoch(epoch)
        seen = np.concatenate([y for _, y in loader])
        assert sorted(seen.tolist()) == list(range(N))
        orders.append(seen)
    assert not np.array_equal(orders[0], orders[1]) and not np.array_equal(orders[1], orders[2])
    assert not np.array_equal(orders[0], np.arange(N))  # really shuffled
    plain = np.concatenate([y for _, y in DataLoader(images, labels, batch_size=10)])
    np.testing.assert_array_equal(plain, np.arange(N))  # no shuffle: the stored order


def test_same_seed_same_batches_whatever_the_prefetch(data: Data) -> None:
    images, labels = data
    augment = train_transform(padding=2)

    def run(seed: int, prefetch: int, epoch: int = 1) -> list[Batch]:
        loader = DataLoader(images, labels, 10, shuffle=True, transform=augment, seed=seed, prefetch=prefetch)
        loader.set_epoch(epoch)
        return list(loader)

    reference = run(seed=4, prefetch=0)
    assert same_batches(reference, run(seed=4, prefetch=0))
    assert same_batches(reference, run(seed=4, prefetch=1))
    assert same_batches(reference, run(seed=4, prefetch=5))
    assert not same_batches(reference, run(seed=5, prefetch=2))
    assert not same_batches(reference, run(seed=4, prefetch=2, epoch=2))


@pytest.mark.parametrize("prefetch", [0, 2])
def test_resume_mid_epoch_equals_uninterrupted(data: Data, prefetch: int) -> None:
    images, labels = data
    calls = []

    def counting(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        calls.append(len(x))
        return train_transform(padding=2)(x, rng)

    loader = DataLoader(images, labels, batch_size=10, shuffle=True, transform=counting, prefetch=prefetch, seed=3)
    loader.set_epoch(2)
    full = list(loader)
    calls.clear()
    loader.set_epoch(2, start_batch=4)
    resumed = list(loader)
    assert same_batches(resumed, full[4:])  # augmentation included
    assert len(calls) == len(full) - 4  # the skipped batches were not computed
    assert same_batches(list(loader), full)  # start_batch applies to one iteration only
    loader.set_epoch(2, start_batch=len(loader))
    assert list(loader) == []


def test_break_stops_the_thread(data: Data) -> None:
    images, labels = data

    def slow(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        time.sleep(0.005)
        return x

    loader = DataLoader(images, labels, batch_size=2, transform=slow, prefetch=1)
    for i, _ in enumerate(loader):
        assert len(prefetch_threads()) == 1
        if i == 2:
            break
    assert prefetch_threads() == []
    iterator = iter(loader)
    next(iterator)
    assert isinstance(iterator, Generator)
    iterator.close()  # what a `break` does
    assert prefetch_threads() == []


def test_error_in_the_consumer_stops_the_thread(data: Data) -> None:
    images, labels = data
    with pytest.raises(RuntimeError, match="training failed"):
        for _ in DataLoader(images, labels, batch_size=2, prefetch=2):
            raise RuntimeError("training failed")
    assert prefetch_threads() == []


def test_worker_exception_propagates(data: Data) -> None:
    images, labels = data
    seen: list[int] = []

    def failing(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if len(seen) == 3:
            raise ValueError("bad augmentation")
        seen.append(1)
        return x

    got: list[Batch] = []
    with pytest.raises(ValueError, match="bad augmentation") as info:
        for batch in DataLoader(images, labels, batch_size=10, transform=failing, prefetch=2):
            got.append(batch)
    assert len(got) == 3  # the good batches came first, in order
    assert any(frame.name == "failing" for frame in info.traceback)  # the worker's traceback is kept
    assert prefetch_threads() == []


def test_loader_errors(data: Data) -> None:
    images, labels = data
    with pytest.raises(ValueError, match="uint8"):
        DataLoader(images.astype(np.float32), labels, 4)
    with pytest.raises(ValueError, match="one integer label per image"):
        DataLoader(images, labels[:-1], 4)
    with pytest.raises(ValueError, match="batch_size"):
        DataLoader(images, labels, 0)
    with pytest.raises(ValueError, match="both mean and std"):
        DataLoader(images, labels, 4, mean=CIFAR10_MEAN)
    loader = DataLoader(images, labels, 10)
    with pytest.raises(ValueError, match="start_batch is 12 but an epoch has 11 batches"):
        loader.set_epoch(0, start_batch=12)
