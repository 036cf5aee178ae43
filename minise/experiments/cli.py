"""The command line of ``python -m minise.experiments`` (see :mod:`minise.experiments`)."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from minise.cli import HelpFormatter, OneLineParser
from minise.distributed import Communicator, SingleProcess
from minise.distributed.launch import run_guarded
from minise.experiments.ranks import agree_on_error, deal, gather_statuses, study_communicator
from minise.experiments.report import write_report
from minise.experiments.runner import EXIT_INTERRUPTED, RunSpec, execute, intended_config, plan, triage
from minise.experiments.studies import STUDIES, Study, StudyError, get_study

EXIT_BAD_INPUT, EXIT_RUN_FAILED = 2, 1
PROG = "minise.experiments"
STATES = ("new", "started", "finished")  # a run's state as a number, for the broadcast of rank 0's view
EPILOG = (
    "On MPI ranks: mpiexec -n N python -m minise.experiments STUDY ... --out DIR deals the unfinished runs to "
    "the N processes (the i-th to rank i mod N; each rank trains its share one run after another, one thread "
    "each unless MINISE_NUM_THREADS is set; --jobs K: K side by side on every rank); rank 0 writes the report "
    "once every rank has finished, and every rank exits 1 if any run failed. DIR must be on a file system "
    "every rank sees. Exit status: 0 when every run has finished; 1 if a run failed; 2 for bad input; 130 "
    "when interrupted (run the same command again to continue)."
)


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="python -m minise.experiments",
        description="Run an ablation of the SENet paper (every variant x seed a training run) and report it. "
        "Options not listed here go to python -m minise.train unchanged (--dataset, --epochs, --lr, ...).",
        epilog=EPILOG,
        formatter_class=HelpFormatter,
        allow_abbrev=False,  # else the training option --seed would be read as this command's --seeds
    )
    p.add_argument("study", help=f"one of {', '.join(STUDIES)}, or a file of 'NAME: TRAINING OPTIONS' lines")
    p.add_argument("--out", required=True, help="study folder: runs/, logs/, report.md, results.csv, errors.png")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 per variant")
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="runs side by side (on each MPI rank), one thread each unless MINISE_NUM_THREADS is set",
    )
    p.add_argument("--model", default="se_resnet20", help="the SE model the variants change")
    p.add_argument("--report-only", action="store_true", help="train nothing; report the finished runs")
    p.add_argument("--stop-after-runs", type=int, default=None, help=argparse.SUPPRESS)  # tests: an interruption
    return p


FORBIDDEN = ("--seed", "--resume", "--overwrite")  # the study sets them per run


def main(argv: list[str] | None = None, comm: Communicator | None = None) -> int:
    """The command; ``comm``: the ranks sharing the study (default: MPI's when started by mpiexec with
    more than one process, else this process alone)."""
    args, train_args = build_parser().parse_known_args(argv)
    try:
        comm = comm or study_communicator() or SingleProcess()
        if comm.size == 1:
            return run(args, train_args, comm)
        # a rank that raises (not a run that fails: a child's exit status) ends the job, none left waiting
        return run_guarded(comm, lambda: run(args, train_args, comm), PROG)
    except StudyError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted - run the same command again to continue", file=sys.stderr)
        return EXIT_INTERRUPTED


def prepare(args: argparse.Namespace, train_args: list[str], ranks: int) -> tuple[Study, list[RunSpec]]:
    """The study and its runs, every run's options checked, before anything starts."""
    for flag in FORBIDDEN:
        if any(a == flag or a.startswith(flag + "=") for a in train_args):
            raise StudyError(f"{flag} is set by the study for each run - leave it out (seeds: --seeds N)")
    if ranks > 1 and "--distributed" in train_args:
        raise StudyError(
            f"--distributed: under mpiexec the study deals whole runs to its {ranks} ranks, each run one process "
            "- leave --distributed out"
        )
    if args.seeds < 1 or args.jobs < 1:
        raise StudyError(f"--seeds and --jobs must be at least 1, got {args.seeds} and {args.jobs}")
    study = get_study(args.study)
    specs = plan(study, range(args.seeds), Path(args.out), args.model, train_args)
    for spec in specs:
        intended_config(spec)  # every run's options parse, before any run starts
    if args.report_only and not Path(args.out).is_dir():
        raise StudyError(f"--report-only: {args.out} does not exist - give the --out of a study that has run")
    return study, specs


def run(args: argparse.Namespace, train_args: list[str], comm: Communicator) -> int:
    """The study on ``comm``'s ranks (one, or N under mpiexec: see :mod:`minise.experiments.ranks`)."""
    rank, ranks, main_rank = comm.rank, comm.size, comm.rank == 0
    prefix = f"rank {rank}/{ranks}: " if ranks > 1 else ""

    def say(line: str) -> None:
        print(prefix + line, file=sys.stderr, flush=True)

    # 1. every rank checks the command; rank 0 alone reads the run folders; all stop, or none does
    error, states = None, np.zeros(0, dtype=np.int64)
    try:
        study, specs = prepare(args, train_args, ranks)
        states = np.zeros(len(specs), dtype=np.int64)
        if main_rank and not args.report_only:
            states[:] = [STATES.index(s) for s in triage(specs, say)]
    except StudyError as e:
        error = str(e)
    why = agree_on_error(comm, error)
    if why is not None:
        if why:
            print(f"{PROG}: {why}", file=sys.stderr)
        return EXIT_BAD_INPUT
    out = Path(args.out)
    start = time.perf_counter()
    codes: list[int | None] = []
    if not args.report_only:
        # 2. rank 0's view of the folders, on every rank; the unfinished runs dealt: the i-th to rank i mod N
        comm.broadcast(states, root=0)
        todo = [i for i, s in enumerate(states) if STATES[s] != "finished"]
        mine = deal(todo, rank, ranks)
        if main_rank:
            out.mkdir(parents=True, exist_ok=True)
            (out / "command.txt").write_text(shlex.join(["python", "-m", "minise.experiments", *sys.argv[1:]]) + "\n")
        status: dict[RunSpec, int] = {}
        try:
            who = f"rank {rank} of {ranks}, pid {os.getpid()}" if ranks > 1 else ""
            work = [(specs[i], STATES[states[i]]) for i in mine]
            status = execute(work, args.jobs, args.stop_after_runs, say, ranks, who)
        except KeyboardInterrupt:
            if ranks == 1:
                raise
            say("interrupted: no more runs start on this rank")  # and the others are not left waiting
        # 3. every run's exit status, from the rank that ran it (waits for the longest share)
        index = {spec: i for i, spec in enumerate(specs)}
        codes = gather_statuses(comm, {index[s]: code for s, code in status.items()}, len(specs))
        codes = [0 if STATES[s] == "finished" else c for s, c in zip(states, codes)]
    # 4. rank 0 alone writes the report; every rank returns the same status
    if main_rank:
        header = [
            f"Model `{args.model}`; {args.seeds} seed(s) per variant (0..{args.seeds - 1}); training options: "
            f"`{shlex.join(train_args) or '(defaults)'}`.",
        ]
        if codes:
            seconds = time.perf_counter() - start
            how = f"--jobs {args.jobs}"
            if ranks > 1:
                how = f"{ranks} MPI ranks (the i-th unfinished run on rank i mod {ranks}), {how} on each"
            header.append(f"Wall time of this invocation: {seconds:.0f} s with {how}.")
        results = write_report(study, specs, out, header)
        print(f"{len(results)} of {len(specs)} runs finished; report in {out / 'report.md'}")
    failed = [spec.label for spec, code in zip(specs, codes) if code not in (0, EXIT_INTERRUPTED, None)]
    if failed:
        if main_rank:
            print(f"{PROG}: {len(failed)} run(s) failed ({', '.join(failed)}) - see {out / 'logs'}", file=sys.stderr)
        return EXIT_RUN_FAILED
    if any(code in (EXIT_INTERRUPTED, None) for code in codes):
        return EXIT_INTERRUPTED
    return 0
