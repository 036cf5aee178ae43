"""MPI through mpi4py: collectives between processes, on one machine or many.

``mpiexec -n N python ...`` starts N copies of a program; each finds its rank and the world size in
``MPI.COMM_WORLD``. MPI chooses the transport (shared memory on one machine, TCP or InfiniBand between
machines) and the algorithm (for a large all-reduce, a ring or recursive halving; see lesson 15).

Host arrays (NumPy) are handed to MPI as they are. Device arrays (CuPy) are handed over directly only
when the MPI library is CUDA-aware (say so with ``MINISE_CUDA_AWARE_MPI=1``); otherwise they are staged
through a host copy, which costs two copies over PCIe per collective - between GPUs prefer
:class:`~minise.distributed.nccl.NCCLCommunicator`.

No rank may wait forever: every wait polls its request against a deadline (``MINISE_DIST_TIMEOUT``
seconds, default 300) and raises :class:`~minise.distributed.comm.CollectiveTimeout` past it; the
training script then calls :meth:`MPICommunicator.abort`, which ends every rank of the job.
"""

from __future__ import annotations

import os
import time
from typing import Any

from minise import backend
from minise.distributed.comm import CollectiveTimeout, Communicator, Work


def mpi_unavailable() -> str | None:
    """Why MPI cannot be used here (one line with the fix), or None if it can."""
    try:
        import mpi4py  # noqa: F401, PLC0415
    except ImportError:
        return "mpi4py is not installed - install it with `pip install -e '.[distributed]'` (mpi4py and MPICH)"
    return None


def default_timeout() -> float:
    """Seconds a collective may take before the job is declared hung (``MINISE_DIST_TIMEOUT``, default 300)."""
    text = os.environ.get("MINISE_DIST_TIMEOUT", "300")
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"MINISE_DIST_TIMEOUT is {text!r} - set it to a number of seconds, e.g. 300") from None
    if value <= 0:
        raise ValueError(f"MINISE_DIST_TIMEOUT is {value} - it must be > 0 seconds")
    return value


class MPIWork(Work):
    """An MPI request; for a staged device array, the host copy to move back once it completes."""

    def __init__(self, request: Any, what: str, timeout: float, device: Any = None, host: Any = None) -> None:
        self.request, self.what, self.timeout = request, what, timeout
        self.device, self.host = device, host
        self.done = False

    def _finish(self) -> None:
        self.done = True
        if self.device is not None:  # staged through the host: bring the sum back to the GPU
            self.device[...] = backend.to_device(self.host, "cupy")

    def test(self) -> bool:
        if not self.done and self.request.Test():
            self._finish()
        return self.done

    def wait(self) -> None:
        """Poll until done: spin for up to ``SPIN`` seconds, then sleep in growing steps up to 1 ms; past the
        deadline raise CollectiveTimeout.

        Why spin: MPICH moves a message only while some MPI call runs on *both* ends (there is no progress
        thread), and an all-reduce is several rounds of messages; a rank asleep between polls delays every
        round by its sleep. A blocking ``MPI_Wait`` spins too - in C, and with no deadline."""
        if self.done:
            return
        start = time.monotonic()
        pause = 0.0
        while not self.request.Test():
            elapsed = time.monotonic() - start
            if elapsed > self.timeout:
                raise CollectiveTimeout(
                    f"{self.what}: no answer from the other ranks for {elapsed:.0f} s - a rank has died or hangs; "
                    "aborting the job (raise MINISE_DIST_TIMEOUT if a step really takes this long)"
                )
            if elapsed > self.SPIN:
                time.sleep(pause)
                pause = min(2 * pause + 1e-5, 1e-3)
        self._finish()

    SPIN = 0.05  # seconds of busy polling before sleeping between polls


class MPICommunicator(Communicator):
    """MPI's COMM_WORLD (or ``comm``) as a :class:`~minise.distributed.comm.Communicator`."""

    def __init__(self, comm: Any = None, timeout: float | None = None) -> None:
        why = mpi_unavailable()
        if why:
            raise RuntimeError(f"MPICommunicator: {why}")
        from mpi4py import MPI  # noqa: PLC0415  (importing it initialises MPI: only when asked for)

        self.MPI = MPI
        self.comm = comm if comm is not None else MPI.COMM_WORLD
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        self.local_rank = self.comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank).Get_rank()
        self.timeout = default_timeout() if timeout is None else timeout
        self.cuda_aware = os.environ.get("MINISE_CUDA_AWARE_MPI", "0") == "1"

    def _staged(self, a: Any) -> tuple[Any, Any]:
        """(the buffer MPI sees, the device array to copy back into or None)."""
        if backend.backend_name(a) == "cupy" and not self.cuda_aware:
            return backend.to_host(a), a
        return a, None

    def iallreduce(self, a: Any) -> Work:
        if not a.flags.c_contiguous:
            raise ValueError(
                f"MPICommunicator.iallreduce: the array {a.shape} is not contiguous - pass a contiguous one"
            )
        buf, device = self._staged(a)
        request = self.comm.Iallreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM)
        return MPIWork(request, f"all-reduce of {a.size} values on rank {self.rank}", self.timeout, device, buf)

    def broadcast(self, a: Any, root: int = 0) -> Any:
        buf, device = self._staged(a)
        MPIWork(self.comm.Ibcast(buf, root=root), f"broadcast on rank {self.rank}", self.timeout, device, buf).wait()
        return a

    def barrier(self) -> None:
        MPIWork(self.comm.Ibarrier(), f"barrier on rank {self.rank}", self.timeout).wait()

    def abort(self, code: int = 1) -> None:
        """End every process of the job now (MPI_Abort): no rank is left waiting in a collective."""
        self.comm.Abort(code)
