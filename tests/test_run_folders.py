"""Run folders: a run never writes into a folder holding another run's files.

The convention is timm's: without --out every run gets a fresh folder (runs/<dataset>-<model>-s<seed>,
then -2, -3, ...); an --out that holds a run is refused in one line naming --resume and --overwrite;
--overwrite deliberately replaces it (the old run's files are removed before the new run writes, so an
interrupted run never leaves a folder mixing two runs). An --out that is a file, lies under a file, or
cannot be written gets one line with the fix, never a bare errno.
"""

from __future__ import annotations

import errno
import json
from pathlib import Path
from typing import Any

import pytest
from test_train_cli import BASE, assert_one_line_error, read_metrics

from minise import run_folder, train
from minise.checkpoint import load_checkpoint

QUICK = [*BASE, "--epochs", "1", "--stop-after-steps", "1"]  # one step, then "Ctrl-C": config, metrics, last.npz


def main(*args: Any) -> int:
    return train.main([str(a) for a in args])


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file of a folder, by name, with its bytes."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished one-epoch run: config.json, metrics.jsonl, last.npz, best.npz, curves.png."""
    out = tmp_path_factory.mktemp("finished") / "run"
    assert main(*BASE, "--epochs", 1, "--out", out) == 0
    assert {"config.json", "metrics.jsonl", "last.npz", "best.npz", "curves.png"} <= set(snapshot(out))
    return out


def copy_of(run: Path, target: Path) -> Path:
    target.mkdir(parents=True)
    for name, content in snapshot(run).items():
        (target / name).write_bytes(content)
    return target


# ------------------------------------------------------------------------------------- --out holding a run
@pytest.mark.parametrize("lr", ["0.1", "0.05"], ids=["same arguments", "another --lr"])
def test_a_second_run_into_the_same_out_is_refused_and_the_old_run_is_untouched(
    lr: str, finished: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = copy_of(finished, tmp_path / "run")
    before = snapshot(out)
    assert main(*BASE, "--epochs", 1, "--lr", lr, "--out", out) == train.EXIT_BAD_INPUT
    line = assert_one_line_error(capsys.readouterr().err)
    assert str(out) in line and "--resume" in line and "--overwrite" in line, line
    assert snapshot(out) == before, "the old run's files must be byte-identical"


def test_an_interrupted_second_run_never_mixes_two_runs(
    finished: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The second run is 'interrupted' after one step: it must not have written anything into the folder."""
    out = copy_of(finished, tmp_path / "run")
    before = snapshot(out)
    assert main(*QUICK, "--out", out) == train.EXIT_BAD_INPUT
    assert snapshot(out) == before


@pytest.mark.parametrize("name", run_folder.RUN_FILES)
def test_any_one_run_file_makes_a_folder_a_run(name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / name).write_bytes(b"mine")
    assert main(*QUICK, "--out", out) == train.EXIT_BAD_INPUT
    assert name in assert_one_line_error(capsys.readouterr().err)
    assert snapshot(out) == {name: b"mine"}


def test_a_run_that_saved_no_checkpoint_is_refused_naming_overwrite_not_resume(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """What a run that diverged before its first checkpoint leaves: --resume could not continue it."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text("{}")
    (out / "metrics.jsonl").write_text("")
    before = snapshot(out)
    assert main(*QUICK, "--out", out) == train.EXIT_BAD_INPUT
    line = assert_one_line_error(capsys.readouterr().err)
    assert "--overwrite" in line and "--resume" not in line and "no checkpoint" in line
    assert snapshot(out) == before


def test_an_existing_folder_without_a_run_is_used(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    assert main(*QUICK, "--out", out) == train.EXIT_INTERRUPTED
    assert (out / "notes.txt").read_text() == "my notes" and (out / "last.npz").exists()


def test_overwrite_replaces_the_run_and_an_interrupted_replacement_holds_only_the_new_run(
    finished: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = copy_of(finished, tmp_path / "run")
    (out / "notes.txt").write_text("not a run file")
    assert main(*QUICK, "--lr", "0.05", "--out", out, "--overwrite") == train.EXIT_INTERRUPTED
    names = set(snapshot(out))
    assert "best.npz" not in names and "curves.png" not in names, "files of the old run were left behind"
    assert read_metrics(out) == []  # the old run's epoch is gone
    assert json.loads((out / "config.json").read_text())["lr"] == 0.05
    meta, _ = load_checkpoint(out / "last.npz")
    assert (meta["epoch"], meta["step_in_epoch"]) == (0, 1)
    assert (out / "notes.txt").read_text() == "not a run file"  # only the run's own files are replaced


def test_overwrite_without_out_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(*QUICK, "--overwrite") == train.EXIT_BAD_INPUT
    assert "give --out" in assert_one_line_error(capsys.readouterr().err)
    assert not (tmp_path / "runs").exists()


def test_resume_and_overwrite_together_are_refused(
    finished: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = copy_of(finished, tmp_path / "run")
    before = snapshot(out)
    assert main(*BASE, "--epochs", 1, "--out", out, "--resume", "--overwrite") == train.EXIT_BAD_INPUT
    line = assert_one_line_error(capsys.readouterr().err)
    assert "--resume" in line and "--overwrite" in line
    assert snapshot(out) == before


def test_resume_checkpoint_continues_in_its_own_folder_never_in_another_run(
    finished: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    run = copy_of(finished, tmp_path / "run")
    other = copy_of(finished, tmp_path / "other")
    (other / "metrics.jsonl").write_text("")  # another run's files
    before = snapshot(other)
    assert main(*BASE, "--epochs", 1, "--resume", run / "last.npz", "--out", other) == train.EXIT_BAD_INPUT
    line = assert_one_line_error(capsys.readouterr().err)
    assert "would mix two runs" in line and str(run) in line, line
    assert snapshot(other) == before

    # without --out: the checkpoint's own folder (extended to 2 epochs), not runs/<dataset>-<model>-s<seed>
    assert main(*BASE, "--epochs", 2, "--resume", run / "last.npz") == 0
    assert [m["epoch"] for m in read_metrics(run)] == [1, 2] and not (tmp_path / "runs").exists()
    # into a new folder: a branch of the run, the original untouched
    before = snapshot(run)
    assert main(*BASE, "--epochs", 3, "--resume", run / "last.npz", "--out", tmp_path / "branch") == 0
    assert snapshot(run) == before and (tmp_path / "branch" / "last.npz").exists()
    assert [m["epoch"] for m in read_metrics(tmp_path / "branch")] == [1, 2, 3]  # the history it continues


# ------------------------------------------------------------------------------------- default folders
def test_default_folders_are_numbered_and_resume_takes_the_newest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    first, second = Path("runs/shapes-se_resnet20-s0"), Path("runs/shapes-se_resnet20-s0-2")
    assert main(*QUICK) == train.EXIT_INTERRUPTED
    before = snapshot(first)
    assert main(*QUICK, "--lr", "0.05") == train.EXIT_INTERRUPTED
    assert snapshot(first) == before, "the second run wrote into the first run's folder"
    assert json.loads((second / "config.json").read_text())["lr"] == 0.05
    assert str(second) in capsys.readouterr().err  # the run says where it writes

    assert main(*BASE, "--epochs", 1, "--lr", "0.05", "--resume") == 0  # the newest: -2
    assert len(read_metrics(second)) == 1 and read_metrics(first) == []
    assert snapshot(first) == before
    assert main(*QUICK) == train.EXIT_INTERRUPTED
    assert Path("runs/shapes-se_resnet20-s0-3/last.npz").exists()


def test_claiming_a_default_folder_taken_meanwhile_moves_on(tmp_path: Path) -> None:
    """Two runs started at once: the one whose config.json is second takes the next number."""
    base = tmp_path / "runs" / "shapes-m-s0"
    chosen = run_folder.next_free(base)
    assert chosen == base
    base.mkdir(parents=True)
    (base / "config.json").write_text("{}")  # another run claimed it between choosing and writing
    claimed = run_folder.claim(chosen, "{}", default_base=base)
    assert claimed == tmp_path / "runs" / "shapes-m-s0-2" and (claimed / "config.json").read_text() == "{}"
    assert (base / "config.json").read_text() == "{}"


# ------------------------------------------------------------------------------------- unusable --out
def test_out_naming_a_file_is_refused_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "results.txt"
    out.write_text("keep me")
    assert main(*QUICK, "--out", out) == train.EXIT_BAD_INPUT
    line = assert_one_line_error(capsys.readouterr().err)
    assert "is a file" in line and "[Errno" not in line, line
    assert out.read_text() == "keep me"


def test_out_under_a_file_is_refused_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parent = tmp_path / "results.txt"
    parent.write_text("keep me")
    assert main(*QUICK, "--out", parent / "run") == train.EXIT_BAD_INPUT
    line = assert_one_line_error(capsys.readouterr().err)
    assert str(parent) in line and "is a file" in line and "[Errno" not in line, line
    assert parent.read_text() == "keep me"


def test_out_on_a_read_only_file_system_is_one_line_with_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A read-only mount cannot be made in a test (and chmod does not stop root): os.access answers as it
    does for a read-only file system."""
    real_access = run_folder.os.access
    monkeypatch.setattr(
        run_folder.os, "access", lambda p, mode: False if mode == run_folder.os.W_OK else real_access(p, mode)
    )
    assert main(*QUICK, "--out", tmp_path / "run") == train.EXIT_BAD_INPUT
    line = assert_one_line_error(capsys.readouterr().err)
    assert "not writable" in line and "--out" in line and "[Errno" not in line, line
    assert not (tmp_path / "run").exists()


def test_a_write_that_fails_later_is_one_line_with_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The folder was writable when checked, and the first write fails (EROFS from the file system)."""

    def read_only(self: Path, *args: Any, **kwargs: Any) -> None:
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    monkeypatch.setattr(run_folder.Path, "mkdir", read_only)
    assert main(*QUICK, "--out", tmp_path / "run") == train.EXIT_BAD_INPUT
    line = assert_one_line_error(capsys.readouterr().err)
    assert "read-only file system" in line.lower() and "--out" in line and "[Errno" not in line, line
