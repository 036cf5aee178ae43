"""Data-parallel gradients: bucketed, overlapped all-reduce (as PyTorch's DistributedDataParallel).

Every rank holds the same weights and computes the gradient of the mean loss over its own share of
the global batch. The gradient of the mean over the global batch is the mean of those (lesson 15):

    grad (1/B) sum_{i in batch} l_i  =  sum_r (B_r / B) grad (1/B_r) sum_{i in share r} l_i

so each rank scales its gradient by B_r / B (1/N for equal shares) and all ranks sum them with an
all-reduce; then every rank takes the same optimiser step and the weights stay identical.

**Buckets and overlap** (Li et al., *PyTorch Distributed*, VLDB 2020). One all-reduce per parameter
would pay the network's latency hundreds of times; one for all of them would wait for the whole backward
pass. So the parameters are grouped, in the reverse order of the model (the order backward produces their
gradients), into buckets of about ``bucket_cap_mb`` megabytes. A hook on every parameter
(``register_post_accumulate_grad_hook``) copies its gradient into its bucket's flat buffer as soon as
backward has finished it; when a bucket is full, its non-blocking all-reduce (``iallreduce``) starts, and
the backward pass goes on computing the gradients of earlier layers while the bytes travel. Buckets start
in a fixed order on every rank, as MPI and NCCL require of collectives. After backward, :meth:`finish`
waits for what is still in flight and copies the sums back into ``p.grad``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from minise.backend import get_array_module
from minise.distributed.comm import Communicator, Work
from minise.nn import Module, Parameter
from minise.tensor import Tensor


@dataclass
class Bucket:
    """Parameters whose gradients travel together in one flat buffer."""

    params: list[Parameter]
    offsets: list[int]  # where each parameter's gradient starts in ``buffer``
    buffer: Any  # (total,) the flat gradients
    pending: int = 0  # gradients not yet copied in this step
    work: Work | None = None
    started: float = 0.0
    arrived: set[int] = field(default_factory=set)


def build_buckets(params: list[Parameter], cap_bytes: int) -> list[list[Parameter]]:
    """Split ``params`` (in the order given) into consecutive groups of at most ``cap_bytes`` each, a
    parameter larger than the cap alone in its group."""
    groups: list[list[Parameter]] = []
    size = 0
    for p in params:
        nbytes = p.data.nbytes
        if groups and size + nbytes <= cap_bytes:
            groups[-1].append(p)
            size += nbytes
        else:
            groups.append([p])
            size = nbytes
    return groups


class DistributedDataParallel:
    """Wrap ``module`` for data-parallel training over ``comm``.

    At construction, rank 0's parameters and buffers are broadcast to every rank. A training step::

        logits = ddp(x)                       # the module's forward
        loss = F.cross_entropy(logits, y)     # the mean over this rank's share
        opt.zero_grad()
        ddp.backward(loss)                    # backward + the bucketed all-reduce: p.grad = global-batch gradient
        opt.step()

    ``stats`` accumulates what the benchmark reports: the bytes all-reduced, the time from the start of
    backward to its end, and the time :meth:`finish` spent waiting for buckets still in flight (the
    communication that did *not* overlap the backward pass).
    """

    def __init__(
        self,
        module: Module,
        comm: Communicator,
        bucket_cap_mb: float = 1.0,
        broadcast: bool = True,
        overlap: bool = True,
    ) -> None:
        if bucket_cap_mb <= 0:
            raise ValueError(f"DistributedDataParallel: bucket_cap_mb is {bucket_cap_mb} - it must be > 0")
        self.module, self.comm = module, comm
        params = [p for p in module.parameters() if p.requires_grad]
        if not params:
            raise ValueError("DistributedDataParallel: the module has no parameter that requires grad")
        dtypes = {str(p.dtype) for p in params}
        if len(dtypes) > 1:
            raise TypeError(f"DistributedDataParallel: parameters of several dtypes ({', '.join(sorted(dtypes))}) - "
                            "use one dtype (module.to(...) / float32 everywhere)")  # fmt: skip
        xp = get_array_module(params[0].data)
        self.buckets: list[Bucket] = []
        self.where: dict[int, tuple[Bucket, int]] = {}  # id(param) -> (its bucket, its index there)
        for group in build_buckets(params[::-1], int(bucket_cap_mb * 2**20)):  # backward's order
            offsets, total = [], 0
            for p in group:
                offsets.append(total)
                total += p.size
            bucket = Bucket(group, offsets, xp.zeros(total, dtype=params[0].dtype))
            for i, p in enumerate(group):
                self.where[id(p)] = (bucket, i)
            self.buckets.append(bucket)
        self.active = False
        self.overlap = overlap  # False: every all-reduce starts after backward (to measure what overlap gains)
        self.weight = 1.0 / comm.size
        self.next_bucket = 0
        self.stats = {"steps": 0, "bytes": 0, "backward_s": 0.0, "exposed_s": 0.0}
        self.handles = [p.register_post_accumulate_grad_hook(self._grad_ready) for p in params]
        if broadcast:
            self.broadcast_state()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*args, **kwargs)

    def broadcast_state(self, root: int = 0) -> None:
        """Make every rank's parameters and buffers equal to rank ``root``'s (in place)."""
        for p in self.module.parameters():
            self.comm.broadcast(p.data, root)
        broadcast_buffers(self.module, self.comm, root)

    # ------------------------------------------------------------------ one step
    def prepare(self, weight: float | None = None) -> None:
        """Arm the hooks for the next backward; this rank's gradient will be scaled by ``weight``
        (B_r / B; default 1/N, for equal shares) before the sum."""
        self.weight = 1.0 / self.comm.size if weight is None else weight
        for b in self.buckets:
            b.pending, b.work = len(b.params), None
            b.arrived.clear()
        self.next_bucket = 0
        self.active = True

    def _grad_ready(self, p: Tensor) -> None:
        """A parameter's gradient is final: copy it into its bucket; start every bucket now complete."""
        if not self.active:
            return
        bucket, i = self.where[id(p)]
        if i in bucket.arrived:  # a second backward before finish: not supported
            raise RuntimeError("DistributedDataParallel: a gradient arrived twice in one step - call "
                               "prepare()/backward() once per backward pass")  # fmt: skip
        bucket.arrived.add(i)
        o = bucket.offsets[i]
        bucket.buffer[o : o + p.size] = p.grad.reshape(-1)
        bucket.pending -= 1
        if not self.overlap:
            return
        self._launch_ready()
        for b in self.buckets[: self.next_bucket]:  # let the transport progress (MPI moves bytes inside calls)
            if b.work is not None:
                b.work.test()

    def _launch_ready(self) -> None:
        """Start the all-reduce of every complete bucket, strictly in bucket order (the same on all ranks)."""
        while self.next_bucket < len(self.buckets) and self.buckets[self.next_bucket].pending == 0:
            b = self.buckets[self.next_bucket]
            b.buffer *= b.buffer.dtype.type(self.weight)
            b.started = time.perf_counter()
            b.work = self.comm.iallreduce(b.buffer)
            self.stats["bytes"] += b.buffer.nbytes
            self.next_bucket += 1

    def finish(self) -> None:
        """After backward: start the buckets still waiting (a parameter backward did not reach counts as a
        zero gradient), wait for every all-reduce, and set each ``p.grad`` to its global-batch gradient."""
        if not self.active:
            raise RuntimeError("DistributedDataParallel.finish: call prepare() (or use ddp.backward(loss)) first")
        for b in self.buckets:
            for i, p in enumerate(b.params):
                if i not in b.arrived:  # unused in this step: contributes zero, as on every other rank
                    o = b.offsets[i]
                    b.buffer[o : o + p.size] = 0
                    b.arrived.add(i)
                    b.pending -= 1
        start = time.perf_counter()
        self._launch_ready()
        for b in self.buckets:
            assert b.work is not None
            b.work.wait()
        self.stats["exposed_s"] += time.perf_counter() - start
        for b in self.buckets:
            for p, o in zip(b.params, b.offsets):
                p.grad = b.buffer[o : o + p.size].reshape(p.shape).copy()
        self.active = False

    def backward(self, loss: Tensor, weight: float | None = None) -> None:
        """``loss.backward()`` with the bucketed all-reduce overlapping it; afterwards every rank's
        ``p.grad`` is the gradient of the global-batch loss."""
        start = time.perf_counter()
        self.prepare(weight)
        try:
            loss.backward()
        except BaseException:
            self.active = False
            raise
        self.finish()
        self.stats["steps"] += 1
        self.stats["backward_s"] += time.perf_counter() - start

    def remove_hooks(self) -> None:
        for h in self.handles:
            h.remove()


def broadcast_buffers(module: Module, comm: Communicator, root: int = 0) -> None:
    """Make every rank's buffers (BN running statistics) equal to rank ``root``'s, in place."""
    for _, b in module.named_buffers():
        if b is not None:
            comm.broadcast(b, root)
