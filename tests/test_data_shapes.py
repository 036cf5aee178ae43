"""The shapes data set: deterministic, balanced, and not solvable by a linear classifier."""

from __future__ import annotations

import numpy as np
import pytest

from minise.data import SHAPES_CLASSES, Dataset, load_dataset, load_shapes, make_shapes

Splits = tuple[Dataset, Dataset]


@pytest.fixture(scope="module")
def train_test() -> Splits:
    return load_shapes(train=True), load_shapes(train=False)


def test_shapes_and_dtypes(train_test: Splits) -> None:
    train, test = train_test
    assert (len(train), len(test)) == (5000, 1000)
    for ds in (train, test):
        assert ds.images.shape == (len(ds), 3, 32, 32) and ds.images.dtype == np.uint8
        assert ds.images.flags.c_contiguous
        assert ds.labels.shape == (len(ds),) and ds.labels.dtype == np.int64
        assert ds.classes == list(SHAPES_CLASSES) and len(ds.classes) == 10 and ds.name == "shapes"


def test_classes_are_balanced(train_test: Splits) -> None:
    train, _ = train_test
    assert np.bincount(train.labels, minlength=10).tolist() == [500] * 10
    _, labels = make_shapes(23, seed=1)
    counts = np.bincount(labels, minlength=10)
    assert counts.max() - counts.min() <= 1 and counts.sum() == 23


def test_determinism() -> None:
    a, la = make_shapes(200, seed=5)
    b, lb = make_shapes(200, seed=5)
    c, _ = make_shapes(200, seed=6)
    assert a.tobytes() == b.tobytes() and np.array_equal(la, lb)
    assert a.tobytes() != c.tobytes()
    assert load_shapes(n=50, seed=3).images.tobytes() == load_shapes(n=50, seed=3).images.tobytes()


def test_train_and_test_differ(train_test: Splits) -> None:
    train, test = train_test
    seen = {img.tobytes() for img in train.images}
    assert not any(img.tobytes() in seen for img in test.images)


def test_images_are_varied(train_test: Splits) -> None:
    train, _ = train_test
    x = train.images.astype(np.float64)
    assert x.std(axis=(1, 2, 3)).min() > 5  # every image shows something: no blank image
    # Backgrounds have random colours: the per-image mean spans most of the range in every channel.
    means = x.mean(axis=(2, 3))
    assert (means.max(axis=0) - means.min(axis=0)).min() > 150


def test_a_linear_classifier_does_badly(train_test: Splits) -> None:
    """Ridge regression onto one-hot labels from raw pixels: far from solving the task."""
    train, test = train_test

    def features(images: np.ndarray) -> np.ndarray:
        x = images.reshape(len(images), -1).astype(np.float64) / 255
        return np.hstack([x, np.ones((len(x), 1))])  # (N, 3073) with a bias column

    x, xt = features(train.images), features(test.images)
    targets = np.eye(10)[train.labels]  # (N, 10) one-hot
    gram, xty = x.T @ x, x.T @ targets  # (3073, 3073), (3073, 10)
    best = 0.0
    for lam in (1.0, 100.0):
        w = np.linalg.solve(gram + lam * np.eye(len(gram)), xty)  # (3073, 10)
        best = max(best, float(np.mean(np.argmax(xt @ w, axis=1) == test.labels)))
    assert best < 0.40, f"linear accuracy {best:.3f}: shapes is too easy"


def test_other_size_and_errors() -> None:
    images, _ = make_shapes(10, seed=0, size=16)
    assert images.shape == (10, 3, 16, 16)
    assert make_shapes(0, seed=0)[0].shape == (0, 3, 32, 32)
    with pytest.raises(ValueError, match="n must be >= 0"):
        make_shapes(-1, seed=0)


def test_load_dataset_shapes() -> None:
    ds = load_dataset("shapes", train=False)
    assert len(ds) == 1000 and ds.name == "shapes"
