"""A self-check of the collectives and of the bucketed all-reduce, on the real transport.

    mpiexec -n 2 python -m minise.distributed.check                       # MPI, host arrays
    mpiexec -n 1 python -m minise.distributed.check --comm nccl --backend cupy   # NCCL on one GPU

Checks, on every rank: all-reduce and broadcast give the expected numbers; DistributedDataParallel's
gradients, for buckets of 1 byte (one parameter each), 64 KiB, 1 MiB and 1 GiB (all in one), equal the
plain sum over ranks of each rank's scaled gradient (one all-reduce of everything). Prints one line per
check on rank 0 and exits 1 on the first failure. ``--fault raise|hang --fault-rank R`` makes rank R fail
(the tests use it to show that the job then ends, non-zero, within the timeout).
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import numpy as np

import minise
from minise import backend, models
from minise import functional as F
from minise.distributed.comm import Communicator
from minise.distributed.ddp import DistributedDataParallel
from minise.distributed.launch import communicator, run_guarded
from minise.tensor import Tensor


def check_collectives(comm: Communicator, xp: object) -> None:
    a = xp.arange(5, dtype=xp.float64) + comm.rank  # type: ignore[attr-defined]
    comm.allreduce(a)
    expected = comm.size * np.arange(5) + comm.size * (comm.size - 1) / 2
    assert np.array_equal(backend.to_host(a), expected), f"all-reduce gave {backend.to_host(a)}, expected {expected}"
    b = xp.full(3, float(comm.rank + 7))  # type: ignore[attr-defined]
    comm.broadcast(b, 0)
    assert np.array_equal(backend.to_host(b), np.full(3, 7.0)), f"broadcast gave {backend.to_host(b)}"


def local_gradients(model: minise.nn.Module, x: Tensor, y: Any) -> list[Any]:
    for p in model.parameters():
        p.grad = None
    F.cross_entropy(model(x), y).backward()
    return [p.grad.copy() for p in model.parameters()]


def check_buckets(comm: Communicator) -> float:
    """The largest |bucketed - plain| over all gradients and bucket sizes (0 expected for 2 ranks)."""
    minise.manual_seed(0)
    model = models.create("se_resnet20", num_classes=10)
    rng = np.random.default_rng(comm.rank)
    x = Tensor(backend.to_device(rng.standard_normal((4, 3, 32, 32)).astype(np.float32)))
    y = backend.to_device(rng.integers(0, 10, 4))
    xp = backend.get_array_module(x.data)
    plain = xp.concatenate([g.reshape(-1) for g in local_gradients(model, x, y)]) * np.float32(1 / comm.size)
    comm.allreduce(plain)  # one all-reduce of every gradient at once
    worst = 0.0
    for cap_mb in (2**-20, 1 / 16, 1.0, 1024.0):
        ddp = DistributedDataParallel(model, comm, bucket_cap_mb=cap_mb)
        for p in model.parameters():
            p.grad = None
        ddp.backward(F.cross_entropy(ddp(x), y))
        ddp.remove_hooks()
        bucketed = xp.concatenate([p.grad.reshape(-1) for p in model.parameters()])
        diff = float(backend.to_host(xp.abs(bucketed - plain).max()))
        scale = float(backend.to_host(xp.abs(plain).max()))
        assert diff <= 1e-6 * scale, f"buckets of {cap_mb} MiB differ from the plain sum by {diff} (scale {scale})"
        worst = max(worst, diff)
    return worst


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m minise.distributed.check", description=__doc__.split("\n\n")[0])
    p.add_argument("--comm", choices=("mpi", "nccl"), default="mpi")
    p.add_argument("--backend", default=None, help="numpy (default) or cupy")
    p.add_argument("--fault", choices=("raise", "hang"), default=None, help=argparse.SUPPRESS)
    p.add_argument("--fault-rank", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.backend:
        backend.set_backend(args.backend)
    comm = communicator(args.comm)

    def body() -> int:
        xp = backend.xp_of_backend()
        check_collectives(comm, xp)
        if args.fault and comm.rank == args.fault_rank:
            if args.fault == "raise":
                raise RuntimeError(f"planted fault on rank {comm.rank}")
            time.sleep(3600)  # hangs: the other ranks must time out
        comm.barrier()
        if comm.rank == 0:
            print(f"collectives ok on {comm.size} ranks ({comm.name})", flush=True)
        worst = check_buckets(comm)
        if comm.rank == 0:
            print(f"bucketed all-reduce = plain sum for 4 bucket sizes (largest difference {worst:.3g})", flush=True)
        return 0

    return run_guarded(comm, body, "minise.distributed.check")


if __name__ == "__main__":
    sys.exit(main())
