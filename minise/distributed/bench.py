"""Benchmark: data-parallel training on this machine, and what the all-reduce costs.

    python -m minise.distributed.bench          (or: python -m minise.bench distributed)

Runs, alternating, ``--rounds`` times each (medians reported, since the machine may be shared):

* 1 process with 2 threads, batch 64;
* 2 MPI processes with 1 thread each, batch 32 each (global batch 64), gradients averaged by
  DistributedDataParallel's bucketed, overlapped all-reduce;

and reports images/s of se_resnet20 training steps (forward, loss, backward, SGD), the time the 2-process
step spends on communication, how much of it the backward pass hid, and the all-reduce bandwidth MPI
achieves against message size. "Communication time" is that of blocking all-reduces of the same buckets
timed alone; "waited" is the time the step spent after its backward pass waiting for all-reduces, measured
in alternate steps with the all-reduces started during backward (overlapped) and all started after it;
hidden = 1 - waited overlapped / waited not overlapped.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

import minise
from minise import cpu, models, optim
from minise import functional as F
from minise.cli import HelpFormatter, OneLineParser
from minise.distributed.comm import Communicator, SingleProcess
from minise.distributed.ddp import DistributedDataParallel
from minise.distributed.launch import launched_size
from minise.tensor import Tensor


def worker(model_name: str, batch: int, steps: int, bucket_mb: float, comm: Communicator) -> dict[str, Any]:
    """Time ``steps`` training steps on this rank (after 2 warm-up steps); rank 0's numbers are returned."""
    cpu.retain_freed_memory()
    rng = np.random.default_rng(comm.rank)
    x, y = Tensor(rng.standard_normal((batch, 3, 32, 32), dtype=np.float32)), rng.integers(0, 10, batch)
    minise.manual_seed(0)
    model = models.create(model_name, num_classes=10)
    opt = optim.SGD(optim.param_groups_no_decay(model, 5e-4), lr=0.1, momentum=0.9, weight_decay=5e-4)
    ddp = DistributedDataParallel(model, comm, bucket_cap_mb=bucket_mb) if comm.size > 1 else None
    times: dict[bool, list[float]] = {True: [], False: []}  # overlapped or not -> step times
    exposed: dict[bool, list[float]] = {True: [], False: []}
    for i in range(2 * steps + 2):
        overlap = i % 2 == 0  # alternate, so that both modes see the same load on a shared machine
        if ddp is not None:
            ddp.overlap = overlap
            before = ddp.stats["exposed_s"]
        comm.barrier()  # start together: the wait after backward then measures communication, not a late start
        start = time.perf_counter()
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        if ddp is not None:
            ddp.backward(loss)
        else:
            loss.backward()
        opt.step()
        if i >= 2:  # the warm-up steps do not count
            times[overlap].append(time.perf_counter() - start)
            if ddp is not None:
                exposed[overlap].append(ddp.stats["exposed_s"] - before)
        if i == 1 and ddp is not None:
            ddp.stats = {k: 0 for k in ddp.stats}
    result: dict[str, Any] = {"processes": comm.size, "threads": cpu.num_threads(), "batch_per_process": batch}
    result["step_s"] = float(np.median(times[True]))
    result["images_per_s"] = comm.size * batch / result["step_s"]
    if ddp is not None:
        s = ddp.stats
        result["step_s_no_overlap"] = float(np.median(times[False]))
        result["exposed_s_no_overlap"] = float(np.median(exposed[False]))
        comm_times = []
        for _ in range(5):  # the same buckets, all-reduced alone, one after the other
            comm.barrier()
            start = time.perf_counter()
            for b in ddp.buckets:
                comm.allreduce(b.buffer)
            comm_times.append(time.perf_counter() - start)
        result["buckets"] = len(ddp.buckets)
        result["bytes_per_step"] = s["bytes"] / max(s["steps"], 1)
        result["comm_s"] = float(np.median(comm_times))
        result["exposed_s"] = float(np.median(exposed[True]))
        result["overlapped"] = min(1.0, max(0.0, 1.0 - result["exposed_s"] / result["exposed_s_no_overlap"]))
        result["bandwidth"] = bandwidth(comm)
    return result


def bandwidth(comm: Communicator, reps: int = 7) -> list[dict[str, float]]:
    """Median time of a blocking all-reduce of 4 KiB ... 16 MiB of float32; algorithm bandwidth bytes/t and
    bus bandwidth 2(N-1)/N bytes/t (what each link carried, NCCL's convention)."""
    rows = []
    for size in (1 << 10, 1 << 14, 1 << 18, 1 << 20, 1 << 22):
        a = np.ones(size, dtype=np.float32)
        times = []
        for _ in range(reps):
            comm.barrier()
            start = time.perf_counter()
            comm.allreduce(a)
            times.append(time.perf_counter() - start)
        t = float(np.median(times))
        n = comm.size
        rows.append({"bytes": a.nbytes, "seconds": t, "algbw_GBps": a.nbytes / t / 1e9,
                     "busbw_GBps": 2 * (n - 1) / n * a.nbytes / t / 1e9})  # fmt: skip
    return rows


def run_child(processes: int, threads: int, args: argparse.Namespace) -> dict[str, Any]:
    env = {**os.environ, "MINISE_NUM_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)}
    cmd = [
        sys.executable,
        "-m",
        "minise.distributed.bench",
        "--child",
        "--model",
        args.model,
        "--steps",
        str(args.steps),
    ]
    cmd += ["--batch-size", str(args.batch_size // processes), "--bucket-mb", str(args.bucket_mb)]
    if processes > 1:
        cmd = [str(Path(sys.executable).parent / "mpiexec"), "-n", str(processes), *cmd]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    if out.returncode != 0:
        raise RuntimeError(f"the {processes}-process run failed: {out.stderr.strip().splitlines()[-1:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def format_result(runs: dict[str, list[dict[str, Any]]], args: argparse.Namespace) -> str:
    one, two = runs["1x2"], runs["2x1"]
    med = lambda rs, k: float(np.median([r[k] for r in rs]))
    rate1, rate2 = med(one, "images_per_s"), med(two, "images_per_s")
    comm_ms, exposed_ms = 1e3 * med(two, "comm_s"), 1e3 * med(two, "exposed_s")
    lines = [
        f"{args.model}, global batch {args.batch_size}, {args.steps} steps x {args.rounds} rounds (medians):",
        f"  1 process   x 2 threads: {rate1:7.1f} images/s  (step {1e3 * med(one, 'step_s'):.0f} ms)",
        f"  2 processes x 1 thread:  {rate2:7.1f} images/s  (step {1e3 * med(two, 'step_s'):.0f} ms), "
        f"{rate2 / rate1:.2f}x",
        f"  communication per step: {two[0]['buckets']} buckets, {med(two, 'bytes_per_step') / 1e6:.2f} MB "
        f"all-reduced, {comm_ms:.2f} ms when timed alone",
        f"  waited after backward: {1e3 * med(two, 'exposed_s_no_overlap'):.2f} ms with every all-reduce started "
        f"after backward, {exposed_ms:.2f} ms overlapped: {100 * med(two, 'overlapped'):.0f} % hidden; step "
        f"{1e3 * med(two, 'step_s_no_overlap'):.0f} ms without overlap",
        "  all-reduce of float32, 2 processes:     bytes      time     algbw     busbw",
    ]
    for i, row in enumerate(two[0]["bandwidth"]):
        t = float(np.median([r["bandwidth"][i]["seconds"] for r in two]))
        alg = row["bytes"] / t / 1e9
        lines.append(f"  {row['bytes']:>40,d} {1e6 * t:7.0f} us {alg:6.2f} GB/s {alg * 2 * (2 - 1) / 2:6.2f} GB/s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = OneLineParser(
        prog="python -m minise.distributed.bench",
        description=__doc__.split("\n\n")[0],
        formatter_class=HelpFormatter,
    )
    p.add_argument("--model", default="se_resnet20", help="a name of python -m minise.models")
    p.add_argument("--batch-size", type=int, default=64, help="global batch (each of 2 processes takes half)")
    p.add_argument("--steps", type=int, default=8, help="timed training steps per round")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds of the two set-ups (median reported)")
    p.add_argument("--bucket-mb", type=float, default=0.25, help="DDP bucket size in MiB")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE (default: printed only)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        comm: Communicator = SingleProcess()
        if launched_size() > 1:  # the 2-process run (run_child starts it under mpiexec)
            from minise.distributed.mpi import MPICommunicator  # noqa: PLC0415

            comm = MPICommunicator()
        result = worker(args.model, args.batch_size, args.steps, args.bucket_mb, comm)
        if comm.rank == 0:
            print(json.dumps(result))
        return 0
    runs: dict[str, list[dict[str, Any]]] = {"1x2": [], "2x1": []}
    try:
        for _ in range(args.rounds):
            runs["1x2"].append(run_child(1, 2, args))
            runs["2x1"].append(run_child(2, 1, args))
    except (RuntimeError, subprocess.TimeoutExpired, OSError) as e:
        print(f"minise.distributed.bench: {e}", file=sys.stderr)
        return 2
    print(format_result(runs, args))
    if args.json:
        Path(args.json).write_text(json.dumps(runs, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
