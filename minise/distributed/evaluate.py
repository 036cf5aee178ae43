"""Sharded evaluation: every rank evaluates its share of the held-out set, then the counts are summed."""

from __future__ import annotations

from typing import Any

import numpy as np

from minise.distributed.comm import Communicator
from minise.distributed.ddp import broadcast_buffers
from minise.evaluate import EvalResult, evaluate
from minise.nn import Module


def evaluate_sharded(model: Module, batches: Any, num_classes: int, comm: Communicator) -> EvalResult:
    """:func:`minise.evaluate.evaluate` over this rank's ``batches`` (a loader built with ``num_replicas``
    and ``rank``), combined over all ranks: the confusion matrix, the loss sum and the top-5 hits are
    all-reduced, so every rank returns the metrics of the whole held-out set.

    The BN running statistics are first broadcast from rank 0 (without SyncBN each rank's differ; rank 0's
    are the ones its checkpoint saves), so every rank evaluates the model rank 0 saves."""
    broadcast_buffers(model, comm, 0)
    local = evaluate(model, batches, num_classes)
    count = float(local.confusion.sum())
    # (K*K + 2,) float64: the confusion counts, the loss sum and the top-5 hits (exact integers below 2**53)
    sums = np.concatenate([local.confusion.ravel().astype(np.float64), [local.loss * count, local.top5 * count]])
    comm.allreduce(sums)
    confusion = np.rint(sums[: num_classes * num_classes]).astype(np.int64).reshape(num_classes, num_classes)
    total = max(int(confusion.sum()), 1)
    per_class = (np.diag(confusion) / np.maximum(confusion.sum(axis=1), 1)).tolist()
    return EvalResult(
        loss=float(sums[-2]) / total,
        top1=float(np.trace(confusion)) / total,
        top5=float(np.rint(sums[-1])) / total,
        per_class=per_class,
        confusion=confusion,
    )
