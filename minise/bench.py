"""Benchmarks: ``python -m minise.bench ops [--backend numpy|cupy] [--json FILE]``, ``train``, ``data``, ``gpu``
and ``scaling``.

``scaling`` (minise/bench_scaling.py) draws how training images/s grow with the batch size and the image
size, minise against PyTorch, under the ceiling the machine's GEMM rate sets.

``gpu`` is the one command for a first GPU (minise/bench_gpu.py): the CuPy-marked tests on the device,
ops and training steps against PyTorch on CUDA, se_resnet20 for 3 epochs on CuPy and on NumPy, device
memory and the kernel launches of one training step.

``data --data-dir DIR [--image-size 128] [--workers N]`` times the image pipeline on an image folder
(``DIR/train/<class>/<image>``): decoding + augmentation alone, from the files and from the decoded-image
cache (and how long building that cache takes), against full training steps of ``se_resnet18`` at the
same size - with batches already in memory, and fed live by the decoding workers - to show which of the
two is the bottleneck.

``ops`` times forward + backward (input and weight gradients) of the ops a SE-ResNet spends its time
in, on the shapes of a CIFAR SE-ResNet at batch 128, and puts the numbers in context measured in the
same run: the machine's float32 GEMM rate (what im2col + GEMM can reach at best) and, if torch is
importable, PyTorch on the same shapes with the same number of threads. Speed is measured here, never
inside a test.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

import minise
from minise import backend, cpu
from minise import functional as F
from minise.cli import HelpFormatter, OneLineParser


@dataclass
class Case:
    name: str
    ms: float
    gflops: float | None
    gemm_fraction: float | None
    peak_mb: float | None
    torch_ms: float | None
    ratio: float | None = None  # median over alternating rounds of minise's time / PyTorch's in that round


def _sync(xp: Any) -> None:
    if xp is not np:
        xp.cuda.Device().synchronize()


def median_ms(
    fn: Callable[[], Any],
    xp: Any = np,
    repeat: int = 7,
    warmup: int = 2,
    budget_s: float = 8.0,
    sync: Callable[[], Any] | None = None,
) -> float:
    """Median wall time of ``fn`` in milliseconds (after warm-up runs), stopping early past ``budget_s``.
    The device of ``xp`` (or ``sync()``, e.g. ``torch.cuda.synchronize``) is waited for after every run."""
    wait = sync if sync is not None else lambda: _sync(xp)
    for _ in range(warmup):
        fn()
    wait()
    times: list[float] = []
    start = time.perf_counter()
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        wait()
        times.append(time.perf_counter() - t)
        if time.perf_counter() - start > budget_s and len(times) >= 3:
            break
    return float(np.median(times) * 1e3)


def paired_ms(
    fn: Callable[[], Any],
    xp: Any,
    reference: Callable[[], Any] | None,
    reference_sync: Callable[[], Any] | None,
    rounds: int = 5,
    block: int = 3,
    budget_s: float = 12.0,
) -> tuple[float, float | None, float | None]:
    """minise's and the reference's median ms, timed in alternating rounds, and the median of the rounds'
    ratios. A round runs ``fn`` ``block`` times, then ``reference`` ``block`` times; the first run of each
    block only warms up (a framework's worker threads go idle while the other one runs), the rest are timed
    and their median is the round's time. A machine whose speed drifts (these VMs move 10-30 %) slows both
    halves of a round alike, so the paired ratio is steadier than the ratio of two medians taken seconds
    apart. Without a reference: ``median_ms(fn)``."""
    if reference is None:
        return median_ms(fn, xp, budget_s=budget_s), None, None
    repeat = max(block, 2) - 1
    mine: list[float] = []
    theirs: list[float] = []
    start = time.perf_counter()
    for _ in range(rounds):
        mine.append(median_ms(fn, xp, repeat=repeat, warmup=1))
        theirs.append(median_ms(reference, repeat=repeat, warmup=1, sync=reference_sync))
        if time.perf_counter() - start > budget_s and len(mine) >= 3:
            break
    ratios = [a / b for a, b in zip(mine, theirs, strict=True)]
    return float(np.median(mine)), float(np.median(theirs)), float(np.median(ratios))


def gemm_gflops(xp: Any, n: int = 2048) -> float:
    """The float32 GEMM rate of this machine (2 n^3 flops per product), all cores."""
    a = xp.asarray(np.random.default_rng(0).standard_normal((n, n), dtype=np.float32))
    b = a.copy()
    ms = median_ms(lambda: a @ b, xp, repeat=5)
    return 2 * n**3 / (ms * 1e-3) / 1e9


def peak_extra_mb(fn: Callable[[], Any], xp: Any) -> float | None:
    """Peak memory allocated while ``fn`` runs, above what was allocated before (host: tracemalloc,
    which NumPy reports its arrays to; device: CuPy's memory pool)."""
    if xp is np:
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        fn()
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return (peak - base) / 2**20
    try:
        pool = xp.get_default_memory_pool()
        pool.free_all_blocks()
        base = pool.used_bytes()
    except NotImplementedError:  # a CPU stand-in of CuPy (tests) has no memory pool
        return None
    fn()
    _sync(xp)
    return float(pool.total_bytes() - base) / 2**20


def _torch() -> Any:
    try:
        import torch  # noqa: PLC0415  (optional reference, never a dependency)
    except ImportError:
        return None
    torch.set_num_threads(cpu.num_threads())
    return torch


TORCH_HINT = (
    "PyTorch is not installed, so nothing to compare with - install it to get the reference column: "
    "pip install torch --index-url https://download.pytorch.org/whl/cpu (CPU) or pip install torch (CUDA)"
)


def _torch_device(torch: Any, xp: Any) -> str | None:
    """Where the PyTorch reference runs: on the CPU against NumPy, on CUDA against CuPy (None: nowhere)."""
    if torch is None:
        return None
    if xp is np:
        return "cpu"
    return "cuda" if torch.cuda.is_available() else None


def _torch_sync(torch: Any, device: str | None) -> Callable[[], Any] | None:
    return torch.cuda.synchronize if device == "cuda" else None


# --------------------------------------------------------------------------------------------------
# the op cases
# --------------------------------------------------------------------------------------------------
def _conv_case(xp: Any, torch: Any, shape: tuple[int, ...], out_ch: int, stride: int, gemm: float) -> Case:
    n, c, h, w = shape
    rng = np.random.default_rng(0)
    x_h = rng.standard_normal(shape, dtype=np.float32)
    w_h = rng.standard_normal((out_ch, c, 3, 3), dtype=np.float32) * 0.1
    x = minise.Tensor(xp.asarray(x_h), requires_grad=True)
    wt = minise.Tensor(xp.asarray(w_h), requires_grad=True)
    oh = (h + 2 - 3) // stride + 1
    gy = xp.asarray(rng.standard_normal((n, out_ch, oh, oh), dtype=np.float32))

    def step() -> None:
        x.grad = wt.grad = None
        F.conv2d(x, wt, stride=stride, padding=1).backward(gy)

    tstep: Callable[[], None] | None = None
    dev = _torch_device(torch, xp)
    if dev is not None:
        xt = torch.tensor(x_h, requires_grad=True, device=dev)
        wt_t = torch.tensor(w_h, requires_grad=True, device=dev)
        gyt = torch.tensor(backend.to_host(gy), device=dev)

        def tstep() -> None:
            xt.grad = wt_t.grad = None
            torch.nn.functional.conv2d(xt, wt_t, stride=stride, padding=1).backward(gyt)

    ms, torch_ms, ratio = paired_ms(step, xp, tstep, _torch_sync(torch, dev))
    flops = 3 * 2 * n * out_ch * oh * oh * c * 9  # forward, input gradient, weight gradient
    gflops = flops / (ms * 1e-3) / 1e9
    name = f"conv2d 3x3 s{stride} p1 {c}->{out_ch} on {shape}"
    return Case(name, ms, gflops, gflops / gemm, peak_extra_mb(step, xp), torch_ms, ratio)


def _se_case(xp: Any, torch: Any, n: int = 128) -> Case:
    c, h, r = 64, 8, 16
    rng = np.random.default_rng(0)
    hs = [
        rng.standard_normal(s, dtype=np.float32) * 0.1
        for s in [(n, c, h, h), (c // r, c), (c // r,), (c, c // r), (c,)]
    ]
    ts = [minise.Tensor(xp.asarray(a), requires_grad=True) for a in hs]
    gy = xp.asarray(rng.standard_normal((n, c, h, h), dtype=np.float32))

    def step() -> None:
        for t in ts:
            t.grad = None
        F.squeeze_excite(*ts).backward(gy)

    tstep: Callable[[], None] | None = None
    dev = _torch_device(torch, xp)
    if dev is not None:
        tt = [torch.tensor(a, requires_grad=True, device=dev) for a in hs]
        gyt = torch.tensor(backend.to_host(gy), device=dev)
        tf = torch.nn.functional

        def tstep() -> None:
            for t in tt:
                t.grad = None
            e = torch.sigmoid(tf.linear(torch.relu(tf.linear(tt[0].mean((2, 3)), tt[1], tt[2])), tt[3], tt[4]))
            (tt[0] * e[:, :, None, None]).backward(gyt)

    ms, torch_ms, ratio = paired_ms(step, xp, tstep, _torch_sync(torch, dev))
    name = f"squeeze_excite r={r} on {(n, c, h, h)}"
    return Case(name, ms, None, None, peak_extra_mb(step, xp), torch_ms, ratio)


def _bn_case(xp: Any, torch: Any, n: int = 128) -> Case:
    shape = (n, 64, 16, 16)
    rng = np.random.default_rng(0)
    x_h = rng.standard_normal(shape, dtype=np.float32)
    x = minise.Tensor(xp.asarray(x_h), requires_grad=True)
    g = minise.Tensor(xp.ones(64, dtype=xp.float32), requires_grad=True)
    b = minise.Tensor(xp.zeros(64, dtype=xp.float32), requires_grad=True)
    rm, rv = xp.zeros(64, dtype=xp.float32), xp.ones(64, dtype=xp.float32)
    gy = xp.asarray(rng.standard_normal(shape, dtype=np.float32))

    def step() -> None:
        x.grad = g.grad = b.grad = None
        F.batch_norm(x, rm, rv, g, b, training=True).backward(gy)

    tstep: Callable[[], None] | None = None
    dev = _torch_device(torch, xp)
    if dev is not None:
        xt = torch.tensor(x_h, requires_grad=True, device=dev)
        gt = torch.ones(64, device=dev, requires_grad=True)
        bt = torch.zeros(64, device=dev, requires_grad=True)
        rmt, rvt = torch.zeros(64, device=dev), torch.ones(64, device=dev)
        gyt = torch.tensor(backend.to_host(gy), device=dev)

        def tstep() -> None:
            xt.grad = gt.grad = bt.grad = None
            torch.nn.functional.batch_norm(xt, rmt, rvt, gt, bt, training=True).backward(gyt)

    ms, torch_ms, ratio = paired_ms(step, xp, tstep, _torch_sync(torch, dev))
    return Case(f"batch_norm train on {shape}", ms, None, None, peak_extra_mb(step, xp), torch_ms, ratio)


def _pool_case(xp: Any, torch: Any, n: int = 128) -> Case:
    shape = (n, 64, 32, 32)
    rng = np.random.default_rng(0)
    x_h = rng.standard_normal(shape, dtype=np.float32)
    x = minise.Tensor(xp.asarray(x_h), requires_grad=True)
    gy = xp.asarray(rng.standard_normal((n, 64, 16, 16), dtype=np.float32))

    def step() -> None:
        x.grad = None
        F.max_pool2d(x, 3, 2, 1).backward(gy)

    tstep: Callable[[], None] | None = None
    dev = _torch_device(torch, xp)
    if dev is not None:
        xt = torch.tensor(x_h, requires_grad=True, device=dev)
        gyt = torch.tensor(backend.to_host(gy), device=dev)

        def tstep() -> None:
            xt.grad = None
            torch.nn.functional.max_pool2d(xt, 3, 2, 1).backward(gyt)

    ms, torch_ms, ratio = paired_ms(step, xp, tstep, _torch_sync(torch, dev))
    return Case(f"max_pool2d 3x3 s2 p1 on {shape}", ms, None, None, peak_extra_mb(step, xp), torch_ms, ratio)


# the targets of issue 15 (a 3x3 stride-1 convolution, then stride 2, ...); the first match wins
TARGETS = {"conv2d 3x3 s1": 1.2, "conv2d": 1.5, "squeeze_excite": 1.2, "batch_norm": 1.2, "max_pool2d": 2.0}


def bench_ops(backend_name: str, batch: int = 128, gemm_n: int = 2048) -> dict[str, Any]:
    """Time every case on ``backend_name`` (the previous backend is restored afterwards), at ``batch`` images,
    against PyTorch on the same device (the CPU for numpy, CUDA for cupy) where torch is importable."""
    backend_name = backend.canonical_backend(backend_name, "bench ops")
    xp = backend.xp_of_backend(backend_name)
    torch = _torch()
    with backend.use_backend(backend_name):
        gemm = gemm_gflops(xp, gemm_n)
        cases = [
            _conv_case(xp, torch, (batch, 16, 32, 32), 16, 1, gemm),
            _conv_case(xp, torch, (batch, 64, 8, 8), 64, 1, gemm),
            _conv_case(xp, torch, (batch, 32, 16, 16), 64, 2, gemm),
            _se_case(xp, torch, batch),
            _bn_case(xp, torch, batch),
            _pool_case(xp, torch, batch),
        ]
    dev = _torch_device(torch, xp)
    return {
        "torch_device": dev,
        "note": None if dev is not None else (TORCH_HINT if torch is None else "torch has no CUDA device here"),
        "backend": backend_name,
        "threads": cpu.num_threads(),
        "machine": f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"NumPy {np.__version__}" + (f", torch {torch.__version__}" if torch is not None else ""),
        "gemm_gflops": gemm,
        "gemm_n": gemm_n,
        "batch": batch,
        "cases": [asdict(c) for c in cases],
    }


def format_ops(result: dict[str, Any]) -> str:
    lines = [
        f"minise ops benchmark: backend {result['backend']}, {result['threads']} threads; {result['machine']}",
        f"float32 GEMM rate ({result.get('gemm_n', 2048)}^3, all cores): {result['gemm_gflops']:.1f} GFLOP/s",
        "forward + backward (input and weight gradients), float32; minise and torch alternate, ratio = median of "
        "the rounds' ratios",
        f"{'case':<46}{'ms':>9}{'GFLOP/s':>9}{'of GEMM':>9}{'peak MB':>9}{'torch ms':>10}{'ratio':>7}{'target':>8}",
    ]
    for c in result["cases"]:
        target = next(v for k, v in TARGETS.items() if c["name"].startswith(k))
        lines.append(
            f"{c['name']:<46}{c['ms']:>9.2f}"
            + (f"{c['gflops']:>9.1f}{100 * c['gemm_fraction']:>8.0f}%" if c["gflops"] else f"{'':>9}{'':>9}")
            + (f"{c['peak_mb']:>9.1f}" if c["peak_mb"] is not None else f"{'':>9}")
            + (f"{c['torch_ms']:>10.2f}{c['ratio']:>7.2f}" if c["torch_ms"] else f"{'-':>10}{'':>7}")
            + f"{'<=' + str(target) + 'x':>8}"
        )
    if result.get("note"):
        lines.append(f"torch ms: {result['note']}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# full training steps
# --------------------------------------------------------------------------------------------------
def _rss_mb() -> float:
    """This process's resident memory now (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        return 0.0


def _peak_rss_mb() -> float:
    import resource  # noqa: PLC0415  (POSIX only)

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _torch_basic_block(torch: Any, se: bool) -> Any:
    """minise's residual basic block (minise.models.blocks.BasicBlock, SE placement "standard") in torch.nn.

    ``relu(SE(bn2(conv2(relu(bn1(conv1(x)))))) + shortcut(x))``: two 3x3 convolutions without bias, the
    stride on the first; the shortcut a 1x1-conv + BN projection where the stride or the width changes,
    else the identity; SE (r = 16, biased FC layers, hidden width max(C // 16, 1), average squeeze,
    sigmoid gate) on the residual branch before the addition. Returns the class ``Block(cin, cout, stride)``.
    """
    nn = torch.nn

    class SE(nn.Module):  # type: ignore[misc,name-defined]
        def __init__(self, c: int) -> None:
            super().__init__()
            hidden = max(c // 16, 1)
            self.fc1, self.fc2 = nn.Linear(c, hidden), nn.Linear(hidden, c)

        def forward(self, x: Any) -> Any:
            e = torch.sigmoid(self.fc2(torch.relu(self.fc1(x.mean((2, 3))))))
            return x * e[:, :, None, None]

    class Block(nn.Module):  # type: ignore[misc,name-defined]
        def __init__(self, cin: int, cout: int, stride: int) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.se = SE(cout) if se else nn.Identity()
            self.down = (
                nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                if stride != 1 or cin != cout
                else nn.Identity()
            )

        def forward(self, x: Any) -> Any:
            out = self.se(self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))
            return torch.relu(out + self.down(x))

    return Block


def _torch_stages(torch: Any, name: str, cin: int, widths: tuple[int, ...], blocks: tuple[int, ...]) -> list[Any]:
    """The residual stages of a (SE-)ResNet of basic blocks: ``blocks[i]`` blocks of ``widths[i]`` channels,
    the first block of every stage after the first with stride 2 (where the width doubles)."""
    block = _torch_basic_block(torch, name.startswith("se_"))
    layers: list[Any] = []
    for i, (cout, n) in enumerate(zip(widths, blocks)):
        for j in range(n):
            layers.append(block(cin, cout, 2 if i > 0 and j == 0 else 1))
            cin = cout
    return layers


CIFAR_TORCH_MODELS = tuple(f"{se}resnet{d}" for se in ("", "se_") for d in (20, 32, 44, 56, 110))
IMAGENET_TORCH_MODELS = {"resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3)}
TORCH_MODELS = CIFAR_TORCH_MODELS + tuple(f"{se}{n}" for se in ("", "se_") for n in IMAGENET_TORCH_MODELS)


def _torch_cifar_resnet(torch: Any, name: str, num_classes: int = 10) -> Any:
    """The same CIFAR (SE-)ResNet in PyTorch: the reference for the training benchmark.

    3x3 conv 16 + BN + ReLU, three stages of basic blocks (16/32/64 channels, strides 1/2/2), 1x1-conv
    + BN projection shortcuts where the shape changes, SE (r = 16, biased FC layers, hidden width at
    least 1) on the residual branch before the addition, global average pooling, a linear classifier.
    """
    nn = torch.nn
    n = (int(name.split("resnet")[1]) - 2) // 6
    layers: list[Any] = [nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU()]
    layers += _torch_stages(torch, name, 16, (16, 32, 64), (n, n, n))
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes)]
    return nn.Sequential(*layers)


def _torch_imagenet_resnet(torch: Any, name: str, num_classes: int = 10) -> Any:
    """minise's ImageNet (SE-)ResNet-18/34 (minise.models.imagenet) in plain torch.nn, for the benchmarks.

    A 7x7 stride-2 convolution to 64 channels without bias + BN + ReLU, a 3x3 stride-2 max pool (padding 1),
    four stages of basic blocks of 64/128/256/512 channels (2/2/2/2 blocks for ResNet-18, 3/4/6/3 for
    ResNet-34; strides 1/2/2/2), 1x1-conv + BN projection shortcuts where the shape changes, SE (r = 16,
    biased FC layers) on the residual branch before the addition in every block, global average pooling
    and a linear classifier: the same layers and parameter counts as minise's (11,689,512 for resnet18 with
    1000 classes; tests/test_bench.py holds both equal).
    """
    nn = torch.nn
    blocks = IMAGENET_TORCH_MODELS[name.removeprefix("se_")]
    layers: list[Any] = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(3, 2, 1)]
    layers += _torch_stages(torch, name, 64, (64, 128, 256, 512), blocks)
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, num_classes)]
    return nn.Sequential(*layers)


def _torch_model(torch: Any, name: str, num_classes: int = 10) -> Any:
    """The PyTorch twin of minise's model ``name`` (one of TORCH_MODELS)."""
    if name in CIFAR_TORCH_MODELS:
        return _torch_cifar_resnet(torch, name, num_classes)
    if name in TORCH_MODELS:
        return _torch_imagenet_resnet(torch, name, num_classes)
    raise ValueError(f"bench: no PyTorch twin of {name!r} - the models with one: {', '.join(TORCH_MODELS)}")


def train_child(
    framework: str, model_name: str, batch: int, steps: int, backend_name: str, image_size: int = 32
) -> dict[str, Any]:
    """Time ``steps`` full training steps (forward, loss, backward, SGD update) of ``batch`` random images of
    ``image_size`` x ``image_size`` pixels and 10 classes in this process: minise on ``backend_name``, or
    PyTorch on the same device (the CPU for numpy; CUDA, eager with cuDNN, for cupy) with the same model
    (:func:`_torch_model`). On a GPU also the device memory: CuPy's memory pool after the steps (it keeps its
    peak) or ``torch.cuda.max_memory_allocated``."""
    backend_name = backend.canonical_backend(backend_name, "bench train")
    rng = np.random.default_rng(0)
    x_h = rng.standard_normal((batch, 3, image_size, image_size), dtype=np.float32)
    y_h = rng.integers(0, 10, batch)
    device_mb: Callable[[], float | str] = lambda: "n/a (CPU)"
    if framework == "torch":
        torch = _torch()
        dev = "cuda" if backend_name == "cupy" else "cpu"
        model = _torch_model(torch, model_name).to(dev)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
        x, y = torch.tensor(x_h, device=dev), torch.tensor(y_h, device=dev)
        params = sum(p.numel() for p in model.parameters())

        def step() -> None:
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()

        wait: Callable[[], Any] = torch.cuda.synchronize if dev == "cuda" else lambda: None
        if dev == "cuda":
            torch.backends.cudnn.enabled = True
            torch.cuda.reset_peak_memory_stats()
            device_mb = lambda: torch.cuda.max_memory_allocated() / 2**20
    else:
        from minise import models, optim  # noqa: PLC0415

        cpu.retain_freed_memory()  # as minise.train runs (torch's process keeps glibc's defaults)
        backend.set_backend(backend_name)
        sync = backend.xp_of_backend(backend_name)
        minise.manual_seed(0)
        model = models.create(model_name, num_classes=10)
        opt = optim.SGD(
            optim.param_groups_no_decay(model, 5e-4), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4
        )
        x, y = minise.Tensor(backend.to_device(x_h)), backend.to_device(y_h)
        params = model.num_parameters()

        def step() -> None:
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()

        wait = lambda: _sync(sync)
        if sync is not np:
            device_mb = lambda: _pool_mb(sync)

    base = _rss_mb()
    for _ in range(2):  # warm-up
        step()
    wait()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    wait()
    seconds = time.perf_counter() - start
    return {
        "framework": framework,
        "image_size": image_size,
        "images_per_s": batch * steps / seconds,
        "ms_per_step": 1e3 * seconds / steps,
        "peak_extra_mb": _peak_rss_mb() - base,
        "device_peak_mb": device_mb(),
        "parameters": params,
    }


def _pool_mb(xp: Any) -> float | str:
    """MB held by CuPy's memory pool (it keeps the blocks of its busiest moment: the peak), or why not known."""
    try:
        return float(xp.get_default_memory_pool().total_bytes()) / 2**20
    except NotImplementedError as e:  # a CPU stand-in of CuPy has no memory pool
        return f"unavailable ({e})"


def run_child(
    framework: str, model: str, batch: int, steps: int, backend_name: str, image_size: int = 32
) -> dict[str, Any]:
    """:func:`train_child` in a fresh Python process (``python -m minise.bench train-child ...``), so that one
    framework's memory, threads and caches do not carry over to the next run; its result as a dict."""
    import subprocess  # noqa: PLC0415

    cmd = [sys.executable, "-m", "minise.bench", "train-child", framework, model, str(batch), str(steps)]
    cmd += [backend_name, "--image-size", str(image_size)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["no message"])[-1].removeprefix("minise.bench: ")
        raise RuntimeError(f"bench: the {framework} run of {model} (batch {batch}, {image_size} px) failed: {last}")
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def bench_train(
    model: str, batch: int, steps: int, backend_name: str, rounds: int = 3, image_size: int = 32
) -> dict[str, Any]:
    """Run the minise and (if importable, and the model has a PyTorch twin: TORCH_MODELS) torch training
    steps on ``image_size``-pixel images, each in a fresh process (:func:`run_child`: so that the peak
    resident memory of one does not hide the other's), one after the other on the same cores.

    The two take turns for ``rounds`` rounds and each reports its median images/s, so that a slow
    minute on a shared machine does not fall on one framework only; every round's rate is kept."""
    backend_name = backend.canonical_backend(backend_name, "bench train")
    frameworks = ["minise"]
    if _torch_device(_torch(), backend.xp_of_backend(backend_name)) is not None:
        if model in TORCH_MODELS:
            frameworks.append("torch")
    per_round: dict[str, list[dict[str, Any]]] = {f: [] for f in frameworks}
    for _ in range(max(1, rounds)):
        for f in frameworks:
            per_round[f].append(run_child(f, model, batch, steps, backend_name, image_size))
    results = []
    for f, runs in per_round.items():
        median = float(np.median([run["images_per_s"] for run in runs]))
        results.append(
            {
                "framework": f,
                "images_per_s": median,
                "ms_per_step": 1e3 * batch / median,
                "peak_extra_mb": max(run["peak_extra_mb"] for run in runs),
                "parameters": runs[0]["parameters"],
                "rounds_images_per_s": [run["images_per_s"] for run in runs],
            }
        )
    return {
        "model": model,
        "batch": batch,
        "image_size": image_size,
        "steps": steps,
        "backend": backend_name,
        "threads": cpu.num_threads(),
        "runs": results,
    }


def format_train(r: dict[str, Any]) -> str:
    lines = [
        f"minise training benchmark: {r['model']}, batch {r['batch']} of {r.get('image_size', 32)} px images, "
        f"{r['steps']} steps after 2 warm-up steps, "
        f"backend {r['backend']}, {r['threads']} threads; median of {len(r['runs'][0]['rounds_images_per_s'])} "
        "alternating rounds",
        f"{'framework':<10}{'images/s':>10}{'ms/step':>10}{'peak MB':>10}{'parameters':>12}  images/s by round",
    ]
    for run in r["runs"]:
        rounds = ", ".join(f"{v:.0f}" for v in run["rounds_images_per_s"])
        lines.append(
            f"{run['framework']:<10}{run['images_per_s']:>10.1f}{run['ms_per_step']:>10.1f}"
            f"{run['peak_extra_mb']:>10.0f}{run['parameters']:>12,}  {rounds}"
        )
    if len(r["runs"]) == 1 and _torch() is None:
        lines.append(TORCH_HINT)
    elif len(r["runs"]) == 1 and r["model"] not in TORCH_MODELS:
        lines.append(f"torch: {r['model']} has no PyTorch twin here (those with one: {', '.join(TORCH_MODELS)})")
    if len(r["runs"]) == 2:
        m, t = r["runs"]
        lines.append(
            f"minise / torch: {100 * m['images_per_s'] / t['images_per_s']:.0f}% of the images/s (target >= 60%), "
            f"{m['peak_extra_mb'] / max(t['peak_extra_mb'], 1):.2f}x the peak memory (target <= 2x)"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# the image pipeline
# --------------------------------------------------------------------------------------------------
def _loader_rate(loader: Any, batches: int) -> tuple[float, list[Any]]:
    """Images/s of the first ``batches`` batches of epoch 0 (from the request to the last batch), and the
    batches."""
    start = time.perf_counter()
    got = list(loader.iter_epoch(0, stop_batch=batches))  # no job is left running past the last batch
    seconds = time.perf_counter() - start
    return sum(len(y) for _, y in got) / max(seconds, 1e-9), got


def bench_data(
    data_dir: str, image_size: int, workers: int | None, batch: int, batches: int, steps: int, model_name: str
) -> dict[str, Any]:
    """Time the image pipeline on ``data_dir/train`` and training steps of ``model_name`` fed by it."""
    import tempfile  # noqa: PLC0415

    from minise import data, models, optim  # noqa: PLC0415

    folder = data.load_image_folder(data_dir, "train")
    pool = data.DecodePool(workers)
    augment = data.RandomResizedCrop(image_size)
    rows: list[dict[str, Any]] = []

    def row(what: str, rate: float, note: str = "") -> None:
        rows.append({"what": what, "images_per_s": rate, "note": note})

    def loader(transform: Any, cache: Any = None, on: Any = pool) -> Any:
        return data.ImageFolderLoader(folder, batch, transform=transform, shuffle=True, pool=on, cache=cache)

    try:
        # Start every worker process (and its imports) before any timing: one one-image job each.
        job = data.image_workers.Job((0,), (folder.paths[0],), augment, (0, 0))
        for future in [pool.submit(data.image_workers.run_job, job) for _ in range(pool.workers)]:
            pool.result(future)
        with data.DecodePool(0) as serial:
            rate, _ = _loader_rate(loader(augment, on=serial), max(batches // 2, 1))
            row("decode + RandomResizedCrop + flip, files, in-process", rate, "--workers 0")
        rate, _ = _loader_rate(loader(augment), batches)
        row("decode + RandomResizedCrop + flip, files", rate, f"{pool.workers} workers")
        rate, _ = _loader_rate(loader(data.ResizeCenterCrop(image_size)), batches)
        row("decode + resize + centre crop (evaluation), files", rate, f"{pool.workers} workers")
        with tempfile.TemporaryDirectory(prefix="minise-bench-cache-") as tmp:
            side = data.default_cache_size(image_size)
            start = time.perf_counter()
            cache, _ = data.open_cache(folder, side, root=tmp, pool=pool, progress=False)
            row(f"building the cache ({len(folder)} images at {side} px)", len(folder) / (time.perf_counter() - start))
            rate, cached = _loader_rate(loader(augment, cache), batches)
            row("RandomResizedCrop + flip from the cache", rate, f"{pool.workers} workers, --cache")

        backend.set_backend("numpy")
        minise.manual_seed(0)
        model = models.create(model_name, num_classes=len(folder.classes))
        opt = optim.SGD(optim.param_groups_no_decay(model, 5e-5), lr=0.1, momentum=0.9, weight_decay=5e-5)

        def step(xb: np.ndarray, yb: np.ndarray) -> None:
            opt.zero_grad()
            F.cross_entropy(model(minise.Tensor(xb)), yb).backward()
            opt.step()

        step(*cached[0])  # warm-up
        start = time.perf_counter()
        for i in range(steps):
            step(*cached[i % len(cached)])
        row(f"{model_name} training steps, batches in memory", steps * batch / (time.perf_counter() - start))
        start, seen = time.perf_counter(), 0  # the workers are running already
        for xb, yb in loader(augment).iter_epoch(2, stop_batch=steps):
            step(xb, yb)
            seen += len(yb)
        row(f"{model_name} training steps fed by the workers", seen / (time.perf_counter() - start), "from files")
    finally:
        pool.close()
    return {
        "data_dir": str(data_dir),
        "images": len(folder),
        "image_size": image_size,
        "batch": batch,
        "workers": pool.workers,
        "cores": os.cpu_count(),
        "threads": cpu.num_threads(),
        "model": model_name,
        "rows": rows,
    }


def format_data(r: dict[str, Any]) -> str:
    lines = [
        f"minise data benchmark: {r['data_dir']} ({r['images']} training images), {r['image_size']} px crops, "
        f"batch {r['batch']}, {r['workers']} workers on {r['cores']} cores",
        f"{'':<58}{'images/s':>10}  note",
    ]
    for row in r["rows"]:
        lines.append(f"{row['what']:<58}{row['images_per_s']:>10.1f}  {row['note']}")
    decode = next(x["images_per_s"] for x in r["rows"] if x["note"].endswith("workers"))
    train = next(x["images_per_s"] for x in r["rows"] if "in memory" in x["what"])
    who = "the model" if decode > train else "the decoder"
    lines.append(f"decoding delivers {decode / train:.1f}x what training consumes: {who} is the bottleneck")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(
        prog="python -m minise.bench", description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter
    )
    sub = parser.add_subparsers(dest="what", required=True)
    ops = sub.add_parser(
        "ops", help="time forward+backward of each op against GEMM and PyTorch", formatter_class=HelpFormatter
    )
    ops.add_argument("--backend", choices=backend.BACKEND_NAMES, default="numpy", help="where minise runs")
    ops.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE (default: printed only)")
    tr = sub.add_parser(
        "train", help="time full training steps against the same model in PyTorch", formatter_class=HelpFormatter
    )
    tr.add_argument("--model", default="se_resnet20", help="a name of python -m minise.models")
    tr.add_argument("--batch-size", type=int, default=128, help="images per training step")
    tr.add_argument("--steps", type=int, default=10, help="timed steps per round (after 2 warm-up steps)")
    tr.add_argument("--rounds", type=int, default=3, help="alternating runs of each framework (median reported)")
    tr.add_argument("--backend", choices=backend.BACKEND_NAMES, default="numpy", help="where minise runs")
    tr.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE (default: printed only)")
    tr.add_argument("--profile", action="store_true", help="instead: minise's per-op breakdown of the step")
    tr.add_argument("--ab", action="store_true", help="instead: Winograd and fused passes on/off, A/B in one process")
    tr.add_argument(
        "--image-size",
        type=int,
        default=32,
        help="side of the random training images (e.g. 128 for se_resnet18; --eval uses 32)",
    )
    tr.add_argument("--eval", action="store_true", help="instead: evaluation images/s (also BN folded) vs torch")
    da = sub.add_parser(
        "data", help="time image decoding + augmentation against training steps", formatter_class=HelpFormatter
    )
    da.add_argument("--data-dir", required=True, help="an image folder: DIR/train/<class>/<image>")
    da.add_argument("--image-size", type=int, default=128, help="side of the training crops, in pixels")
    da.add_argument("--workers", type=int, default=None, help="decoding processes (default: one per core)")
    da.add_argument("--batch-size", type=int, default=64, help="images per batch")
    da.add_argument("--batches", type=int, default=8, help="batches timed per pipeline measurement")
    da.add_argument("--steps", type=int, default=3, help="training steps timed (after one warm-up step)")
    da.add_argument("--model", default="se_resnet18", help="the model of the timed training steps")
    da.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE (default: printed only)")
    sub.add_parser(
        "distributed", help="1 process x 2 threads against 2 MPI processes: images/s, communication, overlap"
    )  # its options: python -m minise.bench distributed --help (minise/distributed/bench.py)
    import minise.bench_gpu as bench_gpu  # noqa: PLC0415  (it imports this module)
    import minise.bench_scaling as bench_scaling  # noqa: PLC0415  (it imports this module)

    bench_gpu.add_parser(sub)
    bench_scaling.add_parser(sub)
    child = sub.add_parser("train-child")  # internal: one framework's run, in its own process; no help, so not listed
    for name in ("framework", "model", "batch", "steps", "backend_name"):
        child.add_argument(name)
    child.add_argument("--image-size", type=int, default=32)
    sub.metavar = "{" + ",".join(c for c in sub.choices if c != "train-child") + "}"  # nor in the usage
    arguments = sys.argv[1:] if argv is None else argv
    if arguments[:1] == ["distributed"]:  # data-parallel training: minise/distributed/bench.py has its own options
        from minise.distributed.bench import main as distributed_main  # noqa: PLC0415

        return distributed_main(arguments[1:])
    args = parser.parse_args(argv)
    if getattr(args, "backend", None) in backend.BACKEND_NAMES:
        args.backend = backend.canonical_backend(args.backend)
    try:
        if args.what == "gpu":
            return bench_gpu.main(args)
        if args.what == "scaling":
            return bench_scaling.main(args)
        if args.what == "train-child":
            batch, steps = int(args.batch), int(args.steps)
            print(json.dumps(train_child(args.framework, args.model, batch, steps, args.backend_name, args.image_size)))
            return 0
        if args.what in ("ops", "data"):
            cpu.retain_freed_memory()  # as minise.train runs; the torch ops in this process share it
        if args.what == "ops":
            result = bench_ops(args.backend)
            print(format_ops(result))
        if args.what == "train" and (args.profile or args.ab or args.eval):  # minise/bench_profile.py
            from minise import bench_profile as bp  # noqa: PLC0415

            if args.eval:
                result = bp.eval_rate(args.model, args.batch_size, args.steps, args.rounds)
                print(bp.format_eval(result))
            elif args.profile:
                result = bp.profile_train(args.model, args.batch_size, args.steps, args.image_size)
                print(bp.format_profile(result))
            else:
                result = bp.ab_train(args.model, args.batch_size, args.steps, args.rounds, args.image_size)
                print(bp.format_ab(result))
        elif args.what == "train":
            result = bench_train(args.model, args.batch_size, args.steps, args.backend, args.rounds, args.image_size)
            print(format_train(result))
        if args.what == "data":
            result = bench_data(
                args.data_dir, args.image_size, args.workers, args.batch_size, args.batches, args.steps, args.model
            )
            print(format_data(result))
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f, indent=2)
    except (backend.BackendUnavailableError, ValueError, OSError, RuntimeError) as e:
        print(f"minise.bench: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
