"""``--image-size`` on the array data sets (shapes, CIFAR): the images averaged down by whole factors.

``minise.data.downsample`` is a box filter (the mean of every k x k block); checked against a plain
per-block mean. The training command trains on the smaller images, records the side in its checkpoint,
evaluates at it, refuses sides that do not divide 32 in one line, and refuses to resume a run at another
side.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minise import data, evaluate, train
from minise.checkpoint import load_checkpoint

SMALL = [
    "--dataset",
    "shapes",
    "--model",
    "resnet20",
    "--batch-size",
    "16",
    "--train-images",
    "32",
    "--test-images",
    "16",
    "--no-progress",
    "--epochs",
    "1",
]


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 3), c=st.integers(1, 3), k=st.sampled_from([1, 2, 4, 8]), seed=st.integers(0, 2**31 - 1))
def test_downsample_is_the_mean_of_each_block(n: int, c: int, k: int, seed: int) -> None:
    images = np.random.default_rng(seed).integers(0, 256, size=(n, c, 32, 32), dtype=np.uint8)
    size = 32 // k
    out = data.downsample(images, size)
    assert out.shape == (n, c, size, size) and out.dtype == np.uint8
    for i in range(size):  # the definition, one block at a time
        for j in range(size):
            block = images[:, :, k * i : k * i + k, k * j : k * j + k].astype(np.float64)
            assert np.array_equal(out[:, :, i, j], np.rint(block.mean(axis=(2, 3))).astype(np.uint8))


def test_downsample_keeps_a_constant_image_and_refuses_other_sides() -> None:
    images = np.full((2, 3, 32, 32), 200, np.uint8)
    assert np.array_equal(data.downsample(images, 8), np.full((2, 3, 8, 8), 200, np.uint8))
    assert data.downsample(images, 32) is images
    for bad in (0, 12, 64):
        with pytest.raises(ValueError, match="must divide 32"):
            data.downsample(images, bad)


def test_training_on_16_pixel_shapes_records_and_evaluates_at_16(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert train.main([*SMALL, "--image-size", "16", "--out", str(out)]) == 0
    meta, _ = load_checkpoint(out / "last.npz")
    assert meta["input_size"] == 16 and meta["config"]["image_size"] == 16
    capsys.readouterr()
    args = ["--checkpoint", str(out / "last.npz"), "--test-images", "16", "--no-plot"]
    assert evaluate.main([*args, "--json", str(tmp_path / "e.json")]) == 0
    err = capsys.readouterr().err
    assert "warning" not in err  # evaluated at the training size, 16x16
    assert np.array(json.loads((tmp_path / "e.json").read_text())["confusion_matrix"]).sum() == 16
    assert evaluate.main([*args, "--image-size", "32"]) == 0  # at 32x32: allowed, with the warning
    assert "trained on 16x16 images and is evaluated on 32x32" in capsys.readouterr().err
    assert evaluate.main([*args, "--image-size", "12"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("minise.evaluate: --image-size 12")


def test_default_is_the_images_as_they_are(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert train.main([*SMALL, "--out", str(out)]) == 0
    meta, _ = load_checkpoint(out / "last.npz")
    assert meta["input_size"] == 32 and meta["config"]["image_size"] == 32


@pytest.mark.parametrize("side", ["12", "64", "0"])
def test_a_side_that_does_not_divide_32_is_one_line(
    side: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert train.main([*SMALL, "--image-size", side, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" not in "\n".join(err)
    assert err[-1].startswith("minise.train: ") and "--image-size" in err[-1]
    assert not (tmp_path / "run" / "last.npz").exists()


def test_resuming_at_another_side_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert train.main([*SMALL, "--image-size", "16", "--out", str(out)]) == 0
    capsys.readouterr()
    status = train.main([*SMALL[:-1], "2", "--image-size", "32", "--out", str(out), "--resume"])
    assert status == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "16x16" in line and "--image-size 16" in line
