"""The command line of ``python -m minise.experiments`` (see :mod:`minise.experiments`)."""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from minise.cli import HelpFormatter, OneLineParser
from minise.experiments.report import write_report
from minise.experiments.runner import EXIT_INTERRUPTED, execute, intended_config, plan
from minise.experiments.studies import STUDIES, StudyError, get_study

EXIT_BAD_INPUT, EXIT_RUN_FAILED = 2, 1


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="python -m minise.experiments",
        description="Run an ablation of the SENet paper (every variant x seed a training run) and report it. "
        "Options not listed here go to python -m minise.train unchanged (--dataset, --epochs, --lr, ...).",
        formatter_class=HelpFormatter,
        allow_abbrev=False,  # else the training option --seed would be read as this command's --seeds
    )
    p.add_argument("study", help=f"one of {', '.join(STUDIES)}, or a file of 'NAME: TRAINING OPTIONS' lines")
    p.add_argument("--out", required=True, help="study folder: runs/, logs/, report.md, results.csv, errors.png")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 per variant")
    p.add_argument("--jobs", type=int, default=1, help="runs side by side, one thread each when more than 1")
    p.add_argument("--model", default="se_resnet20", help="the SE model the variants change")
    p.add_argument("--report-only", action="store_true", help="train nothing; report the finished runs")
    p.add_argument("--stop-after-runs", type=int, default=None, help=argparse.SUPPRESS)  # tests: an interruption
    return p


FORBIDDEN = ("--seed", "--resume", "--overwrite")  # the study sets them per run


def main(argv: list[str] | None = None) -> int:
    args, train_args = build_parser().parse_known_args(argv)
    try:
        return run(args, train_args)
    except StudyError as e:
        print(f"minise.experiments: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("minise.experiments: interrupted - run the same command again to continue", file=sys.stderr)
        return EXIT_INTERRUPTED


def run(args: argparse.Namespace, train_args: list[str]) -> int:
    for flag in FORBIDDEN:
        if any(a == flag or a.startswith(flag + "=") for a in train_args):
            raise StudyError(f"{flag} is set by the study for each run - leave it out (seeds: --seeds N)")
    if args.seeds < 1 or args.jobs < 1:
        raise StudyError(f"--seeds and --jobs must be at least 1, got {args.seeds} and {args.jobs}")
    study = get_study(args.study)
    out = Path(args.out)
    specs = plan(study, range(args.seeds), out, args.model, train_args)
    for spec in specs:
        intended_config(spec)  # every run's options parse, before any run starts
    status: dict = {}
    start = time.perf_counter()
    if not args.report_only:
        out.mkdir(parents=True, exist_ok=True)
        (out / "command.txt").write_text(shlex.join(["python", "-m", "minise.experiments", *sys.argv[1:]]) + "\n")
        status = execute(specs, args.jobs, args.stop_after_runs, say=lambda s: print(s, file=sys.stderr))
    elif not out.is_dir():
        raise StudyError(f"--report-only: {out} does not exist - give the --out of a study that has run")
    header = [
        f"Model `{args.model}`; {args.seeds} seed(s) per variant (0..{args.seeds - 1}); training options: "
        f"`{shlex.join(train_args) or '(defaults)'}`.",
    ]
    if status:
        header.append(f"Wall time of this invocation: {time.perf_counter() - start:.0f} s with --jobs {args.jobs}.")
    results = write_report(study, specs, out, header)
    print(f"{len(results)} of {len(specs)} runs finished; report in {out / 'report.md'}")
    failed = [s.label for s, code in status.items() if code not in (0, EXIT_INTERRUPTED)]
    if failed:
        print(f"minise.experiments: {len(failed)} run(s) failed ({', '.join(failed)}) - see {out / 'logs'}",
              file=sys.stderr)  # fmt: skip
        return EXIT_RUN_FAILED
    if any(code == EXIT_INTERRUPTED for code in status.values()) or len(results) < len(specs):
        return EXIT_INTERRUPTED if not args.report_only else 0
    return 0
