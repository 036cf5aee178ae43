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

:func:`triage` looks at every folder, :func:`execute` trains the runs that are not finished. Runs go
side by side with ``jobs`` > 1 (and on several MPI ranks, see :mod:`minise.experiments.ranks`), each a
child process limited to one thread (``MINISE_NUM_THREADS=1``) unless ``MINISE_NUM_THREADS`` is set.
Each run's log starts with a line saying which process trained it and how. Ctrl-C reaches the children
too: each saves its checkpoint and exits, and the study stops; the same command continues it.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from minise.experiments.studies import Study, StudyError, Variant, plain_model
from minise.train_options import TrainError, build_parser, resolve_image_size

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
    parser = build_parser()

    def refuse(status: int = 0, message: str | None = None) -> NoReturn:  # instead of printing and exiting
        why = (message or "").strip().removeprefix(f"{parser.prog}: ")
        raise StudyError(f"the training options are not valid: {why}")

    # (not contextlib.redirect_stderr: sys.stderr is the whole process's, and ranks may be threads of one)
    parser.exit = refuse  # type: ignore[method-assign]
    args = parser.parse_args(list(spec.argv))
    try:
        resolve_image_size(args)  # the default side of the data set, as the run fills it in and records it
    except TrainError as e:
        raise StudyError(f"the training options are not valid: {e}") from None
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


# what an MPI launcher tells each of its processes about the job: not passed on to a run, which is an
# ordinary single process (MPICH/Hydra, PMIx, Open MPI, MVAPICH)
LAUNCHER_VARIABLES = (
    "PMI_",
    "PMIX_",
    "HYDI_",
    "MPI_LOCALRANKID",
    "MPI_LOCALNRANKS",
    "OMPI_COMM_WORLD_",
    "MV2_COMM_WORLD_",
)
THREAD_VARIABLES = ("MINISE_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def child_env(jobs: int, ranks: int = 1) -> dict[str, str]:
    """The environment of a run: this one without the MPI launcher's variables, and one thread when runs
    go side by side (``jobs`` > 1 or several ``ranks``) unless the user set ``MINISE_NUM_THREADS``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(LAUNCHER_VARIABLES)}
    if (jobs > 1 or ranks > 1) and not os.environ.get("MINISE_NUM_THREADS"):
        env.update(dict.fromkeys(THREAD_VARIABLES, "1"))
    return env


def triage(specs: Sequence[RunSpec], say: Callable[[str], None] = print) -> list[str]:
    """The :func:`state` of every run ("new", "started" or "finished"), saying which are skipped."""
    states = []
    for spec in specs:
        states.append(state(spec))
        if states[-1] == "finished":
            say(f"skip {spec.label}: finished in {spec.folder}")
    return states


def execute(
    todo: Sequence[tuple[RunSpec, str]],
    jobs: int = 1,
    stop_after_runs: int | None = None,
    say: Callable[[str], None] = print,
    ranks: int = 1,
    trained_by: str = "",
) -> dict[RunSpec, int]:
    """Train (or continue) each ``(spec, state)`` of ``todo``, ``jobs`` at a time; returns each attempted
    run's exit status. ``ranks``: how many MPI ranks share the study (for the threads, see
    :func:`child_env`); ``trained_by``: who trains, for the first line of each run's log.

    Stops launching new runs when one is interrupted (exit 130) or, for tests, after
    ``stop_after_runs`` runs have been trained by this call.
    """
    status: dict[RunSpec, int] = {}
    lock = threading.Lock()
    stop = threading.Event()
    trained = [0]
    who = trained_by or f"pid {os.getpid()}"

    def one(item: tuple[RunSpec, str]) -> None:
        spec, how = item
        with lock:
            if stop.is_set():
                return
        spec.log.parent.mkdir(parents=True, exist_ok=True)
        spec.folder.parent.mkdir(parents=True, exist_ok=True)
        verb = "continue" if how == "started" else "train"
        say(f"{verb} {spec.label} -> {spec.folder}")
        cmd = command(spec, how)
        with open(spec.log, "a") as log:
            log.write(f"# minise.experiments: {verb} on {socket.gethostname()}, {who}: {shlex.join(cmd)}\n")
            log.flush()
            code = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, env=child_env(jobs, ranks))
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
