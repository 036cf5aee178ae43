"""Exercise 15: the ring all-reduce and the gradient average of data-parallel SGD,
``ring_allreduce(arrays) -> (results, sent)`` and ``average_gradients(grads) -> averages``.

N processes are simulated as a list of N arrays, as in lesson 15, section 2. Checked against the plain
sum (and the sum over N) on process counts and array sizes drawn by hypothesis (one process, arrays
shorter than N, so that some chunks are empty); the bytes each process sends must be the ring's,
2 (N - 1) / N of the array. The hints recognise the all-gather skipped, the wrong chunk sent in the
reduce-scatter, a complete chunk added again in the all-gather (counted twice), the naive all-reduce
through process 0, and the average that forgets to divide by N.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np

from minise.exercises.core import (
    Draw,
    Exercise,
    Mistake,
    PartFailed,
    Report,
    close,
    compare,
    draw_cases,
    learner_function,
    rng_for,
)

SOLUTION = '''"""Exercise 15: the ring all-reduce and the gradient average (lesson 15, sections 1 and 2).

Start over:        python -m minise.lessons exercise 15 --force   (this file is kept as .bak)
Check it:          python -m minise.lessons check 15
"""

import numpy as np


def ring_allreduce(arrays):
    """The ring all-reduce of ``arrays``, one 1-D float64 array of length M per process (N of them).

    Returns (results, sent): results[r] is what process r holds at the end, the element-wise sum of all
    the arrays; sent[r] the bytes process r sent (``.nbytes`` of every chunk it passed on).
    Cut every array into N chunks with np.array_split (chunks[r][c]: chunk c of process r), then
        reduce-scatter, steps s = 0 .. N-2: every process r sends chunk (r - s) mod N to process r + 1
            (mod N), which ADDS it to its own chunk; after it, process r holds the complete chunk (r + 1) mod N;
        all-gather, steps s = 0 .. N-2: every process r sends chunk (r + 1 - s) mod N, complete, to process
            r + 1, which REPLACES its own chunk with it.
    All processes send at the same time: take copies of what every process sends before anyone adds.
    """
    # >>> your code
    n = len(arrays)
    chunks = [np.array_split(np.array(a, dtype=np.float64), n) for a in arrays]  # chunks[r][c]
    sent = [0] * n
    for step in range(n - 1):  # reduce-scatter
        outgoing = [(r, (r - step) % n, chunks[r][(r - step) % n].copy()) for r in range(n)]
        for r, c, data in outgoing:
            chunks[(r + 1) % n][c] += data
            sent[r] += data.nbytes
    for step in range(n - 1):  # all-gather
        outgoing = [(r, (r + 1 - step) % n, chunks[r][(r + 1 - step) % n].copy()) for r in range(n)]
        for r, c, data in outgoing:
            chunks[(r + 1) % n][c] = data
            sent[r] += data.nbytes
    return [np.concatenate(c) for c in chunks], sent
    # <<<


def average_gradients(grads):
    """grads[r]: process r's gradient (1-D) of the mean loss over its own b images. Return every process's
    copy of the gradient of the mean loss over all N b images (section 1), using your ring_allreduce."""
    # >>> your code
    sums, _ = ring_allreduce(grads)
    return [s / len(grads) for s in sums]
    # <<<
'''

REDUCE_SCATTER_LINE = "        outgoing = [(r, (r - step) % n, chunks[r][(r - step) % n].copy()) for r in range(n)]\n"
ALL_GATHER = (
    "    for step in range(n - 1):  # all-gather\n"
    "        outgoing = [(r, (r + 1 - step) % n, chunks[r][(r + 1 - step) % n].copy()) for r in range(n)]\n"
    "        for r, c, data in outgoing:\n"
    "            chunks[(r + 1) % n][c] = data\n"
    "            sent[r] += data.nbytes\n"
)
REPLACE_LINE = "            chunks[(r + 1) % n][c] = data\n"
AVERAGE_LINE = "    return [s / len(grads) for s in sums]\n"

# (hint, the solution's text, what a learner who made the mistake wrote instead)
VARIANTS: list[tuple[str, str, str]] = [
    (
        "only one chunk per process is complete: you skipped the all-gather. After the reduce-scatter each "
        "process holds one complete chunk; N - 1 more steps must pass the complete chunks around the ring",
        ALL_GATHER,
        "",
    ),
    (
        "the reduce-scatter sends the wrong chunk: at step s process r sends chunk (r - s) mod N, the one it has "
        "just received and added to (at step 0, chunk r)",
        REDUCE_SCATTER_LINE,
        REDUCE_SCATTER_LINE.replace("(r - step) % n", "(r + step) % n"),
    ),
    (
        "some values are counted twice: in the all-gather the chunk a process receives is already the complete "
        "sum, so it replaces its own chunk (=); adding it (+=) sums that chunk again",
        REPLACE_LINE,
        REPLACE_LINE.replace("] = data", "] += data"),
    ),
]
NOT_DIVIDED_HINT = (
    "your averages are N times too large: the all-reduce gives the sum of the N gradients; divide it by N, "
    "the number of processes (the gradient of a mean over N b images is the mean of the N per-process means)"
)
NAIVE_HINT = (
    "one process sends far more than the others: that is the all-reduce through one process, whose link is the "
    "bottleneck. In the ring every process sends 2 (N - 1) chunks of about M / N elements"
)


def _variant(text: str) -> Callable[..., Any]:
    """The solution's ring_allreduce with a classic mistake planted in its text."""
    namespace: dict[str, Any] = {}
    exec(compile(text, "<exercise 15 variant>", "exec"), namespace)  # noqa: S102  (our own text)
    return namespace["ring_allreduce"]  # type: ignore[no-any-return]


def _build(draw: Draw) -> dict[str, Any]:
    return {"n": draw(1, 6), "m": draw(1, 40)}


def cases() -> list[dict[str, Any]]:
    """One process; arrays shorter than N (empty chunks); one element; then drawn (N, M)."""
    edge = [{"n": 1, "m": 5}, {"n": 4, "m": 3}, {"n": 2, "m": 1}, {"n": 3, "m": 10}]
    return draw_cases(_build, edge, count=10)


def _arrays(case: dict[str, Any], i: int) -> list[np.ndarray]:
    rng = rng_for(i)
    return [rng.standard_normal(case["m"]) for _ in range(case["n"])]


def _results(out: Any, n: int, fn_name: str) -> list[Any]:
    """The learner's list of N per-process arrays, or a failure that says what came back instead."""
    if not isinstance(out, (list, tuple)) or len(out) != n:
        got = f"{len(out)} values" if isinstance(out, (list, tuple)) else f"a {type(out).__name__}"
        raise ValueError(f"{fn_name} must return a list of {n} arrays (one per process), got {got}")
    return list(out)


def check(module: ModuleType, report: Report) -> None:
    ring = learner_function(module, "ring_allreduce")
    average = learner_function(module, "average_gradients")
    variants = [(hint, _variant(SOLUTION.replace(old, new))) for hint, old, new in VARIANTS]
    all_cases = cases()

    with report.part("ring_allreduce: every process holds the sum"):
        for i, case in enumerate(all_cases):
            n, m = case["n"], case["m"]
            arrays = _arrays(case, i)
            report.calling = f"ring_allreduce on N = {n} arrays of M = {m}"
            out = ring([a.copy() for a in arrays])
            if not isinstance(out, tuple) or len(out) != 2:
                report.fail("ring_allreduce must return two values, (results, sent)")
                raise PartFailed
            results = _results(out[0], n, "ring_allreduce")
            want = np.sum(arrays, axis=0)
            for r, got in enumerate(results):
                problem = compare(got, want, rtol=1e-10, atol=1e-12)
                if problem is None:
                    continue
                hints = [h for h, v in variants if _all_close(results, v([a.copy() for a in arrays])[0])]
                report.fail(
                    f"ring_allreduce: process {r} of N = {n} (arrays of M = {m}) does not hold the sum", hints, problem
                )
                raise PartFailed
        report.ok(f"ring_allreduce: every process holds the sum on {len(all_cases)} cases (N = 1 .. 6)")

    with report.part("ring_allreduce: the bytes each process sends"):
        for i, case in enumerate(all_cases):
            n, m = case["n"], case["m"]
            report.calling = f"ring_allreduce on N = {n} arrays of M = {m}"
            sent = _results(ring(_arrays(case, i))[1], n, "ring_allreduce's sent")
            total, most = 2 * (n - 1) * m * 8, 2 * (n - 1) * -(-m // n) * 8
            if sum(sent) == total and max(sent) <= most:
                continue
            hints = [NAIVE_HINT] if max(sent) > most and sum(sent) >= total else []
            if sum(sent) == total // 2:
                hints.append(VARIANTS[0][0])
            report.fail(
                f"ring_allreduce, N = {n}, M = {m} float64: your processes sent {list(sent)} bytes; the ring sends "
                f"{total} in all, at most {most} per process (2 (N - 1) chunks of at most ceil(M / N) elements)",
                hints,
            )
            raise PartFailed
        report.ok("ring_allreduce: each process sends 2 (N - 1) / N of the array, as the ring does")

    ring_wrong = report.failures > 0
    with report.part("average_gradients: the gradient of the global-batch mean"):
        for i, case in enumerate(all_cases):
            n, m = case["n"], case["m"]
            grads = _arrays(case, 100 + i)
            report.calling = f"average_gradients on N = {n} gradients of M = {m}"
            results = _results(average([g.copy() for g in grads]), n, "average_gradients")
            want = np.sum(grads, axis=0) / n
            for r, got in enumerate(results):
                problem = compare(got, want, rtol=1e-10, atol=1e-12)
                if problem is None:
                    continue
                hints = [NOT_DIVIDED_HINT] if n > 1 and close(got, want * n, rtol=1e-9) else []
                if ring_wrong:
                    hints.append("average_gradients uses your ring_allreduce: make that right first (above)")
                report.fail(
                    f"average_gradients: process {r} of N = {n} (gradients of M = {m}) does not hold the average",
                    hints,
                    problem,
                )
                raise PartFailed
        report.ok(f"average_gradients: every process holds the mean of the N gradients on {len(all_cases)} cases")


def _all_close(results: list[Any], variant: list[np.ndarray]) -> bool:
    return len(results) == len(variant) and all(close(a, b, rtol=1e-9) for a, b in zip(results, variant))


EXERCISE = Exercise(
    number=15,
    title="the ring all-reduce and the gradient average: ring_allreduce, average_gradients",
    filename="ex15_ring_allreduce.py",
    solution=SOLUTION,
    check=check,
    mistakes=(
        Mistake("all-gather skipped", ALL_GATHER, "", "you skipped the all-gather"),
        Mistake("wrong chunk sent", VARIANTS[1][1], VARIANTS[1][2], "the reduce-scatter sends the wrong chunk"),
        Mistake("complete chunk added twice", REPLACE_LINE, VARIANTS[2][2], "some values are counted twice"),
        Mistake("average not divided by N", AVERAGE_LINE, "    return sums\n", "N times too large"),
    ),
)
