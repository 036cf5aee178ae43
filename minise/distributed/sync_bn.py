"""SyncBatchNorm, the layer: a BatchNorm2d whose training statistics are taken over all ranks."""

from __future__ import annotations

from typing import Any

from minise.distributed.comm import Communicator, SingleProcess
from minise.functional.sync_batch_norm import sync_batch_norm
from minise.nn import BatchNorm2d, Module
from minise.tensor import Tensor


class SyncBatchNorm(BatchNorm2d):
    """BatchNorm2d with batch statistics over the global batch of all ranks of ``comm`` (PyTorch's
    ``nn.SyncBatchNorm``). Same parameters, buffers and state-dict keys as BatchNorm2d, so checkpoints
    move freely between the two; evaluation (running statistics) involves no communication."""

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float = 0.1,
        dtype: Any = None,
        comm: Communicator | None = None,
    ) -> None:
        if dtype is None:
            super().__init__(num_features, eps, momentum)
        else:
            super().__init__(num_features, eps, momentum, dtype)
        self.comm: Communicator = comm if comm is not None else SingleProcess()

    def forward(self, x: Tensor) -> Tensor:
        return sync_batch_norm(
            x,
            self.running_mean,
            self.running_var,
            self.weight,
            self.bias,
            self.training,
            self.momentum,
            self.eps,
            comm=self.comm,
        )

    @staticmethod
    def convert_sync_batchnorm(module: Module, comm: Communicator) -> Module:
        """Replace every BatchNorm2d inside ``module`` by a SyncBatchNorm over ``comm`` that holds the same
        parameters and buffers (the same arrays, so an optimiser built before still updates them), in the
        same place of the tree; returns ``module`` (PyTorch's function of this name)."""
        if type(module) is BatchNorm2d:
            return _sync_copy(module, comm)
        for parent in list(module.modules()):
            for name, child in list(parent._modules.items()):
                if type(child) is BatchNorm2d:
                    new = _sync_copy(child, comm)
                    parent._modules[name] = new  # in place: the order of the modules (and of the state) is kept
                    object.__setattr__(parent, name, new)
        return module


def _sync_copy(bn: BatchNorm2d, comm: Communicator) -> SyncBatchNorm:
    """A SyncBatchNorm sharing ``bn``'s parameters, buffers and mode."""
    new = SyncBatchNorm(bn.num_features, bn.eps, bn.momentum, comm=comm)
    new.weight, new.bias = bn.weight, bn.bias
    new.running_mean, new.running_var = bn.running_mean, bn.running_var
    new.train(bn.training)
    return new
