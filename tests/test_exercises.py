"""The exercises' checkers bite: for every exercise the untouched stub fails ("not written yet"), the
reference solution passes, and each classic mistake fails with its hint. Plus the command line
(`exercise` never overwrites a learner's file, `check` exit codes, the learner's traceback), the
stub/solution text transform, and `--train`: a few steps of every training hook, wrong ops noticed, and
one 30-step run of the documented configuration."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import minise.functional as F
from minise import exercises, lessons
from minise.exercises import core, training

NUMBERS = sorted(exercises.EXERCISES)
MISTAKES = [(n, m) for n in NUMBERS for m in exercises.EXERCISES[n].mistakes]


def grade(tmp_path: Path, number: int, text: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Write ``text`` as the learner's file and grade it; (exit code, everything printed)."""
    path = tmp_path / exercises.EXERCISES[number].filename
    path.write_text(text, encoding="utf-8")
    code = exercises.check_exercise(number, path)
    out = capsys.readouterr()
    return code, out.out + out.err


def test_every_lesson_from_02_to_15_but_14_has_an_exercise() -> None:
    assert NUMBERS == [*range(2, 14), 15]  # 14 (the GPU) has none: a checker could not run its code here


@pytest.mark.parametrize("number", NUMBERS)
def test_the_stub_fails_as_not_written_yet(number: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ex = exercises.EXERCISES[number]
    assert "raise NotImplementedError" in ex.stub and core.BEGIN not in ex.stub
    code, report = grade(tmp_path, number, ex.stub, capsys)
    assert code == 1, report
    assert "not written yet" in report
    assert "all right" not in report


@pytest.mark.parametrize("number", NUMBERS)
def test_the_solution_passes(number: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ex = exercises.EXERCISES[number]
    code, report = grade(tmp_path, number, ex.clean_solution, capsys)
    assert code == 0, report
    assert "all right" in report and "WRONG" not in report


@pytest.mark.parametrize(("number", "mistake"), MISTAKES, ids=[f"{n:02d}-{m.name}" for n, m in MISTAKES])
def test_each_classic_mistake_fails_with_its_hint(
    number: int, mistake: core.Mistake, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ex = exercises.EXERCISES[number]
    code, report = grade(tmp_path, number, ex.wrong_solution(mistake), capsys)
    assert code == 1, report
    assert "WRONG" in report
    assert mistake.expect in report, report


def test_the_ring_exercise_names_the_naive_all_reduce(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Right sums through one process are not the ring: the bytes each process sends give it away."""
    naive = (
        "import numpy as np\n\n\ndef ring_allreduce(arrays):\n"
        "    n, total = len(arrays), np.sum(arrays, axis=0)\n"
        "    return [total.copy() for _ in arrays], [(n - 1) * total.nbytes] + [total.nbytes] * (n - 1)\n\n\n"
        "def average_gradients(grads):\n    return [s / len(grads) for s in ring_allreduce(grads)[0]]\n"
    )
    code, report = grade(tmp_path, 15, naive, capsys)
    assert code == 1 and "every process holds the sum" in report and "the all-reduce through one process" in report


def test_a_wrong_number_of_gradients_is_one_line_and_y_stays_right(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Mul.backward returning one gradient: one learner-level line (not the engine's zip() error), and the
    forward, which is right, is graded right."""
    text = exercises.EXERCISES[2].clean_solution.replace("return gy * b, gy * a", "return gy * b")
    code, report = grade(tmp_path, 2, text, capsys)
    assert code == 1 and "right  Mul: y matches" in report and "zip()" not in report
    assert report.count("WRONG") == 1 and "Mul.backward returned 1 gradient, but Mul has 2 inputs (a, b)" in report


def test_a_block_with_the_wrong_parameters_is_reported_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """No projection shortcut: one paragraph, parameters and buffers told apart, the other cases still graded."""
    text = exercises.EXERCISES[10].clean_solution.replace("if stride != 1 or inplanes != planes:", "if False:")
    code, report = grade(tmp_path, 10, text, capsys)
    assert code == 1 and report.count("WRONG") == 1 and report.count("differ from the library's") == 1
    assert "downsample.0.weight" in report and "(parameters)" in report and "(batch-norm buffers)" in report
    assert "right  SEBasicBlock: forward y matches" in report and "see above" in report


def test_a_change_in_place_is_told_first_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """g = gy; g *= gamma: the first wrong line names the function, the argument and the rule, before any
    result is compared; the sums it spoils then point back to it."""
    ex = exercises.EXERCISES[7]
    text = ex.wrong_solution(next(m for m in ex.mistakes if m.name == "g is gy, scaled in place"))
    code, report = grade(tmp_path, 7, text, capsys)
    lines = report.splitlines()
    first = next(i for i, line in enumerate(lines) if "WRONG" in line)
    assert code == 1 and lines[first].startswith("  WRONG  batch_norm_backward changed gy, the array it was given: ")
    assert "g = gy * gamma" in lines[first] and not lines[first + 1].startswith("         ")  # one line
    assert "gy itself was scaled by gamma" in report  # the dgamma and dbeta hints


def test_arguments_unchanged_names_the_argument_and_stays_silent_without_arrays(tmp_path: Path) -> None:
    def scales_w(x: np.ndarray, w: np.ndarray) -> np.ndarray:
        w *= 2
        return x * w

    case = core.Case("x (2,)", (np.ones(2), np.ones(2)), {"y": np.full(2, 2.0)})
    report = core.Report(tmp_path / "ex.py")
    core.check_arguments_unchanged(report, "scale", scales_w, [case])
    assert (
        report.failures == 1 and "scale changed w, the array it was given: the caller still needs w" in report.lines[0]
    )
    report = core.Report(tmp_path / "ex.py")
    core.check_arguments_unchanged(report, "f", lambda n: n, [core.Case("n 3", (3,), {})])
    assert report.lines == []  # no array given: no part at all
    report = core.Report(tmp_path / "ex.py")
    core.check_arguments_unchanged(report, "g", lambda gy: 1 / 0, [core.Case("gy", (np.ones(1),), {})])
    assert report.lines == []  # an exception is left to the parts that grade the outputs


def test_compare_prints_two_different_numbers_differently() -> None:
    """1.4254403 and 1.4254411 both read 1.42544 with 6 digits (batch norm without its eps gave that)."""
    text = core.compare(np.array([1.4254403]), np.array([1.4254411]), rtol=1e-9)
    assert text is not None and "yours 1.42544, expected 1.425441" in text and "relative difference 5.6" in text


# --------------------------------------------------------------------------------------------------
# the command line: `exercise` never overwrites, `check` exit codes and what it prints
# --------------------------------------------------------------------------------------------------
def test_exercise_writes_the_stub_and_never_overwrites_the_learners_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ex = exercises.EXERCISES[9]
    assert lessons.main(["exercise", "09", "--to", str(tmp_path)]) == 0
    path = tmp_path / ex.filename
    assert path.read_text() == ex.stub
    assert f"check 09 --file {path}" in capsys.readouterr().out
    path.write_text("# my work\n")
    assert lessons.main(["exercise", "9", "--to", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--force" in err and str(path) in err
    assert path.read_text() == "# my work\n"  # untouched
    assert lessons.main(["exercise", "09", "--to", str(tmp_path), "--force"]) == 0
    assert path.read_text() == ex.stub
    assert (tmp_path / (ex.filename + ".bak")).read_text() == "# my work\n"  # kept, not lost
    assert lessons.main(["exercise", "09", "--to", str(tmp_path), "--force"]) == 0
    assert (tmp_path / (ex.filename + ".bak2")).read_text() == ex.stub


def test_solution_goes_to_a_solutions_folder_beside_the_learners_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "ex07_batch_norm.py").write_text("# my work\n")
    assert lessons.main(["exercise", "07", "--to", str(tmp_path), "--solution"]) == 0
    assert "try first" in capsys.readouterr().out
    assert (tmp_path / "solutions" / "ex07_batch_norm.py").read_text() == exercises.EXERCISES[7].clean_solution
    assert (tmp_path / "ex07_batch_norm.py").read_text() == "# my work\n"
    assert lessons.main(["check", "07", "--file", str(tmp_path / "solutions" / "ex07_batch_norm.py")]) == 0


def test_check_exit_codes_and_one_line_usage_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert lessons.main(["check", "09"]) == 2  # no ./exercises/ex09_se_backward.py yet
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "exercise 09" in err
    assert lessons.main(["check", "01"]) == 2  # lesson 01 has no exercise
    assert "lessons with one: 02" in capsys.readouterr().err
    assert lessons.main(["exercise", "06"]) == 0  # the default folder, ./exercises/
    assert lessons.main(["check", "06"]) == 1  # the untouched stub
    (tmp_path / "exercises" / "ex06_max_pool.py").write_text(exercises.EXERCISES[6].clean_solution)
    assert lessons.main(["check", "06"]) == 0


def test_a_learner_exception_shows_the_learners_own_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = exercises.EXERCISES[9].clean_solution.replace("dw1 = g_a1.T @ s", "dw1 = g_a1 @ s  # shapes do not fit")
    code, report = grade(tmp_path, 9, text, capsys)
    assert code == 1
    assert "your code raised ValueError while the checker called squeeze_excite_backward on x (" in report
    assert "Traceback (your code):" in report and "dw1 = g_a1 @ s" in report
    assert "minise/exercises" not in report  # the checker's own frames are cut away


def test_a_file_that_does_not_import_is_one_error_with_its_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, report = grade(tmp_path, 8, "def squeeze_excite_forward(x, w1, b1, w2, b2:\n", capsys)
    assert code == 1
    assert "SyntaxError" in report and "line 1" in report and "importing" in report


def test_a_renamed_function_is_named_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = exercises.EXERCISES[6].clean_solution.replace("def max_pool2d_backward(", "def maxpool_backward(")
    code, report = grade(tmp_path, 6, text, capsys)
    assert code == 1 and "has no `max_pool2d_backward`" in report


def test_the_command_line_prints_no_traceback_for_a_missing_file(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "minise.lessons", "check", "09", "--file", str(tmp_path / "nothere.py")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and done.stderr.count("\n") == 1 and "nothere.py" in done.stderr


def test_check_into_a_closed_pipe_prints_no_traceback(tmp_path: Path) -> None:
    """`check 02 | head -1`: the reader closed the pipe, so the rest of the report is dropped silently."""
    path = tmp_path / "ex02.py"
    path.write_text(exercises.EXERCISES[2].clean_solution)
    done = subprocess.Popen(
        [sys.executable, "-m", "minise.lessons", "check", "02", "--file", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert done.stdout is not None and done.stderr is not None
    done.stdout.close()  # before the report is printed: printing it meets a closed pipe
    err = done.stderr.read()
    assert done.wait(timeout=120) == 1
    assert "Traceback" not in err and "BrokenPipeError" not in err, err


# --------------------------------------------------------------------------------------------------
# the pieces
# --------------------------------------------------------------------------------------------------
def test_make_stub_replaces_each_marked_region_and_keeps_the_rest() -> None:
    text = "def f(x):\n    y = 2\n    # >>> your code\n    z = x + y\n    return z\n    # <<<\n\nA = 1\n"
    stub = core.make_stub(text)
    assert stub == (
        "def f(x):\n    y = 2\n    # YOUR CODE HERE (the solution takes about 2 lines)\n"
        '    raise NotImplementedError("not written yet")\n\nA = 1\n'
    )


def test_the_drawn_cases_are_the_same_on_every_run_and_start_with_the_edge_cases() -> None:
    def build(draw: core.Draw) -> dict[str, int]:
        return {"n": draw(1, 3), "c": draw(1, 5)}

    edge = [{"n": 1, "c": 1}]
    first, second = core.draw_cases(build, edge, count=8), core.draw_cases(build, edge, count=8)
    assert first == second and first[0] == {"n": 1, "c": 1} and len(first) > 3


def test_compare_names_the_worst_element() -> None:
    want = np.zeros((2, 3))
    got = want.copy()
    got[1, 2] = 0.5
    text = core.compare(got, want)
    assert text is not None and "index (1, 2)" in text and "5.000e-01" in text
    assert core.compare(want + 1e-12, want) is None
    assert "shape" in (core.compare(np.zeros((3, 2)), want) or "")


def test_swap_op_swaps_for_the_block_only_even_when_it_raises() -> None:
    original = F.squeeze_excite

    def fake(*args: object) -> None:
        raise AssertionError("not called")

    with pytest.raises(RuntimeError), training.swap_op("squeeze_excite", fake):
        assert F.squeeze_excite is fake
        raise RuntimeError
    assert F.squeeze_excite is original


@pytest.fixture
def small_training(monkeypatch: pytest.MonkeyPatch) -> None:
    """Batch 8 of 8x8 images: the same network and checks as `check --train`, a tenth of the work."""
    monkeypatch.setattr(training, "BATCH", 8)
    monkeypatch.setattr(training, "IMAGE_SIZE", 8)


@pytest.mark.parametrize("number", [5, 7, 8, 9])
def test_train_runs_the_learners_code_inside_se_resnet20(number: int, tmp_path: Path, small_training: None) -> None:
    """A few steps only (the documented 200-step run is the slow test below): the learner's functions
    must really be called by every layer of the network, and the losses must agree with the built-in op's at
    steps 1-2."""
    ex = exercises.EXERCISES[number]
    path = tmp_path / ex.filename
    path.write_text(ex.clean_solution)
    module = core.load_learner_module(path)
    calls = {"n": 0}
    names = {5: ["conv2d_forward", "conv2d_backward"], 7: ["batch_norm_backward"], 8: ["squeeze_excite_forward"]}
    for name in names.get(number, ["squeeze_excite_backward"]):
        fn = getattr(module, name)

        def counted(*args: object, fn: object = fn) -> object:
            calls["n"] += 1
            return fn(*args)  # type: ignore[operator]

        setattr(module, name, counted)
    assert ex.train is not None and ex.train(module, 2, False)
    # every layer of the op's kind runs the learner's code, at each of the 2 steps: 21 convolutions (forward and
    # backward), 21 batch norms, 9 SE blocks; a fused op that bypassed the swap (batch norm + ReLU, SE + add +
    # ReLU) would lower the count (training.unfused)
    assert calls["n"] == {5: 2 * 2 * 21, 7: 2 * 21, 8: 2 * 9, 9: 2 * 9}[number]
    assert F.conv2d.__module__ == "minise.functional.conv"  # swapped back


@pytest.mark.parametrize(
    ("number", "mistake"),
    [
        (9, "the squeeze path is missing"),
        (7, "no mean terms"),
        (5, "transposed weight gradient"),
        (9, "gy scaled in place"),
    ],
)
def test_train_notices_a_wrong_op_within_two_steps(
    number: int, mistake: str, tmp_path: Path, small_training: None
) -> None:
    """A missing squeeze path in the SE gradient, batch norm without its mean terms, a transposed conv weight
    gradient: each moves the loss at step 2 by 5e-5 or more (relative), where rounding alone stays below 1.1e-7
    (measured). And gy scaled in place by the SE backward, whose gradients are right: the identity path, handed
    the same gy by the addition, receives it scaled (why the checker forbids changing gy)."""
    ex = exercises.EXERCISES[number]
    path = tmp_path / ex.filename
    path.write_text(ex.wrong_solution(next(m for m in ex.mistakes if m.name == mistake)))
    assert ex.train is not None and not ex.train(core.load_learner_module(path), 2, False)


def test_check_train_with_the_solution_trains_like_the_builtin_op(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`check 09 --train` as documented (batch 32 of 16x16 images, the whole report) but 30 steps instead
    of 200: twice 30 training steps, 11 s on 2 busy cores (measured), so not marked slow."""
    path = tmp_path / "ex09.py"
    path.write_text(exercises.EXERCISES[9].clean_solution)
    assert exercises.check_exercise(9, path, train=True, steps=30) == 0
    out = capsys.readouterr().out
    assert "yours trains like minise's op" in out


@pytest.mark.torch
def test_the_sgd_exercise_is_also_checked_against_torch(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("torch")
    code, report = grade(tmp_path, 11, exercises.EXERCISES[11].clean_solution, capsys)
    assert code == 0 and "follows torch.optim.SGD" in report


@pytest.mark.torch
def test_the_sgd_in_place_hint_is_printed_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Against minise's SGD and then torch's: the second failure points back to the first."""
    pytest.importorskip("torch")
    ex = exercises.EXERCISES[11]
    text = ex.wrong_solution(next(m for m in ex.mistakes if m.name == "buf changed in place"))
    code, report = grade(tmp_path, 11, text, capsys)
    assert code == 1 and report.count("hint: return new arrays") == 1 and "changed buf in place (as above)" in report
