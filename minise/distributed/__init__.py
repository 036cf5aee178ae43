"""minise.distributed: data-parallel training on several processes (MPI) or GPUs (NCCL).

    mpiexec -n 2 python -m minise.train --distributed --dataset shapes --model se_resnet20 --batch-size 32

Every process holds the whole model and takes its share of each global batch (``DataLoader(...,
num_replicas, rank)``); :class:`DistributedDataParallel` averages the gradients with bucketed, overlapped
all-reduces, so every process takes the same step; :class:`SyncBatchNorm` takes batch-norm statistics over
the global batch. The transports are MPI (:class:`MPICommunicator`, mpi4py) and NCCL
(:class:`NCCLCommunicator`, CuPy), behind :class:`Communicator`; :class:`LocalGroup` runs ranks as threads
of one process for tests and lesson 15. mpi4py and CuPy are imported only when a communicator is made.
"""

from minise.distributed.comm import CollectiveTimeout, Communicator, LocalGroup, SingleProcess, Work
from minise.distributed.ddp import DistributedDataParallel, broadcast_buffers, build_buckets
from minise.distributed.evaluate import evaluate_sharded
from minise.distributed.mpi import MPICommunicator, mpi_unavailable
from minise.distributed.nccl import NCCLCommunicator
from minise.distributed.sync_bn import SyncBatchNorm

__all__ = [
    "CollectiveTimeout",
    "Communicator",
    "DistributedDataParallel",
    "LocalGroup",
    "MPICommunicator",
    "NCCLCommunicator",
    "SingleProcess",
    "SyncBatchNorm",
    "Work",
    "broadcast_buffers",
    "build_buckets",
    "evaluate_sharded",
    "mpi_unavailable",
]
