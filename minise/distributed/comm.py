"""Communicators: the few collective operations data-parallel training needs, behind one interface.

A *communicator* joins ``size`` processes (ranks ``0 .. size-1``); every rank calls the same collectives
in the same order. Data-parallel SGD needs four:

* ``allreduce(a)``: every rank's ``a`` becomes the element-wise sum over all ranks (in place);
* ``iallreduce(a)``: the same, started without waiting; ``work.wait()`` finishes it, so the sum can
  travel while the backward pass goes on computing other gradients (see :mod:`minise.distributed.ddp`);
* ``broadcast(a, root)``: every rank's ``a`` becomes rank ``root``'s (the starting weights);
* ``abort(code)``: end every rank of the job at once (a failure on one rank must not leave the others
  waiting forever in a collective).

Implementations: :class:`SingleProcess` (size 1: every collective is the identity), :class:`LocalGroup`
(``size`` threads in one process, for tests and lesson 15), :class:`~minise.distributed.mpi.MPICommunicator`
(MPI through mpi4py, between processes and machines) and :class:`~minise.distributed.nccl.NCCLCommunicator`
(NCCL through CuPy, between GPUs). minise moves no bytes itself: the transports are MPI's and NCCL's.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class CollectiveTimeout(RuntimeError):
    """A collective did not complete in time: another rank has probably died or hangs."""


class Work:
    """A started collective: ``wait()`` blocks until its result is in the array, ``test()`` asks without
    blocking (and lets the transport make progress)."""

    def wait(self) -> None:
        return None

    def test(self) -> bool:
        return True


class Communicator:
    """The interface every transport implements (arrays are contiguous NumPy or CuPy arrays)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0  # the rank among the processes of this machine: which GPU to use

    def allreduce(self, a: Any) -> Any:
        """Sum ``a`` over all ranks, in place; returns ``a``."""
        self.iallreduce(a).wait()
        return a

    def iallreduce(self, a: Any) -> Work:  # pragma: no cover - every communicator overrides it
        raise NotImplementedError

    def broadcast(self, a: Any, root: int = 0) -> Any:  # pragma: no cover
        raise NotImplementedError

    def barrier(self) -> None:
        return None

    def abort(self, code: int = 1) -> None:  # pragma: no cover - ends the process
        raise SystemExit(code)

    @property
    def name(self) -> str:
        return type(self).__name__


class SingleProcess(Communicator):
    """One process alone: sums and broadcasts are the identity. Distributed code run with it computes
    exactly what the single-process code computes (the gradient checks of SyncBN use it)."""

    def iallreduce(self, a: Any) -> Work:
        return Work()

    def broadcast(self, a: Any, root: int = 0) -> Any:
        return a


class _Shared:
    """The state the ranks of a :class:`LocalGroup` share: one slot per rank and a barrier."""

    def __init__(self, size: int, timeout: float) -> None:
        self.slots: list[Any] = [None] * size
        self.barrier = threading.Barrier(size, timeout=timeout)


class LocalGroup(Communicator):
    """``size`` ranks as threads of one process, for tests and lessons: the same collectives as MPI, with
    every sum taken in rank order so all ranks get bit-identical results.

    ``LocalGroup.run(size, fn)`` calls ``fn(comm)`` on ``size`` threads, one communicator each, and returns
    the results in rank order (an exception on any rank is raised again here, the others released)."""

    def __init__(self, rank: int, shared: _Shared) -> None:
        self.rank, self.size, self.local_rank = rank, len(shared.slots), rank
        self.shared = shared

    def _exchange(self, a: Any) -> list[Any]:
        s = self.shared
        s.slots[self.rank] = a.copy()
        s.barrier.wait()  # every rank has put its array
        values = list(s.slots)
        s.barrier.wait()  # every rank has read them: the slots may be reused
        return values

    def iallreduce(self, a: Any) -> Work:
        values = self._exchange(a)
        total = values[0].copy()
        for v in values[1:]:  # rank order: the same sum on every rank
            total += v
        a[...] = total
        return Work()

    def broadcast(self, a: Any, root: int = 0) -> Any:
        a[...] = self._exchange(a)[root]
        return a

    def barrier(self) -> None:
        self.shared.barrier.wait()

    @staticmethod
    def run(size: int, fn: Callable[[LocalGroup], T], timeout: float = 60.0) -> list[T]:
        if size < 1:
            raise ValueError(f"LocalGroup.run: size is {size} - it must be >= 1")
        shared = _Shared(size, timeout)
        results: list[Any] = [None] * size
        errors: list[BaseException] = []

        def body(rank: int) -> None:
            try:
                results[rank] = fn(LocalGroup(rank, shared))
            except BaseException as e:  # noqa: BLE001 - handed to the caller
                errors.append(e)
                shared.barrier.abort()  # release the ranks waiting for this one

        threads = [threading.Thread(target=body, args=(r,), name=f"minise-rank-{r}") for r in range(size)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        real = [e for e in errors if not isinstance(e, threading.BrokenBarrierError)]
        if real or errors:
            raise (real or errors)[0]
        return results
