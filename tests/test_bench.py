"""minise/bench.py and minise/bench_gpu.py: the command lines work (timings are never checked in a test)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from minise import bench

REPO = Path(__file__).resolve().parents[1]


def test_help_lists_the_commands_but_not_the_internal_child() -> None:
    out = subprocess.run([sys.executable, "-m", "minise.bench", "--help"], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0
    for name in ("ops", "train", "data", "gpu"):
        assert name in out.stdout
    assert "train-child" not in out.stdout  # internal: the per-framework child process


def test_without_torch_bench_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` fails
    assert bench._torch() is None
    result = bench.bench_ops("numpy", batch=2, gemm_n=64)
    text = bench.format_ops(result)
    assert "n/a" not in text
    assert "pip install torch" in text and result["note"] == bench.TORCH_HINT
    assert all(c["torch_ms"] is None for c in result["cases"])
    assert all(np.isfinite(c["ms"]) and c["ms"] > 0 for c in result["cases"])


@pytest.mark.slow
def test_bench_gpu_runs_end_to_end_under_the_cupy_standin(tmp_path: Path) -> None:
    """Slow (about 25 s of CPU: a pytest run, op timings, two short trainings, all on the stand-in).

    Every section of ``bench gpu`` runs on the CuPy path under the CPU stand-in, at tiny sizes (its timings
    mean nothing there): the command cannot crash on a first GPU for a reason a CPU could have caught. The
    PyTorch-on-CUDA parts (reference timings, the profiler's kernel count) report that there is no CUDA."""
    env = dict(os.environ, MINISE_CUPY_STANDIN="1", MINISE_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "tests"), str(REPO)])
    env.pop("MINISE_BACKEND", None)
    out_json = tmp_path / "gpu.json"
    args = ["--tests", "round_trip", "--ops-batch", "2", "--gemm-size", "64", "--batch-size", "4", "--steps", "1"]
    args += ["--dataset", "shapes", "--epochs", "1", "--train-images", "16", "--test-images", "8"]
    out = subprocess.run(
        [sys.executable, "-m", "cupy_standin", "minise.bench", "gpu", *args, "--json", str(out_json)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "timings mean something only on a real GPU" in out.stdout
    r = json.loads(out_json.read_text())
    assert "stand-in" in r["device"]["device"]
    for section in ("device", "tests", "ops", "train", "launches", "accuracy"):
        assert r[section]["ok"], (section, r[section])
    assert "2 passed" in r["tests"]["summary"]  # the round-trip test, on NumPy and on the device
    assert len(r["ops"]["cases"]) == 6 and r["ops"]["torch_device"] is None
    assert r["train"]["runs"][0]["framework"] == "minise"
    assert "unavailable" in r["launches"]
    assert 0 <= r["accuracy"]["cupy"]["test_acc"] <= 1 and 0 <= r["accuracy"]["numpy"]["test_acc"] <= 1


# ------------------------------------------------------------------------ PyTorch twins of the ImageNet models
@pytest.mark.torch
@pytest.mark.parametrize("name", ["resnet18", "se_resnet18", "resnet34", "se_resnet34"])
def test_torch_imagenet_twin_has_minises_parameters(name: str) -> None:
    """The torch.nn build of the benchmark holds exactly minise's layers: the same parameter count (1000 and 10
    classes), 11,689,512 for ResNet-18 as published, and the same output shape at 64 px."""
    torch = pytest.importorskip("torch")
    from minise import models

    for classes in (1000, 10):
        net = bench._torch_model(torch, name, classes)
        assert sum(p.numel() for p in net.parameters()) == models.create(name, num_classes=classes).num_parameters()
    if name == "resnet18":
        assert sum(p.numel() for p in bench._torch_model(torch, name, 1000).parameters()) == 11_689_512
    assert tuple(bench._torch_model(torch, name)(torch.zeros(2, 3, 64, 64)).shape) == (2, 10)


@pytest.mark.torch
def test_torch_twins_put_se_where_minise_does() -> None:
    """Parameter counts alone cannot see SE moved to another tensor of the same width: the SE blocks' widths,
    in order, equal minise's (the output width of each residual block), for the CIFAR and ImageNet twins."""
    torch = pytest.importorskip("torch")
    from minise import models
    from minise.nn import SEBlock

    for name in ("se_resnet20", "se_resnet18"):
        mine = [m.channels for m in models.create(name).modules() if isinstance(m, SEBlock)]
        theirs = [m.fc1.in_features for m in bench._torch_model(torch, name).modules() if hasattr(m, "fc1")]
        assert mine == theirs and len(mine) in (8, 9), (name, mine, theirs)
        torch_params = sum(p.numel() for p in bench._torch_model(torch, name).parameters())
        assert torch_params == models.create(name, num_classes=10).num_parameters()
    with pytest.raises(ValueError, match="no PyTorch twin of 'se_resnet50'"):
        bench._torch_model(torch, "se_resnet50")


@pytest.mark.torch
def test_bench_train_runs_both_frameworks_on_se_resnet18_at_64_px(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    out_json = tmp_path / "train.json"
    args = ["train", "--model", "se_resnet18", "--image-size", "64", "--batch-size", "2", "--steps", "1"]
    assert bench.main([*args, "--rounds", "1", "--json", str(out_json)]) == 0
    r = json.loads(out_json.read_text())
    assert r["image_size"] == 64 and [run["framework"] for run in r["runs"]] == ["minise", "torch"]
    assert r["runs"][0]["parameters"] == r["runs"][1]["parameters"]  # the same model on both sides
    assert all(run["images_per_s"] > 0 for run in r["runs"])


def _torch_twin_with_statistics(torch, name: str):  # type: ignore[no-untyped-def]
    """The bench's PyTorch twin in eval mode, its batch norms given statistics and affines as after training."""
    net = bench._torch_cifar_resnet(torch, name)
    g = torch.Generator().manual_seed(0)
    for bn in (m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        c = bn.num_features
        bn.running_mean.copy_(0.1 * torch.randn(c, generator=g))
        bn.running_var.copy_(0.5 + 1.5 * torch.rand(c, generator=g))
        bn.weight.data.copy_(0.5 + torch.rand(c, generator=g))
        bn.bias.data.copy_(0.1 * torch.randn(c, generator=g))
    return net.eval()


@pytest.mark.torch
def test_torch_folded_twin_gives_the_same_logits_without_batch_norm() -> None:
    """``bench train --eval`` compares minise's folded model with PyTorch's: the folded twin has no batch norm
    left and the logits of the unfolded one (float64, 1e-10)."""
    torch = pytest.importorskip("torch")
    from minise.bench_profile import _torch_folded

    net = _torch_twin_with_statistics(torch, "se_resnet20").double()
    folded = _torch_folded(torch, net)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules()) == 21  # the original keeps its 21
    x = torch.randn(4, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want, got = net(x), folded(x)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.torch
def test_a_torch_fold_that_drops_a_batch_norm_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """A planted mistake (one batch norm replaced by Identity without folding it) fails the check above."""
    pytest.importorskip("torch")
    import torch.nn.utils.fusion as fusion

    real = fusion.fuse_conv_bn_eval
    calls = []

    def sloppy(conv, bn):  # type: ignore[no-untyped-def]
        calls.append(1)
        return conv if len(calls) == 3 else real(conv, bn)

    monkeypatch.setattr(fusion, "fuse_conv_bn_eval", sloppy)
    with pytest.raises(AssertionError):
        test_torch_folded_twin_gives_the_same_logits_without_batch_norm()


@pytest.mark.torch
def test_bench_train_eval_runs_minise_and_torch_folded_and_not(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    out_json = tmp_path / "eval.json"
    args = ["train", "--eval", "--batch-size", "2", "--steps", "1", "--rounds", "1", "--json", str(out_json)]
    assert bench.main(args) == 0
    r = json.loads(out_json.read_text())
    assert list(r["median"]) == ["minise, unfused", "minise", "minise, BN folded", "torch", "torch, BN folded"]
    assert all(rate > 0 for rate in r["median"].values())


# ------------------------------------------------------------------------ bench scaling
def _is_png(path: Path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_bench_scaling_quick_end_to_end(tmp_path: Path) -> None:
    """Slow (about 20-25 s on 2 shared cores: 8 child processes, each PyTorch one spends ~4 s importing torch
    and building its optimizer). ``bench scaling --quick`` (4 tiny points, each framework in its own child
    process; one thread each, as the test machine is shared): every point in the JSON, both frameworks where
    torch is importable, the ceiling as defined, a PNG."""
    from minise import bench_scaling

    out_json, figure = tmp_path / "scaling.json", tmp_path / "scaling.png"
    env = dict(os.environ, MINISE_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "minise.bench", "scaling", "--quick", "--json", str(out_json), "--figure", str(figure)]
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    r = json.loads(out_json.read_text())
    model_a, size_a, batches = bench_scaling.QUICK_BATCH_SERIES
    model_b, batch_b, sizes = bench_scaling.QUICK_SIZE_SERIES
    expected = [("batch size", model_a, b, size_a) for b in batches] + [
        ("image size", model_b, batch_b, s) for s in sizes
    ]
    assert [(p["series"], p["model"], p["batch"], p["image_size"]) for p in r["points"]] == expected
    try:
        import torch  # noqa: F401
    except ImportError:
        with_torch = False
    else:
        with_torch = True
    for p in r["points"]:
        assert p["minise"] > 0 and p["ceiling_images_per_s"] > 0 and p["macs"] > 0
        assert (p["torch"] is not None) == with_torch
        assert p["ceiling_images_per_s"] == pytest.approx(r["gemm_gflops"] * 1e9 / (6 * p["macs"]))
    assert _is_png(figure)
    assert f"figure: {figure}" in out.stdout and "minise/ceiling" in out.stdout


def test_bench_scaling_without_torch_runs_minise_alone_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from minise import bench_scaling

    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` fails in this process: no torch children
    monkeypatch.setenv("MINISE_NUM_THREADS", "1")
    r = bench_scaling.bench_scaling(
        ("se_resnet20", 32, (2,)), ("resnet18", 2, (32,)), rounds=1, steps=1, gemm_n=64, progress=False
    )
    assert [p["torch"] for p in r["points"]] == [None, None] and r["torch"] is None
    text = bench_scaling.format_scaling(r)
    assert "minise alone" in text and "pip install torch" in text
    figure = tmp_path / "alone.png"
    bench_scaling.scaling_figure(r).savefig(figure)
    assert _is_png(figure)


def test_ceiling_is_the_gemm_rate_over_six_macs_per_image() -> None:
    from minise import bench_scaling

    assert bench_scaling.ceiling_images_per_s(60.0, 10**9) == pytest.approx(10.0)  # 60 GFLOP/s / 6 GFLOP
    assert bench_scaling.macs_per_image("se_resnet18", 64) * 4 == pytest.approx(
        bench_scaling.macs_per_image("se_resnet18", 128), rel=0.01
    )  # convolution cost grows with the pixels
    assert bench_scaling.steps_for(16) == 16 and bench_scaling.steps_for(256) == 3


@pytest.mark.parametrize("bad", [["--rounds", "0"], ["--steps", "0"]])
def test_bench_scaling_refuses_nonpositive_rounds_and_steps_in_one_line(
    bad: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert bench.main(["scaling", *bad]) == 2
    err = capsys.readouterr().err
    assert err.startswith("minise.bench: bench scaling:") and err.count("\n") == 1


def test_bench_gpu_ranks_kernels_by_device_time() -> None:
    """``_top_kernels`` (on PyTorch profiler events, which a CPU cannot make): totals per name, costliest first."""
    from types import SimpleNamespace

    from minise import bench_gpu

    def event(name: str, us: float) -> SimpleNamespace:
        return SimpleNamespace(name=name, time_range=SimpleNamespace(elapsed_us=lambda: us))

    events = [event("copy", 10.0), event("gemm", 300.0), event("copy", 15.0), event("add", 5.0), event("copy", 1.0)]
    top = bench_gpu._top_kernels(events, n=2)
    assert [k["name"] for k in top] == ["gemm", "copy"]
    assert top[1]["count"] == 3 and abs(top[1]["ms"] - 0.026) < 1e-12 and abs(top[0]["ms"] - 0.3) < 1e-12


def test_paired_timing_alternates_blocks_and_pairs_each_round(monkeypatch: pytest.MonkeyPatch) -> None:
    """``paired_ms`` on a fake clock (no timing): each round runs a block of minise then a block of the reference,
    the first run of a block is not timed, and the ratio is the median of the rounds' ratios."""
    clock = [0.0]
    order: list[str] = []
    monkeypatch.setattr(bench.time, "perf_counter", lambda: clock[0])
    calls = [0]

    def mine() -> None:
        order.append("m")
        clock[0] += 0.002

    def reference() -> None:  # 1 ms, but 4 ms in all of round 3 (a drift: that round's ratio is 0.5)
        order.append("r")
        clock[0] += 0.004 if calls[0] // 3 == 2 else 0.001
        calls[0] += 1

    ms, ref_ms, ratio = bench.paired_ms(mine, np, reference, None, rounds=5, block=3)
    assert "".join(order) == "mmmrrr" * 5
    assert ms == pytest.approx(2.0) and ref_ms == pytest.approx(1.0)
    assert ratio == pytest.approx(2.0)  # the median of 2, 2, 0.5, 2, 2 (their mean would be 1.7)
    assert bench.paired_ms(mine, np, None, None)[1:] == (None, None)  # no reference: minise alone


def test_bench_gpu_stops_the_cupy_tests_at_their_timeout() -> None:
    """``run_tests`` kills pytest after ``timeout_s`` and says so (a status from a crash would not read as one)."""
    from minise import bench_gpu

    r = bench_gpu.run_tests("round_trip", timeout_s=0.1)  # pytest takes longer than that just to start
    assert r["ok"] is False and r["summary"] == "stopped after 0.1 s (--tests-timeout)" and r["returncode"] != 0
