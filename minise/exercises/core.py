"""What every exercise shares: the exercise record, stub text from the solution, loading the learner's
file, drawing test cases, and a report that grades like a patient teacher.

An exercise's reference solution is written once, with each part the learner writes between two
marker lines::

    # >>> your code
    dx = ...
    # <<<

The stub is the same text with each marked region replaced by ``raise NotImplementedError``, so stub
and solution can never drift apart. A *classic mistake* is the solution with one line changed
(``Mistake.old`` -> ``Mistake.new``); the tests write it to a file, grade it, and demand the hint.

Every function graded by :func:`grade_function` must also leave the arrays it is given as they came:
the engine hands one gy to both inputs of an addition and keeps inputs for the backward pass, so a
change in place is reported first, in one line naming the function, the argument and the rule.
"""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import random
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

BEGIN, END = "# >>> your code", "# <<<"


# --------------------------------------------------------------------------------------------------
# the exercise record
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Mistake:
    """A classic wrong solution: the reference with ``old`` replaced by ``new``; ``expect`` is a phrase
    the checker's report must contain for it (its hint)."""

    name: str
    old: str
    new: str
    expect: str


@dataclass(frozen=True)
class Exercise:
    """One lesson's exercise: the file the learner gets, its reference solution, its checker."""

    number: int
    title: str
    filename: str
    solution: str
    check: Callable[[ModuleType, Report], None]
    mistakes: tuple[Mistake, ...] = ()
    train: Callable[[ModuleType, int, bool], bool] | None = None  # (module, steps, echo) -> loss fell alike

    @property
    def stub(self) -> str:
        return make_stub(self.solution)

    @property
    def clean_solution(self) -> str:
        """The solution as the learner sees it: the marker lines removed."""
        return "".join(line for line in self.solution.splitlines(True) if line.strip() not in (BEGIN, END))

    def wrong_solution(self, mistake: Mistake) -> str:
        """The reference solution with one classic mistake planted (``mistake.old`` must occur once)."""
        if self.solution.count(mistake.old) != 1:
            raise ValueError(f"exercise {self.number:02d}: mistake {mistake.name!r}: its line must occur exactly once")
        return self.solution.replace(mistake.old, mistake.new)


def make_stub(solution: str) -> str:
    """Replace each ``# >>> your code`` ... ``# <<<`` region by ``raise NotImplementedError``."""
    out: list[str] = []
    region: list[str] | None = None
    for line in solution.splitlines(True):
        if line.strip() == BEGIN:
            region = []
            continue
        if line.strip() == END and region is not None:
            indent = line[: len(line) - len(line.lstrip())]
            count = sum(1 for r in region if r.strip() and not r.strip().startswith("#"))
            out.append(f"{indent}# YOUR CODE HERE (the solution takes about {count} line{'s' * (count != 1)})\n")
            out.append(f'{indent}raise NotImplementedError("not written yet")\n')
            region = None
            continue
        if region is not None:
            region.append(line)
        else:
            out.append(line)
    return "".join(out)


# --------------------------------------------------------------------------------------------------
# the learner's file
# --------------------------------------------------------------------------------------------------
class LearnerFileError(Exception):
    """The learner's file is missing or cannot be imported; the message is one line (plus a traceback
    of the learner's own code in ``learner_traceback`` when importing it raised)."""

    def __init__(self, message: str, learner_traceback: str = "") -> None:
        super().__init__(message)
        self.learner_traceback = learner_traceback


def learner_traceback(error: BaseException, path: Path) -> str:
    """The traceback of ``error`` cut down to the frames in the learner's file, and the error line."""
    frames = [f for f in traceback.extract_tb(error.__traceback__) if Path(f.filename).resolve() == path.resolve()]
    text = "Traceback (your code):\n" + "".join(traceback.format_list(frames)) if frames else ""
    return text + "".join(traceback.format_exception_only(type(error), error))


def load_learner_module(path: Path) -> ModuleType:
    """Import the learner's file as a fresh module (never cached, so an edited file is re-read)."""
    if not path.is_file():
        raise LearnerFileError(f"no file {path}")
    name = f"minise_exercise_{path.stem}_{abs(hash(path.resolve()))}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise LearnerFileError(f"cannot import {path}: it is not a Python file")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001  (a learner's file may raise anything while importing)
        raise LearnerFileError(f"importing {path} failed: {type(e).__name__}: {e}", learner_traceback(e, path)) from e
    return module


# --------------------------------------------------------------------------------------------------
# test cases: shapes drawn by hypothesis (derandomized: the same cases on every run), edge cases first
# --------------------------------------------------------------------------------------------------
Draw = Callable[[int, int], int]


def draw_cases(
    build: Callable[[Draw], dict[str, Any]], edge: list[dict[str, Any]], count: int = 10
) -> list[dict[str, Any]]:
    """``edge`` cases (batch 1, one channel, 1x1 spatial...) then ``count`` cases drawn by hypothesis.

    ``build(draw)`` makes one case from integers ``draw(lo, hi)``. Hypothesis runs derandomized (a fixed
    seed), so a grade is the same on every run; without hypothesis installed a seeded ``random`` draws.
    """
    cases: list[dict[str, Any]] = []
    try:
        from hypothesis import HealthCheck, Phase, given, settings  # noqa: PLC0415
        from hypothesis import strategies as st  # noqa: PLC0415
    except ImportError:  # pragma: no cover - hypothesis is in the [test] and [exercises] extras
        rng = random.Random(0)
        return edge + [build(rng.randint) for _ in range(count)]

    @settings(
        max_examples=count,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(st.data())
    def collect(data: Any) -> None:
        cases.append(build(lambda lo, hi: data.draw(st.integers(lo, hi))))

    collect()
    return edge + cases


def rng_for(case_index: int) -> np.random.Generator:
    """The random numbers of case ``case_index``: the same values on every run."""
    return np.random.default_rng(20180618 + case_index)


def numerical_gradient(f: Callable[[], Any], x: np.ndarray, gy: Any, eps: float = 1e-6) -> np.ndarray:
    """Central differences of phi = sum(f() * gy) with respect to ``x`` (changed in place and restored).

    d phi / d x[j] ~ (phi(x + eps e_j) - phi(x - eps e_j)) / (2 eps), every element, float64.
    """
    g = np.zeros_like(x)
    flat, gflat = x.reshape(-1), g.reshape(-1)
    for j in range(flat.size):
        old = flat[j]
        flat[j] = old + eps
        plus = float(np.sum(np.asarray(f()) * gy))
        flat[j] = old - eps
        minus = float(np.sum(np.asarray(f()) * gy))
        flat[j] = old
        gflat[j] = (plus - minus) / (2 * eps)
    return g


def shape_text(**arrays: Any) -> str:
    """'x (2, 3, 4, 4), w1 (1, 3), b1 None' for the report."""
    return ", ".join(f"{k} {None if v is None else tuple(np.shape(v))}" for k, v in arrays.items())


# --------------------------------------------------------------------------------------------------
# the report
# --------------------------------------------------------------------------------------------------
class PartFailed(Exception):
    """Stops one part of a check at its first wrong result (already written into the report)."""


@dataclass
class Report:
    """The grade: one line per part that is right, a paragraph per part that is wrong, with hints.

    ``path`` is the learner's file (to cut tracebacks down to it); ``calling`` says what the checker
    was doing when the learner's code raised, e.g. "squeeze_excite_backward with x (1, 1, 1, 1), ...".
    """

    path: Path
    lines: list[str] = field(default_factory=list)
    failures: int = 0
    calling: str = ""
    not_written: set[str] = field(default_factory=set)

    @property
    def passed(self) -> bool:
        return self.failures == 0 and bool(self.lines)

    def ok(self, text: str) -> None:
        self.lines.append(f"  right  {text}")

    def fail(self, text: str, hints: list[str] | tuple[str, ...] = (), details: str = "") -> None:
        self.failures += 1
        self.lines.append(f"  WRONG  {text}")
        self.lines.extend(f"         {d}" for d in details.splitlines() if d)
        self.lines.extend(f"         hint: {h}" for h in hints)

    @contextlib.contextmanager
    def part(self, name: str) -> Iterator[None]:
        """Grade one part: stop it at its first failure, and turn the learner's exceptions into words."""
        self.calling = ""
        try:
            yield
        except PartFailed:
            pass
        except NotImplementedError as e:
            where = self._learner_function(e)
            if where in self.not_written:
                self.fail(f"{name}: not written yet ({where}, as above)")
            else:
                self.not_written.add(where)
                self.fail(
                    f"{name}: not written yet - {where} still raises NotImplementedError; write its body where the "
                    "stub says YOUR CODE HERE, then check again"
                )
        except Exception as e:  # noqa: BLE001  (the learner's code may raise anything)
            doing = f" while the checker called {self.calling}" if self.calling else ""
            if self._raised_in_learner_file(e):
                self.fail(
                    f"{name}: your code raised {type(e).__name__}{doing}", details=learner_traceback(e, self.path)
                )
            else:  # raised by minise on what your code returned (a gradient of the wrong shape...)
                self.fail(f"{name}: {type(e).__name__}{doing}: {e}")

    def expect_close(
        self,
        what: str,
        got: Any,
        want: Any,
        where: str = "",
        hints: Callable[[], list[str]] | None = None,
        rtol: float = 1e-6,
        atol: float = 1e-9,
    ) -> None:
        """Fail the part (with the worst error, its index, both values and any hints) unless got ~ want.

        Passes when |got - want| <= atol + rtol * max|want| everywhere (float64 results of the same
        maths agree to ~1e-12; central differences to ~1e-8).
        """
        problem = compare(got, want, rtol, atol)
        if problem is None:
            return
        context = f" (case: {where})" if where else ""
        self.fail(f"{what} is wrong{context}", hints=hints() if hints is not None else [], details=problem)
        raise PartFailed

    def render(self, title: str) -> str:
        verdict = "all right" if self.passed else f"{self.failures} part{'s' * (self.failures != 1)} wrong"
        return "\n".join([f"{title}: {verdict}", *self.lines])

    def _raised_in_learner_file(self, error: BaseException) -> bool:
        return any(Path(f.filename).resolve() == self.path.resolve() for f in traceback.extract_tb(error.__traceback__))

    def _learner_function(self, error: BaseException) -> str:
        """'`Exp.forward`': the learner's function that raised, with its class (Python 3.11 and later)."""
        codes = [
            frame.f_code
            for frame, _ in traceback.walk_tb(error.__traceback__)
            if Path(frame.f_code.co_filename).resolve() == self.path.resolve()
        ]
        return f"`{getattr(codes[-1], 'co_qualname', codes[-1].co_name)}`" if codes else "your function"


def compare(got: Any, want: Any, rtol: float = 1e-6, atol: float = 1e-9) -> str | None:
    """None when ``got`` matches ``want``, else the words that say how it does not."""
    if want is None:
        return None if got is None else f"it should be None (its input is None), but yours is {_describe(got)}"
    if got is None:
        return f"yours is None, but it should be an array of shape {np.shape(want)}"
    try:
        g = np.asarray(got, dtype=np.float64)
    except (TypeError, ValueError):
        return f"yours is {_describe(got)}, not an array of numbers of shape {np.shape(want)}"
    w = np.asarray(want, dtype=np.float64)
    if g.shape != w.shape:
        if g.ndim >= 2 and g.shape == w.shape[:2][::-1] + w.shape[2:]:
            return f"yours has shape {g.shape} but it should be {w.shape}: the first two axes are swapped"
        return f"yours has shape {g.shape} but it should be {w.shape}"
    if not np.all(np.isfinite(g)):
        bad = tuple(int(i) for i in np.argwhere(~np.isfinite(g))[0])
        return f"yours holds {g[bad]} at index {bad} (it should be {w[bad]:.6g})"
    if w.size == 0:
        return None
    err = np.abs(g - w)
    scale = float(np.max(np.abs(w)))
    if np.all(err <= atol + rtol * scale):
        return None
    at = np.unravel_index(int(np.argmax(err)), err.shape)
    rel = err / np.maximum(np.maximum(np.abs(w), np.abs(g)), 1e-300)
    index = tuple(int(i) for i in at)
    yours, expected = distinct_texts(float(g[at]), float(w[at]))
    return (
        f"worst absolute error {err[at]:.3e} at index {index}: yours {yours}, expected {expected} "
        f"(relative difference {float(rel[at]):.3e}); worst relative error {float(np.max(rel)):.3e}"
    )


def distinct_texts(a: float, b: float) -> tuple[str, str]:
    """``a`` and ``b`` with 6 significant digits, or as many more as it takes for two different numbers
    to print differently (1.42544 and 1.42544 become 1.4254403 and 1.4254411)."""
    for digits in range(6, 18):
        ta, tb = f"{a:.{digits}g}", f"{b:.{digits}g}"
        if ta != tb or a == b:
            return ta, tb
    return repr(a), repr(b)


def close(a: Any, b: Any, rtol: float = 1e-9) -> bool:
    """Whether two results agree (for hints: does the learner's answer equal a known wrong formula?)."""
    if a is None or b is None:
        return a is None and b is None
    try:
        a_, b_ = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    except (TypeError, ValueError):
        return False
    if not np.all(np.isfinite(b_)):  # a variant standing for "it overflowed": any inf or nan in a matches
        return a_.shape == b_.shape and not bool(np.all(np.isfinite(a_)))
    return a_.shape == b_.shape and bool(
        np.allclose(a_, b_, rtol=rtol, atol=1e-9 + rtol * float(np.max(np.abs(b_), initial=0)))
    )


class AnyOf:
    """Several classic wrong answers that earn the same hint (in ``Case.variants``)."""

    def __init__(self, *answers: Any) -> None:
        self.answers = answers


def matches_variant(got: Any, variant: Any) -> bool:
    """Whether ``got`` equals a classic wrong answer ``variant``, or one of several (:class:`AnyOf`)."""
    return any(close(got, v) for v in variant.answers) if isinstance(variant, AnyOf) else close(got, variant)


def _describe(value: Any) -> str:
    if hasattr(value, "shape"):
        return f"an array of shape {tuple(value.shape)}"
    return f"a {type(value).__name__}"


def learner_function(module: ModuleType, name: str) -> Callable[..., Any]:
    """The learner's function ``name``; a clear error if their file lacks it (renamed, deleted)."""
    fn = getattr(module, name, None)
    if fn is None:
        raise LearnerFileError(
            f"{module.__file__} has no `{name}` - keep the names of the stub "
            "(get a fresh one with `exercise NN --to DIR`)"
        )
    return fn  # type: ignore[no-any-return]


# --------------------------------------------------------------------------------------------------
# grading a function of arrays, output by output, case by case
# --------------------------------------------------------------------------------------------------
@dataclass
class Case:
    """One test case for a learner's function.

    ``args`` are what the function is called with; ``expected`` maps each output's name to minise's
    answer (the engine's own op); ``numeric`` to a function computing float64 central differences
    (called lazily); ``variants`` maps a hint to the outputs a classic wrong formula gives, so that a
    learner's answer equal to one of them earns that hint (an output given as :class:`AnyOf` stands for
    several wrong formulas with the same hint).
    """

    where: str
    args: tuple[Any, ...]
    expected: dict[str, Any]
    numeric: dict[str, Callable[[], Any]] = field(default_factory=dict)
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)


def transposed_hint(name: str, got: Any, want: Any) -> list[str]:
    """A hint when ``got`` is ``want`` with its first two axes swapped (a transposed weight gradient)."""
    try:
        g, w = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    except (TypeError, ValueError):
        return []
    if g.ndim >= 2 and w.ndim >= 2 and close(np.swapaxes(g, 0, 1), w) and not close(g, w):
        return [
            f"your {name} is the transpose of the right one: a weight gradient has the weight's own shape and "
            "layout (out, in, ...); for y = x W^T it is dW = gy^T x, not x^T gy"
        ]
    return []


GRADIENT_RULE = (
    "the engine hands the same {arg} to every input of an addition (a block's output is its residual branch "
    "plus the identity path), so change a copy ({arg} = {arg} * ...) or build a new array"
)
INPUT_RULE = (
    "the caller still needs {arg} after the call (the engine keeps an op's inputs and weights for the backward "
    "pass and the next step), so build a new array (y = {arg} * ..., dx = np.zeros_like({arg})) instead of "
    "writing into {arg}"
)


def unchanged_rule(arg: str) -> str:
    """Why a learner's function must leave the array ``arg`` as it came (a gradient gy, or any input)."""
    return (GRADIENT_RULE if arg.startswith("gy") else INPUT_RULE).format(arg=arg)


def parameter_names(fn: Callable[..., Any]) -> tuple[str, ...]:
    """The names of ``fn``'s positional parameters ((), for a function of ``*args`` or a builtin)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return ()
    return tuple(p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD))


def changed_argument(args: tuple[Any, ...], before: tuple[Any, ...], names: tuple[str, ...]) -> str | None:
    """The name of the first array in ``args`` that no longer equals its copy in ``before`` (None if none)."""
    for i, (now, then) in enumerate(zip(args, before)):
        if isinstance(then, np.ndarray) and not (now.shape == then.shape and np.array_equal(now, then)):
            return names[i] if i < len(names) else f"argument {i + 1}"
    return None


def check_arguments_unchanged(
    report: Report,
    fn_name: str,
    fn: Callable[..., Any],
    cases: list[Case],
    arg_names: tuple[str, ...] = (),
    rules: dict[str, str] | None = None,
) -> None:
    """One part: the learner's ``fn`` leaves every array it is given as it was, on every case.

    Each call gets copies and its arguments are compared with a second copy afterwards; the first one
    changed fails the part with one line naming the function, the argument and the rule (``rules``
    gives an exercise's own words for an argument, else :func:`unchanged_rule`). An exception is left
    to the parts that grade the outputs, which report it. No part at all when no case passes an array.
    """
    if not any(isinstance(a, np.ndarray) for case in cases for a in case.args):
        return
    names = arg_names or parameter_names(fn)
    with report.part(f"{fn_name}: its arguments"):
        for case in cases:
            report.calling = f"{fn_name} on {case.where}"
            args = tuple(a.copy() if isinstance(a, np.ndarray) else a for a in case.args)
            before = tuple(a.copy() if isinstance(a, np.ndarray) else a for a in case.args)
            try:
                with np.errstate(all="ignore"):
                    fn(*args)
            except Exception:  # noqa: BLE001  (reported by the parts that grade the outputs)
                return
            arg = changed_argument(args, before, names)
            if arg is not None:
                rule = (rules or {}).get(arg) or unchanged_rule(arg)
                report.fail(f"{fn_name} changed {arg}, the array it was given: {rule} (case: {case.where})")
                raise PartFailed
        report.ok(f"{fn_name} leaves the arrays it is given unchanged on {len(cases)} cases")


def grade_function(
    report: Report,
    fn_name: str,
    fn: Callable[..., Any],
    names: tuple[str, ...],
    cases: list[Case],
    what: str,
    rtol: float = 1e-6,
    atol: float = 1e-9,
    against: str = "minise's op",
    arg_names: tuple[str, ...] = (),
    rules: dict[str, str] | None = None,
    check_arguments: bool = True,
) -> None:
    """Grade the outputs ``names`` of the learner's ``fn`` (one part each) on every case, against
    ``expected`` (``against`` names it) and, where given, central differences; ``what`` names the
    references in the "right" line.

    First, unless ``check_arguments`` is False, a part of its own checks that ``fn`` changes none of
    the arrays it is given (:func:`check_arguments_unchanged`; ``arg_names`` names them where ``fn``'s
    own parameters do not, ``rules`` says why an argument must stay as it came)."""
    if check_arguments:
        check_arguments_unchanged(report, fn_name, fn, cases, arg_names, rules)
    for k, name in enumerate(names):
        with report.part(f"{fn_name}: {name}"):
            for case in cases:
                report.calling = f"{fn_name} on {case.where}"
                args = tuple(a.copy() if isinstance(a, np.ndarray) else a for a in case.args)  # yours to change
                with np.errstate(all="ignore"):  # overflow is reported as wrong values, not as warnings
                    out = fn(*args)
                if len(names) > 1:
                    if not isinstance(out, (tuple, list)) or len(out) != len(names):
                        report.fail(
                            f"{fn_name} must return {len(names)} values ({', '.join(names)}), "
                            f"got {_describe(out) if not isinstance(out, (tuple, list)) else f'{len(out)} values'}"
                        )
                        raise PartFailed
                    got = out[k]
                else:
                    got = out
                want = case.expected[name]

                def hints(got: Any = got, want: Any = want, case: Case = case, name: str = name) -> list[str]:
                    found = [h for h, v in case.variants.items() if name in v and matches_variant(got, v[name])]
                    return found + transposed_hint(name, got, want)

                report.expect_close(f"{fn_name}: {name} (against {against})", got, want, case.where, hints, rtol, atol)
                if name in case.numeric:
                    report.expect_close(
                        f"{fn_name}: {name} (against float64 central differences, random upstream gradient)",
                        got,
                        case.numeric[name](),
                        case.where,
                        hints,
                        rtol=1e-5,
                        atol=1e-7,
                    )
            report.ok(f"{fn_name}: {name} matches {what} on {len(cases)} cases")


def engine_gradients(fn: Callable[..., Any], arrays: list[Any], gy: Any) -> tuple[np.ndarray, list[Any]]:
    """minise's own answer: y = fn(*tensors) and the gradient of sum(y * gy) for each array (None stays None).

    Runs on the NumPy backend in float64, whatever backend the learner has chosen.
    """
    from minise import tensor, use_backend  # noqa: PLC0415  (minise imports lessons lazily; keep this light)

    with use_backend("numpy"):
        tensors = [None if a is None else tensor(a, requires_grad=True) for a in arrays]
        y = fn(*tensors)
        y.backward(np.asarray(gy, dtype=y.data.dtype) if np.ndim(gy) else None)
        return y.numpy(), [None if t is None else t.grad for t in tensors]


def engine_forward(fn: Callable[..., Any], arrays: list[Any]) -> np.ndarray:
    """minise's own forward ``fn(*tensors)`` on the NumPy backend, as a NumPy array."""
    from minise import no_grad, tensor, use_backend  # noqa: PLC0415

    with use_backend("numpy"), no_grad():
        return fn(*[None if a is None else tensor(a) for a in arrays]).numpy()  # type: ignore[no-any-return]


__all__ = [
    "AnyOf",
    "Case",
    "Draw",
    "Exercise",
    "LearnerFileError",
    "Mistake",
    "PartFailed",
    "Report",
    "changed_argument",
    "check_arguments_unchanged",
    "close",
    "compare",
    "distinct_texts",
    "draw_cases",
    "engine_forward",
    "engine_gradients",
    "grade_function",
    "learner_function",
    "learner_traceback",
    "load_learner_module",
    "make_stub",
    "matches_variant",
    "numerical_gradient",
    "parameter_names",
    "rng_for",
    "shape_text",
    "transposed_hint",
    "unchanged_rule",
]
