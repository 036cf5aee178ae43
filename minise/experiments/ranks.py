"""A study on MPI ranks: ``mpiexec -n N python -m minise.experiments STUDY ... --out DIR``.

Started by an MPI launcher (``mpiexec``, ``srun``) with N > 1 processes, the study deals its runs to
the ranks instead of running them all in one process:

1. every rank checks the command and plans the same list of runs (variant x seed, seeds outer); if
   any rank finds the command wrong, every rank stops before anything trains (rank 0 says why);
2. rank 0 alone looks at the run folders (finished, started or new) and broadcasts what it saw, so
   every rank skips the same finished runs, and no rank reads a folder another has begun to write;
3. the unfinished runs, in plan order, are dealt round-robin: the i-th goes to rank ``i mod N``
   (:func:`deal`). Each rank trains its share one run after another (``--jobs K``: K side by side on
   each rank), each run an ordinary ``python -m minise.train`` child process with one thread unless
   ``MINISE_NUM_THREADS`` says how many;
4. one all-reduce gathers every run's exit status (:func:`gather_statuses`). It waits as long as the
   longest share takes - a run's length is the user's choice, so there is no deadline - polling a few
   times a second instead of spinning a core that another rank's training needs;
5. rank 0 alone writes ``report.md``, ``results.csv`` and ``errors.png``; every rank exits with the
   same status: 1 if any run failed, 130 if any was interrupted or not started, else 0.

A failing run is a child process that exits non-zero: its rank records the status and goes on with
its share, so no rank is left waiting for another. A rank that itself fails (an exception) ends the
whole job with MPI_Abort (:func:`minise.distributed.launch.run_guarded`), which ends the other ranks and
their runs too. Either way, the same command again continues the study: finished runs are skipped,
interrupted ones resumed, and what is left is dealt afresh.

The study folder must be on a file system every rank sees. mpi4py is needed only here: without a
launcher, or with one process, nothing changes and mpi4py is not even imported.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TypeVar

import numpy as np

from minise.distributed import Communicator, MPICommunicator, mpi_unavailable
from minise.distributed.launch import launched_size
from minise.experiments.studies import StudyError

T = TypeVar("T")

POLL_SECONDS = 0.1  # how often a rank that has finished its share asks whether the others have


def study_communicator() -> Communicator | None:
    """MPI's COMM_WORLD when this process is one of N > 1 started by an MPI launcher, else None.

    Only then is mpi4py imported (which initialises MPI). Started by a launcher without mpi4py, every
    process would run the whole study into the same folders: that is refused in one line."""
    n = launched_size()
    if n <= 1:
        return None
    why = mpi_unavailable()
    if why:
        raise StudyError(f"started by an MPI launcher as {n} processes, but {why}; or start one process")
    comm = MPICommunicator()
    return comm if comm.size > 1 else None


def deal(items: Sequence[T], rank: int, size: int) -> list[T]:
    """This rank's share: the i-th item goes to rank ``i mod size``."""
    return list(items[rank::size])


def agree_on_error(comm: Communicator, error: str | None) -> str | None:
    """Whether any rank found the command wrong, decided together so that every rank stops or none does.

    Returns None when no rank found an error; else the line this rank prints: rank 0 prints its own,
    another rank prints its own (naming itself) only when rank 0 found none, the rest print nothing
    (an empty string). One all-reduce of two counts: errors on rank 0, errors elsewhere."""
    counts = np.zeros(2)
    if error is not None:
        counts[0 if comm.rank == 0 else 1] = 1
    comm.allreduce(counts)
    if counts.sum() == 0:
        return None
    if error is None:
        return ""
    if comm.rank == 0:
        return error
    return f"(rank {comm.rank} of {comm.size}) {error}" if counts[0] == 0 else ""


def gather_statuses(comm: Communicator, mine: dict[int, int], n: int) -> list[int | None]:
    """Every run's exit status, from the rank that ran it: ``mine`` maps a run's index to this rank's
    status for it; None for a run no rank attempted.

    One all-reduce of a (2, n) array: each rank writes, at its own runs' places, 1 in row 0 (attempted)
    and the status in row 1 (negative for a run killed by a signal). Polled every POLL_SECONDS without a
    deadline: the ranks arrive when their shares end."""
    values = np.zeros((2, n), dtype=np.int64)
    for i, code in mine.items():
        values[:, i] = (1, code)
    work = comm.iallreduce(values)
    while not work.test():
        time.sleep(POLL_SECONDS)
    return [int(code) if attempted else None for attempted, code in values.T]
