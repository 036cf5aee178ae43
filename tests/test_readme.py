"""The README's two newcomer commands: the test command is exactly what CI runs, and the main-job
command names options that exist."""

from __future__ import annotations

import re
from pathlib import Path

from minise.train import build_parser

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Two commands", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.+?)\n```", section)


def test_readme_opens_with_two_commands() -> None:
    commands = _readme_commands()
    assert len(commands) == 2, commands
    assert "minise.train" in commands[0] and "--dataset shapes" in commands[0]
    assert "pytest" in commands[1]


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert _readme_commands()[1] in ci


def test_the_main_command_parses() -> None:
    command = _readme_commands()[0]
    argv = command.split("-m minise.train", 1)[1].split()
    args = build_parser().parse_args(argv)
    assert args.dataset == "shapes" and args.model == "se_resnet20"
