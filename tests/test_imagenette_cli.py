"""The training, evaluation and benchmark commands on image folders, end to end, on a tiny generated tree.

A one-epoch run of se_resnet18 at 64 px on 20 training / 10 held-out images (one of them a truncated
JPEG) with two decoding workers; exact resume with any number of workers; the decoded-image cache built
once and reused; --strict; and the errors a bad tree gets before any training.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from test_data_imagefolder import make_tree, picture, save
from test_train_cli import assert_one_line_error, assert_same_checkpoint, read_metrics, without_timing

from minise import bench, evaluate, train

SMALL = ["--no-progress", "--batch-size", "4", "--image-size", "32", "--model", "se_resnet20"]


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tree(tmp_path_factory.mktemp("cli") / "imagenette2-160")


@pytest.fixture(autouse=True)
def cache_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MINISE_DATA", str(tmp_path / "minise-data"))


def run(*args: Any) -> int:
    return train.main([str(a) for a in args])


def corrupt(tree: Path) -> str:
    return str(tree / "train" / "n01440764" / "n01440764_999.JPEG")


def test_one_epoch_of_se_resnet18_at_64px_then_evaluate(
    tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    args = ["--dataset", "imagenette", "--data-dir", tree, "--model", "se_resnet18", "--image-size", 64]
    assert run(*args, "--epochs", 1, "--batch-size", 8, "--workers", 2, "--no-progress", "--out", out) == 0
    err = capsys.readouterr().err
    assert "se_resnet18" in err and "20 train / 10 held-out images" in err
    assert err.count(corrupt(tree)) == 1  # reported by path, once
    assert "skipped 1 training and 0 held-out images that could not be decoded" in err
    (m,) = read_metrics(out)
    assert 0 <= m["test_acc"] <= m["test_top5"] <= 1 and m["train_loss"] > 0
    config = json.loads((out / "config.json").read_text())
    assert config["image_size"] == 64 and config["image_release"] == "160" and config["crop_scale_min"] == 0.35

    # minise.evaluate rebuilds the held-out pipeline from the checkpoint: the same top-1 and top-5
    assert evaluate.main(["--checkpoint", str(out / "last.npz"), "--workers", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["top1"] == pytest.approx(m["test_acc"]) and result["top5"] == pytest.approx(m["test_top5"])
    assert list(result["per_class_accuracy"]) == ["tench", "English springer", "chain saw"]


def test_resume_is_exact_whatever_the_number_of_workers(
    tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["--dataset", "imagenette", "--data-dir", tree, *SMALL, "--epochs", 2]
    ref, out = tmp_path / "ref", tmp_path / "run"
    assert run(*base, "--workers", 2, "--out", ref) == 0
    assert run(*base, "--workers", 0, "--out", out, "--stop-after-steps", 3) == train.EXIT_INTERRUPTED
    assert run(*base, "--workers", 1, "--out", out, "--resume") == 0
    assert_same_checkpoint(ref / "last.npz", out / "last.npz")
    assert without_timing(read_metrics(out)) == without_timing(read_metrics(ref))
    # the batches depend on the crop settings: a resume with others is refused
    capsys.readouterr()
    assert run(*base, "--out", out, "--resume", out / "last.npz", "--crop-scale-min", 0.08) == 2
    assert "--crop-scale-min 0.35, not 0.08" in assert_one_line_error(capsys.readouterr().err)


def test_cache_is_built_once_then_reused(tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--dataset", "imagefolder", "--data-dir", tree, *SMALL, "--epochs", 1, "--workers", 2, "--cache"]
    assert run(*base, "--out", tmp_path / "a") == 0
    first = capsys.readouterr().err
    assert first.count("built in") == 2 and "cache of train/ at 40 px" in first and "cache of val/ at 36 px" in first
    assert run(*base, "--out", tmp_path / "b") == 0
    second = capsys.readouterr().err
    assert second.count("reused") == 2 and "built in" not in second
    assert "skipped 1 training" in second  # the cache remembers the file it could not decode
    assert without_timing(read_metrics(tmp_path / "a")) == without_timing(read_metrics(tmp_path / "b"))
    cached = sorted(p.name for p in (tmp_path / "minise-data" / "decoded").iterdir())
    assert len(cached) == 4 and all(n.startswith("imagefolder-") for n in cached)  # .npy + .json per split


def test_strict_stops_the_run_naming_the_file(tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--dataset", "imagenette", "--data-dir", tree, *SMALL, "--epochs", 1, "--workers", 2, "--strict"]
    assert run(*args, "--out", tmp_path / "run") == 2
    line = assert_one_line_error(capsys.readouterr().err)
    assert corrupt(tree) in line and "--strict" in line


def test_bad_trees_are_refused_before_training(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_tree(tmp_path / "t", (2, 2, 2), (1, 1, 1), corrupt=False)
    args = ["--dataset", "imagefolder", "--data-dir", root, *SMALL, "--epochs", 1, "--out", tmp_path / "run"]
    (root / "train" / "n09999999").mkdir()
    assert run(*args) == 2
    assert "n09999999 holds no images" in assert_one_line_error(capsys.readouterr().err)
    save(picture("RGB", (20, 20), 0), root / "train" / "n09999999" / "x.JPEG")
    assert run(*args) == 2
    assert "1 missing from val/ (n09999999)" in assert_one_line_error(capsys.readouterr().err)
    assert not (tmp_path / "run").exists()  # refused before the run folder was made
    assert run("--dataset", "imagefolder", *SMALL) == 2
    assert "--data-dir" in assert_one_line_error(capsys.readouterr().err)
    assert run("--dataset", "imagewoof", "--data-dir", tmp_path / "none", *SMALL) == 2
    assert "imagewoof2-160" in assert_one_line_error(capsys.readouterr().err)


def test_help_documents_the_image_options() -> None:
    text = " ".join(train.build_parser().format_help().split())
    for flag in ("--image-size", "--image-release", "--crop-scale-min", "--workers", "--cache", "--strict"):
        assert flag in text
    assert "imagenette, imagewoof, imagefolder" in text and "0.08" in text and "{full,320,160}" in text


def test_bench_data_reports_each_stage(tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["data", "--data-dir", str(tree), "--image-size", "32", "--batch-size", "4", "--batches", "2"]
    assert bench.main([*args, "--steps", "1", "--workers", "2", "--model", "se_resnet20"]) == 0
    text = capsys.readouterr().out
    for what in ("in-process", "2 workers", "building the cache", "from the cache", "batches in memory", "fed by"):
        assert what in text
    assert "is the bottleneck" in text and "(20 training images), 32 px crops, batch 4, 2 workers" in text
