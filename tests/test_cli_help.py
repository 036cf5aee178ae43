"""--help of train, evaluate, bench and lessons (each subcommand): every option has help text and shows its
default exactly once (never "(default: ...) (default: None)"), read from the --help output itself.
The checker is first shown to catch both mistakes on a planted parser."""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable

import pytest

from minise import bench, evaluate, lessons, train


def help_entries(text: str) -> dict[str, str]:
    """argparse's --help output as {invocation: help text}, e.g. {"--lr LR": "peak learning rate ..."}.

    An entry starts on a line indented by exactly two spaces; its help follows after two or more spaces
    or on the more indented lines below it."""
    entries: dict[str, str] = {}
    current: str | None = None
    for line in text.splitlines():
        start = re.match(r"^  (\S.*?)(?:\s{2,}(\S.*))?$", line)
        if start:
            current = start.group(1)
            entries[current] = start.group(2) or ""
        elif current is not None and re.match(r"^\s{4,}\S", line):
            entries[current] = f"{entries[current]} {line.strip()}".strip()
        else:
            current = None
    return entries


def usage_of(text: str) -> str:
    """The usage paragraph on one line, without the program's name ("python -m minise.train")."""
    return " ".join(text.split("\n\n", 1)[0].split()).replace("python -m ", "")


def problems(text: str) -> list[str]:
    """What is wrong with a --help output: options without help, defaults shown twice or not at all."""
    usage = usage_of(text)
    found = []
    entries = {k: v for k, v in help_entries(text).items() if k.startswith("-") and not k.startswith("-h")}
    for invocation, help_text in entries.items():
        option = invocation.split(",")[0].split()[0]
        if not help_text:
            found.append(f"{option}: no help text")
            continue
        n = help_text.count("default")
        if n > 1 or "default: None" in help_text:
            found.append(f"{option}: default shown {n} times: {help_text!r}")
        takes_value = " " in invocation.split(",")[0]  # "--lr LR"; a flag is the option string alone
        required = re.search(rf"(?<!\[){re.escape(option)}\b", usage) is not None
        if takes_value and not required and n == 0:
            found.append(f"{option}: no default shown: {help_text!r}")
    options_in_usage = set(re.findall(r"(?<![\w-])--?[a-z][\w-]*", usage)) - {"-h"}
    listed = [k.split(",")[0].split()[0] for k in entries]
    for option in sorted(options_in_usage):
        if option not in listed and not any(option in k for k in entries):
            found.append(f"{option}: in the usage but not listed")
    for option in set(listed):
        if listed.count(option) > 1:
            found.append(f"{option}: listed {listed.count(option)} times")
    return found


def help_of(main: Callable[[list[str]], int], argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--help"])
    assert exc.value.code == 0
    return capsys.readouterr().out


# ------------------------------------------------------------------------------------- the checker bites
def test_the_checker_catches_a_doubled_default_a_missing_help_and_a_missing_default() -> None:
    p = argparse.ArgumentParser(prog="planted", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--size", type=int, default=3, help="side (default: 3)")  # doubled by the formatter
    p.add_argument("--epochs", type=int, default=30)  # no help at all
    p.add_argument("--out", default=None, help="run folder")  # "(default: None)"
    p.add_argument("--dir", help="a folder")  # no default: plain formatter below
    q = argparse.ArgumentParser(prog="planted")
    q.add_argument("--dir", help="a folder")
    q.add_argument("--fine", type=int, default=2, help="fine (default: 2)")
    found = problems(p.format_help())
    assert any(f.startswith("--size: default shown 2 times") for f in found), found
    assert "--epochs: no help text" in found, found
    assert any(f.startswith("--out: default shown") for f in found), found
    assert problems(q.format_help()) == ["--dir: no default shown: 'a folder'"]


def test_help_entries_reads_wrapped_help() -> None:
    text = "usage: x [-h] [--a A]\n\noptions:\n  -h, --help  show\n  --a A       first line\n              second\n"
    assert help_entries(text) == {"-h, --help": "show", "--a A": "first line second"}


# ------------------------------------------------------------------------------------- the commands
def test_train_help(capsys: pytest.CaptureFixture[str]) -> None:
    text = help_of(train.main, [], capsys)
    assert problems(text) == []
    entries = help_entries(text)
    for option in ("--epochs", "--lr", "--batch-size", "--momentum", "--squeeze", "--gate", "--overwrite"):
        (help_text,) = [v for k, v in entries.items() if k.split()[0] == option]
        assert help_text, option
    assert "(default: 0.9)" in entries["--momentum MOMENTUM"]
    assert "--stop-after-steps" not in text  # for tests only


def test_train_passes_its_own_momentum_to_sgd(tmp_path: object) -> None:
    """optim.SGD's default momentum is PyTorch's 0; the training recipe's 0.9 is passed explicitly."""
    args = train.build_parser().parse_args(["--train-images", "16", "--batch-size", "8", "--out", f"{tmp_path}/r"])
    assert args.momentum == 0.9
    assert train.Run(args).optimizer.param_groups[0]["momentum"] == 0.9


def test_evaluate_help(capsys: pytest.CaptureFixture[str]) -> None:
    text = help_of(evaluate.main, [], capsys)
    assert problems(text) == []
    assert "--no-plot" in text and "--out DIR" in text


def test_lessons_help(capsys: pytest.CaptureFixture[str]) -> None:
    text = help_of(lessons.main, [], capsys)
    assert problems(text) == []
    (choices,) = re.findall(r"\{([\w,]+)\}", usage_of(text))
    for command in choices.split(","):
        sub = help_of(lessons.main, [command], capsys)
        assert problems(sub) == [], (command, sub)


@pytest.mark.parametrize("command", ["ops", "train", "data", "gpu", "distributed", "scaling"])
def test_bench_help_of_each_subcommand(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    text = help_of(bench.main, [command], capsys)
    assert problems(text) == [], text


def test_bench_help_hides_its_internal_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    text = help_of(bench.main, [], capsys)
    assert problems(text) == []
    assert "train-child" not in text
