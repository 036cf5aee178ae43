"""NCCL through CuPy (``cupy.cuda.nccl``): all-reduce between GPUs, one GPU per process.

NCCL (NVIDIA's collective library) moves GPU memory over NVLink, PCIe or InfiniBand without a host
copy, with ring and tree algorithms (lesson 15). Processes are still started by ``mpiexec``; MPI only
hands every rank the NCCL id that rank 0 creates, then NCCL does the collectives. Each process takes
the GPU of its *local* rank (its rank among the processes of its machine), as ``torchrun`` does.

A NCCL call only *enqueues* work on a CUDA stream. ``iallreduce`` enqueues the sum on a stream of its
own, after the work already queued on the compute stream (an event makes the one wait for the other), and
returns a :class:`NCCLWork` whose ``wait()`` makes the compute stream wait for the sum - on the device,
without blocking Python - so the backward pass keeps queuing kernels while gradients travel.

This path runs only on machines with NVIDIA GPUs and NCCL; it is exercised by the GPU check (with one GPU,
N = 1), not by the CPU test suite.
"""

from __future__ import annotations

from typing import Any

from minise import backend
from minise.distributed.comm import Communicator, Work
from minise.distributed.mpi import MPICommunicator

# numpy dtype name -> NCCL data type name (cupy.cuda.nccl.NCCL_<NAME>)
NCCL_TYPES = {"float16": "NCCL_FLOAT16", "float32": "NCCL_FLOAT32", "float64": "NCCL_FLOAT64", "int64": "NCCL_INT64"}


def _nccl() -> Any:
    """cupy.cuda.nccl, after checking that CuPy works (backend's error, with its fix, if it does not)."""
    nccl = backend.cupy_submodule("cuda.nccl")  # raises BackendUnavailableError with the reason and the fix
    if nccl is None or not getattr(nccl, "available", True):
        raise RuntimeError(
            "NCCLCommunicator: this CuPy was built without NCCL - install a CuPy wheel (they ship NCCL support) "
            "and the NCCL library (`pip install nvidia-nccl-cu12`), or use --comm mpi"
        )
    return nccl


class NCCLWork(Work):
    """An all-reduce queued on the communication stream; ``done`` is recorded after it."""

    def __init__(self, done: Any, cupy: Any) -> None:
        self.done_event, self.cupy = done, cupy

    def test(self) -> bool:
        return bool(self.done_event.done)

    def wait(self) -> None:
        self.cupy.cuda.get_current_stream().wait_event(self.done_event)  # device-side: Python goes on


class NCCLCommunicator(Communicator):
    """NCCL between the GPUs of the ranks of ``mpi`` (which also picks each rank's GPU and shares the id)."""

    def __init__(self, mpi: MPICommunicator | None = None) -> None:
        self.mpi = mpi if mpi is not None else MPICommunicator()
        self.rank, self.size, self.local_rank = self.mpi.rank, self.mpi.size, self.mpi.local_rank
        self.nccl = _nccl()
        cupy = self.cupy = backend.xp_of_backend("cupy")
        count = cupy.cuda.runtime.getDeviceCount()
        cupy.cuda.Device(self.local_rank % count).use()  # one GPU per process, by local rank
        uid = self.nccl.get_unique_id() if self.rank == 0 else None
        uid = self.mpi.comm.bcast(uid, root=0)
        self.comm = self.nccl.NcclCommunicator(self.size, uid, self.rank)
        self.stream = cupy.cuda.Stream(non_blocking=True)

    def _dtype(self, a: Any) -> int:
        name = NCCL_TYPES.get(str(a.dtype))
        if name is None:
            raise TypeError(f"NCCLCommunicator: dtype {a.dtype} is not supported - use one of {', '.join(NCCL_TYPES)}")
        return int(getattr(self.nccl, name))

    def _after_compute(self) -> None:
        """Make the communication stream wait for what the compute stream has queued so far."""
        ready = self.cupy.cuda.Event()
        ready.record(self.cupy.cuda.get_current_stream())
        self.stream.wait_event(ready)

    def iallreduce(self, a: Any) -> Work:
        if backend.backend_name(a) != "cupy":
            raise TypeError("NCCLCommunicator.iallreduce: a host array - NCCL sums GPU arrays; use --backend cupy")
        self._after_compute()
        ptr = a.data.ptr
        self.comm.allReduce(ptr, ptr, a.size, self._dtype(a), self.nccl.NCCL_SUM, self.stream.ptr)
        done = self.cupy.cuda.Event()
        done.record(self.stream)
        return NCCLWork(done, self.cupy)

    def broadcast(self, a: Any, root: int = 0) -> Any:
        self._after_compute()
        ptr = a.data.ptr
        self.comm.bcast(ptr, a.size, self._dtype(a), root, self.stream.ptr)
        self.stream.synchronize()
        return a

    def barrier(self) -> None:
        self.mpi.barrier()

    def abort(self, code: int = 1) -> None:
        self.comm.abort()
        self.mpi.abort(code)
