"""Where a training step's time goes, and what each speed-up buys: ``python -m minise.bench train --profile``
and ``--ab``.

``--profile`` times every op's forward and backward (each :class:`~minise.autograd.Function` subclass's,
by wall clock, summed over the timed steps) and prints them as shares of the step; the rest of the step
(the loss's Python, the autograd bookkeeping, the SGD update) is "outside the ops". ``--ab`` runs the same
model in one process under each combination of the two switches of issue 15, taking turns round by round,
and reports each one's median images/s: ``MINISE_CONV_ALGORITHM=im2col`` (every convolution by im2col,
against the default rule that picks kernel-row GEMMs or Winograd per layer) and ``MINISE_FUSED=0``
(batch norm, residual add and ReLU as separate ops).
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

import minise
from minise import backend, cpu
from minise import functional as F
from minise.autograd import Function


def _training_step(model_name: str, batch: int, image_size: int) -> Callable[[], None]:
    """One full minise training step (forward, loss, backward, SGD with Nesterov momentum) on random data."""
    from minise import models, optim  # noqa: PLC0415

    rng = np.random.default_rng(0)
    x = minise.Tensor(backend.to_device(rng.standard_normal((batch, 3, image_size, image_size), dtype=np.float32)))
    minise.manual_seed(0)
    model = models.create(model_name, num_classes=10)
    y = backend.to_device(rng.integers(0, 10, batch))
    opt = optim.SGD(optim.param_groups_no_decay(model, 5e-4), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)

    def step() -> None:
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()

    return step


def _subclasses(cls: type) -> Iterator[type]:
    sub: type
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


@contextmanager
def _timed_ops(totals: dict[tuple[str, str], float]) -> Iterator[None]:
    """Within the block, add every op's forward and backward wall time to ``totals[(op name, pass)]``."""
    patched: list[tuple[type, str, Any]] = []

    def timed(fn: Any, kind: str) -> Any:
        def run(self: Any, *args: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(self, *args)
            finally:
                totals[(getattr(self, "name", type(self).__name__), kind)] += time.perf_counter() - start

        return run

    for cls in set(_subclasses(Function)):
        for kind in ("forward", "backward"):
            if kind in cls.__dict__:
                patched.append((cls, kind, cls.__dict__[kind]))
                setattr(cls, kind, timed(cls.__dict__[kind], kind))
    try:
        yield
    finally:
        for cls, kind, fn in patched:
            setattr(cls, kind, fn)


def profile_train(model: str, batch: int, steps: int, image_size: int = 32) -> dict[str, Any]:
    """Per-op forward and backward milliseconds per step of ``model``, over ``steps`` steps after 2 warm-up ones."""
    cpu.retain_freed_memory()
    step = _training_step(model, batch, image_size)
    for _ in range(2):
        step()
    totals: dict[tuple[str, str], float] = defaultdict(float)
    with _timed_ops(totals):
        start = time.perf_counter()
        for _ in range(steps):
            step()
        seconds = time.perf_counter() - start
    rows: list[dict[str, Any]] = [
        {"op": op, "pass": kind, "ms_per_step": 1e3 * s / steps} for (op, kind), s in totals.items()
    ]
    rows.sort(key=lambda r: -float(r["ms_per_step"]))
    return {
        "model": model,
        "batch": batch,
        "steps": steps,
        "image_size": image_size,
        "ms_per_step": 1e3 * seconds / steps,
        "rows": rows,
        "threads": cpu.num_threads(),
    }


def format_profile(r: dict[str, Any]) -> str:
    step = r["ms_per_step"]
    lines = [
        f"minise training step of {r['model']}, batch {r['batch']}, {r['image_size']}x{r['image_size']}, "
        f"{r['threads']} threads: {step:.1f} ms per step (ops timed by wall clock, mean of {r['steps']} steps)",
        f"{'op':<26}{'pass':<10}{'ms/step':>9}{'share':>8}",
    ]
    for row in r["rows"]:
        lines.append(f"{row['op']:<26}{row['pass']:<10}{row['ms_per_step']:>9.1f}{row['ms_per_step'] / step:>8.1%}")
    inside = sum(row["ms_per_step"] for row in r["rows"])
    lines.append(f"{'outside the ops':<36}{step - inside:>9.1f}{(step - inside) / step:>8.1%}")
    by_op: dict[str, float] = defaultdict(float)
    for row in r["rows"]:
        by_op[row["op"]] += row["ms_per_step"]
    lines.append(
        "by op (forward + backward): "
        + ", ".join(f"{op} {ms / step:.1%}" for op, ms in sorted(by_op.items(), key=lambda kv: -kv[1]))
    )
    return "\n".join(lines)


VARIANTS = {  # name -> (MINISE_CONV_ALGORITHM, MINISE_FUSED)
    "im2col, unfused": ("im2col", "0"),
    "im2col, fused": ("im2col", "1"),
    "auto rule, unfused": ("auto", "0"),
    "auto rule, fused (default)": ("auto", "1"),
}


def ab_train(model: str, batch: int, steps: int, rounds: int = 3, image_size: int = 32) -> dict[str, Any]:
    """images/s of ``model`` under each of ``VARIANTS``, in this process, the variants taking turns each round."""
    cpu.retain_freed_memory()
    step = _training_step(model, batch, image_size)
    saved = {k: os.environ.get(k) for k in ("MINISE_CONV_ALGORITHM", "MINISE_FUSED")}
    rates: dict[str, list[float]] = {name: [] for name in VARIANTS}
    cpu_rates: dict[str, list[float]] = {name: [] for name in VARIANTS}  # images per CPU-second of the process
    try:
        for _ in range(max(1, rounds)):
            for name, (algorithm, fused) in VARIANTS.items():
                os.environ["MINISE_CONV_ALGORITHM"], os.environ["MINISE_FUSED"] = algorithm, fused
                step()  # warm-up under this variant
                start, start_cpu = time.perf_counter(), time.process_time()
                for _ in range(steps):
                    step()
                rates[name].append(batch * steps / (time.perf_counter() - start))
                cpu_rates[name].append(batch * steps / (time.process_time() - start_cpu))
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return {
        "model": model,
        "batch": batch,
        "steps": steps,
        "image_size": image_size,
        "threads": cpu.num_threads(),
        "rates": rates,
        "median": {k: float(np.median(v)) for k, v in rates.items()},
        "cpu_median": {k: float(np.median(v)) for k, v in cpu_rates.items()},
    }


def format_ab(r: dict[str, Any]) -> str:
    base = r["median"]["im2col, unfused"]
    lines = [
        f"minise A/B in one process: {r['model']}, batch {r['batch']}, {r['image_size']}x{r['image_size']}, "
        f"{r['steps']} steps per variant and round, {r['threads']} threads; "
        f"median of {len(r['rates']['im2col, unfused'])} rounds",
        f"{'variant':<34}{'images/s':>10}{'vs im2col, unfused':>20}{'images/CPU-s':>14}{'vs':>7}  images/s by round",
    ]
    cpu_base = r["cpu_median"]["im2col, unfused"]
    for name, rate in r["median"].items():
        rounds = ", ".join(f"{v:.0f}" for v in r["rates"][name])
        per_cpu = r["cpu_median"][name]
        lines.append(
            f"{name:<34}{rate:>10.1f}{rate / base:>19.2f}x{per_cpu:>14.1f}{per_cpu / cpu_base:>6.2f}x  {rounds}"
        )
    lines.append(
        "images/CPU-s: images per second of the process's CPU time (all its threads), which a busy machine "
        "changes less than the wall clock"
    )
    return "\n".join(lines)


def _torch_folded(torch: Any, net: Any) -> Any:
    """A copy of the bench's PyTorch CIFAR model (``bench._torch_cifar_resnet``, in eval mode) with every
    BatchNorm2d that follows a Conv2d, by the pairing rule of minise's ``fold_batch_norm``
    (``fused.conv_bn_name_pairs``: ``convK``/``bnK`` children of a block, consecutive children of a
    Sequential), folded into it by ``torch.nn.utils.fusion.fuse_conv_bn_eval`` and replaced by Identity: what
    a PyTorch user does for faster inference, the counterpart of minise's ``fold_batch_norm``."""
    import copy  # noqa: PLC0415

    from torch.nn.utils.fusion import fuse_conv_bn_eval  # noqa: PLC0415

    from minise.functional.fused import conv_bn_name_pairs  # noqa: PLC0415

    nn = torch.nn
    folded = copy.deepcopy(net).eval()
    for module in list(folded.modules()):
        children = dict(module.named_children())
        for conv_name, bn_name in conv_bn_name_pairs(list(children), isinstance(module, nn.Sequential)):
            conv, bn = children.get(conv_name), children.get(bn_name)
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                setattr(module, conv_name, fuse_conv_bn_eval(conv, bn))
                setattr(module, bn_name, nn.Identity())
    return folded


def eval_rate(model: str, batch: int, steps: int, rounds: int = 3) -> dict[str, Any]:
    """Evaluation images/s (forward only, no gradients), in this process, taking turns each round; medians:
    minise's model with every op on its own (``MINISE_FUSED=0``: batch norm as its own op), as it runs by
    default (``model.eval()`` under ``no_grad`` folds each batch norm into its convolution for the call),
    its batch-norm-folded copy (:func:`~minise.functional.fused.fold_batch_norm`), and the same model in
    PyTorch (``model.eval()``, ``torch.no_grad()``) and its folded copy (:func:`_torch_folded`)."""
    from minise import models  # noqa: PLC0415
    from minise.bench import _torch, _torch_cifar_resnet  # noqa: PLC0415
    from minise.functional.fused import fold_batch_norm, unfused  # noqa: PLC0415

    cpu.retain_freed_memory()
    x_h = np.random.default_rng(0).standard_normal((batch, 3, 32, 32), dtype=np.float32)
    x = minise.Tensor(backend.to_device(x_h))
    minise.manual_seed(0)
    net = models.create(model, num_classes=10).eval()
    folded = fold_batch_norm(net)

    def unfused_run() -> Any:
        with unfused():
            return net(x)

    runs: dict[str, Callable[[], Any]] = {
        "minise, unfused": unfused_run,
        "minise": lambda: net(x),
        "minise, BN folded": lambda: folded(x),
    }
    torch = _torch()
    if torch is not None:
        tnet = _torch_cifar_resnet(torch, model).eval()
        xt = torch.tensor(x_h)

        def torch_run() -> Any:
            with torch.no_grad():
                return tnet(xt)

        runs["torch"] = torch_run
        tfolded = _torch_folded(torch, tnet)

        def torch_folded_run() -> Any:
            with torch.no_grad():
                return tfolded(xt)

        runs["torch, BN folded"] = torch_folded_run
    rates: dict[str, list[float]] = {name: [] for name in runs}
    with minise.no_grad():
        for _ in range(max(1, rounds)):
            for name, run in runs.items():
                run()  # warm-up
                start = time.perf_counter()
                for _ in range(steps):
                    run()
                rates[name].append(batch * steps / (time.perf_counter() - start))
    return {
        "model": model,
        "batch": batch,
        "steps": steps,
        "threads": cpu.num_threads(),
        "rates": rates,
        "median": {k: float(np.median(v)) for k, v in rates.items()},
    }


def format_eval(r: dict[str, Any]) -> str:
    lines = [
        f"evaluation images/s (no gradients): {r['model']}, batch {r['batch']}, {r['steps']} batches per round, "
        f"{r['threads']} threads; median of {len(next(iter(r['rates'].values())))} alternating rounds",
    ]
    torch_rate = r["median"].get("torch")
    torch_folded = r["median"].get("torch, BN folded")
    for name, rate in r["median"].items():
        rounds = ", ".join(f"{v:.0f}" for v in r["rates"][name])
        vs = f"{rate / torch_rate:6.2f}x torch" if torch_rate else ""
        if torch_folded and name == "minise, BN folded":
            vs += f", {rate / torch_folded:.2f}x torch folded"
        lines.append(f"{name:<20}{rate:>10.1f}  {vs}  by round: {rounds}")
    return "\n".join(lines)
