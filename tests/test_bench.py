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
