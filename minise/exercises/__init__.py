"""Exercises the learner writes and a checker grades (``python -m minise.lessons exercise|check NN``).

One module per lesson, ``exNN_topic.py``, holds the exercise as one :class:`~minise.exercises.core.Exercise`:
the reference solution (the stub is made from it: see ``core.make_stub``), the classic mistakes (the
solution with a line or a few changed; the tests prove each earns its hint), the checker, and for the
conv, batch-norm and SE exercises a ``--train`` run (``training.py``). The stub text lives in the
modules, so it ships with any install of minise. Lessons 02 to 13 and 15 have one; lesson 14 (the GPU)
has none, since its code could only be checked where a GPU is.

    python -m minise.lessons exercise 09            write ./exercises/ex09_se_backward.py (never over yours)
    python -m minise.lessons check 09               grade it: exit 0 when right, 1 when wrong
    python -m minise.lessons check 09 --train       ... and train an SE-ResNet-20 with it
    python -m minise.lessons exercise 09 --solution write the reference to ./exercises/solutions/
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from minise.exercises import (
    ex02_autograd,
    ex03_gradcheck,
    ex04_softmax_ce,
    ex05_conv,
    ex06_max_pool,
    ex07_batch_norm,
    ex08_se_forward,
    ex09_se_backward,
    ex10_se_block,
    ex11_sgd,
    ex12_lr_schedule,
    ex13_class_gates,
    ex15_ring_allreduce,
)
from minise.exercises.core import Exercise, LearnerFileError, Report, load_learner_module

EXERCISES: dict[int, Exercise] = {
    e.number: e
    for e in (
        ex02_autograd.EXERCISE,
        ex03_gradcheck.EXERCISE,
        ex04_softmax_ce.EXERCISE,
        ex05_conv.EXERCISE,
        ex06_max_pool.EXERCISE,
        ex07_batch_norm.EXERCISE,
        ex08_se_forward.EXERCISE,
        ex09_se_backward.EXERCISE,
        ex10_se_block.EXERCISE,
        ex11_sgd.EXERCISE,
        ex12_lr_schedule.EXERCISE,
        ex13_class_gates.EXERCISE,
        ex15_ring_allreduce.EXERCISE,
    )
}
DEFAULT_FOLDER = Path("exercises")
TRAIN_STEPS = 200


class ExerciseUsageError(ValueError):
    """A wrong number, an existing file without --force...: one line for the command line (exit 2)."""


def get_exercise(ref: str | int) -> Exercise:
    """The exercise of lesson ``ref`` (9 or "09")."""
    text = str(ref).strip()
    if not text.isdigit() or int(text) not in EXERCISES:
        have = ", ".join(f"{n:02d}" for n in sorted(EXERCISES))
        raise ExerciseUsageError(f"exercise: no exercise for lesson {text!r} - lessons with one: {have}")
    return EXERCISES[int(text)]


def write_exercise(
    ref: str | int, folder: str | Path = DEFAULT_FOLDER, force: bool = False, solution: bool = False
) -> Path:
    """Write the stub (or, with ``solution``, the reference into ``folder/solutions/``); return its path.

    Refuses to overwrite an existing file unless ``force``, and even then keeps the old one as
    ``<name>.bak`` (``.bak2``, ``.bak3``... if that exists): a learner's work is never lost.
    """
    ex = get_exercise(ref)
    target = Path(folder) / ("solutions" if solution else "") / ex.filename
    if target.exists() and not force:
        raise ExerciseUsageError(
            f"exercise: {target} exists and may hold your work - not overwritten; pass --force to replace it "
            "(the old file is then kept as .bak)"
        )
    if target.exists():
        backup, k = target.with_name(target.name + ".bak"), 1
        while backup.exists():
            k += 1
            backup = target.with_name(f"{target.name}.bak{k}")
        target.rename(backup)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(ex.clean_solution if solution else ex.stub, encoding="utf-8")
    return target


def check_exercise(
    ref: str | int, file: str | Path | None = None, train: bool = False, steps: int = TRAIN_STEPS
) -> int:
    """Grade the learner's file and print the report; 0 when right, 1 when wrong, 2 on usage errors.

    A reader who stops reading early (``check 09 | head -1``) closes the pipe: the rest of the report is
    dropped without a traceback, as Python's documentation advises (signal module, "Note on SIGPIPE").
    """
    try:
        return _check_exercise(ref, file, train, steps)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes at exit
        return 1


def _check_exercise(ref: str | int, file: str | Path | None, train: bool, steps: int) -> int:
    ex = get_exercise(ref)
    path = Path(file) if file is not None else DEFAULT_FOLDER / ex.filename
    title = f"exercise {ex.number:02d} ({ex.title}), {path}"
    if not path.is_file():
        print(
            f"check: no file {path} - get the exercise with `python -m minise.lessons exercise {ex.number:02d}` "
            "(or name yours with --file)",
            file=sys.stderr,
        )
        return 2
    try:
        module = load_learner_module(path)
        report = Report(path)
        ex.check(module, report)
    except LearnerFileError as e:
        sys.stdout.flush()
        if e.learner_traceback:
            print(e.learner_traceback, file=sys.stderr, end="")
        print(f"{title}: {e}", file=sys.stderr)
        return 1
    print(report.render(title), flush=True)
    ok = report.passed
    if train:
        if ex.train is None:
            print(f"--train: exercise {ex.number:02d} has no training run (05, 07, 08 and 09 have one)")
            return 0 if ok else 1
        if not ok:
            print("--train: training anyway, with your code as it is (the check above failed)")
        try:
            trained = ex.train(module, steps, True)
        except Exception as e:  # noqa: BLE001  (the learner's code may raise anything)
            report = Report(path)
            with report.part("training"):
                raise e
            print(report.render(f"--train with {path}"))
            return 1
        ok = ok and trained
    return 0 if ok else 1


__all__ = ["EXERCISES", "ExerciseUsageError", "check_exercise", "get_exercise", "write_exercise"]
