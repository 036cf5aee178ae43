"""python -m minise.experiments: the statistics (held to published t-table values, and shown to tell a
consistent difference from noise), study files, and a tiny study on `shapes` that is interrupted and
continued: finished runs are skipped, a half-trained run is resumed to exactly the uninterrupted result.
The last part (marker ``distributed``) deals a study's runs to 2 ranks: as threads of one process
(LocalGroup) and as 2 MPI processes started with the venv's ``mpiexec`` (skipped, with the reason, when
mpi4py or mpiexec is missing)."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import MPIEXEC, requires_mpi

from minise import train
from minise.experiments import STUDIES, StudyError, paired_test, read_study_file, summarize, t_pvalue, t_quantile
from minise.experiments.cli import main
from minise.experiments.report import verdicts
from minise.experiments.runner import plan
from minise.experiments.stats import PairedTest
from minise.experiments.studies import Study, Variant

TINY = ["--dataset", "shapes", "--train-images", "16", "--test-images", "16", "--batch-size", "8", "--epochs", "1"]


# --------------------------------------------------------------------------------------------------
# statistics
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "df, t975", [(1, 12.706), (2, 4.303), (3, 3.182), (4, 2.776), (5, 2.571), (10, 2.228), (30, 2.042)]
)
def test_t_quantiles_match_the_printed_table(df: int, t975: float) -> None:
    assert t_quantile(0.975, df) == pytest.approx(t975, abs=5e-4)
    assert t_pvalue(t975, df) == pytest.approx(0.05, abs=2e-4)  # the quantile's own tail
    assert t_quantile(0.995, df) > t975


def test_pvalues_at_known_points() -> None:
    assert t_pvalue(0.0, 3) == pytest.approx(1.0)
    assert t_pvalue(1.0, 1) == pytest.approx(0.5)  # Cauchy: P(|T| > 1) = 1/2
    assert t_pvalue(2.0, 2) == pytest.approx(1 - 2 / 6**0.5)  # df 2: P(|T| < t) = t / sqrt(2 + t^2)
    assert t_pvalue(float("inf"), 4) == 0.0
    with pytest.raises(ValueError, match="df must be an int"):
        t_pvalue(1.0, 0)


def test_summary_is_mean_sd_and_t_interval() -> None:
    s = summarize([1.0, 2.0, 3.0])
    assert (s.mean, s.sd) == (2.0, 1.0)
    assert s.high - s.mean == pytest.approx(4.303 / 3**0.5, abs=1e-3)
    one = summarize([5.0])
    assert one.sd is None and one.low is None


def test_paired_test_sees_a_consistent_difference_that_an_unpaired_view_calls_noise() -> None:
    # seeds differ a lot from each other (10, 20, 30) but the variant is ~1 point better on every one
    base = {0: 10.0, 1: 20.0, 2: 30.0}
    better = {0: 9.0, 1: 19.1, 2: 28.9}
    paired = paired_test(better, base)
    assert paired.p is not None and paired.p < 0.01 and not paired.within_noise
    # the means' intervals overlap almost entirely: treating the seeds as unpaired would see nothing
    a, b = summarize(list(base.values())), summarize(list(better.values()))
    assert a.low is not None and b.high is not None and a.low < b.high
    # and noise is called noise
    noisy = paired_test({0: 11.0, 1: 19.0, 2: 30.5}, base)
    assert noisy.p is not None and noisy.p > 0.5 and noisy.within_noise
    only_common = paired_test({0: 9.0, 5: 1.0}, base)
    assert only_common.n == 1 and only_common.p is None  # one common seed: no test


def test_verdicts_say_plainly_which_difference_is_noise() -> None:
    study = Study("t", "t", (Variant("A"), Variant("B"), Variant("C"), Variant("D")))

    class Row:
        def __init__(self, name: str, test: PairedTest | None) -> None:
            self.variant, self.vs_baseline = Variant(name), test

    rows = [
        Row("A", None),
        Row("B", paired_test({0: 9.0, 1: 19.1, 2: 28.9}, {0: 10.0, 1: 20.0, 2: 30.0})),
        Row("C", paired_test({0: 11.0, 1: 19.0, 2: 30.5}, {0: 10.0, 1: 20.0, 2: 30.0})),
        Row("D", paired_test({0: 1.0}, {0: 10.0})),
    ]
    lines = verdicts(study, rows)  # type: ignore[arg-type]
    assert "B vs A" in lines[0] and "lower, beyond the seed-to-seed noise" in lines[0]
    assert "C vs A" in lines[1] and "within the noise" in lines[1]
    assert "no test possible" in lines[2]


# --------------------------------------------------------------------------------------------------
# studies
# --------------------------------------------------------------------------------------------------
def test_every_study_of_the_issue_exists_with_a_baseline_first() -> None:
    assert set(STUDIES) == {
        "reduction", "squeeze", "excitation", "stages", "integration", "se3x3", "nosqueeze", "se-vs-plain",
    }  # fmt: skip
    assert [v.name for v in STUDIES["integration"].variants] == ["SE", "SE-PRE", "SE-POST", "SE-Identity"]
    assert STUDIES["integration"].variants[2].paper == (22.78, 6.35)  # SE-POST, the paper's clear loser
    # every study builds a valid command line for each of its runs
    for study in STUDIES.values():
        for spec in plan(study, [0], Path("/tmp/unused"), "se_resnet20", TINY):
            train.build_parser().parse_args(list(spec.argv))


def test_study_file(tmp_path: Path) -> None:
    f = tmp_path / "mine.txt"
    f.write_text("# my study\nbase: --reduction 16\nr8: --reduction 8  # narrower\nplain: --model plain\n")
    study = read_study_file(f)
    assert [v.name for v in study.variants] == ["base", "r8", "plain"]
    assert study.variants[1].options == ("--reduction", "8") and study.variants[2].model == "plain"
    specs = plan(study, [0, 1], tmp_path / "out", "se_resnet20", TINY)
    assert len(specs) == 6 and "resnet20" in specs[2].argv and specs[2].folder.name == "plain-s0"
    f.write_text("just one: --reduction 4\n")
    with pytest.raises(StudyError, match="at least 2 variants"):
        read_study_file(f)
    f.write_text("no colon here\nb: x\n")
    with pytest.raises(StudyError, match="mine.txt:1"):
        read_study_file(f)


def test_bad_commands_are_refused_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["nosuchstudy", "--out", str(tmp_path / "a")]) == 2
    assert main(["integration", "--out", str(tmp_path / "a"), "--seed", "3"]) == 2
    assert main(["integration", "--out", str(tmp_path / "a"), "--model", "resnet20"]) == 2
    assert main(["integration", "--out", str(tmp_path / "a"), "--epochz", "3"]) == 2  # a typo of --epochs
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 4 and all(line.startswith("minise.experiments: ") for line in err)
    assert "unknown study 'nosuchstudy'" in err[0] and "--seed" in err[1] and "has none" in err[2]
    assert "not valid: unrecognized arguments: --epochz 3" in err[3]
    assert not (tmp_path / "a").exists()  # nothing was started


# --------------------------------------------------------------------------------------------------
# a tiny study, interrupted and continued
# --------------------------------------------------------------------------------------------------
def _results(path: Path) -> list[dict[str, str]]:
    with open(path) as f:
        return [{k: v for k, v in row.items() if k not in ("seconds", "folder")} for row in csv.DictReader(f)]


def _metrics(folder: Path) -> list[dict[str, float]]:
    lines = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in m.items() if k not in ("seconds", "images_per_s")} for m in lines]


@pytest.mark.slow  # about 25 s on 2 busy cores: seven tiny training runs, five in child processes
def test_interrupted_study_continues_where_it_stopped(tmp_path: Path) -> None:
    out = tmp_path / "study"
    cmd = [sys.executable, "-m", "minise.experiments", "se-vs-plain", *TINY, "--seeds", "2", "--out", str(out)]
    # 1. the study stops after its first run (as an interruption would)
    first = subprocess.run([*cmd, "--stop-after-runs", "1"], capture_output=True, text=True)
    assert first.returncode == 130, first.stderr
    done = out / "runs" / "resnet-s0"
    assert (done / "best.npz").exists() and not (out / "runs" / "resnet-s1").exists()
    finished_bytes = (done / "last.npz").read_bytes()
    assert "1 of 4 runs finished" in first.stdout
    assert main(["se-vs-plain", *TINY, "--seeds", "2", "--out", str(out), "--report-only"]) == 0
    partial = (out / "report.md").read_text()
    assert "Not finished (left out above): SE-ResNet seed 0, ResNet seed 1, SE-ResNet seed 1." in partial
    # 2. a second run of the study was itself interrupted mid-epoch (Ctrl-C saves last.npz)
    half = out / "runs" / "se-resnet-s0"
    argv = [*TINY, "--model", "se_resnet20", "--seed", "0", "--out", str(half), "--no-progress"]
    assert train.main([*argv, "--stop-after-steps", "1"]) == 130
    # 3. the same command again: the finished run is skipped, the half one resumed, the rest trained
    again = subprocess.run([*cmd, "--jobs", "2"], capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert "skip ResNet seed 0" in again.stderr and "continue SE-ResNet seed 0" in again.stderr
    assert (done / "last.npz").read_bytes() == finished_bytes  # not retrained, not touched
    rows = _results(out / "results.csv")
    assert [(r["variant"], r["seed"]) for r in rows] == [("ResNet", "0"), ("SE-ResNet", "0"), ("ResNet", "1"),
                                                         ("SE-ResNet", "1")]  # fmt: skip
    # the resumed run reached exactly what an uninterrupted run of the same command reaches
    whole = tmp_path / "whole"
    assert train.main([*argv[:-3], "--out", str(whole), "--no-progress"]) == 0
    # (to float32 rounding: the study's runs use one thread each, this one the default number, and the
    # order in which a multi-threaded op sums changes the last bits of the loss)
    for a, b in zip(_metrics(half), _metrics(whole), strict=True):
        assert a == pytest.approx(b, rel=1e-5)
    report = (out / "report.md").read_text()
    assert "| SE-ResNet |" in report and "23.29 / 6.62" in report and (out / "errors.png").stat().st_size > 0
    # 4. a third time: nothing left to train, the same numbers
    third = subprocess.run(cmd, capture_output=True, text=True)
    assert third.returncode == 0 and third.stderr.count("skip ") == 4
    assert _results(out / "results.csv") == rows


def test_a_folder_holding_another_run_is_never_overwritten_but_can_be_extended(tmp_path: Path) -> None:
    out = tmp_path / "study"
    other = out / "runs" / "resnet-s0"
    assert train.main([*TINY, "--model", "resnet20", "--seed", "0", "--out", str(other), "--no-progress"]) == 0
    before = (other / "last.npz").read_bytes()
    code = main(["se-vs-plain", *TINY, "--lr", "0.05", "--seeds", "1", "--out", str(out)])  # another --lr
    assert code == 2
    assert (other / "last.npz").read_bytes() == before
    # the same run with more epochs asked for is extended, not refused
    assert main(["se-vs-plain", *TINY[:-1], "2", "--seeds", "1", "--out", str(out)]) == 0
    assert [json.loads(line)["epoch"] for line in (other / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_run_states_decide_skip_resume_or_restart(tmp_path: Path) -> None:
    from minise.experiments.runner import command, state
    from minise.train_options import resolve_image_size

    spec = plan(STUDIES["se-vs-plain"], [0], tmp_path, "se_resnet20", TINY)[0]
    assert state(spec) == "new" and "--overwrite" not in command(spec, "new")
    args = train.build_parser().parse_args(list(spec.argv))
    resolve_image_size(args)  # as the run records it: the data set's side
    config = vars(args)
    spec.folder.mkdir(parents=True)
    (spec.folder / "config.json").write_text(json.dumps(config))  # killed before its first checkpoint
    assert state(spec) == "new" and command(spec, "new")[-1] == "--overwrite"  # nothing saved to lose
    (spec.folder / "last.npz").write_bytes(b"")
    assert state(spec) == "started" and command(spec, "started")[-1] == "--resume"
    (spec.folder / "metrics.jsonl").write_text(json.dumps({"epoch": 1}) + "\n")
    assert state(spec) == "finished"
    (spec.folder / "config.json").write_text(json.dumps({**config, "model": "se_resnet32"}))
    with pytest.raises(StudyError, match="other options: --model 'se_resnet32'"):
        state(spec)


# --------------------------------------------------------------------------------------------------
# a study on MPI ranks: the runs dealt round-robin, rank 0 reports, every rank exits with one status
# --------------------------------------------------------------------------------------------------
ROOT = Path(__file__).resolve().parent.parent


def test_runs_are_dealt_round_robin_and_the_launcher_is_read_from_its_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from minise.distributed.launch import LAUNCHER_SIZE
    from minise.experiments import ranks

    assert [ranks.deal(range(7), r, 3) for r in range(3)] == [[0, 3, 6], [1, 4], [2, 5]]
    assert ranks.deal([4, 9], 2, 3) == []  # more ranks than runs left: some ranks have nothing to do
    for name in LAUNCHER_SIZE:
        monkeypatch.delenv(name, raising=False)
    assert ranks.launched_size() == 1 and ranks.study_communicator() is None  # no launcher: mpi4py not needed
    monkeypatch.setenv("PMI_SIZE", "1")
    assert ranks.study_communicator() is None  # mpiexec -n 1: nothing changes
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "4")
    assert ranks.launched_size() == 4
    monkeypatch.setattr(ranks, "mpi_unavailable", lambda: "mpi4py is not installed - install it")
    with pytest.raises(StudyError, match="started by an MPI launcher as 4 processes, but mpi4py is not installed"):
        ranks.study_communicator()  # else each of the 4 would run the whole study into the same folders


def test_a_run_is_an_ordinary_single_process_with_one_thread_beside_others(monkeypatch: pytest.MonkeyPatch) -> None:
    from minise.experiments.runner import child_env

    monkeypatch.setenv("PMI_RANK", "1")
    monkeypatch.setenv("PMI_FD", "9")
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "2")
    monkeypatch.delenv("MINISE_NUM_THREADS", raising=False)
    env = child_env(jobs=1, ranks=2)
    assert not {"PMI_RANK", "PMI_FD", "OMPI_COMM_WORLD_SIZE"} & set(env)  # not a member of the MPI job
    assert env["MINISE_NUM_THREADS"] == env["OMP_NUM_THREADS"] == "1"
    assert "MINISE_NUM_THREADS" not in child_env(jobs=1, ranks=1)  # alone: all the cores
    monkeypatch.setenv("MINISE_NUM_THREADS", "4")  # the user's choice, e.g. one rank per 4-core share
    assert child_env(jobs=2, ranks=2)["MINISE_NUM_THREADS"] == "4"


def test_ranks_agree_on_errors_and_gather_every_runs_status() -> None:
    from minise.distributed import LocalGroup
    from minise.experiments.ranks import agree_on_error, gather_statuses

    def errors(on: set[int]) -> list[str | None]:
        return LocalGroup.run(2, lambda c: agree_on_error(c, "wrong" if c.rank in on else None))

    assert errors(set()) == [None, None]  # nobody stops
    assert errors({0, 1}) == ["wrong", ""]  # everybody stops, rank 0 alone says why
    assert errors({1}) == ["", "(rank 1 of 2) wrong"]  # a rank's own trouble is said by that rank
    # rank 0 ran runs 0 and 2, rank 1 run 1 (killed by a signal: negative); run 3 by nobody
    mine = [{0: 0, 2: 130}, {1: -9}]
    assert LocalGroup.run(2, lambda c: gather_statuses(c, mine[c.rank], 4)) == [[0, -9, 130, None]] * 2


def test_a_failing_run_fails_every_rank_and_a_bad_command_stops_all(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """2 ranks as threads of this process: the run that fails on rank 1 fails the study on both ranks;
    rank 0 (whose run succeeds) writes the report; a folder of another run stops both, said once."""
    from minise.distributed import LocalGroup

    f = tmp_path / "failing.txt"
    f.write_text("ok: --reduction 16\nbad: --dataset cifar10 --data-dir /nonexistent\n")  # fails on starting
    argv = [str(f), *TINY, "--seeds", "1", "--out", str(tmp_path / "s")]
    assert LocalGroup.run(2, lambda c: main(argv, comm=c), timeout=120) == [1, 1]
    err = capsys.readouterr().err
    assert "rank 1/2: train bad seed 0" in err and "rank 1/2: bad seed 0 failed (exit 2): minise.train:" in err
    assert err.count("1 run(s) failed (bad seed 0)") == 1
    assert "| ok |" in (tmp_path / "s" / "report.md").read_text()
    # the baseline's folder now holds a run of other options: refused by rank 0, and both ranks stop
    config = tmp_path / "s" / "runs" / "ok-s0" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "lr": 9.0}))
    assert LocalGroup.run(2, lambda c: main(argv, comm=c)) == [2, 2]
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds a run made with other options: --lr 9.0" in err[0]
    assert LocalGroup.run(2, lambda c: main([*argv, "--distributed"], comm=c)) == [2, 2]  # runs are one process
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["minise.experiments: --distributed: under mpiexec the study deals whole runs to its 2 ranks, "
                   "each run one process - leave --distributed out"]  # fmt: skip


def _mpi_study(out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """``mpiexec -n 2 python -m minise.experiments se-vs-plain`` with a tiny budget, 2 seeds."""
    cmd = [str(MPIEXEC), "-n", "2", sys.executable, "-m", "minise.experiments", "se-vs-plain", *TINY,
           "--seeds", "2", "--out", str(out), *extra]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "MINISE_NUM_THREADS"}  # the study sets one thread
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)


TRAINED_BY = re.compile(r"^# minise.experiments: \w+ on .*, rank (\d) of 2,", re.MULTILINE)  # a log's header


def _trained_by(out: Path) -> dict[str, list[int]]:
    """Each run folder's name -> the rank of every process that trained into it (from its log's headers)."""
    return {log.stem: [int(r) for r in TRAINED_BY.findall(log.read_text())] for log in (out / "logs").glob("*.log")}


@requires_mpi
@pytest.mark.distributed
@pytest.mark.slow  # about 25 s on 2 busy cores: three mpiexec starts, four tiny training runs
def test_a_study_on_two_mpi_ranks_trains_each_run_once_and_continues(tmp_path: Path) -> None:
    out = tmp_path / "study"
    # 1. each rank stops after one run (as an interruption would): runs 0 and 1 of the plan, one per rank
    first = _mpi_study(out, "--stop-after-runs", "1")
    assert first.returncode == 130, first.stderr[-3000:]
    assert _trained_by(out) == {"resnet-s0": [0], "se-resnet-s0": [1]}
    assert "rank 0/2: train ResNet seed 0" in first.stderr and "rank 1/2: train SE-ResNet seed 0" in first.stderr
    assert first.stdout.count("2 of 4 runs finished") == 1  # rank 0 alone reports
    # 2. again: rank 0 sees the 2 finished runs, everyone skips them; the 2 left are dealt afresh
    second = _mpi_study(out)
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.stderr.count("skip ") == 2 and "rank 0/2: skip ResNet seed 0" in second.stderr
    assert _trained_by(out) == {"resnet-s0": [0], "resnet-s1": [0], "se-resnet-s0": [1], "se-resnet-s1": [1]}
    assert sorted(p.name for p in out.iterdir()) == ["command.txt", "errors.png", "logs", "report.md",
                                                     "results.csv", "runs"]  # fmt: skip
    report = (out / "report.md").read_text()
    assert "| ResNet |" in report and "| SE-ResNet |" in report and "Not finished" not in report
    assert "with 2 MPI ranks (the i-th unfinished run on rank i mod 2), --jobs 1 on each" in report
    rows = _results(out / "results.csv")
    assert len(rows) == 4
    # 3. a third time: nothing left to train, the same numbers
    third = _mpi_study(out)
    assert third.returncode == 0, third.stderr[-3000:]
    assert third.stderr.count("skip ") == 4 and " train " not in third.stderr
    assert _results(out / "results.csv") == rows and len(_trained_by(out)["resnet-s0"]) == 1


@requires_mpi
@pytest.mark.distributed
def test_a_failing_run_under_mpi_ends_the_study_without_hanging(tmp_path: Path) -> None:
    f = tmp_path / "failing.txt"
    f.write_text("bad: --dataset cifar10 --data-dir /nonexistent\nok: --reduction 16\n")  # rank 0's run fails
    cmd = [str(MPIEXEC), "-n", "2", sys.executable, "-m", "minise.experiments", str(f), *TINY, "--seeds", "1",
           "--out", str(tmp_path / "s")]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 1, r.stderr[-3000:]
    assert "rank 0/2: bad seed 0 failed (exit 2)" in r.stderr and "1 run(s) failed (bad seed 0)" in r.stderr
    assert "| ok |" in (tmp_path / "s" / "report.md").read_text()  # rank 1's run finished and is reported
