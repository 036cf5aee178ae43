"""A progress bar: tqdm when it is installed, otherwise a plain one-line bar on stderr."""

from __future__ import annotations

import sys
import time
from typing import Any


class Progress:
    """``bar = Progress(total, desc)``; ``bar.update(postfix_dict)`` after each step; ``bar.close()``."""

    def __init__(self, total: int, desc: str, initial: int = 0, enabled: bool = True) -> None:
        self.total, self.desc, self.n, self.enabled = total, desc, initial, enabled
        self._tqdm: Any = None
        self._last = 0.0
        self._start = time.perf_counter()
        if not enabled:
            return
        try:
            from tqdm import tqdm  # noqa: PLC0415  (optional)

            self._tqdm = tqdm(total=total, desc=desc, initial=initial, leave=True, dynamic_ncols=True)
        except ImportError:
            self._tqdm = None

    def update(self, postfix: dict[str, str]) -> None:
        self.n += 1
        if not self.enabled:
            return
        if self._tqdm is not None:
            self._tqdm.set_postfix(postfix, refresh=False)
            self._tqdm.update(1)
            return
        now = time.perf_counter()
        if now - self._last < 0.5 and self.n < self.total:
            return
        self._last = now
        width = 24
        done = int(width * self.n / max(self.total, 1))
        fields = " ".join(f"{k}={v}" for k, v in postfix.items())
        sys.stderr.write(f"\r{self.desc} [{'#' * done}{'.' * (width - done)}] {self.n}/{self.total} {fields}")
        sys.stderr.flush()

    def close(self) -> None:
        if not self.enabled:
            return
        if self._tqdm is not None:
            self._tqdm.close()
        else:
            sys.stderr.write("\n")
            sys.stderr.flush()
