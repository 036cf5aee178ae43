"""The training command end to end, on a few images so that the whole file runs in seconds.

What a run must leave in its folder; that an interrupted and resumed run ends exactly where an
uninterrupted one does (simulated Ctrl-C with the hidden --stop-after-steps, mid-epoch and at an
epoch boundary, and a real SIGINT to a subprocess); that a finished run can be extended to more
epochs; that divergence (a non-finite training loss, gradient norm, weight or held-out loss) stops
the run with exit status 2 naming the epoch and step and keeps the last good checkpoint; that
options reach the model and the schedule; and that bad input gets one line and exit status 2, never
a traceback. (Run folders, --overwrite and unusable --out: test_run_folders.py.)
"""

from __future__ import annotations

import json
import math
import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import SHARED_DATA

from minise import models, train
from minise.checkpoint import load_checkpoint
from minise.evaluate import model_from_checkpoint

# 64 images in batches of 16: 4 steps an epoch, about a second an epoch on two cores.
STEPS = 4
SMALL = ["--batch-size", "16", "--train-images", "64", "--test-images", "32", "--no-progress"]
BASE = ["--dataset", "shapes", "--model", "se_resnet20", *SMALL]
METRIC_KEYS = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "test_top5", "lr", "images_per_s")
TIMING = ("images_per_s", "seconds")  # the only fields that may differ between equal runs
PNG = b"\x89PNG\r\n\x1a\n"
CIFAR10 = SHARED_DATA / "cifar10-mini"


def main(*args: Any) -> int:
    return train.main([str(a) for a in args])


def read_metrics(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def without_timing(metrics: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in m.items() if k not in TIMING} for m in metrics]


def assert_same_checkpoint(a: Path, b: Path) -> None:
    """Every array bit for bit, and the position, schedule, optimiser and RNG state in the metadata."""
    meta_a, arrays_a = load_checkpoint(a)
    meta_b, arrays_b = load_checkpoint(b)
    assert sorted(arrays_a) == sorted(arrays_b)
    for name in arrays_a:
        assert arrays_a[name].dtype == arrays_b[name].dtype, name
        assert np.array_equal(arrays_a[name], arrays_b[name]), f"{name} differs after resuming"
    for key in ("epoch", "step_in_epoch", "best_acc", "optimizer", "scheduler", "rng_state"):
        assert meta_a[key] == meta_b[key], key


def last_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines, "nothing on stderr"
    return lines[-1]


def assert_one_line_error(stderr: str, prog: str = "minise.train") -> str:
    """The error is the last line, is one line, and nothing looks like a traceback."""
    assert "Traceback" not in stderr, stderr
    line = last_line(stderr)
    assert line.startswith(f"{prog}: ") or line.startswith(f"python -m {prog}: "), stderr
    return line


def run_cli(*args: Any, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "minise.train", *[str(a) for a in args]],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted 2-epoch run, the one every resumed run must reproduce."""
    out = tmp_path_factory.mktemp("reference")
    assert main(*BASE, "--epochs", 2, "--out", out) == 0
    return out


# ------------------------------------------------------------------------------------- the run folder
def test_run_folder_holds_config_metrics_checkpoints_and_curves(reference: Path) -> None:
    names = {p.name for p in reference.iterdir()}
    assert {"config.json", "metrics.jsonl", "last.npz", "best.npz", "curves.png"} <= names
    assert not [n for n in names if n.endswith(".tmp")], "a temporary checkpoint file was left behind"

    config = json.loads((reference / "config.json").read_text())
    assert config["dataset"] == "shapes" and config["model"] == "se_resnet20" and config["epochs"] == 2
    assert config["num_parameters"] == models.create("se_resnet20", num_classes=10).num_parameters()

    lines = (reference / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2, "one line per epoch"
    for epoch, line in enumerate(lines, start=1):
        m = json.loads(line)
        assert m["epoch"] == epoch
        assert set(METRIC_KEYS) <= set(m)
        assert all(isinstance(m[k], (int, float)) and math.isfinite(m[k]) for k in METRIC_KEYS)
        assert 0 <= m["train_acc"] <= 1 and 0 <= m["test_acc"] <= m["test_top5"] <= 1
        assert m["train_loss"] > 0 and m["test_loss"] > 0 and m["lr"] > 0 and m["images_per_s"] > 0

    assert (reference / "curves.png").read_bytes()[:8] == PNG

    metrics = read_metrics(reference)
    last, _ = load_checkpoint(reference / "last.npz")
    best, _ = load_checkpoint(reference / "best.npz")
    assert (last["epoch"], last["step_in_epoch"]) == (2, 0)
    best_epoch = 1 + int(np.argmax([m["test_acc"] for m in metrics]))  # the first of equal bests
    assert best["epoch"] == best_epoch and best["best_acc"] == metrics[best_epoch - 1]["test_acc"]


def test_optimizer_state_has_the_parameters_dtype(reference: Path) -> None:
    """Momentum buffers are float32 like the parameters. A buffer of another dtype (built from a gradient
    of the wrong dtype) is rounded to the parameter's dtype when a run resumes, and the resumed run then
    drifts from the uninterrupted one."""
    _, arrays = load_checkpoint(reference / "last.npz")
    dtypes = {a.dtype for name, a in arrays.items() if name.startswith("model/")}
    assert dtypes == {np.dtype(np.float32)}
    wrong = [f"{name} {a.dtype}" for name, a in arrays.items() if name.startswith("optim/") and a.dtype != np.float32]
    assert not wrong, f"optimizer state not float32 (a gradient of another dtype?): {wrong[:4]}"


def test_cosine_schedule_recorded_per_epoch(reference: Path) -> None:
    """The lr of each metrics line is the rate the epoch's last step used: cosine over all 8 steps."""
    total = 2 * STEPS
    for m in read_metrics(reference):
        t = m["epoch"] * STEPS - 1
        assert m["lr"] == pytest.approx(0.1 * (1 + math.cos(math.pi * t / total)) / 2, rel=1e-12)


def test_help_documents_quick_run_options() -> None:
    text = " ".join(train.build_parser().format_help().split())
    for flag in ("--train-images", "--test-images"):
        assert flag in text
    assert "quick runs" in text
    assert "--stop-after-steps" not in text  # for tests only


# ------------------------------------------------------------------------------------- resume
def test_resume_mid_epoch_twice_equals_uninterrupted(reference: Path, tmp_path: Path) -> None:
    """Stopped after step 3 (inside epoch 1) and after step 6 (inside epoch 2), resumed each time."""
    out = tmp_path / "run"
    assert main(*BASE, "--epochs", 2, "--out", out, "--stop-after-steps", 3) == train.EXIT_INTERRUPTED
    meta, _ = load_checkpoint(out / "last.npz")
    assert (meta["epoch"], meta["step_in_epoch"]) == (0, 3)
    assert read_metrics(out) == []

    assert main(*BASE, "--epochs", 2, "--out", out, "--resume", "--stop-after-steps", 6) == train.EXIT_INTERRUPTED
    meta, _ = load_checkpoint(out / "last.npz")
    assert (meta["epoch"], meta["step_in_epoch"]) == (1, 2)
    assert len(read_metrics(out)) == 1

    assert main(*BASE, "--epochs", 2, "--out", out, "--resume") == 0
    assert_same_checkpoint(reference / "last.npz", out / "last.npz")
    assert_same_checkpoint(reference / "best.npz", out / "best.npz")
    assert without_timing(read_metrics(out)) == without_timing(read_metrics(reference))


def test_resume_from_an_epoch_boundary_equals_uninterrupted(reference: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert main(*BASE, "--epochs", 2, "--out", out, "--stop-after-steps", STEPS) == train.EXIT_INTERRUPTED
    meta, _ = load_checkpoint(out / "last.npz")
    assert (meta["epoch"], meta["step_in_epoch"]) == (1, 0)  # the epoch was finished and evaluated
    assert len(read_metrics(out)) == 1

    assert main(*BASE, "--epochs", 2, "--out", out, "--resume", out / "last.npz") == 0
    assert_same_checkpoint(reference / "last.npz", out / "last.npz")
    assert without_timing(read_metrics(out)) == without_timing(read_metrics(reference))


def test_sigint_saves_a_checkpoint_and_resume_finishes_the_run(reference: Path, tmp_path: Path) -> None:
    """A real Ctrl-C, sent once the progress bar shows loss, accuracy and images/s."""
    out = tmp_path / "run"
    args = [a for a in BASE if a != "--no-progress"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "minise.train", *args, "--epochs", "2", "--out", str(out)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stderr is not None
    seen = b""
    try:
        deadline = time.monotonic() + 60
        while b"img/s" not in seen:  # read bytes as they come: a progress line may be incomplete
            assert time.monotonic() < deadline, f"no progress output: {seen!r}"
            ready, _, _ = select.select([proc.stderr], [], [], 1.0)
            if ready:
                chunk = os.read(proc.stderr.fileno(), 4096)
                assert chunk or proc.poll() is None, f"the run ended before the signal: {seen!r}"
                seen += chunk
        proc.send_signal(signal.SIGINT)
        rest_out, rest_err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr = (seen + rest_err).decode(errors="replace")
    assert "loss=" in stderr and "acc=" in stderr
    assert "\r" not in stderr, "stderr is a pipe, not a terminal: no carriage-return frames in a log"
    assert proc.returncode == train.EXIT_INTERRUPTED, stderr
    assert "Traceback" not in stderr, stderr
    assert "--resume" in last_line(stderr)
    meta, _ = load_checkpoint(out / "last.npz")
    assert 0 < meta["epoch"] * STEPS + meta["step_in_epoch"] < 2 * STEPS

    assert main(*BASE, "--epochs", 2, "--out", out, "--resume") == 0
    assert_same_checkpoint(reference / "last.npz", out / "last.npz")
    assert without_timing(read_metrics(out)) == without_timing(read_metrics(reference))


# ------------------------------------------------------------------------------------- extending a finished run
def cosine(t: int, total: int) -> float:
    return 0.1 * (1 + math.cos(math.pi * t / total)) / 2


def copy_run(run: Path, target: Path) -> Path:
    target.mkdir(parents=True)
    for p in run.iterdir():
        target.joinpath(p.name).write_bytes(p.read_bytes())
    return target


def test_a_finished_run_is_extended_on_a_replanned_schedule(
    reference: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """2 finished epochs extended to 4: epochs 1-2 as they were, epochs 3-4 on cosine over 4 epochs from step 8."""
    out = copy_run(reference, tmp_path / "run")
    assert main(*BASE, "--epochs", 4, "--out", out, "--resume") == 0
    err = capsys.readouterr().err
    assert re.search(r"extending the finished 2-epoch run to 4 epochs.*step 8.*an extension, not identical", err), err
    metrics = read_metrics(out)
    assert [m["epoch"] for m in metrics] == [1, 2, 3, 4]
    assert without_timing(metrics[:2]) == without_timing(read_metrics(reference))
    assert [m["lr"] for m in metrics[2:]] == pytest.approx([cosine(11, 16), cosine(15, 16)], rel=1e-12)
    meta, _ = load_checkpoint(out / "last.npz")
    assert (meta["epoch"], meta["step_in_epoch"], meta["extended_at_epochs"]) == (4, 0, [2])
    assert json.loads((out / "config.json").read_text())["extended_at_epochs"] == [2]


def test_an_interrupted_extension_resumes_exactly(reference: Path, tmp_path: Path) -> None:
    """Extended to 3 epochs, stopped mid-epoch 3 and resumed: the same as the uninterrupted extension."""
    whole = copy_run(reference, tmp_path / "whole")
    assert main(*BASE, "--epochs", 3, "--out", whole, "--resume") == 0
    out = copy_run(reference, tmp_path / "run")
    assert main(*BASE, "--epochs", 3, "--out", out, "--resume", "--stop-after-steps", 10) == train.EXIT_INTERRUPTED
    meta, _ = load_checkpoint(out / "last.npz")
    assert (meta["epoch"], meta["step_in_epoch"]) == (2, 2)
    assert main(*BASE, "--epochs", 3, "--out", out, "--resume") == 0
    assert_same_checkpoint(whole / "last.npz", out / "last.npz")
    assert without_timing(read_metrics(out)) == without_timing(read_metrics(whole))


def test_fewer_epochs_or_an_unfinished_run_with_other_epochs_is_refused(
    reference: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = copy_run(reference, tmp_path / "run")
    assert main(*BASE, "--epochs", 1, "--out", out, "--resume") == train.EXIT_BAD_INPUT
    assert "--epochs 2, not 1" in assert_one_line_error(capsys.readouterr().err)

    stopped = tmp_path / "stopped"  # interrupted inside epoch 1 of 2: exact resume needs the same --epochs
    assert main(*BASE, "--epochs", 2, "--out", stopped, "--stop-after-steps", 2) == train.EXIT_INTERRUPTED
    assert main(*BASE, "--epochs", 3, "--out", stopped, "--resume") == train.EXIT_BAD_INPUT
    assert "--epochs 2, not 3" in assert_one_line_error(capsys.readouterr().err)


# ------------------------------------------------------------------------------------- divergence
def test_divergence_exit_status_is_2_and_documented() -> None:
    assert train.EXIT_DIVERGED == 2
    text = " ".join(train.build_parser().format_help().split())
    assert "2 for bad input or when the run diverges" in text


def test_lr_1e6_on_shapes_stops_and_writes_no_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The issue's reproduction: --lr 1e6 used to exit 0 with a NaN model as best.npz."""
    out = tmp_path / "run"
    assert main(*BASE, "--epochs", 2, "--lr", 1e6, "--out", out) == 2
    line = assert_one_line_error(capsys.readouterr().err)
    assert re.search(r"(loss|gradient norm|weights).* (nan|inf|-inf).* epoch \d+, step \d+", line), line
    for name in ("last.npz", "best.npz"):
        if (out / name).exists():  # only a good checkpoint may exist
            _, arrays = load_checkpoint(out / name)
            assert all(np.isfinite(a).all() for a in arrays.values()), name


def test_non_finite_gradient_stops_before_the_step(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A gradient that overflows while the loss is still finite: stopped before SGD applies it."""
    original_norm = train.Run.grad_norm
    calls = {"n": 0}

    def grad_norm(self: train.Run) -> float:
        calls["n"] += 1
        if calls["n"] == STEPS + 3:  # epoch 2, step 3
            self.model.fc.weight.grad[0, 0] = np.inf
        return original_norm(self)

    monkeypatch.setattr(train.Run, "grad_norm", grad_norm)
    out = tmp_path / "run"
    assert main(*BASE, "--epochs", 2, "--out", out) == train.EXIT_DIVERGED
    line = assert_one_line_error(capsys.readouterr().err)
    assert "gradient norm became inf at epoch 2, step 3" in line and "last.npz" in line, line
    meta, arrays = load_checkpoint(out / "last.npz")
    assert (meta["epoch"], meta["step_in_epoch"]) == (1, 0)
    assert all(np.isfinite(a).all() for a in arrays.values())


def test_grad_norm_is_the_global_l2_norm(tmp_path: Path) -> None:
    args = train.build_parser().parse_args([*BASE[4:], "--out", str(tmp_path / "run")])
    run = train.Run(args)
    params = [p for p in run.model.parameters()]
    rng = np.random.default_rng(0)
    for p in params:
        p.grad = rng.standard_normal(p.shape).astype(np.float32)
    expected = math.sqrt(sum(float((p.grad.astype(np.float64) ** 2).sum()) for p in params))
    assert run.grad_norm() == pytest.approx(expected, rel=1e-5)
    params[3].grad[0] = np.nan
    assert math.isnan(run.grad_norm())


def test_non_finite_held_out_loss_keeps_the_last_good_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Finite training loss and weights, NaN held-out loss after epoch 2 (logits that overflow in eval mode):
    nothing of epoch 2 is written, best.npz and last.npz stay epoch 1's."""
    original = train.evaluate
    calls = {"n": 0}

    def evaluate(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        result = original(*args, **kwargs)
        if calls["n"] == 2:
            result.loss = float("nan")
        return result

    monkeypatch.setattr(train, "evaluate", evaluate)
    out = tmp_path / "run"
    assert main(*BASE, "--epochs", 3, "--out", out) == train.EXIT_DIVERGED
    line = assert_one_line_error(capsys.readouterr().err)
    assert f"held-out loss became nan after epoch 2, step {STEPS}" in line and "last.npz" in line, line
    for name in ("last.npz", "best.npz"):
        meta, arrays = load_checkpoint(out / name)
        assert meta["epoch"] == 1 and all(np.isfinite(a).all() for a in arrays.values()), name
    assert [m["epoch"] for m in read_metrics(out)] == [1]


def test_huge_learning_rate_stops_naming_epoch_and_step(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert main(*BASE, "--epochs", 1, "--lr", 1e30, "--out", out) == train.EXIT_DIVERGED
    err = capsys.readouterr().err
    line = assert_one_line_error(err)
    assert re.search(r"loss became (nan|inf|-inf) at epoch 1, step \d+", line), line
    assert "RuntimeWarning" not in err  # the one line, not a screen of overflow warnings
    assert not (out / "last.npz").exists() and not (out / "best.npz").exists()


def test_nan_loss_in_a_later_epoch_keeps_the_last_good_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """After epoch 1 the loss turns NaN at its second step: exit 2, and last.npz is epoch 1's."""
    original_loss, original_end = train.F.cross_entropy, train.Run.end_epoch
    calls = {"n": 0}

    def nan_on_second_call(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        loss = original_loss(*args, **kwargs)
        return loss * float("nan") if calls["n"] == 2 else loss

    def end_epoch(self: train.Run) -> dict[str, Any]:
        record = original_end(self)
        monkeypatch.setattr(train.F, "cross_entropy", nan_on_second_call)  # from epoch 2 on
        return record

    monkeypatch.setattr(train.Run, "end_epoch", end_epoch)
    out = tmp_path / "run"
    assert main(*BASE, "--epochs", 2, "--out", out) == train.EXIT_DIVERGED
    line = assert_one_line_error(capsys.readouterr().err)
    assert "loss became nan at epoch 2, step 2" in line and "last.npz" in line, line
    meta, arrays = load_checkpoint(out / "last.npz")
    assert (meta["epoch"], meta["step_in_epoch"]) == (1, 0)
    assert all(np.isfinite(a).all() for a in arrays.values())
    model_from_checkpoint(meta, arrays, out / "last.npz")
    assert [m["epoch"] for m in read_metrics(out)] == [1]


def test_non_finite_weights_are_never_saved(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Weights that overflowed on an epoch's last step (the loss of that step was still finite)."""
    original_end = train.Run.end_epoch

    def end_epoch(self: train.Run) -> dict[str, Any]:
        self.model.fc.weight.data[0, 0] = np.inf
        return original_end(self)

    monkeypatch.setattr(train.Run, "end_epoch", end_epoch)
    out = tmp_path / "run"
    assert main(*BASE, "--epochs", 1, "--out", out) == train.EXIT_DIVERGED
    line = assert_one_line_error(capsys.readouterr().err)
    assert "fc.weight" in line and "epoch 1" in line, line
    assert not (out / "last.npz").exists() and not (out / "best.npz").exists()


# ------------------------------------------------------------------------------------- options
@pytest.mark.parametrize(
    ("flags", "options"),
    [(["--reduction", "4"], {"reduction": 4}), (["--se-stages", "3"], {"se_stages": [3]})],
    ids=["reduction", "se-stages"],
)
def test_se_options_reach_the_model(
    flags: list[str], options: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    default = models.create("se_resnet20", num_classes=10).num_parameters()
    expected = models.create("se_resnet20", num_classes=10, **options).num_parameters()
    assert expected != default
    out = tmp_path / "run"
    assert main(*BASE, *flags, "--epochs", 1, "--out", out, "--stop-after-steps", 1) == train.EXIT_INTERRUPTED
    assert f"({expected:,} parameters)" in capsys.readouterr().err
    config = json.loads((out / "config.json").read_text())
    assert config["num_parameters"] == expected and config["model_options"] == options
    meta, arrays = load_checkpoint(out / "last.npz")
    assert meta["model_options"] == options
    assert model_from_checkpoint(meta, arrays, out / "last.npz").num_parameters() == expected


def test_step_schedule_with_warmup_records_the_formula(tmp_path: Path) -> None:
    """4 epochs of 2 steps, 1 epoch of warm-up from lr/10, then step decay at 50% and 75% of the rest."""
    out = tmp_path / "run"
    args = ["--dataset", "shapes", "--model", "resnet20", "--batch-size", "16", "--no-progress"]
    args += ["--train-images", "32", "--test-images", "16", "--epochs", "4", "--lr", "0.1"]
    assert main(*args, "--schedule", "step", "--warmup-epochs", 1, "--out", out) == 0
    steps, base = 2, 0.1
    total, warmup = 4 * steps, 1 * steps
    rest = total - warmup
    milestones = [rest // 2, 3 * rest // 4]

    def lr_at(t: int) -> float:
        if t < warmup:
            return base * (0.1 + 0.9 * t / warmup)
        return base * 0.1 ** sum(t - warmup >= m for m in milestones)

    recorded = [m["lr"] for m in read_metrics(out)]
    assert recorded == pytest.approx([lr_at(e * steps - 1) for e in range(1, 5)], rel=1e-12)
    assert recorded == pytest.approx([0.055, 0.1, 0.01, 0.001], rel=1e-12)


@pytest.mark.skipif(not CIFAR10.is_dir(), reason=f"shared CIFAR-10 sample not found at {CIFAR10}")
def test_cifar10_one_short_epoch(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["--dataset", "cifar10", "--data-dir", CIFAR10, "--model", "resnet20", *SMALL, "--epochs", 1]
    assert main(*args, "--out", out) == 0
    (m,) = read_metrics(out)
    assert m["epoch"] == 1 and math.isfinite(m["train_loss"]) and 0 <= m["test_acc"] <= 1
    meta, _ = load_checkpoint(out / "last.npz")
    assert meta["dataset"] == "cifar10" and meta["num_classes"] == 10
    assert meta["normalize"]["mean"] == pytest.approx([0.4914, 0.4822, 0.4465], abs=1e-3)


# ------------------------------------------------------------------------------------- bad input
BAD_INPUT = [
    (["--model", "resnet7"], ["unknown model 'resnet7'", "resnet20", "se_resnet20", "se_resnet50"]),
    (["--dataset", "imagenet"], ["unknown data set 'imagenet'", "shapes, cifar10, cifar100"]),
    (["--dataset", "cifar10", "--data-dir", "{tmp}/nonexistent"], ["cifar-10-batches-py", "--download"]),
    (["--batch-size", "100"], ["--batch-size 100", "64 training images"]),
    (["--train-images", "0"], ["--train-images must be at least 1"]),
    (["--momentum", "-0.5"], ["--momentum"]),
    (["--warmup-epochs", "-1"], ["--warmup-epochs"]),
    (["--model", "resnet20", "--reduction", "4"], ["no SE blocks"]),
    (["--se-stages", "2,x"], ["--se-stages"]),
    (["--se-stages", "7"], ["stages"]),
    (["--resume"], ["last.npz does not exist"]),
]


@pytest.mark.parametrize(("flags", "expected"), BAD_INPUT, ids=[" ".join(flags) for flags, _ in BAD_INPUT])
def test_bad_input_is_one_line_and_exit_2(
    flags: list[str], expected: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    flags = [f.replace("{tmp}", str(tmp_path)) for f in flags]
    assert main(*BASE, "--epochs", 1, *flags, "--out", out) == train.EXIT_BAD_INPUT
    line = assert_one_line_error(capsys.readouterr().err)
    for text in expected:
        assert text in line, line
    assert not out.exists(), "a refused run leaves no folder behind"


def test_usage_errors_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        train.main(["--epochs", "two"])
    assert exc.value.code == train.EXIT_BAD_INPUT
    line = assert_one_line_error(capsys.readouterr().err)
    assert "--epochs" in line


def test_resume_refuses_another_models_checkpoint(
    reference: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--dataset", "shapes", "--model", "resnet20", *SMALL, "--epochs", "2"]
    assert main(*args, "--out", tmp_path / "run", "--resume", reference / "last.npz") == train.EXIT_BAD_INPUT
    line = assert_one_line_error(capsys.readouterr().err)
    assert "se_resnet20" in line and "resnet20" in line and "--model" in line, line


def test_resume_refuses_other_arguments(reference: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = [a if a != "16" else "8" for a in BASE]  # --batch-size 8: other batches, other positions
    assert main(*args, "--epochs", 2, "--out", tmp_path / "run", "--resume", reference / "last.npz") == 2
    line = assert_one_line_error(capsys.readouterr().err)
    assert "--batch-size 16, not 8" in line, line


def test_resume_refuses_a_checkpoint_of_other_shapes(
    reference: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with np.load(reference / "last.npz", allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["model/fc.weight"] = np.zeros((10, 32), dtype=np.float32)  # 64 features in this model
    edited = tmp_path / "edited.npz"
    np.savez(edited, **arrays)  # type: ignore[arg-type]
    assert main(*BASE, "--epochs", 2, "--out", tmp_path / "run", "--resume", edited) == train.EXIT_BAD_INPUT
    line = assert_one_line_error(capsys.readouterr().err)
    assert "fc.weight" in line and "(10, 32)" in line, line


@pytest.mark.parametrize("damage", ["truncated", "random bytes", "empty"])
def test_resume_refuses_a_damaged_checkpoint(
    damage: str, reference: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = (reference / "last.npz").read_bytes()
    content = {"truncated": good[: len(good) // 2], "random bytes": os.urandom(4096), "empty": b""}[damage]
    bad = tmp_path / "last.npz"
    bad.write_bytes(content)
    assert main(*BASE, "--epochs", 2, "--out", tmp_path, "--resume") == train.EXIT_BAD_INPUT
    line = assert_one_line_error(capsys.readouterr().err)
    assert str(bad) in line, line
    assert bad.read_bytes() == content, "a refused resume must not touch the file"


def test_bad_input_from_the_command_line_is_one_line_without_traceback(reference: Path, tmp_path: Path) -> None:
    """Real processes: the exit status and stderr a user sees."""
    unknown = run_cli("--model", "resnet7", *SMALL, cwd=tmp_path)
    assert unknown.returncode == 2
    assert "se_resnet20" in assert_one_line_error(unknown.stderr)
    assert len(unknown.stderr.strip().splitlines()) == 1, unknown.stderr

    missing = run_cli("--dataset", "cifar10", "--data-dir", tmp_path / "nonexistent", *SMALL, cwd=tmp_path)
    assert missing.returncode == 2
    assert "--download" in assert_one_line_error(missing.stderr)
    assert len(missing.stderr.strip().splitlines()) == 1, missing.stderr

    truncated = tmp_path / "truncated.npz"
    good = (reference / "last.npz").read_bytes()
    truncated.write_bytes(good[: len(good) - 100])
    corrupt = run_cli(*BASE, "--epochs", 2, "--out", tmp_path / "run", "--resume", truncated, cwd=tmp_path)
    assert corrupt.returncode == 2
    assert "corrupt or truncated" in assert_one_line_error(corrupt.stderr)
    assert len(corrupt.stderr.strip().splitlines()) == 1, corrupt.stderr


SCRIPT = Path(sys.executable).with_name("minise-train")


@pytest.mark.skipif(not SCRIPT.exists(), reason=f"no minise-train script next to {sys.executable}")
def test_installed_script(tmp_path: Path) -> None:
    done = subprocess.run([SCRIPT, "--help"], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 0 and "--train-images" in done.stdout
