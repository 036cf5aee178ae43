"""The Squeeze-and-Excitation block as a layer, with the options the paper ablates."""

from __future__ import annotations

from typing import Any

import numpy as np

from minise import functional as F
from minise.nn.layers import Conv2d, Linear
from minise.nn.module import Module
from minise.tensor import Tensor

SQUEEZES = ("avg", "max", "none")
GATES = ("sigmoid", "tanh", "relu")


class SEBlock(Module):
    """x -> x * gate(fc2(relu(fc1(squeeze(x)))))    (Hu et al., SENet, Sec. 3)

    ``channels`` C, ``reduction`` r: the hidden width is max(C // r, min_channels). With the paper's
    defaults (average squeeze, sigmoid gate) the whole block is ONE op, ``F.squeeze_excite``, whose
    backward is derived in lesson 09; the ablations (max squeeze, tanh or ReLU gate, Table 11/12 of the
    paper) are composed from primitive ops. fc1.weight is (R, C), fc2.weight (C, R).

    ``squeeze="none"`` is the paper's *NoSqueeze* ablation (Table 16): no global pooling, the two FC
    layers become 1x1 convolutions applied at every pixel, so the gate is a full map:
        e = gate(W2 * relu(W1 * x + b1) + b2)   (N, C, H, W),   y = x * e
    with fc1 a ``Conv2d(C, R, 1)`` (weight (R, C, 1, 1)) and fc2 a ``Conv2d(R, C, 1)``: the same
    parameters as the SE block, but C x R x 2 MACs at every pixel instead of once per image.
    """

    fc1: Linear | Conv2d
    fc2: Linear | Conv2d

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
        if squeeze == "none":  # NoSqueeze: the FC layers become 1x1 convolutions over the whole map
            self.fc1 = Conv2d(channels, self.hidden, 1, bias=bias, dtype=dtype)
            self.fc2 = Conv2d(self.hidden, channels, 1, bias=bias, dtype=dtype)
        else:
            self.fc1 = Linear(channels, self.hidden, bias=bias, dtype=dtype)
            self.fc2 = Linear(self.hidden, channels, bias=bias, dtype=dtype)

    def excitation(self, x: Tensor) -> Tensor:
        """The weights the block multiplies x by: (N, C) per channel (lesson 13 plots them), or
        (N, C, H, W) per channel and pixel for ``squeeze="none"``."""
        if self.squeeze == "none":
            s = x  # (N, C, H, W): no squeeze
        else:
            s = F.global_avg_pool2d(x) if self.squeeze == "avg" else x.max(axis=(2, 3))  # (N, C)
        a2 = self.fc2(F.relu(self.fc1(s)))
        gate = {"sigmoid": F.sigmoid, "tanh": F.tanh, "relu": F.relu}[self.gate]
        return gate(a2)

    def forward(self, x: Tensor) -> Tensor:
        if self.squeeze == "avg" and self.gate == "sigmoid":
            return F.squeeze_excite(x, self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias)
        e = self.excitation(x)
        return x * (e if e.ndim == 4 else e.reshape(*e.shape, 1, 1))

    def extra_repr(self) -> str:
        return (
            f"{self.channels}, reduction={self.reduction}, hidden={self.hidden}, "
            f"squeeze={self.squeeze}, gate={self.gate}"
        )
