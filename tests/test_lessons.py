"""The lessons: every lesson runs end to end (fast mode, NumPy backend) with all its asserts holding;
lesson 9's NumPy backward equals the fused SE op; lesson 9 and SqueezeExciteOp's docstring state the
same formulas; the helpers lessons 10, 11 and 13 define (parameter formula, SGD update, class
specificity) hold beyond the cases the lessons run; the runner's command line and its error reporting;
the table of contents."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import minise
import minise.functional as F
from minise import lessons, models, optim
from minise.functional.squeeze_excite import SqueezeExciteOp

LESSONS = lessons.lesson_files()
LESSON_09 = lessons.lessons_dir() / "09_the_excitation_gradient.md"
LESSON_10 = lessons.lessons_dir() / "10_residual_blocks_and_se_resnet.md"
LESSON_11 = lessons.lessons_dir() / "11_sgd_momentum.md"
LESSON_13 = lessons.lessons_dir() / "13_what_the_excitations_learn.md"


@pytest.fixture(scope="module")
def namespace(tmp_path_factory: pytest.TempPathFactory) -> Callable[[Path], dict[str, Any]]:
    """Run a lesson once per test module (on the NumPy backend) and hand out its namespace."""
    cache: dict[Path, dict[str, Any]] = {}

    def run(path: Path) -> dict[str, Any]:
        if path not in cache:
            with minise.use_backend("numpy"):
                cache[path] = lessons.run_lesson(path, fast=True, figures=tmp_path_factory.mktemp(path.stem))
        return cache[path]

    return run


def test_the_lessons_are_there() -> None:
    assert [p.name[:2] for p in LESSONS] == [f"{i:02d}" for i in range(1, 16)]


@pytest.mark.parametrize("path", LESSONS, ids=[p.stem for p in LESSONS])
def test_lesson_runs_and_its_checks_hold(path: Path, namespace: Callable[[Path], dict[str, Any]]) -> None:
    ns = namespace(path)  # raises LessonError, naming block and line, if any block (any assert) fails
    assert ns["FAST"] is True and isinstance(ns["FIGURES"], Path)


# --------------------------------------------------------------------------------------------------
# lesson 9: the excitation gradient
# --------------------------------------------------------------------------------------------------
SE_CASES = [
    ((2, 8, 4, 4), 2, True, 0),
    ((3, 6, 5, 3), 3, False, 1),
    ((1, 4, 1, 1), 5, True, 2),  # batch 1, 1x1 spatial, R > C
    ((4, 16, 7, 7), 4, False, 3),
]


@pytest.mark.parametrize("shape, r, biases, seed", SE_CASES)
def test_lesson_09_numpy_backward_equals_squeeze_excite(
    namespace: Callable[[Path], dict[str, Any]], shape: tuple[int, ...], r: int, biases: bool, seed: int
) -> None:
    se_backward_numpy = namespace(LESSON_09)["se_backward_numpy"]
    rng = np.random.default_rng(seed)
    c = shape[1]
    x, g = rng.standard_normal(shape), rng.standard_normal(shape)
    w1, w2 = rng.standard_normal((r, c)), rng.standard_normal((c, r))
    b1 = rng.standard_normal(r) if biases else None
    b2 = rng.standard_normal(c) if biases else None
    tensors = [None if a is None else minise.Tensor(a.copy(), requires_grad=True) for a in (x, w1, b1, w2, b2)]
    F.squeeze_excite(*tensors).backward(g)

    ours = se_backward_numpy(x, w1, b1, w2, b2, g)
    assert len(ours) == 5
    for name, a, t in zip(("dx", "dw1", "db1", "dw2", "db2"), ours, tensors):
        if t is None:
            assert a is None, f"{name}: no bias, so no bias gradient"
            continue
        assert a.shape == t.shape, name
        np.testing.assert_allclose(a, t.grad, rtol=1e-10, atol=1e-10, err_msg=name)


# --------------------------------------------------------------------------------------------------
# lessons 10, 11 and 13: the helpers they define, beyond the cases the lessons run
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("depth", [32, 44])
def test_lesson_10_parameter_formula_counts_every_cifar_resnet(
    namespace: Callable[[Path], dict[str, Any]], depth: int
) -> None:
    count = namespace(LESSON_10)["cifar_resnet_parameters"]
    n = (depth - 2) // 6
    assert count(n) == models.create(f"resnet{depth}").num_parameters()
    assert count(n, se_reduction=8) == models.create(f"se_resnet{depth}", reduction=8).num_parameters()
    assert count(n, se_reduction=16, se_bias=False) == models.create(f"se_resnet{depth}", bias=False).num_parameters()


@pytest.mark.parametrize(
    "nesterov, weight_decay, dampening", [(False, 0.0, 0.0), (True, 1e-2, 0.0), (False, 1e-3, 0.3)]
)
def test_lesson_11_sgd_step_numpy_equals_minise_sgd(
    namespace: Callable[[Path], dict[str, Any]], nesterov: bool, weight_decay: float, dampening: float
) -> None:
    sgd_step_numpy = namespace(LESSON_11)["sgd_step_numpy"]
    rng = np.random.default_rng(0)
    start = [rng.standard_normal((3, 4)), rng.standard_normal(5)]
    params = [minise.nn.Parameter(a.copy()) for a in start]
    opt = optim.SGD(params, lr=0.05, momentum=0.9, nesterov=nesterov, weight_decay=weight_decay, dampening=dampening)
    ours, buffers = [a.copy() for a in start], [None, None]
    for step in range(6):
        grads = [rng.standard_normal(a.shape) for a in start]
        for p, g in zip(params, grads):
            p.grad = g.copy()
        lr = 0.05 if step < 3 else 0.01  # a schedule changes the rate: the buffer keeps gradients
        opt.param_groups[0]["lr"] = lr
        opt.step()
        sgd_step_numpy(ours, grads, buffers, lr, 0.9, dampening, nesterov, weight_decay)
        for mine, p in zip(ours, params):
            np.testing.assert_allclose(mine, p.numpy(), rtol=1e-12, atol=1e-14)


def test_lesson_13_class_specificity(namespace: Callable[[Path], dict[str, Any]]) -> None:
    ns = namespace(LESSON_13)
    class_specificity, over_chance = ns["class_specificity"], ns["specificity_over_chance"]
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(5), 40)
    noise = rng.uniform(0, 1, (200, 16))
    separated = np.clip(rng.uniform(0.1, 0.9, (5, 16))[labels] + 0.05 * rng.standard_normal((200, 16)), 0, 1)
    for gates in (noise, separated):
        values = class_specificity(gates, labels)
        assert len(values) == 3 and all(np.isfinite(v) and v >= 0 for v in values)
        ratio, chance, times = over_chance(gates, labels)
        assert all(np.isfinite(v) and v >= 0 for v in (ratio, chance, times))
    assert over_chance(separated, labels)[2] > 5 > 1.5 > over_chance(noise, labels)[2]
    assert class_specificity(np.full((20, 4), 0.3), np.arange(20) % 2)[2] == 0.0  # gates that never vary
    order = rng.permutation(200)  # the images' order does not matter, only which class each is in
    np.testing.assert_allclose(class_specificity(separated[order], labels[order]), class_specificity(separated, labels))
    table = ns["table"]  # the lesson's own measurement: one row per SE block, every number finite
    assert len(table) == 9 and all(np.isfinite(v) and v >= 0 for row in table.values() for v in row.values())


def backward_formulas(doc: str) -> list[str]:
    """The formulas on the lines after "Backward" in a docstring, without trailing shape notes like "(N, C)".

    A line may hold two formulas separated by a comma and several spaces ("dW2  = g_a2^T h,   db2 = ...").
    The formulas end at the first line without "=".
    """
    lines = doc.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith("Backward"))
    formulas: list[str] = []
    for line in lines[start + 1 :]:
        if "=" not in line:
            break
        line = re.sub(r"\s{2,}\([^()]*\)\s*$", "", line.strip())
        formulas += [f.strip() for f in re.split(r",\s{2,}", line) if f.strip()]
    return formulas


def normalise(text: str) -> str:
    return " ".join(text.split())


def test_backward_formulas_are_extracted_from_the_docstring() -> None:
    formulas = backward_formulas(SqueezeExciteOp.__doc__ or "")
    lhs = [normalise(f.split("=")[0]) for f in formulas]
    assert lhs == ["g_e", "g_a2", "dW2", "db2", "g_a1", "dW1", "db1", "g_s", "dx"]
    assert normalise(formulas[-1]) == "dx = G * e + g_s / (H W)"


def test_lesson_09_states_the_formulas_of_the_docstring() -> None:
    formulas = backward_formulas(SqueezeExciteOp.__doc__ or "")
    text = normalise(LESSON_09.read_text(encoding="utf-8"))
    missing = [f for f in formulas if normalise(f) not in text]
    assert not missing, f"lesson 09 does not state these formulas of SqueezeExciteOp's docstring: {missing}"


# --------------------------------------------------------------------------------------------------
# the runner: command line, errors, Markdown parsing
# --------------------------------------------------------------------------------------------------
def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MINISE_BACKEND": "numpy", "MPLBACKEND": "Agg"}
    return subprocess.run(
        [sys.executable, "-m", "minise.lessons", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=120
    )


def test_cli_list(tmp_path: Path) -> None:
    result = run_cli("list", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = {line[:2]: line for line in result.stdout.splitlines() if re.match(r"\d\d ", line)}
    assert sorted(rows) == [f"{i:02d}" for i in range(1, 16)]
    assert all(rows[f"{i:02d}"].rstrip().endswith("ready") for i in range(1, 16))
    assert "The excitation gradient" in rows["09"] and "60 minutes" in rows["09"]


def test_cli_run_01(tmp_path: Path) -> None:
    result = run_cli("run", "01", "--figures", str(tmp_path / "figures"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "--- block 1 (line " in result.stdout
    assert "01_arrays_and_backends.md passed" in result.stdout


FAILING = """# Lesson 99 — A lesson that fails

- **Time:** 1 minute

```python
x = 1
print("first block ran")
```

```text
not run: assert False
```

```python
y = x + 1
assert y == 3, "y should be 3"
```
"""


def test_a_failing_assert_names_the_block_through_the_api(tmp_path: Path) -> None:
    path = tmp_path / "99_failing.md"
    path.write_text(FAILING, encoding="utf-8")
    with pytest.raises(lessons.LessonError) as info:
        lessons.run_lesson(path, figures=tmp_path / "figures", echo=False)
    error = info.value
    assert (error.block, error.line) == (2, 15)
    assert str(error) == "lesson 99_failing.md: block 2 (line 15) failed - AssertionError: y should be 3"
    assert f'File "{path}", line 16' in error.lesson_traceback  # the Markdown line of the failing assert


def test_a_failing_assert_makes_run_exit_non_zero(tmp_path: Path) -> None:
    path = tmp_path / "99_failing.md"
    path.write_text(FAILING, encoding="utf-8")
    result = run_cli("run", "--file", str(path), "--figures", str(tmp_path / "figures"), cwd=tmp_path)
    assert result.returncode == 1
    assert "first block ran" in result.stdout
    last = result.stderr.strip().splitlines()[-1]
    assert last == "lesson 99_failing.md: block 2 (line 15) failed - AssertionError: y should be 3"
    assert f'File "{path}", line 16' in result.stderr
    assert "minise/lessons.py" not in result.stderr  # only the lesson's own frames are shown


def test_a_coming_lesson_is_reported_in_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    folder = tmp_path / "lessons"  # every real lesson is ready: a folder whose README lists one still coming
    folder.mkdir()
    (folder / "01_first.md").write_text("# Lesson 1 — First\n\n- **Time:** 5 minutes\n", encoding="utf-8")
    (folder / "README.md").write_text(
        "| # | Lesson | Needs | Time | Status |\n| --- | --- | --- | --- | --- |\n"
        "| 01 | [First](01_first.md) | | 5 minutes | ready |\n| 02 | Second | 01 | 10 minutes | coming |\n",
        encoding="utf-8",
    )
    monkeypatch.setattr(lessons, "lessons_dir", lambda: folder)
    assert [(e.number, e.status) for e in lessons.table_of_contents()] == [(1, "ready"), (2, "coming")]
    with pytest.raises(lessons.LessonsNotFoundError, match="coming"):
        lessons.lesson_path(2)


def test_a_missing_lesson_is_reported_in_one_line(tmp_path: Path) -> None:
    result = run_cli("run", "99", cwd=tmp_path)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "no lesson '99'" in result.stderr


def test_a_missing_lessons_folder_is_reported_in_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(minise, "__file__", str(tmp_path / "site-packages" / "minise" / "__init__.py"))
    with pytest.raises(lessons.LessonsNotFoundError) as info:
        lessons.lesson_files()
    message = str(info.value)
    assert "\n" not in message and "no lessons folder at" in message and "pip install -e ." in message


def test_extract_blocks() -> None:
    text = "\n".join(
        [
            "# title",  # 1
            "```python",  # 2
            "a = 1",  # 3
            "```",  # 4
            "```text",  # 5
            "not code",  # 6
            "```",  # 7
            "~~~python",  # 8
            "b = 2",  # 9
            "~~~",  # 10
            "````python",  # 11
            "s = '''",  # 12
            "```",  # 13
            "'''",  # 14
            "````",  # 15
            "- a list item:",  # 16
            "  ```python",  # 17
            "  c = 3",  # 18
            "  ```",  # 19
            "```bash",  # 20
            "python -m minise.lessons list",  # 21
            "```",  # 22
        ]
    )
    blocks = lessons.extract_blocks(text)
    assert blocks == [(3, "a = 1\n"), (9, "b = 2\n"), (12, "s = '''\n```\n'''\n"), (18, "c = 3\n")]


def test_the_last_expression_of_a_block_is_shown(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "98_echo.md"
    path.write_text("```python\nvalue = 6 * 7\nvalue\n```\n\n```python\nNone\n```\n", encoding="utf-8")
    ns = lessons.run_lesson(path, figures=tmp_path / "figures")
    out = capsys.readouterr().out
    assert ns["value"] == 42 and "--- block 1 (line 2) ---\n42\n--- block 2 (line 7) ---\n" in out


def _writes(name: str) -> str:
    return f'```python\n(FIGURES / "{name}").write_bytes(b"png")\n```\n'


def test_figures_written_names_only_what_this_run_wrote(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first, second = tmp_path / "97_first.md", tmp_path / "96_second.md"
    first.write_text(_writes("97_a.png") + _writes("97_kept.png"), encoding="utf-8")
    second.write_text(_writes("96_b.png") + _writes("97_kept.png"), encoding="utf-8")
    folder = tmp_path / "figures"
    assert lessons._run([str(first)], full=False, figures=str(folder)) == 0
    (folder / "touched_just_before.png").write_bytes(b"png")  # within a second of the next run's start
    assert lessons._run([str(second)], full=False, figures=str(folder)) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    # the second run wrote 96_b.png and rewrote 97_kept.png; 97_a.png and the touched file are older
    assert last.endswith("2 figure(s) written to " + f"{folder}/: 96_b.png, 97_kept.png ===")
    (tmp_path / "95_none.md").write_text("```python\nx = 1\n```\n", encoding="utf-8")
    assert lessons._run([str(tmp_path / "95_none.md")], full=False, figures=str(folder)) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].endswith("no figures written ===")


# --------------------------------------------------------------------------------------------------
# the lessons' shape and the table of contents
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", LESSONS, ids=[p.stem for p in LESSONS])
def test_lesson_shape(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    for part in ("**You will be able to:**", "**You need:**", "**Time:**", "## Summary", "## Exercises"):
        assert part in text, f"{path.name} lacks {part!r}"
    blocks = lessons.extract_blocks(text)
    first = blocks[0][1]
    assert 'globals().get("FIGURES")' in first and 'globals().get("FAST"' in first, "first block must define both"
    code = "\n".join(c for _, c in blocks)
    assert "assert True" not in code
    assert not re.search(r"^\s*(minise(\.\w+)+\s*=[^=]|setattr\(\s*minise)", code, re.MULTILINE), "lessons never patch"
    assert 'matplotlib.use("Agg")' in code or "savefig" not in code


def test_table_of_contents_agrees_with_the_lessons() -> None:
    entries = {e.number: e for e in lessons.table_of_contents()}
    readme = (lessons.lessons_dir() / "README.md").read_text(encoding="utf-8")
    for path in LESSONS:
        title, time = lessons.lesson_header(path.read_text(encoding="utf-8"))
        row = next(line for line in readme.splitlines() if line.startswith(f"| {path.name[:2]} |"))
        assert f"[{title}]({path.name})" in row and f"| {time} |" in row and row.rstrip().endswith("| ready |")
        assert entries[int(path.name[:2])].status == "ready"
    assert all(e.status == "ready" and e.title and e.time for e in entries.values())


def test_jupytext_reads_the_lessons_as_notebooks() -> None:
    jupytext = pytest.importorskip("jupytext", reason="jupytext is optional (pip install jupytext)")
    for path in LESSONS:
        notebook = jupytext.read(path)
        cells = [c.source.strip() for c in notebook.cells if c.cell_type == "code"]
        assert cells == [code.strip() for _, code in lessons.extract_blocks(path.read_text(encoding="utf-8"))]


# --------------------------------------------------------------------------------------------------
# the figures the lessons show: every linked image exists, every committed figure is linked
# --------------------------------------------------------------------------------------------------
_IMAGE = re.compile(r"!\[[^\]]*\]\((?P<path>[^)\s]+)\)")
FIGURE_BYTES = 150_000  # "small": a lesson's figure is a PNG of at most ~100 KB


def image_links(text: str) -> list[str]:
    """The targets of the Markdown images ``![alt](target)`` in a text, in order."""
    return [m["path"] for m in _IMAGE.finditer(text)]


def figure_problems(folder: Path) -> list[str]:
    """What is wrong with the figures of the lessons in ``folder``: links to missing files, figures that no
    lesson links, links outside ``figures/`` or not named after their lesson, figures over FIGURE_BYTES."""
    problems: list[str] = []
    linked: set[str] = set()
    for path in sorted(folder.glob(lessons.LESSON_PATTERN)):
        for target in image_links(path.read_text(encoding="utf-8")):
            linked.add(target)
            if not target.startswith(f"figures/{path.name[:2]}_"):
                problems.append(f"{path.name}: image {target} is not figures/{path.name[:2]}_<name>")
            if not (folder / target).is_file():
                problems.append(f"{path.name}: links {target}, which does not exist")
    for png in sorted((folder / "figures").glob("*.png")):
        if f"figures/{png.name}" not in linked:
            problems.append(f"figures/{png.name} is not linked by any lesson")
        if png.stat().st_size > FIGURE_BYTES:
            problems.append(f"figures/{png.name} has {png.stat().st_size:,} bytes (at most {FIGURE_BYTES:,})")
    return problems


def test_every_linked_figure_exists_and_every_figure_is_linked() -> None:
    problems = figure_problems(lessons.lessons_dir())
    assert not problems, "\n".join(problems)


def test_the_figure_check_bites(tmp_path: Path) -> None:
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "01_there.png").write_bytes(b"\x89PNG")
    (tmp_path / "figures" / "01_orphan.png").write_bytes(b"\x89PNG")
    (tmp_path / "figures" / "01_huge.png").write_bytes(b"\x89PNG" + bytes(FIGURE_BYTES))
    (tmp_path / "01_a.md").write_text(
        "![ok](figures/01_there.png) ![gone](figures/01_missing.png) ![big](figures/01_huge.png)"
        " ![other lesson's](figures/02_x.png)",
        encoding="utf-8",
    )
    problems = "\n".join(figure_problems(tmp_path))
    assert "01_a.md: links figures/01_missing.png, which does not exist" in problems
    assert "figures/01_orphan.png is not linked by any lesson" in problems
    assert "figures/01_huge.png has" in problems
    assert "image figures/02_x.png is not figures/01_<name>" in problems
    assert "01_there.png" not in problems


@pytest.mark.parametrize("path", LESSONS, ids=[p.stem for p in LESSONS])
def test_running_a_lesson_writes_exactly_the_figures_it_links(
    path: Path, namespace: Callable[[Path], dict[str, Any]]
) -> None:
    ns = namespace(path)  # the lesson, run in fast mode into a fresh folder
    written = sorted(f"figures/{p.name}" for p in Path(ns["FIGURES"]).glob("*.png"))
    assert written == sorted(image_links(path.read_text(encoding="utf-8"))), "regenerate with --figures lessons/figures"


def test_the_notation_table_is_linked_from_the_readme_and_every_lesson() -> None:
    assert (lessons.lessons_dir() / "NOTATION.md").is_file()
    for path in [lessons.lessons_dir() / "README.md", *LESSONS]:
        assert "](NOTATION.md)" in path.read_text(encoding="utf-8"), f"{path.name} does not link NOTATION.md"


# --------------------------------------------------------------------------------------------------
# lessons 12 and 13: where they look for cifar10-mini
# --------------------------------------------------------------------------------------------------
LESSON_12 = lessons.lessons_dir() / "12_training_on_cifar10.md"


@pytest.mark.parametrize("path", [LESSON_12, LESSON_13], ids=["12", "13"])
def test_lessons_12_and_13_find_cifar10_in_the_stated_order(
    path: Path, namespace: Callable[[Path], dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    find_cifar10 = namespace(path)["find_cifar10"]

    def holding_cifar(folder: Path) -> Path:
        (folder / "cifar-10-batches-py").mkdir(parents=True)
        return folder

    monkeypatch.delenv("CIFAR10_DIR", raising=False)
    monkeypatch.delenv("MINISE_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    explicit = tmp_path / "mine"
    assert find_cifar10(str(explicit)) == (None, [explicit])  # a chosen folder without the data: no search
    monkeypatch.setenv("CIFAR10_DIR", str(holding_cifar(explicit)))
    assert find_cifar10() == (explicit, [explicit])
    monkeypatch.delenv("CIFAR10_DIR")

    in_cwd = holding_cifar(tmp_path / "data" / "cifar10-mini")
    assert find_cifar10()[0] == in_cwd  # the working directory, before ../shared/data beside the repository
    monkeypatch.setenv("MINISE_DATA", str(tmp_path / "cache"))
    downloaded = holding_cifar(tmp_path / "cache")  # where minise.train --download puts CIFAR-10
    assert find_cifar10()[0] == downloaded  # $MINISE_DATA comes first
    mini = holding_cifar(tmp_path / "cache" / "cifar10-mini")
    found, tried = find_cifar10()
    assert found == mini and tried.index(mini) < tried.index(downloaded) < tried.index(in_cwd)


@pytest.mark.parametrize("number", [*range(2, 14), 15])
def test_each_lesson_with_an_exercise_says_how_to_get_and_check_it(number: int) -> None:
    """The "Exercise you write and check" section: the two commands, and how to use the solution honestly."""
    path = lessons.lesson_path(number)
    text = path.read_text(encoding="utf-8")
    section = text[text.index("## Exercise you write and check") :]
    for command in (f"python -m minise.lessons exercise {number:02d}", f"python -m minise.lessons check {number:02d}"):
        assert command in section, f"{path.name}: {command!r} missing from its exercise section"
    assert "--solution" in section and "Try first" in section


def test_the_exercise_commands_keep_list_and_run_working(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert lessons.main(["list"]) == 0
    assert lessons.main(["exercise", "03", "--to", str(tmp_path)]) == 0
    assert lessons.main(["check", "03", "--file", str(tmp_path / "ex03_gradcheck.py")]) == 1
    assert "not written yet" in capsys.readouterr().out


# --------------------------------------------------------------------------------------------------
# lesson 13, section 7: a pretrained SE-ResNet-50 (random weights in timm's format stand in here)
# --------------------------------------------------------------------------------------------------
def test_lesson_13_pretrained_section_finds_reads_and_analyses_timm_weights(
    namespace: Callable[[Path], dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("safetensors", reason="safetensors is not installed (pip install 'minise[weights]')")
    ns = namespace(LESSON_13)
    find_weights, analyse = ns["find_se_resnet50_weights"], ns["analyse_pretrained"]
    root = ns["find_imagenette"]()
    if root is None:
        pytest.skip("no imagenette-mini beside the repository: the section has no images to analyse")
    monkeypatch.setenv("MINISE_SE_RESNET50_WEIGHTS", str(tmp_path / "absent.safetensors"))
    assert find_weights() is None  # a chosen file that is not there: the section is skipped
    monkeypatch.delenv("MINISE_SE_RESNET50_WEIGHTS")
    monkeypatch.setenv("MINISE_DATA", str(tmp_path / "cache"))
    assert find_weights() is None
    minise.manual_seed(0)
    cached = tmp_path / "cache" / "weights" / "timm--seresnet50.a1_in1k.safetensors"
    models.save_timm(models.se_resnet50(), cached)
    assert find_weights() == cached  # the documented place in the cache
    chosen = tmp_path / "mine.safetensors"
    chosen.write_bytes(cached.read_bytes())
    monkeypatch.setenv("MINISE_SE_RESNET50_WEIGHTS", str(chosen))
    assert find_weights() == chosen  # the variable comes first

    gates, labels, accuracy, spec = analyse(chosen, root, per_class=2, image_size=64, out=tmp_path / "out", shuffles=3)
    np.testing.assert_array_equal(np.bincount(labels), [2] * 10)
    assert len(gates) == 16 and gates["layer4.2.se"].shape == (20, 2048) and gates["layer1.0.se"].shape == (20, 256)
    assert all(np.all((g >= 0) & (g <= 1)) for g in gates.values()) and 0 <= accuracy <= 1
    assert set(spec) == set(gates) and all(np.isfinite(row["times_chance"]) for row in spec.values())
    assert (tmp_path / "out" / "fig6.png").stat().st_size > 0 and (tmp_path / "out" / "fig7.png").stat().st_size > 0
    # the lesson's accuracy check bites: untrained weights are not mistaken for ImageNet ones
    assert accuracy <= 0.5
