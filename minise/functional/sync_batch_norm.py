"""Synchronised batch normalisation: batch statistics over the *global* batch of all ranks.

With data parallelism each rank sees only its share b of the global batch N*b. Plain batch norm then
normalises with statistics of b images, a noisier estimate than those of N*b (and a different model:
with b = 2 it barely trains). SyncBN all-reduces the per-channel sums so that every rank normalises with
the mean and variance of the whole global batch - the same numbers one process with batch N*b computes.
Its cost: two small all-reduces of 2C+1 and 2C values per BN layer per step, one in forward and one in
backward, each a round of latency that the step waits for (lesson 15).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from minise.autograd import Function
from minise.backend import get_array_module
from minise.functional._checks import check_same_dtype
from minise.functional.normalization import checked_arguments
from minise.tensor import Tensor

if TYPE_CHECKING:
    from minise.distributed.comm import Communicator


class SyncBatchNormOp(Function):
    """y = gamma * xhat + beta,  xhat = (x - mu) / sqrt(var + eps), mu and var over the global batch

    Shapes: x (n_r, C, H, W) on rank r (or (n_r, C)); gamma, beta (C,). With m the number of values of a
    channel over all ranks (sum_r n_r H W), forward all-reduces, per channel, in float64:
        m = sum_r m_r,   S = sum_r sum x,   Q = sum_r sum x^2
        mu = S / m,      var = Q / m - mu^2          (biased; the running variance gets var * m / (m - 1))
    Backward, with gy = dL_r/dy the gradient of this rank's loss, all-reduces
        G = sum_r sum gy,   P = sum_r sum gy * xhat
    and returns
        dx = gamma / sqrt(var + eps) * (gy - G / m - xhat * P / m)
        dgamma = sum_local gy * xhat,   dbeta = sum_local gy   (this rank's part: DDP averages them)
    This is batch norm's backward (lesson 07) with the sums taken over the global batch. Why the local
    loss's gradient and global sums: the trained loss is L = (1/N) sum_r L_r, and dx above is
    N * dL/dx_r, the same factor N that DDP's averaging of the parameter gradients divides out again.
    With one rank every sum is local and this is exactly batch_norm.
    """

    name = "sync_batch_norm"

    def __init__(
        self, comm: Communicator, running_mean: Any, running_var: Any, training: bool, momentum: float, eps: float
    ) -> None:
        super().__init__()
        self.comm = comm
        self.running_mean, self.running_var = running_mean, running_var
        self.training, self.momentum, self.eps = training, momentum, eps

    def forward(self, x: Any, gamma: Any, beta: Any) -> Any:
        xp = get_array_module(x)
        n, c = x.shape[:2]
        x3 = x.reshape(n, c, -1)  # (n, C, L), L = H*W
        if self.training:
            local_mean = x3.mean(axis=(0, 2), dtype=xp.float64)  # (C,)
            centred = x3 - local_mean.astype(x.dtype).reshape(1, c, 1)
            m2 = xp.einsum("ncl,ncl->c", centred, centred).astype(xp.float64)  # (C,) sum of squared deviations
            count = float(n * x3.shape[2])
            sums = xp.concatenate([xp.asarray([count]), count * local_mean, m2 + count * local_mean**2])  # (2C+1,)
            self.comm.allreduce(sums)  # m, S, Q over all ranks
            m = float(sums[0])
            if m < 2:  # the same m on every rank: all raise together
                raise ValueError(
                    f"sync_batch_norm: training needs more than one value per channel over all ranks, got input "
                    f"{x.shape} and {m:.0f} values in all - use a larger batch or evaluate with training=False"
                )
            mu = sums[1 : 1 + c] / m
            var = xp.maximum(sums[1 + c :] / m - mu * mu, 0.0)  # float64: no harmful cancellation for float32 x
            if self.running_mean is not None:
                self.running_mean *= 1 - self.momentum
                self.running_mean += (self.momentum * mu).astype(self.running_mean.dtype)
            if self.running_var is not None:
                self.running_var *= 1 - self.momentum
                self.running_var += (self.momentum * var * (m / max(m - 1, 1))).astype(self.running_var.dtype)
        else:
            m = 0.0
            mu, var = self.running_mean, self.running_var
        mu = mu.astype(x.dtype)
        inv_std = (1.0 / xp.sqrt(var + self.eps)).astype(x.dtype)  # (C,)
        xhat = (x3 - mu.reshape(1, c, 1)) * inv_std.reshape(1, c, 1)  # (n, C, L)
        y = xhat if gamma is None else xhat * gamma.reshape(1, c, 1)
        if beta is not None:
            y = y + beta.reshape(1, c, 1)
        self.save(xhat, inv_std, gamma, m)
        return y.reshape(x.shape)

    def backward(self, gy: Any) -> tuple[Any, Any, Any]:
        xhat, inv_std, gamma, m = self.saved  # type: ignore[misc]
        xp = get_array_module(gy)
        n, c = xhat.shape[:2]
        g3 = gy.reshape(n, c, -1)  # (n, C, L)
        local = xp.stack([g3.sum(axis=(0, 2), dtype=xp.float64), xp.einsum("ncl,ncl->c", g3, xhat).astype(xp.float64)])
        dbeta, dgamma = local[0].astype(gy.dtype), local[1].astype(gy.dtype)  # this rank's sums
        need_x, need_g, need_b = self.needs_input_grad
        dx = None
        if need_x:  # the same on every rank (same model), so all ranks take part in the all-reduce or none
            scale = inv_std if gamma is None else gamma * inv_std  # (C,)
            if self.training:
                total = local.copy()  # (2, C)
                self.comm.allreduce(total)  # G, P over all ranks
                mean_g = (total[0] / m).astype(gy.dtype).reshape(1, c, 1)
                mean_gx = (total[1] / m).astype(gy.dtype).reshape(1, c, 1)
                dx = scale.reshape(1, c, 1) * (g3 - mean_g - xhat * mean_gx)
            else:
                dx = scale.reshape(1, c, 1) * g3
            dx = dx.reshape(gy.shape) if need_x else None
        return dx, dgamma if need_g else None, dbeta if need_b else None


def sync_batch_norm(
    input: Any,
    running_mean: Any,
    running_var: Any,
    weight: Any = None,
    bias: Any = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
    comm: Communicator | None = None,
) -> Tensor:
    """Batch norm with statistics over all ranks of ``comm`` (:func:`~minise.functional.batch_norm`'s
    arguments, plus the communicator; ``comm=None`` means one process). Every rank must call it, in the
    same order, in training mode: it all-reduces in forward and in backward."""
    from minise.distributed.comm import SingleProcess  # noqa: PLC0415  (distributed imports functional)

    op = "sync_batch_norm"
    x, g, b, rm, rv = checked_arguments(op, "SyncBatchNorm", input, weight, bias, running_mean, running_var, training)
    check_same_dtype(op, input=x.data, weight=None if g is None else g.data, bias=None if b is None else b.data)
    communicator = comm if comm is not None else SingleProcess()
    return SyncBatchNormOp(communicator, rm, rv, training, momentum, eps).apply(x, g, b)
