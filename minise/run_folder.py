"""Run folders: every run gets its own, and no run ever writes into another run's folder.

A folder *holds a run* when it has any of ``config.json``, ``metrics.jsonl``, ``last.npz``, ``best.npz``.
The convention is timm's:

* without ``--out``, a fresh folder per run: ``runs/<dataset>-<model>-s<seed>``, and when that holds a
  run, the next of ``...-2``, ``...-3``, ... (one past the highest number in use, so numbers only grow);
* ``--out X`` where X holds a run is refused in one line naming ``--resume`` (continue it) and
  ``--overwrite`` (replace it); ``--overwrite`` removes the old run's files (those above and
  ``curves.png``, nothing else) before the new run writes anything, so an interrupted replacement never
  leaves a folder mixing two runs;
* ``--resume`` continues the run in ``--out``, or without ``--out`` the newest default folder;
  ``--resume CHECKPOINT`` continues in the checkpoint's folder, or in an ``--out`` holding no other run
  (a branch, which starts with a copy of the run's ``best.npz``: see ``minise.train.Run.carry_best``).

A run claims its folder by creating ``config.json`` exclusively (``O_EXCL``): of two runs started at once
with the default folder, the second moves on to the next number. An ``--out`` that is a file, lies under
a file, or cannot be written is refused in one line with the fix, never a bare errno.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from minise.train_options import TrainError

RUN_FILES = ("config.json", "metrics.jsonl", "last.npz", "best.npz")
REPLACED_BY_OVERWRITE = RUN_FILES + ("curves.png",)  # exactly the files minise.train writes


def run_files(folder: Path) -> list[str]:
    """The run files present in ``folder`` (empty if it holds no run or does not exist)."""
    return [name for name in RUN_FILES if (folder / name).exists()] if folder.is_dir() else []


def numbered(base: Path, k: int) -> Path:
    """``base`` for k = 1, else ``base-k``."""
    return base if k == 1 else base.with_name(f"{base.name}-{k}")


def taken_numbers(base: Path) -> list[int]:
    """The numbers k whose folder ``numbered(base, k)`` holds a run, ascending."""
    numbers = [1] if run_files(base) else []
    pattern = re.compile(re.escape(base.name) + r"-(\d+)")
    if base.parent.is_dir():
        for p in base.parent.iterdir():
            m = pattern.fullmatch(p.name)
            if m and int(m.group(1)) >= 2 and run_files(p):
                numbers.append(int(m.group(1)))
    return sorted(numbers)


def next_free(base: Path) -> Path:
    """The folder a new run with default folder ``base`` takes: one past the highest number in use."""
    taken = taken_numbers(base)
    return numbered(base, taken[-1] + 1 if taken else 1)


def newest(base: Path) -> Path:
    """The default folder ``--resume`` continues: the highest-numbered one holding a run (``base`` if none)."""
    taken = taken_numbers(base)
    return numbered(base, taken[-1]) if taken else base


def check_writable(out: Path) -> None:
    """TrainError unless a run folder can be created (or written) at ``out``: checked before any work."""
    if out.exists() and not out.is_dir():
        raise TrainError(f"--out {out} is a file, not a folder - give the path of a folder for the run")
    existing = out
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing != out and not existing.is_dir():
        raise TrainError(f"--out {out}: {existing} is a file, so no folder can be made under it - give another --out")
    if not os.access(existing, os.W_OK):
        raise TrainError(
            f"--out {out}: {existing} is not writable (a read-only file system or no permission) - "
            "give --out a folder you can write to"
        )


def choose(out: str | None, default_base: Path, resume: str | None, overwrite: bool) -> Path:
    """The run folder for these arguments, or TrainError (one line) if the run would touch another run.

    ``resume`` is None, ``"auto"`` (``--resume`` alone: ``<folder>/last.npz``) or a checkpoint's path; a
    checkpoint given by path continues in its own folder unless ``--out`` names a new one."""
    if resume and overwrite:
        raise TrainError(
            "--resume and --overwrite contradict each other - --resume continues the run in --out, "
            "--overwrite replaces it; give one of them"
        )
    if overwrite and out is None:
        raise TrainError(
            "--overwrite replaces the run in --out, and without --out every run gets a new folder - give --out"
        )
    own = Path(resume).parent if resume not in (None, "auto") else None  # the folder of --resume CHECKPOINT
    if out is None:
        folder = own if own is not None else newest(default_base) if resume else next_free(default_base)
    else:
        folder = Path(out)
        present = run_files(folder)
        if present and not (resume or overwrite):
            if not any(name.endswith(".npz") for name in present):  # e.g. a run that diverged before saving
                raise TrainError(
                    f"--out {folder} holds a run that saved no checkpoint ({', '.join(present)}) - replace it "
                    "with --overwrite, or give another --out"
                )
            raise TrainError(
                f"--out {folder} already holds a run ({', '.join(present)}) - continue it with --resume, "
                "replace it with --overwrite, or give another --out"
            )
        if present and own is not None and folder.resolve() != own.resolve():
            raise TrainError(
                f"--out {folder} holds another run ({', '.join(present)}) than {resume} - continuing one in the "
                "other's folder would mix two runs; give a new --out, or --out " + str(own)
            )
    check_writable(folder)
    return folder


def claim(folder: Path, config: str, default_base: Path | None = None, replace: bool = False) -> Path:
    """Create ``folder`` and write ``config`` as its ``config.json``, exclusively: the run's claim on it.

    ``replace`` (--resume): the folder holds this same run, and its config.json is rewritten. (--overwrite
    removes the old run's files first, :func:`remove_run_files`, then claims the folder as a new run.)
    With ``default_base`` (no --out), a folder claimed by another run meanwhile makes this run move on to
    the next number. Returns the folder."""
    while True:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with open(folder / "config.json", "w" if replace else "x") as f:
                f.write(config)
            return folder
        except FileExistsError:
            if default_base is None:
                raise TrainError(
                    f"--out {folder}: another run started writing there meanwhile - give another --out"
                ) from None
            folder = next_free(default_base)
        except OSError as e:
            raise TrainError(
                f"cannot write the run folder {folder} ({e.strerror or e}) - give --out a folder you can write to"
            ) from None


def remove_run_files(folder: Path) -> None:
    """--overwrite: delete the files a previous run wrote into ``folder`` (and nothing else)."""
    for name in REPLACED_BY_OVERWRITE:
        (folder / name).unlink(missing_ok=True)
