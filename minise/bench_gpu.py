"""``python -m minise.bench gpu [--json FILE]``: the one command for the first GPU minise meets.

Sized to finish in under 8 minutes on one modern GPU, warm-up included, it measures in one process:

1. ``bench ops`` on CuPy against PyTorch on CUDA (eager, cuDNN), at batch 128;
2. training steps of se_resnet20 on CuPy against the same model in PyTorch on CUDA: images/s, and device
   memory (CuPy's memory pool, which keeps its peak, against ``torch.cuda.max_memory_allocated``);
3. the CUDA kernels one training step launches, counted by PyTorch's profiler (CUPTI sees every kernel of
   the process, CuPy's included), for minise and for PyTorch: their number, their summed device time (set
   against the step's wall time, it says whether the GPU or the host is the limit) and the costliest ones;
4. se_resnet20 trained on cifar10-mini for 3 epochs on CuPy and on NumPy with the same seed: both
   held-out accuracies;
5. the NCCL communicator on the one GPU (``mpiexec -n 1``), where mpi4py and an MPI are installed;
6. last, the CuPy-marked tests, on the device (``pytest -m cupy``; needs pytest and hypothesis).

The JSON file (``--json``) is rewritten after every section, so a run stopped part-way keeps its numbers.

It needs nothing beyond the repository, CuPy (``cupy-cuda13x`` or ``cupy-cuda12x``) and PyTorch; no network.
A section that fails is reported and the others still run; the exit status is then 1. Under the CPU
stand-in of CuPy (a test tool, tests/cupy_standin) it runs end to end with tiny sizes, and its timings
mean nothing there.
"""

from __future__ import annotations

import argparse
import codecs
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

import minise
from minise import backend, bench
from minise.evaluate import write_json

REPO = Path(__file__).resolve().parents[1]
NOTE = "timings mean something only on a real GPU (under a CPU stand-in of CuPy they measure nothing)"


def add_parser(sub: Any) -> None:
    from minise.cli import HelpFormatter  # noqa: PLC0415

    g = sub.add_parser(
        "gpu",
        help="one command for a first GPU: tests, ops, training, memory, launches, accuracy",
        formatter_class=HelpFormatter,
    )
    g.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE (default: printed only)")
    g.add_argument("--tests", default="all", help="CuPy-marked tests: all, none, or a pytest -k expression")
    g.add_argument(
        "--tests-timeout", type=float, default=300.0, help="seconds after which the CuPy-marked tests are stopped"
    )
    g.add_argument("--ops-batch", type=int, default=128, help="batch of the op benchmarks")
    g.add_argument("--gemm-size", type=int, default=4096, help="side of the GEMM that gives the device's rate")
    g.add_argument("--batch-size", type=int, default=128, help="batch of the training steps and the training runs")
    g.add_argument("--steps", type=int, default=20, help="timed training steps per framework")
    g.add_argument("--dataset", default="cifar10", help="data set of the training runs")
    g.add_argument(
        "--data-dir",
        default=None,
        help="cifar10-mini (a folder holding cifar-10-batches-py/); default: $MINISE_DATA/cifar10-mini, "
        "else ../shared/data/cifar10-mini beside the repository",
    )
    g.add_argument("--epochs", type=int, default=3, help="epochs of each training run")
    g.add_argument(
        "--train-images", type=int, default=None, help="for quick checks: first N training images (default: all)"
    )
    g.add_argument(
        "--test-images", type=int, default=None, help="for quick checks: first N held-out images (default: all)"
    )


def _section(results: dict[str, Any], name: str, fn: Callable[[], dict[str, Any]]) -> None:
    """Run one section, print its lines, keep its result (or its error, and carry on)."""
    print(f"\n== {name}", flush=True)
    start = time.perf_counter()
    try:
        out = fn()
        out["ok"] = out.get("ok", True)
    except Exception as e:  # one failing section must not lose the others' results
        out = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        print(f"FAILED: {out['error']}", flush=True)
    out["seconds"] = time.perf_counter() - start
    print(f"({out['seconds']:.1f} s)", flush=True)
    results[name] = out


def device_info() -> dict[str, Any]:
    cupy = backend.xp_of_backend("cupy")
    props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
    name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    torch = bench._torch()
    info = {
        "device": name,
        "cupy": cupy.__version__,
        "numpy": np.__version__,
        "torch": None if torch is None else torch.__version__,
        "torch_cuda": bool(torch is not None and torch.cuda.is_available()),
        "python": sys.version.split()[0],
    }
    print(", ".join(f"{k} {v}" for k, v in info.items()))
    return info


def run_tests(selection: str, timeout_s: float = 300.0) -> dict[str, Any]:
    """``pytest -m cupy`` on the device, its output passed through line by line as it comes (a first GPU
    compiles every kernel once, which can take minutes); stopped after ``timeout_s`` seconds."""
    if selection == "none":
        return {"skipped": "--tests none"}
    tests = REPO / "tests"
    missing = [m for m in ("pytest", "hypothesis") if importlib.util.find_spec(m) is None]
    if not tests.is_dir() or missing:
        why = "tests/ is not beside the package" if not tests.is_dir() else f"{', '.join(missing)} not installed"
        print(f"skipped: {why} (pip install -e '.[test]' in a checkout)")
        return {"skipped": why}
    cmd = [sys.executable, "-m", "pytest", str(tests), "-m", "cupy", "-q", "-p", "no:cacheprovider", "-rs"]
    if selection != "all":
        cmd += ["-k", selection]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    stopped = threading.Event()  # set only by the timer: a crash (a negative status too) is not a timeout

    def stop() -> None:
        stopped.set()
        proc.kill()

    timer = threading.Timer(timeout_s, stop)
    timer.start()
    text: list[str] = []
    decode = codecs.getincrementaldecoder("utf-8")(errors="replace").decode  # a character may span two reads
    try:
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        # what comes, as it comes (pytest -q prints a dot per test, a newline only every 72 tests)
        for piece in iter(lambda: os.read(fd, 4096), b""):
            text.append(decode(piece))
            sys.stdout.write(text[-1])
            sys.stdout.flush()
        returncode = proc.wait()
    finally:
        timer.cancel()
    lines = "".join(text).strip().splitlines() or [""]
    summary = f"stopped after {timeout_s:g} s (--tests-timeout)" if stopped.is_set() else lines[-1]
    if stopped.is_set():
        print(f"\n{summary}")
    return {"ok": returncode == 0, "returncode": returncode, "summary": summary}


def run_ops(batch: int, gemm_n: int) -> dict[str, Any]:
    result = bench.bench_ops("cupy", batch, gemm_n)
    print(bench.format_ops(result))
    return result


def run_train(batch: int, steps: int) -> dict[str, Any]:
    runs = [bench.train_child("minise", "se_resnet20", batch, steps, "cupy")]
    torch = bench._torch()
    if torch is not None and torch.cuda.is_available():
        runs.append(bench.train_child("torch", "se_resnet20", batch, steps, "cupy"))
    for r in runs:
        mb = r["device_peak_mb"]
        memory = mb if isinstance(mb, str) else f"{mb:.0f} MB"
        rate = f"{r['images_per_s']:9.1f} images/s  {r['ms_per_step']:8.2f} ms/step"
        print(f"{r['framework']:<7} {rate}  device memory {memory}")
    out: dict[str, Any] = {"batch": batch, "steps": steps, "runs": runs}
    if len(runs) == 2:
        out["minise_over_torch_images_per_s"] = runs[0]["images_per_s"] / runs[1]["images_per_s"]
        print(f"minise / PyTorch: {100 * out['minise_over_torch_images_per_s']:.0f}% of the images/s (goal >= 50%)")
    else:
        print("no PyTorch on CUDA here: " + (bench.TORCH_HINT if torch is None else "torch.cuda is unavailable"))
    return out


def _minise_step(batch: int) -> Callable[[], None]:
    from minise import functional as F  # noqa: PLC0415
    from minise import models, optim  # noqa: PLC0415

    minise.manual_seed(0)
    model = models.create("se_resnet20", num_classes=10)
    opt = optim.SGD(optim.param_groups_no_decay(model, 5e-4), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    rng = np.random.default_rng(0)
    x = minise.Tensor(backend.to_device(rng.standard_normal((batch, 3, 32, 32), dtype=np.float32)))
    y = backend.to_device(rng.integers(0, 10, batch))

    def step() -> None:
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()

    return step


def count_launches(batch: int) -> dict[str, Any]:
    """CUDA kernels of one training step (after two warm-up steps), from PyTorch's profiler."""
    torch = bench._torch()
    if torch is None or not torch.cuda.is_available():
        why = bench.TORCH_HINT if torch is None else "torch.cuda is unavailable, so its profiler cannot see kernels"
        print(f"unavailable: {why}")
        return {"unavailable": why}
    from torch.profiler import ProfilerActivity, profile  # noqa: PLC0415

    cupy = backend.xp_of_backend("cupy")
    with backend.use_backend("cupy"):
        step = _minise_step(batch)
        step()
        step()
        cupy.cuda.Device().synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            step()
            cupy.cuda.Device().synchronize()
    minise_kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    model = bench._torch_cifar_resnet(torch, "se_resnet20").cuda()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    x = torch.randn(batch, 3, 32, 32, device="cuda")
    y = torch.randint(0, 10, (batch,), device="cuda")

    def tstep() -> None:
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    tstep()
    tstep()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as tprof:
        tstep()
        torch.cuda.synchronize()
    torch_kernels = [e for e in tprof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    out: dict[str, Any] = {"minise": len(minise_kernels), "torch": len(torch_kernels)}
    for name, kernels in (("minise", minise_kernels), ("torch", torch_kernels)):
        out[f"{name}_kernel_ms"] = sum(e.time_range.elapsed_us() for e in kernels) / 1000
        out[f"{name}_top_kernels"] = _top_kernels(kernels)
    print(
        f"one se_resnet20 training step at batch {batch}: minise {len(minise_kernels)} CUDA kernels "
        f"({out['minise_kernel_ms']:.2f} ms of kernel time), PyTorch {len(torch_kernels)} "
        f"({out['torch_kernel_ms']:.2f} ms); against the step's wall time (section train) this says how much "
        "of a step the GPU is busy"
    )
    print("minise's costliest kernels (ms, count, name):")
    for k in out["minise_top_kernels"]:
        print(f"  {k['ms']:7.3f} {k['count']:5d}x  {k['name']}")
    return out


def _top_kernels(kernels: list[Any], n: int = 10) -> list[dict[str, Any]]:
    """The ``n`` kernel names with the most device time (PyTorch profiler events), with their counts."""
    by_name: dict[str, list[float]] = {}
    for e in kernels:
        entry = by_name.setdefault(e.name[:80], [0, 0.0])
        entry[0] += 1
        entry[1] += e.time_range.elapsed_us() / 1000
    ranked = sorted(by_name.items(), key=lambda kv: -kv[1][1])[:n]
    return [{"name": name, "count": int(c), "ms": ms} for name, (c, ms) in ranked]


def _default_data_dir(dataset: str) -> str | None:
    if dataset != "cifar10":
        return None
    for root in (os.environ.get("MINISE_DATA"), str(REPO.parent / "shared" / "data")):
        if root and (Path(root) / "cifar10-mini" / "cifar-10-batches-py").is_dir():
            return str(Path(root) / "cifar10-mini")
    return None


def run_accuracy(args: argparse.Namespace) -> dict[str, Any]:
    """se_resnet20 for ``--epochs`` on CuPy and on NumPy, the same seed: both held-out accuracies."""
    from minise import train  # noqa: PLC0415

    data_dir = args.data_dir or _default_data_dir(args.dataset)
    if args.dataset == "cifar10" and data_dir is None:
        why = "no cifar10-mini found - pass --data-dir DIR (a folder holding cifar-10-batches-py/) or set MINISE_DATA"
        print(f"skipped: {why}")
        return {"ok": False, "skipped": why}
    out: dict[str, Any] = {"dataset": args.dataset, "data_dir": data_dir, "epochs": args.epochs}
    previous = backend.get_backend()
    with tempfile.TemporaryDirectory(prefix="minise-bench-gpu-") as tmp:
        for name in ("cupy", "numpy"):
            argv = ["--dataset", args.dataset, "--model", "se_resnet20", "--epochs", str(args.epochs)]
            argv += ["--batch-size", str(args.batch_size), "--seed", "0", "--backend", name, "--no-progress"]
            argv += ["--out", str(Path(tmp) / name)] + (["--data-dir", data_dir] if data_dir else [])
            for flag, value in (("--train-images", args.train_images), ("--test-images", args.test_images)):
                argv += [flag, str(value)] if value is not None else []
            start = time.perf_counter()
            code = train.main(argv)
            backend.set_backend(previous)
            if code != 0:
                raise RuntimeError(f"minise.train --backend {name} exited with status {code}")
            lines = (Path(tmp) / name / "metrics.jsonl").read_text().splitlines()
            last = json.loads(lines[-1])
            out[name] = {
                "test_acc": last["test_acc"],
                "train_loss": last["train_loss"],
                "seconds": time.perf_counter() - start,
            }
    print(
        f"held-out top-1 after {args.epochs} epochs, seed 0: CuPy {100 * out['cupy']['test_acc']:.2f}%, "
        f"NumPy {100 * out['numpy']['test_acc']:.2f}% (float32 on different devices: close, not equal)"
    )
    return out


def run_nccl() -> dict[str, Any]:
    """The NCCL communicator on the one GPU (N = 1): ``mpiexec -n 1 python -m minise.distributed.check``."""
    import shutil  # noqa: PLC0415

    if getattr(sys.modules.get("cupy"), "__file__", None) is None:  # a module with no file: a stand-in, not CuPy
        why = "CuPy here is not the installed package (a CPU stand-in): NCCL needs the real CuPy and a GPU"
        print(f"skipped: {why}")
        return {"skipped": why}
    mpiexec = shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or shutil.which("mpiexec")
    if mpiexec is None or importlib.util.find_spec("mpi4py") is None:
        why = "mpiexec or mpi4py is missing (pip install -e '.[distributed]')"
        print(f"skipped: {why}")
        return {"skipped": why}
    cmd = [mpiexec, "-n", "1", sys.executable, "-m", "minise.distributed.check", "--comm", "nccl", "--backend", "cupy"]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    summary = (out.stdout.strip().splitlines() or [""])[-1]
    print(summary)
    if out.returncode != 0:
        print(out.stdout[-2000:], out.stderr[-2000:], sep="\n")
    return {"ok": out.returncode == 0, "returncode": out.returncode, "summary": summary}


def main(args: argparse.Namespace) -> int:
    print(f"minise bench gpu: {NOTE}", flush=True)
    results: dict[str, Any] = {"note": NOTE}
    _section(results, "device", device_info)
    if not results["device"]["ok"]:
        _save(args.json, results)
        print(f"minise.bench gpu: the CuPy backend cannot run here ({results['device']['error']})", file=sys.stderr)
        return 2
    # The measurements come first and the tests last, so that a slow first compile of the tests' kernels
    # cannot cost the numbers; the JSON is rewritten after every section, so a run stopped from outside
    # (a time limit, Ctrl-C) keeps what it measured.
    sections: list[tuple[str, Callable[[], dict[str, Any]]]] = [
        ("ops", lambda: run_ops(args.ops_batch, args.gemm_size)),
        ("train", lambda: run_train(args.batch_size, args.steps)),
        ("launches", lambda: count_launches(args.batch_size)),
        ("accuracy", lambda: run_accuracy(args)),
        ("nccl", run_nccl),
        ("tests", lambda: run_tests(args.tests, args.tests_timeout)),
    ]
    _save(args.json, results)
    for name, fn in sections:
        _section(results, name, fn)
        _save(args.json, results)
    failed = [k for k, v in results.items() if isinstance(v, dict) and not v.get("ok", True)]
    print(
        f"\ntotal {sum(v['seconds'] for v in results.values() if isinstance(v, dict)):.0f} s; "
        + (f"failed: {', '.join(failed)}" if failed else "every section ran")
    )
    return 1 if failed else 0


def _save(path: str | None, results: dict[str, Any]) -> None:
    """Write the results so far to ``path`` (if given), atomically: a reader never sees half a file."""
    if path:
        write_json(results, Path(path), default=str)
