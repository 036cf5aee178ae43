"""Run the lessons: the Markdown files in ``lessons/`` whose fenced ``python`` blocks are the code.

    python -m minise.lessons list                     the table of contents (number, title, time, status)
    python -m minise.lessons run 09                   run lesson 09 (quick sizes), figures in ./figures/09_...
    python -m minise.lessons run 09 --full --figures out/
    python -m minise.lessons run --file my_lesson.md  run any Markdown file the same way
    python -m minise.lessons exercise 09              write lesson 09's exercise to ./exercises/ (never over yours)
    python -m minise.lessons check 09 [--train]       grade it (exit 0 only when right); see minise/exercises/

Each lesson's Markdown file is the single source of its prose, maths and code. Running a lesson means:
take its fenced ``python`` blocks in order and execute them in one namespace, as the cells of a
notebook, with two names predefined: ``FIGURES`` (a :class:`pathlib.Path`, the folder its figures go
to) and ``FAST`` (True unless ``--full``: smaller sizes so the lesson runs in seconds). Each block's
output is printed under a marker ``--- block 3 (line 57) ---`` naming the Markdown line of its first
line of code; a block whose last statement is an expression prints its value, as a notebook cell does.
Code is compiled under the Markdown file's own name and line numbers, so a traceback points at the
line of the lesson to read. A failing block stops the lesson with :class:`LessonError` (``run``
prints the traceback of the lesson code and one line naming lesson, block and line, and exits 1).

The lessons live in the repository, next to the package (``lessons/`` beside ``minise/``); an installed
copy of minise without the repository has none, and says so in one line.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import os
import re
import sys
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import minise
from minise import backend

LESSON_PATTERN = "[0-9][0-9]_*.md"
_FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`]*)$")
_TITLE = re.compile(r"^#\s+(?:Lesson\s+\d+\s*[:\-\u2014\u2013\u00b7.]\s*)?(?P<title>.+?)\s*#*\s*$")
_TIME = re.compile(r"\*\*Time:\*\*\s*(?P<time>[^(\n]+?)\s*(?:\(|$)", re.MULTILINE)
_ROW = re.compile(r"^\|\s*(?P<number>\d+)\s*\|(?P<cells>.*)\|\s*$")
_LINK = re.compile(r"\[(?P<text>[^\]]+)\]\([^)]*\)")


class LessonsNotFoundError(FileNotFoundError):
    """The lessons folder (or a lesson in it) is missing; the message says where it was looked for."""


class LessonError(RuntimeError):
    """A block of a lesson raised; ``lesson``, ``block`` (1-based), ``line`` (of the Markdown file) say where.

    ``lesson_traceback`` is the traceback of the lesson code only (the runner's own frames removed).
    """

    def __init__(self, lesson: Path, block: int, line: int, error: BaseException) -> None:
        self.lesson, self.block, self.line, self.error = lesson, block, line, error
        first = next((s.strip() for s in str(error).splitlines() if s.strip()), "")
        what = f"{type(error).__name__}: {first}" if first else type(error).__name__
        super().__init__(f"lesson {lesson.name}: block {block} (line {line}) failed - {what}")
        tb = _lesson_frames(error.__traceback__, lesson)
        self.lesson_traceback = "".join(traceback.format_exception(type(error), error, tb))


def _lesson_frames(tb: TracebackType | None, lesson: Path) -> TracebackType | None:
    """Skip the runner's frames: the traceback from the first frame that runs the lesson's own code."""
    start = tb
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == str(lesson):
            return tb
        tb = tb.tb_next
    return start


# --------------------------------------------------------------------------------------------------
# where the lessons are
# --------------------------------------------------------------------------------------------------
def lessons_dir() -> Path:
    """The ``lessons/`` folder of the repository: the parent of the ``minise`` package folder."""
    folder = Path(minise.__file__).resolve().parent.parent / "lessons"
    if not folder.is_dir():
        raise LessonsNotFoundError(
            f"minise.lessons: no lessons folder at {folder} - the lessons live in the minise repository "
            "(lessons/ beside minise/); clone it and install with `pip install -e .` from its root"
        )
    return folder


def lesson_files() -> list[Path]:
    """The lesson files ``lessons/NN_topic.md``, in order."""
    return sorted(lessons_dir().glob(LESSON_PATTERN))


def lesson_path(ref: str | int | Path) -> Path:
    """A lesson file from a number (9, "09"), a file stem ("09_the_excitation_gradient") or a path."""
    if isinstance(ref, Path) or (isinstance(ref, str) and (ref.endswith(".md") or "/" in ref)):
        path = Path(ref)
        if not path.is_file():
            raise LessonsNotFoundError(f"minise.lessons: no such lesson file: {path}")
        return path.resolve()
    text = str(ref).strip()
    files = lesson_files()
    if text.isdigit():
        found = [p for p in files if int(p.name[:2]) == int(text)]
    else:
        found = [p for p in files if p.stem == text]
    if not found:
        coming = [e for e in table_of_contents() if text.isdigit() and e.number == int(text)]
        hint = f" (lesson {coming[0].number} is coming: {coming[0].title})" if coming else ""
        available = ", ".join(p.name[:2] for p in files)
        raise LessonsNotFoundError(f"minise.lessons: no lesson {text!r}{hint} - available: {available}")
    return found[0]


# --------------------------------------------------------------------------------------------------
# reading Markdown
# --------------------------------------------------------------------------------------------------
def extract_blocks(markdown_text: str) -> list[tuple[int, str]]:
    """The fenced ``python`` blocks of a Markdown text, in order, as (line, code).

    ``line`` is the 1-based line number of the block's first line of code (the line after the opening
    fence). Fences are ``` or ~~~ (three or more, up to three spaces of indent) with info string
    ``python``; a block closes at a fence of the same character at least as long. Blocks in other
    languages (``text``, ``bash``) are shown, not run.
    """
    blocks: list[tuple[int, str]] = []
    lines = markdown_text.splitlines()
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if m is None:
            i += 1
            continue
        fence, indent = m["fence"], len(m["indent"])
        language = (m["info"].split() or [""])[0].strip("{}.").lower()
        body: list[str] = []
        j = i + 1
        while j < len(lines):
            close = lines[j].strip()
            if close.startswith(fence[0] * len(fence)) and set(close) == {fence[0]}:
                break
            line = lines[j]
            body.append(line[min(indent, len(line) - len(line.lstrip(" "))) :])
            j += 1
        if language == "python":
            blocks.append((i + 2, "\n".join(body) + "\n"))
        i = j + 1
    return blocks


def lesson_header(text: str) -> tuple[str, str]:
    """(title, time) of a lesson: its first ``# `` heading (without "Lesson N:") and its ``**Time:**`` line."""
    title = ""
    for line in text.splitlines():
        m = _TITLE.match(line)
        if m:
            title = m["title"]
            break
    t = _TIME.search(text)
    return title, (t["time"].strip().rstrip(".") if t else "")


@dataclass(frozen=True)
class Entry:
    """One line of the table of contents."""

    number: int
    title: str
    time: str
    prerequisites: str
    path: Path | None

    @property
    def status(self) -> str:
        return "ready" if self.path is not None else "coming"


def _readme_rows(folder: Path) -> dict[int, list[str]]:
    """number -> [title, prerequisites, time, status] from the table in lessons/README.md."""
    readme = folder / "README.md"
    rows: dict[int, list[str]] = {}
    if not readme.is_file():
        return rows
    for line in readme.read_text(encoding="utf-8").splitlines():
        m = _ROW.match(line.strip())
        if m:
            cells = [_LINK.sub(lambda k: k["text"], c).strip() for c in m["cells"].split("|")]
            rows[int(m["number"])] = (cells + ["", "", "", ""])[:4]
    return rows


def table_of_contents() -> list[Entry]:
    """Every lesson, ready (its file exists) or coming (listed in lessons/README.md only), in order.

    A ready lesson's title and time come from its own file; a coming one's from the README table.
    """
    folder = lessons_dir()
    rows = _readme_rows(folder)
    files = {int(p.name[:2]): p for p in lesson_files()}
    entries = []
    for number in sorted(set(rows) | set(files)):
        title, prerequisites, time_, _ = rows.get(number, ["", "", "", ""])
        path = files.get(number)
        if path is not None:
            title_f, time_f = lesson_header(path.read_text(encoding="utf-8"))
            title, time_ = title_f or title or path.stem, time_f or time_
        entries.append(Entry(number, title, time_, prerequisites, path))
    return entries


# --------------------------------------------------------------------------------------------------
# running
# --------------------------------------------------------------------------------------------------
def _compile_block(code: str, line: int, filename: str) -> tuple[Any, Any]:
    """(statements, last expression or None), compiled with the Markdown file's line numbers."""
    source = "\n" * (line - 1) + code  # so that tracebacks name the line of the Markdown file
    tree = ast.parse(source, filename=filename)
    last = None
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        expr = tree.body.pop()
        assert isinstance(expr, ast.Expr)
        last = compile(ast.Expression(expr.value), filename, "eval")
    return compile(tree, filename, "exec"), last


@contextlib.contextmanager
def _backend(name: str) -> Iterator[None]:
    """Like ``minise.use_backend``, but a previous backend that cannot run here is not restored.

    (``MINISE_BACKEND=cupy`` on a machine without CuPy is only noticed when CuPy is first used;
    restoring it would raise after the lesson has run.)
    """
    previous = backend.get_backend()
    backend.set_backend(name)
    try:
        yield
    finally:
        try:
            backend.set_backend(previous)
        except minise.BackendUnavailableError:
            pass


def run_lesson(
    path_or_number: str | int | Path,
    fast: bool = True,
    figures: str | Path | None = None,
    echo: bool = True,
    backend_name: str = "numpy",
) -> dict[str, Any]:
    """Run a lesson's ``python`` blocks in order in one namespace and return that namespace.

    ``FAST`` and ``FIGURES`` are predefined in it; ``figures`` defaults to ``./figures/<lesson stem>``.
    With ``echo`` each block is announced by a marker line and its output printed (it goes to stdout
    in any case). The lesson runs on backend ``backend_name`` (NumPy by default, whatever
    ``MINISE_BACKEND`` says: the lessons compare minise with NumPy arrays; lesson 1 uses CuPy itself
    where it is available), which is restored afterwards. Raises :class:`LessonError` naming the block
    and the Markdown line if a block fails.
    """
    path = lesson_path(path_or_number)
    text = path.read_text(encoding="utf-8")
    folder = Path(figures) if figures is not None else Path("figures") / path.stem
    folder.mkdir(parents=True, exist_ok=True)
    namespace: dict[str, Any] = {"__name__": "__lesson__", "FIGURES": folder, "FAST": fast}
    with _backend(backend_name):
        for k, (line, code) in enumerate(extract_blocks(text), start=1):
            if echo:
                print(f"--- block {k} (line {line}) ---", flush=True)
            try:
                statements, last = _compile_block(code, line, str(path))
                exec(statements, namespace)
                if last is not None:
                    value = eval(last, namespace)
                    if value is not None and echo:
                        print(repr(value))
            except KeyboardInterrupt:
                raise
            except BaseException as e:  # noqa: BLE001  (the learner's code may raise anything, SystemExit too)
                raise LessonError(path, k, line, e) from e
            finally:
                sys.stdout.flush()
    return namespace


def _file_stamps(folder: Path) -> dict[Path, tuple[int, int]]:
    """Every file under ``folder`` with its (modification time in ns, size): what a run may change."""
    if not folder.is_dir():
        return {}
    return {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in folder.rglob("*") if p.is_file()}


def _figures_written(folder: Path, before: dict[Path, tuple[int, int]]) -> list[Path]:
    """The files under ``folder`` that are new, or changed, since the snapshot ``before``
    (:func:`_file_stamps` taken just before the run): only what this run wrote, however soon
    another run wrote into the same folder before it."""
    return sorted(p for p, stamp in _file_stamps(folder).items() if before.get(p) != stamp)


# --------------------------------------------------------------------------------------------------
# the command line
# --------------------------------------------------------------------------------------------------
def _print_table() -> None:
    entries = table_of_contents()
    width = max([len(e.title) for e in entries] + [5])
    twidth = max([len(e.time) for e in entries] + [4])
    print(f"{'#':>2}  {'title':<{width}}  {'time':<{twidth}}  status")
    for e in entries:
        print(f"{e.number:02d}  {e.title:<{width}}  {e.time:<{twidth}}  {e.status}")
    print(f"\nrun one with: python -m minise.lessons run NN   (lessons folder: {lessons_dir()})")


def _run(refs: list[str], full: bool, figures: str | None) -> int:
    if refs == ["all"]:
        paths = lesson_files()
    else:
        paths = [lesson_path(r) for r in refs]
    for path in paths:
        folder = Path(figures) if figures is not None else Path("figures") / path.stem
        if figures is not None and len(paths) > 1:
            folder = folder / path.stem
        mode = "full" if full else "fast"
        print(f"=== {path.name} ({mode} mode) ===", flush=True)
        before = _file_stamps(folder)
        start = time.time()
        try:
            run_lesson(path, fast=not full, figures=folder)
        except LessonError as e:
            sys.stdout.flush()
            print(e.lesson_traceback, file=sys.stderr, end="")
            print(str(e), file=sys.stderr)
            return 1
        elapsed = time.time() - start
        written = _figures_written(folder, before)
        where = f"{len(written)} figure(s) written to {folder}/: " + ", ".join(p.name for p in written)
        print(f"=== {path.name} passed in {elapsed:.1f} s; {where if written else 'no figures written'} ===")
    return 0


def _exercise_command(args: argparse.Namespace) -> int:
    """``exercise NN`` and ``check NN``: see :mod:`minise.exercises`."""
    from minise import exercises  # noqa: PLC0415  (only these two commands need the checkers)

    try:
        if args.command == "check":
            if args.steps < 1:
                raise exercises.ExerciseUsageError(f"check: --steps must be at least 1, got {args.steps}")
            return exercises.check_exercise(args.lesson, args.file, args.train, args.steps)
        path = exercises.write_exercise(args.lesson, args.to, args.force, args.solution)
    except exercises.ExerciseUsageError as e:
        print(str(e), file=sys.stderr)
        return 2
    number = int(args.lesson)
    if args.solution:
        print(
            f"wrote the reference solution to {path} - honest use: try first, check your own file, and read this "
            "only when stuck or after your check passes"
        )
    else:
        default = Path(args.to) == Path("exercises")
        where = "" if default else f" --file {path}"
        print(
            f"wrote {path}: write the parts marked YOUR CODE HERE, then run "
            f"`python -m minise.lessons check {number:02d}{where}`"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m minise.lessons", description="List and run the minise lessons (lessons/NN_topic.md)."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="print the table of contents")
    run = sub.add_parser("run", help="run lessons' python blocks in order, checking every assert")
    run.add_argument("lessons", nargs="*", help="lesson numbers (01, 9), file stems, Markdown paths, or 'all'")
    run.add_argument(
        "--file", action="append", default=[], help="a Markdown file to run as a lesson; repeatable (default: none)"
    )
    run.add_argument("--full", action="store_true", help="full sizes (FAST = False); slower")
    run.add_argument("--figures", default=None, help="folder for figures (default ./figures/<lesson>)")
    exercise = sub.add_parser("exercise", help="write a lesson's exercise file for you to fill in")
    exercise.add_argument("lesson", help="lesson number, e.g. 09")
    exercise.add_argument("--to", default="exercises", help="folder to write it into (default ./exercises/)")
    exercise.add_argument("--force", action="store_true", help="replace an existing file (the old one is kept as .bak)")
    exercise.add_argument("--solution", action="store_true", help="write the reference solution to DIR/solutions/")
    check = sub.add_parser("check", help="grade your exercise file: exit 0 when right, 1 when wrong")
    check.add_argument("lesson", help="lesson number, e.g. 09")
    check.add_argument("--file", default=None, help="your file (default ./exercises/exNN_*.py)")
    check.add_argument("--train", action="store_true", help="05, 07, 08, 09: train an SE-ResNet-20 with your code")
    check.add_argument("--steps", type=int, default=200, help="training steps for --train (default 200)")

    args = parser.parse_args(argv)
    os.environ.setdefault("MPLBACKEND", "Agg")  # figures go to files: no screen needed
    try:
        if args.command == "list":
            _print_table()
            return 0
        if args.command in ("exercise", "check"):
            return _exercise_command(args)
        refs = list(args.lessons) + list(args.file)
        if not refs:
            parser.error("run: name a lesson (e.g. `run 01`), 'all', or --file PATH")
        return _run(refs, args.full, args.figures)
    except LessonsNotFoundError as e:
        print(str(e), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
