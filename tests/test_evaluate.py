"""Evaluation: the metrics agree with each other and with a direct computation, the command prints
them (as JSON on request) and draws the confusion matrix, and a checkpoint that does not fit is
refused in one line with exit status 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import SHARED_DATA

from minise import data, evaluate, models, train
from minise import functional as F
from minise.autograd import no_grad
from minise.checkpoint import load_checkpoint
from minise.nn import Module
from minise.tensor import Tensor

PNG = b"\x89PNG\r\n\x1a\n"
CIFAR10 = SHARED_DATA / "cifar10-mini"


class LogitsFromInput(Module):
    """A 'model' whose logits are its input: x (N, K, 1, 1) -> (N, K), to set the scores exactly."""

    def forward(self, x: Tensor) -> Tensor:
        return Tensor(x.data.reshape(x.shape[0], -1))


def batches_of(logits: np.ndarray, labels: np.ndarray, size: int) -> list[tuple[np.ndarray, np.ndarray]]:
    x = logits.astype(np.float32)[:, :, None, None]
    return [(x[i : i + size], labels[i : i + size]) for i in range(0, len(labels), size)]


def test_top1_top5_and_per_class_on_chosen_scores() -> None:
    k = 7
    # Each row ranks the classes 0, 1, ..., 6 from the highest score to the lowest, rolled so that the
    # true class lands at rank r: ranks 0 (top-1), 4 (still top-5) and 5, 6 (not top-5).
    ranks = np.array([0, 0, 0, 4, 5, 6, 0, 4])
    labels = np.array([0, 1, 2, 3, 4, 5, 6, 6])
    logits = np.zeros((len(labels), k))
    for i, (label, rank) in enumerate(zip(labels, ranks)):
        order = [(label - rank + j) % k for j in range(k)]  # order[rank] == label
        logits[i, order] = np.arange(k, 0, -1, dtype=float)
    result = evaluate.evaluate(LogitsFromInput(), batches_of(logits, labels, 3), k)

    assert result.top1 == 4 / 8
    assert result.top5 == 6 / 8
    predicted = logits.argmax(axis=1)
    expected = np.zeros((k, k), dtype=np.int64)
    np.add.at(expected, (labels, predicted), 1)
    assert np.array_equal(result.confusion, expected)
    assert result.per_class == [1, 1, 1, 0, 0, 0, 0.5]
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    assert result.loss == pytest.approx(-log_p[np.arange(len(labels)), labels].mean(), rel=1e-6)


def test_fewer_than_five_classes_makes_top5_one() -> None:
    labels = np.array([0, 1, 2, 0])
    logits = np.eye(3)[[1, 2, 0, 0]]
    result = evaluate.evaluate(LogitsFromInput(), batches_of(logits, labels, 4), 3)
    assert result.top1 == 0.25 and result.top5 == 1.0


def test_metrics_of_a_real_model_are_consistent() -> None:
    """resnet20 (untrained) on 40 shapes images in batches of 16, 16 and 8, against one direct pass."""
    ds = data.load_shapes(train=False, n=40)
    loader = data.DataLoader(ds.images, ds.labels, 16)
    model = models.create("resnet20", num_classes=10)
    result = evaluate.evaluate(model, loader, 10)

    c = result.confusion
    assert c.shape == (10, 10) and c.sum() == 40
    assert np.array_equal(c.sum(axis=1), np.bincount(ds.labels, minlength=10))
    assert result.top1 == np.trace(c) / 40
    assert result.top1 <= result.top5 <= 1
    rows = c.sum(axis=1)
    assert result.per_class == pytest.approx([c[i, i] / rows[i] if rows[i] else 0 for i in range(10)])
    assert not model.training  # evaluate puts the model in eval mode

    x = np.concatenate([loader.make_batch(0, i)[0] for i in range(len(loader))])  # all 40 in one pass
    y = ds.labels  # in order: the loader does not shuffle
    with no_grad():
        logits = model(Tensor(x))
    z = logits.numpy()
    assert result.top1 == pytest.approx(float((z.argmax(axis=1) == y).mean()))
    top5 = np.argsort(-z, axis=1)[:, :5]
    assert result.top5 == pytest.approx(float((top5 == y[:, None]).any(axis=1).mean()))
    assert result.loss == pytest.approx(float(F.cross_entropy(logits, y).item()), rel=1e-5)

    d = result.as_dict(ds.classes)
    assert list(d["per_class_accuracy"]) == ds.classes and d["confusion_matrix"] == c.tolist()


# ------------------------------------------------------------------------------------- the command
def save_untrained(out: Path, *flags: str) -> Path:
    """A checkpoint exactly as minise.train writes it, of a model that has not trained."""
    args = train.build_parser().parse_args(["--batch-size", "16", "--train-images", "64", *flags, "--out", str(out)])
    return train.Run(args).save("model.npz")


@pytest.fixture(scope="module")
def shapes_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_untrained(tmp_path_factory.mktemp("eval"), "--model", "resnet20", "--dataset", "shapes")


def run_evaluate(*args: Any, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "minise.evaluate", *[str(a) for a in args]],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_json_and_confusion_plot(shapes_checkpoint: Path, tmp_path: Path) -> None:
    plot = tmp_path / "confusion.png"
    done = run_evaluate("--checkpoint", shapes_checkpoint, "--test-images", 30, "--json", "--plot", plot, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    result = json.loads(done.stdout)
    assert set(result) == {"loss", "top1", "top5", "per_class_accuracy", "confusion_matrix"}
    confusion = np.array(result["confusion_matrix"])
    assert confusion.shape == (10, 10) and confusion.sum() == 30
    assert result["top1"] == pytest.approx(np.trace(confusion) / 30)
    assert result["top1"] <= result["top5"] <= 1 and result["loss"] > 0
    assert list(result["per_class_accuracy"]) == data.SHAPES_CLASSES
    assert plot.read_bytes()[:8] == PNG


def test_cli_text_output_and_default_plot_path(
    shapes_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoint = tmp_path / "copy.npz"
    checkpoint.write_bytes(shapes_checkpoint.read_bytes())
    assert evaluate.main(["--checkpoint", str(checkpoint), "--test-images", "20"]) == 0
    out = capsys.readouterr().out
    assert "top-1" in out and "top-5" in out and "20 images" in out
    assert all(name in out for name in data.SHAPES_CLASSES)
    assert (tmp_path / "copy_confusion_shapes.png").read_bytes()[:8] == PNG  # the data set is in the name
    assert out.index("top-1") < out.index("confusion matrix:")  # the results first, then the figure


@pytest.mark.skipif(not CIFAR10.is_dir(), reason=f"shared CIFAR-10 sample not found at {CIFAR10}")
def test_cli_on_cifar10(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = save_untrained(tmp_path, "--model", "se_resnet20", "--dataset", "cifar10", "--data-dir", str(CIFAR10))
    args = ["--checkpoint", str(ckpt), "--dataset", "cifar10", "--data-dir", str(CIFAR10)]
    assert evaluate.main([*args, "--test-images", "24", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert np.array(result["confusion_matrix"]).sum() == 24
    assert "airplane" in result["per_class_accuracy"]
    assert (tmp_path / "model_confusion_cifar10.png").exists()


# ------------------------------------------------------------------------------------- nothing dropped
def blocked_figure(tmp_path: Path, shapes_checkpoint: Path) -> tuple[Path, Path]:
    """A checkpoint whose default figure path cannot be written.

    The figure goes next to the checkpoint. A read-only folder cannot be made reliably in a test: tests may
    run as root, whom chmod does not stop. So the path is made unwritable for everyone: a folder of the
    figure's name stands where the PNG would go (writing it fails with IsADirectoryError, an OSError like
    the [Errno 30] of a read-only file system)."""
    checkpoint = tmp_path / "best.npz"
    checkpoint.write_bytes(shapes_checkpoint.read_bytes())
    figure = tmp_path / "best_confusion_shapes.png"
    figure.mkdir()
    return checkpoint, figure


def test_an_unwritable_figure_is_a_warning_after_the_results(shapes_checkpoint: Path, tmp_path: Path) -> None:
    """The bug: a checkpoint in a read-only folder printed nothing and exited 2."""
    checkpoint, figure = blocked_figure(tmp_path, shapes_checkpoint)
    done = run_evaluate("--checkpoint", checkpoint, "--test-images", 16, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "top-1" in done.stdout and all(name in done.stdout for name in data.SHAPES_CLASSES)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert lines[0].startswith("minise.evaluate: warning:") and str(figure) in lines[0], lines[0]
    assert "--out" in lines[0] and "--no-plot" in lines[0] and "[Errno" not in lines[0], lines[0]
    assert figure.is_dir() and not list(figure.iterdir())


def test_json_is_complete_when_the_figure_fails(
    shapes_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoint, _ = blocked_figure(tmp_path, shapes_checkpoint)
    saved = tmp_path / "results" / "metrics.json"
    assert evaluate.main(["--checkpoint", str(checkpoint), "--test-images", "16", "--json"]) == 0
    captured = capsys.readouterr()
    printed = json.loads(captured.out)  # stdout is the JSON and nothing else
    assert np.array(printed["confusion_matrix"]).sum() == 16
    assert "warning" in captured.err

    assert evaluate.main(["--checkpoint", str(checkpoint), "--test-images", "16", "--json", str(saved)]) == 0
    captured = capsys.readouterr()
    assert json.loads(saved.read_text()) == printed and "top-1" in captured.out


def test_out_under_a_file_is_a_warning(
    shapes_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--out naming a folder under a regular file (unwritable for root too)."""
    blocker = tmp_path / "a-file"
    blocker.write_text("keep me")
    args = ["--checkpoint", str(shapes_checkpoint), "--test-images", "8", "--out", str(blocker / "figures")]
    assert evaluate.main(args) == 0
    captured = capsys.readouterr()
    assert "top-1" in captured.out
    (line,) = captured.err.strip().splitlines()
    assert line.startswith("minise.evaluate: warning:") and "[Errno" not in line, line
    assert blocker.read_text() == "keep me"


def test_results_are_printed_before_the_figure_is_drawn(
    shapes_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import minise.plotting

    seen: dict[str, str] = {}

    def failing_plot(*args: Any, **kwargs: Any) -> Path:
        seen["out"] = capsys.readouterr().out  # what was printed when the figure was started
        raise RuntimeError("the figure\nbroke")

    monkeypatch.setattr(minise.plotting, "plot_confusion", failing_plot)
    assert evaluate.main(["--checkpoint", str(shapes_checkpoint), "--test-images", "8", "--out", str(tmp_path)]) == 0
    assert "top-1" in seen["out"]
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "the figure broke" in line and "warning" in line


def test_no_plot_and_out(shapes_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    checkpoint = tmp_path / "ckpt" / "best.npz"
    checkpoint.parent.mkdir()
    checkpoint.write_bytes(shapes_checkpoint.read_bytes())
    assert evaluate.main(["--checkpoint", str(checkpoint), "--test-images", "8", "--no-plot"]) == 0
    assert "top-1" in capsys.readouterr().out
    assert sorted(p.name for p in checkpoint.parent.iterdir()) == ["best.npz"]

    figures = tmp_path / "figures"
    assert evaluate.main(["--checkpoint", str(checkpoint), "--test-images", "8", "--out", str(figures)]) == 0
    assert (figures / "best_confusion_shapes.png").read_bytes()[:8] == PNG
    assert sorted(p.name for p in checkpoint.parent.iterdir()) == ["best.npz"]


@pytest.mark.skipif(not CIFAR10.is_dir(), reason=f"shared CIFAR-10 sample not found at {CIFAR10}")
def test_evaluating_on_another_data_set_leaves_the_runs_confusion_matrix_untouched(
    shapes_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The bug: every evaluation of best.npz wrote best_confusion.png, whatever the data set."""
    checkpoint = tmp_path / "best.npz"
    checkpoint.write_bytes(shapes_checkpoint.read_bytes())
    assert evaluate.main(["--checkpoint", str(checkpoint), "--test-images", "16"]) == 0  # its own data set
    own = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.suffix == ".png"}
    assert list(own) == ["best_confusion_shapes.png"]
    args = ["--checkpoint", str(checkpoint), "--dataset", "cifar10", "--data-dir", str(CIFAR10), "--test-images", "16"]
    assert evaluate.main(args) == 0
    assert "note: the model was trained on shapes" in capsys.readouterr().err
    assert {name: (tmp_path / name).read_bytes() for name in own} == own
    assert (tmp_path / "best_confusion_cifar10.png").read_bytes()[:8] == PNG


def test_another_image_size_gets_a_one_line_warning(
    shapes_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert load_checkpoint(shapes_checkpoint)[0]["input_size"] == 32  # recorded by minise.train
    evaluate.main(["--checkpoint", str(shapes_checkpoint), "--test-images", "8", "--no-plot"])
    assert "warning" not in capsys.readouterr().err

    def trained_at_64(meta: dict[str, Any], entries: dict[str, np.ndarray]) -> None:
        meta["input_size"] = 64

    other = edited(shapes_checkpoint, tmp_path / "at64.npz", trained_at_64)
    assert evaluate.main(["--checkpoint", str(other), "--test-images", "8", "--no-plot"]) == 0
    captured = capsys.readouterr()
    (line,) = captured.err.strip().splitlines()
    assert line.startswith("minise.evaluate: warning:") and "64x64" in line and "32x32" in line, line
    assert "top-1" in captured.out


def test_no_plot_with_plot_is_a_usage_error(shapes_checkpoint: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        evaluate.main(["--checkpoint", str(shapes_checkpoint), "--no-plot", "--plot", "x.png"])
    assert exc.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "--no-plot" in line


def test_an_unknown_data_set_lists_every_one_evaluate_accepts(
    shapes_checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The arrays and the image folders, as train's --dataset; before the checkpoint is even read."""
    with pytest.raises(SystemExit) as exc:
        evaluate.main(["--checkpoint", str(shapes_checkpoint), "--dataset", "banana"])
    assert exc.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "unknown data set 'banana' - use one of " + ", ".join(data.DATASETS + data.IMAGE_DATASETS) in line, line
    assert {"cifar10", "imagenette", "imagefolder"} <= set(data.DATASETS + data.IMAGE_DATASETS)


# ------------------------------------------------------------------------------------- refusals
def edited(source: Path, target: Path, change: Any) -> Path:
    with np.load(source, allow_pickle=False) as z:
        entries = {k: z[k] for k in z.files}
    meta = json.loads(entries["__meta__"].tobytes())
    change(meta, entries)
    entries["__meta__"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    np.savez(target, **entries)  # type: ignore[arg-type]
    return target


def test_checkpoint_of_other_shapes_is_refused_in_one_line(shapes_checkpoint: Path, tmp_path: Path) -> None:
    def shrink_conv(meta: dict[str, Any], entries: dict[str, np.ndarray]) -> None:
        entries["model/conv1.weight"] = entries["model/conv1.weight"][:8]  # 16 filters in resnet20

    bad = edited(shapes_checkpoint, tmp_path / "bad.npz", shrink_conv)
    done = run_evaluate("--checkpoint", bad, "--test-images", 8, cwd=tmp_path)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("minise.evaluate: ") and "conv1.weight" in lines[0] and "(8, 3, 3, 3)" in lines[0]
    assert done.stdout == ""


def _rename_model(meta: dict[str, Any], entries: dict[str, np.ndarray]) -> None:
    meta["model"] = "se_resnet20"  # the arrays are resnet20's: missing SE weights


def _unknown_model(meta: dict[str, Any], entries: dict[str, np.ndarray]) -> None:
    meta["model"] = "resnet7"


def _bad_options(meta: dict[str, Any], entries: dict[str, np.ndarray]) -> None:
    meta["model_options"] = {"no_such_option": 1}


def _no_classes(meta: dict[str, Any], entries: dict[str, np.ndarray]) -> None:
    del meta["num_classes"]


def _fewer_classes(meta: dict[str, Any], entries: dict[str, np.ndarray]) -> None:
    meta["num_classes"] = 5
    entries["model/fc.weight"] = entries["model/fc.weight"][:5]
    entries["model/fc.bias"] = entries["model/fc.bias"][:5]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (_rename_model, "missing keys"),
        (_unknown_model, "'resnet7'"),
        (_bad_options, "no_such_option"),
        (_no_classes, "num_classes"),
        (_fewer_classes, "more classes"),
    ],
    ids=["another model", "unknown model", "bad options", "no num_classes", "fewer classes than the data"],
)
def test_checkpoints_that_do_not_fit_are_refused(
    change: Any, expected: str, shapes_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = edited(shapes_checkpoint, tmp_path / "bad.npz", change)
    assert evaluate.main(["--checkpoint", str(bad), "--test-images", "8"]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("minise.evaluate: "), captured.err
    assert expected in lines[0], lines[0]
    assert captured.out == ""


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 truncated", b"garbage" * 100], ids=["empty", "zip", "bytes"])
def test_damaged_checkpoint_is_refused(content: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.npz"
    bad.write_bytes(content)
    assert evaluate.main(["--checkpoint", str(bad)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and str(bad) in lines[0]


def test_usage_errors_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        evaluate.main([])
    assert exc.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "--checkpoint" in lines[0]


def test_model_from_checkpoint_round_trip(shapes_checkpoint: Path) -> None:
    meta, arrays = load_checkpoint(shapes_checkpoint)
    model = evaluate.model_from_checkpoint(meta, arrays, shapes_checkpoint)
    for name, value in model.state_dict().items():
        assert np.array_equal(value, arrays[f"model/{name}"]), name
