"""A progress bar for a training epoch, on stderr, that suits both a terminal and a log file.

On a terminal: tqdm when it is installed, otherwise a one-line bar redrawn in place with carriage
returns. When stderr is not a terminal (a log file, a pipe, CI), carriage-return frames would pile up
in the log: instead one plain line is written each time another tenth of the epoch is done (and when
the bar closes early, at the step reached), so a log reads line by line.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

LOG_PARTS = 10  # without a terminal: a line per tenth of the epoch


class Progress:
    """``bar = Progress(total, desc)``; ``bar.update(postfix_dict)`` after each step; ``bar.close()``.

    ``stream`` defaults to ``sys.stderr``; whether it is a terminal (``isatty()``) chooses the form."""

    def __init__(
        self, total: int, desc: str, initial: int = 0, enabled: bool = True, stream: TextIO | None = None
    ) -> None:
        self.total, self.desc, self.n, self.enabled = total, desc, initial, enabled
        self.stream = stream if stream is not None else sys.stderr
        isatty = getattr(self.stream, "isatty", None)
        self.tty = bool(isatty()) if callable(isatty) else False
        self._tqdm: Any = None
        self._last = 0.0
        self._logged = initial  # the step of the last line written (log form)
        self._postfix: dict[str, str] = {}
        if not enabled or not self.tty:
            return
        try:
            from tqdm import tqdm  # noqa: PLC0415  (optional)

            self._tqdm = tqdm(total=total, desc=desc, initial=initial, leave=True, dynamic_ncols=True, file=self.stream)
        except ImportError:
            self._tqdm = None

    def update(self, postfix: dict[str, str]) -> None:
        self.n += 1
        self._postfix = postfix
        if not self.enabled:
            return
        if self._tqdm is not None:
            self._tqdm.set_postfix(postfix, refresh=False)
            self._tqdm.update(1)
        elif self.tty:
            now = time.perf_counter()
            if now - self._last >= 0.5 or self.n >= self.total:
                self._last = now
                self._write("\r" + self._line())
        elif self._part(self.n) > self._part(self._logged):
            self._log()

    def _part(self, n: int) -> int:
        """How many tenths of the epoch n steps complete (integers: no rounding surprises)."""
        return LOG_PARTS * n // max(self.total, 1)

    def _line(self) -> str:
        width = 24
        done = int(width * self.n / max(self.total, 1))
        fields = " ".join(f"{k}={v}" for k, v in self._postfix.items())
        return f"{self.desc} [{'#' * done}{'.' * (width - done)}] {self.n}/{self.total} {fields}"

    def _log(self) -> None:
        """One line, no carriage return: ``epoch 1/30  40% 16/39 loss=... acc=...``."""
        self._logged = self.n
        fields = " ".join(f"{k}={v}" for k, v in self._postfix.items())
        percent = int(100 * self.n / max(self.total, 1))
        self._write(f"{self.desc} {percent:3d}% {self.n}/{self.total} {fields}\n")

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()

    def close(self) -> None:
        if not self.enabled:
            return
        if self._tqdm is not None:
            self._tqdm.close()
        elif self.tty:
            self._write("\n")
        elif self.n > self._logged:  # stopped between two tenths: say where
            self._log()
