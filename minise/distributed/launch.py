"""Starting and ending a distributed job: which communicator, and no rank left behind on a failure.

MPI starts the processes (``mpiexec -n N``, ``srun`` under Slurm); each builds its communicator here.
If one rank fails, the others would wait in their next collective forever. So the body of a
distributed program runs under :func:`run_guarded`: an exception on any rank prints one line and calls
``MPI_Abort``, which ends every rank of the job with that status. A rank that dies (killed, out of
memory) is noticed by ``mpiexec``, which ends the others; a rank that hangs makes the others' waits time
out (``MINISE_DIST_TIMEOUT``) and abort.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable

from minise.distributed.comm import Communicator
from minise.distributed.mpi import MPICommunicator

# the number of processes, as each launcher tells its processes (MPICH/Intel MPI, Open MPI, MVAPICH, Slurm)
LAUNCHER_SIZE = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE", "SLURM_STEP_NUM_TASKS")


def launched_size() -> int:
    """How many processes the MPI launcher started, read from its environment variables (1 without one),
    so that a program can tell whether it runs under ``mpiexec -n N`` without importing mpi4py."""
    sizes = []
    for name in LAUNCHER_SIZE:
        try:
            sizes.append(int(os.environ.get(name, "1")))
        except ValueError:
            continue
    return max(sizes, default=1)


def communicator(kind: str = "mpi") -> Communicator:
    """The communicator of this process: ``"mpi"`` (host arrays, or device arrays staged through the host)
    or ``"nccl"`` (CuPy arrays, one GPU per process by local rank; MPI only shares NCCL's id)."""
    mpi = MPICommunicator()
    if kind == "mpi":
        return mpi
    if kind == "nccl":
        from minise.distributed.nccl import NCCLCommunicator  # noqa: PLC0415

        return NCCLCommunicator(mpi)
    raise ValueError(f"communicator: unknown kind {kind!r} - use 'mpi' or 'nccl'")


ABORT_GRACE_S = 0.5  # seconds between a failing rank's last line and MPI_Abort


def run_guarded(comm: Communicator, body: Callable[[], int], prog: str) -> int:
    """``body()``'s exit status; an exception on this rank prints one line and aborts the whole job."""
    try:
        return body()
    except BaseException as e:  # noqa: BLE001 - any failure must end every rank
        code = e.code if isinstance(e, SystemExit) and isinstance(e.code, int) else 1
        if comm.size == 1:
            raise
        print(
            f"{prog}: rank {comm.rank} of {comm.size} failed ({type(e).__name__}: {e}) - ending the job",
            file=sys.stderr,
        )
        sys.stderr.flush()
        # mpiexec forwards each rank's output through its proxies; MPI_Abort tears them down at once, and a
        # line flushed just before could be lost on the way (seen once in a loaded test run: the job ended,
        # its stderr was empty). A moment's pause lets the line through first.
        time.sleep(ABORT_GRACE_S)
        comm.abort(code or 1)
        return code or 1
