"""Running a study: every variant x seed is an ordinary ``python -m minise.train`` run in its own folder.

``DIR/runs/<variant>-s<seed>/`` is the run folder (config.json, metrics.jsonl, last.npz, ...) and
``DIR/logs/<variant>-s<seed>.log`` what the run printed. Before a run starts the study looks at its
folder:

* finished (``metrics.jsonl`` reaches the run's ``--epochs``, and ``config.json`` was written by the
  same command): skipped;
* started (a ``last.npz`` from the same command): continued with ``--resume``, which reaches exactly
  the result an uninterrupted run would have;
* the same run with fewer epochs than now asked for: extended with ``--resume``;
* holding a run made by another command (model, options, data, fewer epochs...): the study stops
  with one line naming the difference, and never overwrites it;
* empty or without a checkpoint (stopped before its first save): started again.

Runs go side by side with ``jobs`` > 1, each a child process limited to one thread
(``MINISE_NUM_THREADS=1``). Ctrl-C reaches the children too: each saves its checkpoint and exits,
and the study stops; the same command continues it.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from minise.experiments.studies import Study, StudyError, Variant, plain_model
from minise.train_options import build_parser

EXIT_INTERRUPTED = 130
# training options that do not change what a run computes (they may differ between invocations)
NOT_COMPARED = ("out", "resume", "overwrite", "no_progress", "stop_after_steps", "workers", "backend", "download")


@dataclass(frozen=True)
class RunSpec:
    """One training run of a study: the variant, the seed, its folder and its command line."""

    variant: Variant
    seed: int
    folder: Path
    log: Path
    argv: tuple[str, ...]

    @property
    def label(self) -> str:
        return f"{self.variant.name} seed {self.seed}"


def slug(name: str) -> str:
    """A folder name from a variant name: ``"r = 16"`` -> ``"r-16"``, ``"SE-PRE"`` -> ``"se-pre"``."""
    return re.sub(r"[^a-z0-9_.]+", "-", name.lower()).strip("-") or "variant"


def variant_model(variant: Variant, model: str) -> str:
    """The model a variant trains: the study's SE model, its plain version, or a named model."""
    if variant.model is None:
        if not model.startswith("se_"):
            raise StudyError(
                f"variant {variant.name!r} changes the SE blocks, but --model {model} has none - use an SE model, "
                "e.g. --model se_resnet20"
            )
        return model
    return plain_model(model) if variant.model == "plain" else variant.model


def plan(study: Study, seeds: Sequence[int], out: Path, model: str, train_args: Sequence[str]) -> list[RunSpec]:
    """Every variant x seed of ``study``, seeds inner (so the first runs cover every variant early)."""
    slugs = [slug(v.name) for v in study.variants]
    if len(set(slugs)) != len(slugs):
        raise StudyError(f"variant names {[v.name for v in study.variants]} give the same folder name - rename one")
    specs = []
    for seed in seeds:
        for variant, s in zip(study.variants, slugs):
            folder = out / "runs" / f"{s}-s{seed}"
            argv = (
                *train_args,
                "--model",
                variant_model(variant, model),
                *variant.options,
                "--seed",
                str(seed),
                "--out",
                str(folder),
                "--no-progress",
            )
            specs.append(RunSpec(variant, seed, folder, out / "logs" / f"{s}-s{seed}.log", argv))
    return specs


def intended_config(spec: RunSpec) -> dict[str, Any]:
    """The training options this run is made with, as ``config.json`` records them."""
    said = io.StringIO()
    try:
        with contextlib.redirect_stderr(said):
            args = build_parser().parse_args(list(spec.argv))
    except SystemExit:
        why = said.getvalue().strip().removeprefix("python -m minise.train: ")
        raise StudyError(f"the training options are not valid: {why}") from None
    return {k: v for k, v in vars(args).items() if k not in NOT_COMPARED}


def _differences(spec: RunSpec, saved: dict[str, Any]) -> list[str]:
    want = intended_config(spec)
    return [f"--{k.replace('_', '-')} {saved.get(k)!r} (now {v!r})" for k, v in want.items() if saved.get(k) != v]


def read_metrics(folder: Path) -> list[dict[str, Any]]:
    """The lines of ``folder/metrics.jsonl`` (an empty list if there is none)."""
    path = folder / "metrics.jsonl"
    if not path.exists():
        return []
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except ValueError as e:
        raise StudyError(f"{path} is not one JSON object per line ({e}) - repair or delete that run folder") from None


def state(spec: RunSpec) -> str:
    """ "new", "finished" or "started" (see the module docstring); StudyError for a folder of another run."""
    config = spec.folder / "config.json"
    if not config.exists():
        return "new" if not (spec.folder / "last.npz").exists() else "started"
    try:
        saved = json.loads(config.read_text())
    except ValueError as e:
        raise StudyError(f"{config} is not JSON ({e}) - repair or delete that run folder") from None
    diff = _differences(spec, saved)
    want = intended_config(spec)["epochs"]
    if diff and [d.split()[0] for d in diff] == ["--epochs"] and int(saved.get("epochs", 0)) < want:
        return "started"  # the same run asked for more epochs: --resume extends it
    if diff:
        raise StudyError(
            f"{spec.folder} holds a run made with other options: {'; '.join(diff[:3])} - use another --out, or "
            "move that folder away"
        )
    metrics = read_metrics(spec.folder)
    if metrics and metrics[-1].get("epoch") == want:
        return "finished"
    return "started" if (spec.folder / "last.npz").exists() else "new"


def command(spec: RunSpec, how: str) -> list[str]:
    """The train command line for a "new" or "started" run."""
    argv = list(spec.argv)
    if how == "started":
        argv.append("--resume")
    elif spec.folder.exists():
        argv.append("--overwrite")  # a folder holding no checkpoint (stopped before its first save): nothing to lose
    return [sys.executable, "-m", "minise.train", *argv]


def child_env(jobs: int) -> dict[str, str]:
    """The environment of a run: one thread each when runs go side by side."""
    env = dict(os.environ)
    if jobs > 1:
        env.update(MINISE_NUM_THREADS="1", OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return env


def execute(
    specs: Sequence[RunSpec],
    jobs: int = 1,
    stop_after_runs: int | None = None,
    say: Callable[[str], None] = print,
) -> dict[RunSpec, int]:
    """Run (or skip, or continue) every spec; returns each attempted run's exit status (0 for skipped).

    Stops launching new runs when one is interrupted (exit 130) or, for tests, after
    ``stop_after_runs`` runs have been trained by this call.
    """
    status: dict[RunSpec, int] = {}
    todo = []
    for spec in specs:
        how = state(spec)
        if how == "finished":
            say(f"skip {spec.label}: finished in {spec.folder}")
            status[spec] = 0
        else:
            todo.append((spec, how))
    lock = threading.Lock()
    stop = threading.Event()
    trained = [0]

    def one(item: tuple[RunSpec, str]) -> None:
        spec, how = item
        with lock:
            if stop.is_set():
                return
        spec.log.parent.mkdir(parents=True, exist_ok=True)
        spec.folder.parent.mkdir(parents=True, exist_ok=True)
        say(f"{'continue' if how == 'started' else 'train'} {spec.label} -> {spec.folder}")
        with open(spec.log, "a") as log:
            code = subprocess.call(command(spec, how), stdout=log, stderr=subprocess.STDOUT, env=child_env(jobs))
        with lock:
            status[spec] = code
            trained[0] += 1
            if code == EXIT_INTERRUPTED or (stop_after_runs is not None and trained[0] >= stop_after_runs):
                stop.set()
        if code not in (0, EXIT_INTERRUPTED):
            say(f"{spec.label} failed (exit {code}): {_last_line(spec.log)}")

    pool = ThreadPoolExecutor(max_workers=max(1, jobs))
    try:
        for future in [pool.submit(one, item) for item in todo]:
            future.result()
    except KeyboardInterrupt:  # the children got the Ctrl-C too: they save and exit; start no more
        stop.set()
        raise
    finally:
        pool.shutdown(wait=True)
    return status


def _last_line(log: Path) -> str:
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"
