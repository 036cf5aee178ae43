"""What every command line of minise shares: usage errors in one line, and a --help that shows each
option's help and default exactly once."""

from __future__ import annotations

import argparse
from typing import Any


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and exit status 2), not a usage block."""

    def error(self, message: str) -> Any:
        self.exit(2, f"{self.prog}: {message} (see --help)\n")

    def parse_args(self, args: Any = None, namespace: Any = None) -> Any:  # type: ignore[override]
        """Parse, then check ``MINISE_BACKEND`` once: a bad value is a one-line usage error, not a traceback."""
        parsed = super().parse_args(args, namespace)
        from minise import backend  # noqa: PLC0415

        try:
            backend.get_backend()
        except ValueError as e:
            self.exit(2, f"{self.prog}: {e}\n")
        return parsed


class HelpFormatter(argparse.HelpFormatter):
    """Each option's default, once: ``(default: X)`` is appended to its help unless the help already says
    what the default is (an option whose default is None must say it in words, e.g. "default: all"). A
    flag (``store_true``) shows none: it is off unless given. A hidden option stays hidden."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if (
            "default" in text
            or not action.option_strings
            or action.required
            or action.nargs == 0
            or action.default in (None, argparse.SUPPRESS)
        ):
            return action.help
        return f"{text} (default: %(default)s)"
