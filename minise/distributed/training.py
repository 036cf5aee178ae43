"""What ``python -m minise.train --distributed`` adds to a training run, in one place.

``minise.train`` calls these few functions and methods; everything distributed lives here:

* :func:`add_arguments`: ``--distributed``, ``--sync-bn``, ``--bucket-mb``, ``--comm``;
* :class:`DistributedRun`: this process's communicator, rank and world size; the loaders' sharding
  (``shard()``); the model wrapped for data parallelism (``wrap``: SyncBN if asked, then
  DistributedDataParallel, which broadcasts rank 0's weights); ``backward`` (the bucketed all-reduce);
  ``agree`` (one all-reduce per step of the loss sum, the correct count, the images seen and the stop flag,
  so every rank prints, stops and saves at the same step); ``evaluate`` (sharded, counts all-reduced);
* :meth:`DistributedRun.end`: the end of the job on a failure - one line, then MPI_Abort, so no rank is left
  waiting in a collective.

Rules of a distributed run: ``--batch-size`` is per process, and the config (``config.json`` and every
checkpoint) records ``world_size`` N and ``global_batch_size`` N * batch_size; rank 0 alone prints and writes
the run folder (checkpoints, metrics, curves); ``--resume`` needs the same N (the position in the epoch
counts global batches) and a run folder every rank can read.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from minise.distributed.comm import Communicator
from minise.distributed.ddp import DistributedDataParallel
from minise.distributed.evaluate import evaluate_sharded
from minise.distributed.sync_bn import SyncBatchNorm
from minise.evaluate import EvalResult
from minise.nn import Module
from minise.tensor import Tensor

ACTIVE: list[DistributedRun] = []  # the distributed run of this process's minise.train, until finish()


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The distributed options of ``python -m minise.train``."""
    d = p.add_argument_group("data-parallel training (under mpiexec -n N; see minise.distributed)")
    d.add_argument(
        "--distributed",
        action="store_true",
        help="train one model on the N processes started by mpiexec/srun; --batch-size is per process, the "
        "global batch is N times it",
    )
    d.add_argument(
        "--sync-bn",
        action="store_true",
        help="batch-norm statistics over the global batch (all-reduced), so that N processes x batch b take "
        "the step of 1 process x batch N*b",
    )
    d.add_argument("--bucket-mb", type=float, default=1.0, help="gradient all-reduce bucket size, MiB")
    d.add_argument(
        "--comm",
        choices=("auto", "mpi", "nccl"),
        default="auto",
        help="transport: MPI (host arrays), NCCL (GPU arrays, one GPU per process); auto: NCCL with "
        "--backend cupy, else MPI",
    )


def check_arguments(args: argparse.Namespace) -> str | None:
    """What is wrong with the distributed options (one line with the fix), or None."""
    if not getattr(args, "distributed", False):
        if getattr(args, "sync_bn", False):
            return "--sync-bn needs --distributed (one process already normalises over its whole batch)"
        return None
    if args.bucket_mb <= 0:
        return f"--bucket-mb {args.bucket_mb}: the bucket size must be > 0 MiB"
    return None


class DistributedRun:
    """This process's part in a data-parallel run (see the module's docstring)."""

    def __init__(self, comm: Communicator, sync_bn: bool, bucket_mb: float) -> None:
        self.comm, self.sync_bn, self.bucket_mb = comm, sync_bn, bucket_mb
        self.rank, self.size = comm.rank, comm.size
        self.is_main = comm.rank == 0
        self.ddp: DistributedDataParallel | None = None
        self._saved_output: tuple[Any, Any] | None = None

    @staticmethod
    def from_args(args: argparse.Namespace) -> DistributedRun:
        from minise import backend  # noqa: PLC0415
        from minise.distributed.launch import communicator  # noqa: PLC0415

        kind = args.comm
        if kind == "auto":
            kind = "nccl" if backend.get_backend() == "cupy" else "mpi"
        run = DistributedRun(communicator(kind), args.sync_bn, args.bucket_mb)
        ACTIVE[:] = [run]  # the run of this process, for finish()
        return run

    def shard(self) -> dict[str, int]:
        """The loader arguments (DataLoader, ImageFolderLoader) that give this rank its share of every global batch."""
        return {"num_replicas": self.size, "rank": self.rank}

    def wrap(self, model: Module) -> None:
        """SyncBN (if asked) and DDP around ``model``: broadcasts rank 0's parameters and buffers."""
        if self.ddp is not None:
            self.ddp.remove_hooks()
        if self.sync_bn:
            SyncBatchNorm.convert_sync_batchnorm(model, self.comm)
        self.ddp = DistributedDataParallel(model, self.comm, bucket_cap_mb=self.bucket_mb)

    def backward(self, loss: Tensor) -> None:
        assert self.ddp is not None, "DistributedRun.wrap(model) first"
        self.ddp.backward(loss)

    def agree(self, loss_sum: float, correct: float, seen: float, stop: bool) -> tuple[float, float, float, bool]:
        """Sum the step's loss, correct count and images over all ranks, and stop if any rank wants to
        (Ctrl-C reaches every rank, but maybe not at the same step): one all-reduce of 4 numbers."""
        import numpy as np  # noqa: PLC0415

        totals = np.array([loss_sum, correct, seen, 1.0 if stop else 0.0])
        self.comm.allreduce(totals)
        return float(totals[0]), float(totals[1]), float(totals[2]), bool(totals[3] > 0)

    def evaluate(self, model: Module, batches: Any, num_classes: int) -> EvalResult:
        return evaluate_sharded(model, batches, num_classes, self.comm)

    def silence_others(self) -> None:
        """Ranks other than 0 print nothing from here on (rank 0 speaks for the job), until
        :meth:`restore_output`: their progress bars and epoch lines would only repeat rank 0's."""
        if not self.is_main and self._saved_output is None:
            self._saved_output = (sys.stdout, sys.stderr)
            sys.stdout = sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - closed in restore_output

    def restore_output(self) -> None:
        """Give this rank its output back (an error it reports must be seen)."""
        if self._saved_output is not None:
            quiet = sys.stdout
            sys.stdout, sys.stderr = self._saved_output
            self._saved_output = None
            quiet.close()

    def end(self, code: int, message: str | None = None) -> None:
        """End the whole job with ``code`` (MPI_Abort), after printing ``message`` on this rank's stderr."""
        if message:
            print(f"minise.train: rank {self.rank} of {self.size}: {message}", file=sys.stderr)
        sys.stderr.flush()
        self.comm.abort(code)


def check_resume(saved_config: dict[str, Any], path: Any, world_size: int) -> str | None:
    """Why a checkpoint cannot be resumed by ``world_size`` processes (one line), or None: the position in
    the epoch counts global batches, so N must stay the same (a checkpoint without the key is of 1 process)."""
    saved = saved_config.get("world_size", 1)
    if saved != world_size:
        launch = f"mpiexec -n {saved} python -m minise.train --distributed ..." if saved > 1 else "one process"
        return (
            f"checkpoint {path} was trained on {saved} process(es), not {world_size} - resume it with {launch} "
            "(the position in the epoch counts global batches of that many processes)"
        )
    return None


def finish(code: int) -> int:
    """The exit status of ``python -m minise.train``; in a distributed run that failed on this rank (status
    neither 0 nor 130, a stop all ranks agreed on), end the whole job now with MPI_Abort: the other ranks
    would otherwise wait for this one in their next collective."""
    run = ACTIVE.pop() if ACTIVE else None
    if run is not None and code not in (0, 130):
        run.restore_output()
        run.end(code)
    return code
