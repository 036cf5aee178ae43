"""The progress bar: redrawn in place on a terminal, plain lines (no carriage returns) in a log."""

from __future__ import annotations

import io

import pytest

from minise.progress import Progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def steps(bar: Progress, n: int) -> None:
    for i in range(n):
        bar.update({"loss": f"{1 / (i + 1):.3f}", "acc": "50.0%"})


@pytest.mark.parametrize("total", [1, 3, 4, 10, 30, 39, 391])
def test_a_log_gets_a_line_per_tenth_and_no_carriage_return(total: int) -> None:
    log = io.StringIO()  # isatty() is False, as for a file or a pipe
    bar = Progress(total, "epoch 1/2", stream=log)
    steps(bar, total)
    bar.close()
    text = log.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert text.endswith("\n") and len(lines) == min(total, 10), lines
    assert lines[-1].startswith("epoch 1/2 100%") and f"{total}/{total}" in lines[-1] and "loss=" in lines[-1]
    percents = [int(line.split()[2].rstrip("%")) for line in lines]
    assert percents == sorted(percents) and all(p > 0 for p in percents)


def test_a_log_says_where_an_interrupted_epoch_stopped() -> None:
    log = io.StringIO()
    bar = Progress(100, "epoch 3/5", initial=40, stream=log)  # resumed at step 40
    steps(bar, 25)
    bar.close()
    lines = log.getvalue().splitlines()
    assert [line.split()[3] for line in lines] == ["50/100", "60/100", "65/100"]


def test_a_terminal_gets_one_line_redrawn_in_place(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_tqdm(name: str, *args: object, **kwargs: object) -> object:
        if name == "tqdm":
            raise ImportError("tqdm hidden for this test")
        return real_import(name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(builtins, "__import__", no_tqdm)
    term = Terminal()
    bar = Progress(4, "epoch 1/1", stream=term)
    steps(bar, 4)
    bar.close()
    text = term.getvalue()
    assert text.startswith("\r") and text.endswith("\n") and text.count("\n") == 1
    assert "4/4" in text


def test_disabled_writes_nothing() -> None:
    log = io.StringIO()
    bar = Progress(10, "epoch 1/1", enabled=False, stream=log)
    steps(bar, 10)
    bar.close()
    assert log.getvalue() == "" and bar.n == 10
