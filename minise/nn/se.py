"""The Squeeze-and-Excitation block as a layer, with the options the paper ablates."""

from __future__ import annotations

from typing import Any

import numpy as np

from minise import functional as F
from minise.nn.layers import Linear
from minise.nn.module import Module
from minise.tensor import Tensor

SQUEEZES = ("avg", "max")
GATES = ("sigmoid", "tanh", "relu")


class SEBlock(Module):
    """x -> x * gate(fc2(relu(fc1(squeeze(x)))))    (Hu et al., SENet, Sec. 3)

    ``channels`` C, ``reduction`` r: the hidden width is max(C // r, min_channels). With the paper's
    defaults (average squeeze, sigmoid gate) the whole block is ONE op, ``F.squeeze_excite``, whose
    backward is derived in lesson 09; the ablations (max squeeze, tanh or ReLU gate, Table 11/12 of the
    paper) are composed from primitive ops. fc1.weight is (R, C), fc2.weight (C, R).
    """

    def __init__(
        self,
        channels: int,
        reduction: int = 16,
        bias: bool = True,
        min_channels: int = 1,
        squeeze: str = "avg",
        gate: str = "sigmoid",
        dtype: Any = np.float32,
    ) -> None:
        super().__init__()
        if squeeze not in SQUEEZES:
            raise ValueError(f"SEBlock: squeeze={squeeze!r} is not one of {SQUEEZES}")
        if gate not in GATES:
            raise ValueError(f"SEBlock: gate={gate!r} is not one of {GATES}")
        if reduction < 1:
            raise ValueError(f"SEBlock: reduction must be at least 1, got {reduction}")
        self.channels, self.reduction, self.squeeze, self.gate = channels, reduction, squeeze, gate
        self.hidden = max(channels // reduction, min_channels)
        self.fc1 = Linear(channels, self.hidden, bias=bias, dtype=dtype)
        self.fc2 = Linear(self.hidden, channels, bias=bias, dtype=dtype)

    def excitation(self, x: Tensor) -> Tensor:
        """The per-channel weights (N, C) the block multiplies x by (lesson 13 plots them)."""
        s = F.global_avg_pool2d(x) if self.squeeze == "avg" else x.max(axis=(2, 3))
        a2 = self.fc2(F.relu(self.fc1(s)))
        gate = {"sigmoid": F.sigmoid, "tanh": F.tanh, "relu": F.relu}[self.gate]
        return gate(a2)

    def forward(self, x: Tensor) -> Tensor:
        if self.squeeze == "avg" and self.gate == "sigmoid":
            return F.squeeze_excite(x, self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias)
        e = self.excitation(x)
        return x * e.reshape(*e.shape, 1, 1)

    def extra_repr(self) -> str:
        return (
            f"{self.channels}, reduction={self.reduction}, hidden={self.hidden}, "
            f"squeeze={self.squeeze}, gate={self.gate}"
        )
