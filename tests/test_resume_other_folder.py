"""``--resume CHECKPOINT --out NEW``: a branch of a run in a new folder is complete on its own.

The new folder starts with a copy of the run's best.npz (written atomically, as every checkpoint), so
it holds its best checkpoint even when no epoch of the branch beats the carried-over best accuracy. The
copy is made only when it is that best (same model and data, the carried-over accuracy, not from a later
epoch than the checkpoint resumed); otherwise one line says so and the branch writes best.npz itself.

Also: the error for a checkpoint of another model or SE options names both as the flags that give them
(``se_resnet20, not se_resnet20 --reduction 4``), never a Python dict such as ``{}``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_run_folders import copy_of, main, snapshot
from test_train_cli import BASE, assert_one_line_error

from minise import train
from minise.checkpoint import load_checkpoint, save_checkpoint


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished one-epoch run whose checkpoints say its best top-1 is 100%, so no epoch can beat it."""
    out = tmp_path_factory.mktemp("finished") / "run"
    assert main(*BASE, "--epochs", 1, "--out", out) == 0
    for name in ("last.npz", "best.npz"):
        meta, arrays = load_checkpoint(out / name)
        save_checkpoint(out / name, {**meta, "best_acc": 1.0}, arrays)
    return out


def assert_same_arrays(a: Path, b: Path) -> None:
    meta_a, arrays_a = load_checkpoint(a)
    meta_b, arrays_b = load_checkpoint(b)
    assert meta_a == meta_b and sorted(arrays_a) == sorted(arrays_b)
    for name in arrays_a:
        assert np.array_equal(arrays_a[name], arrays_b[name]), name


def test_a_branch_that_never_beats_the_best_still_holds_best_npz(
    finished: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = copy_of(finished, tmp_path / "run")
    before = snapshot(run)
    branch = tmp_path / "branch"
    assert main(*BASE, "--epochs", 2, "--resume", run / "last.npz", "--out", branch) == 0
    err = capsys.readouterr().err
    assert f"copied {run / 'best.npz'} (best top-1 100.00%, epoch 1) into {branch}" in err, err
    assert_same_arrays(branch / "best.npz", run / "best.npz")  # the run's best, not an epoch of the branch
    assert load_checkpoint(branch / "last.npz")[0]["epoch"] == 2
    assert not [p.name for p in branch.iterdir() if p.name.endswith(".tmp")]  # the atomic write left no temp file
    assert snapshot(run) == before  # the original run is untouched


def test_resuming_from_best_npz_itself_copies_it(
    finished: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = copy_of(finished, tmp_path / "run")
    assert main(*BASE, "--epochs", 2, "--resume", run / "best.npz", "--out", tmp_path / "branch") == 0
    assert "copied" in capsys.readouterr().err
    assert_same_arrays(tmp_path / "branch" / "best.npz", run / "best.npz")


@pytest.mark.parametrize("damage", ["missing", "another accuracy", "a later epoch"])
def test_a_best_npz_that_is_not_the_carried_over_best_is_not_copied(
    damage: str, finished: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = copy_of(finished, tmp_path / "run")
    meta, arrays = load_checkpoint(run / "best.npz")
    if damage == "missing":
        (run / "best.npz").unlink()
    elif damage == "another accuracy":
        save_checkpoint(run / "best.npz", {**meta, "best_acc": 0.5}, arrays)
    else:  # a copy of last.npz resumed beside the best.npz of a longer run
        save_checkpoint(run / "best.npz", {**meta, "epoch": 5}, arrays)
    branch = tmp_path / "branch"
    assert main(*BASE, "--epochs", 2, "--resume", run / "last.npz", "--out", branch) == 0
    err = capsys.readouterr().err
    note = [line for line in err.splitlines() if line.startswith("note: ")]
    assert len(note) == 1 and str(run / "best.npz") in note[0] and "100.00%" in note[0], err
    assert str(branch / "best.npz") in note[0] and "copied" not in err
    assert not (branch / "best.npz").exists()  # no epoch beat 100%: nothing pretends to be the best


def test_resuming_in_the_same_folder_copies_nothing(
    finished: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = copy_of(finished, tmp_path / "run")
    best = (run / "best.npz").read_bytes()
    assert main(*BASE, "--epochs", 2, "--resume", run / "last.npz") == 0
    err = capsys.readouterr().err
    assert "copied" not in err and "note:" not in err
    assert (run / "best.npz").read_bytes() == best


def test_a_branch_from_before_the_first_epoch_writes_its_own_best(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Stopped after one step, the run has no best yet: the branch's first epoch writes best.npz."""
    run = tmp_path / "run"
    assert main(*BASE, "--epochs", 1, "--stop-after-steps", 1, "--out", run) != 0
    assert not (run / "best.npz").exists()
    branch = tmp_path / "branch"
    assert main(*BASE, "--epochs", 1, "--resume", run / "last.npz", "--out", branch) == 0
    err = capsys.readouterr().err
    assert "copied" not in err and "note:" not in err
    assert load_checkpoint(branch / "best.npz")[0]["epoch"] == 1


# ------------------------------------------------------------------------------------- the model in the error
@pytest.mark.parametrize(
    ("extra", "named"),
    [
        (["--model", "resnet20"], "is of se_resnet20, not resnet20 - "),
        (["--reduction", "4"], "is of se_resnet20, not se_resnet20 --reduction 4 - "),
        (["--no-se-bias", "--se-stages", "2,3"], "is of se_resnet20, not se_resnet20 --no-se-bias --se-stages 2,3 - "),
    ],
)
def test_resuming_another_model_names_its_options_as_flags(
    extra: list[str], named: str, finished: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [*BASE, *extra] if extra[0] != "--model" else [a if a != "se_resnet20" else "resnet20" for a in BASE]
    assert main(*args, "--epochs", 2, "--resume", finished / "last.npz", "--out", tmp_path / "b") == 2
    line = assert_one_line_error(capsys.readouterr().err)
    assert named in line and "{" not in line and "--model and SE options" in line, line


def test_model_flags_reads_as_a_command_line() -> None:
    assert train.model_flags("se_resnet20", {}) == "se_resnet20"
    assert train.model_flags("se_resnet20", None) == "se_resnet20"
    options = {"reduction": 8, "bias": True, "gate": "tanh", "se_stages": [3]}
    assert train.model_flags("se_resnet56", options) == "se_resnet56 --reduction 8 --se-bias --gate tanh --se-stages 3"
    assert train.model_flags("m", "odd") == "m (SE options 'odd')"  # a damaged checkpoint's value, shown as it is
