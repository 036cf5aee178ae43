"""Residual blocks with a Squeeze-and-Excitation block placed as the SENet paper ablates it.

A residual block computes ``y = relu(F(x) + shortcut(x))`` (He et al. 2016): ``F`` is the residual
branch (two 3x3 convolutions in a :class:`BasicBlock`, 1x1 -> 3x3 -> 1x1 in a :class:`Bottleneck`),
``shortcut`` is the identity, or a 1x1 convolution + batch norm where the shape changes (a projection
shortcut, "option B"). Where the SE block sits is the paper's Fig. 5 / Table 14 (Hu et al., TPAMI
2019, Sec. 6.5), chosen by ``SEConfig.placement``:

======== =============================================== ====================================
standard ``relu(SE(F(x)) + shortcut(x))``                 SE on the residual branch (the SENet)
pre      ``relu(F(SE(x)) + shortcut(x))``                 SE moved before the residual unit
post     ``SE(relu(F(x) + shortcut(x)))``                 SE after the summation (after the ReLU)
identity ``relu(F(x) + SE(shortcut(x)))``                 SE in parallel, on the identity branch
3x3      ``relu(F2(SE(F1(x))) + shortcut(x))``            SE after the 3x3 convolution (Table 15)
======== =============================================== ====================================

In "3x3" (the paper's SE_3x3, Sec. 6.5, Table 15) ``F1`` ends with the 3x3 convolution of the branch
and its BN + ReLU, ``F2`` is the rest: in a bottleneck the SE block recalibrates the ``width`` channels
between the 3x3 and the last 1x1 convolution (4x fewer than the output, so fewer parameters: 25.7 M
for SE-ResNet-50 instead of 28.1 M); in a basic block, whose two convolutions are both 3x3, it sits
after the first one (its BN + ReLU), before the second.

In "pre" the shortcut still carries the un-recalibrated ``x``: the SE block sits at the start of the
residual branch, as drawn in Fig. 5(c). Module names follow torchvision (``conv1``, ``bn1``, ...,
``downsample.0``/``downsample.1``) plus ``se``, so state dicts line up with torchvision's ResNets.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from minise.functional.fused import (
    conv_bn,
    conv_bn_relu,
    residual_relu,
    se_residual_fusable,
    se_residual_relu,
    shortcut,
)
from minise.nn import BatchNorm2d, Conv2d, Module, ReLU, SEBlock, Sequential
from minise.nn.se import GATES, SQUEEZES
from minise.tensor import Tensor

PLACEMENTS = ("standard", "pre", "post", "identity", "3x3")
SE_OPTIONS = ("reduction", "min_channels", "bias", "squeeze", "gate", "placement", "se_stages")


@dataclass(frozen=True)
class SEConfig:
    """The SE options the paper ablates, shared by every SE block of a model.

    ``reduction`` r (Table 10): the hidden width of the excitation is ``max(C // r, min_channels)``;
    ``bias``: whether the two FC layers have biases (the paper reports that dropping them helps on
    ResNets; the 28,088,024-parameter SE-ResNet-50 keeps them); ``squeeze`` "avg" | "max" (Table 11);
    ``gate`` "sigmoid" | "tanh" | "relu" (Table 12); ``placement`` (Table 14, see the module docstring,
    and "3x3" for Table 15); ``squeeze="none"`` is NoSqueeze (Table 16, see :class:`~minise.nn.SEBlock`).
    """

    reduction: int = 16
    min_channels: int = 1
    bias: bool = True
    squeeze: str = "avg"
    gate: str = "sigmoid"
    placement: str = "standard"

    def __post_init__(self) -> None:
        if isinstance(self.reduction, bool) or not isinstance(self.reduction, int) or self.reduction < 1:
            raise ValueError(f"SEConfig: reduction must be an int >= 1, got {self.reduction!r} - the paper uses 16")
        if isinstance(self.min_channels, bool) or not isinstance(self.min_channels, int) or self.min_channels < 1:
            raise ValueError(f"SEConfig: min_channels must be an int >= 1, got {self.min_channels!r}")
        if not isinstance(self.bias, bool):
            raise TypeError(f"SEConfig: bias must be True or False, got {self.bias!r}")
        for name, value, allowed in (
            ("squeeze", self.squeeze, SQUEEZES),
            ("gate", self.gate, GATES),
            ("placement", self.placement, PLACEMENTS),
        ):
            if value not in allowed:
                raise ValueError(f"SEConfig: {name}={value!r} is not one of {allowed} - pick one of those")

    def block(self, channels: int, dtype: Any = np.float32) -> SEBlock:
        """An SE block over ``channels`` channels with these options."""
        return SEBlock(
            channels,
            reduction=self.reduction,
            bias=self.bias,
            min_channels=self.min_channels,
            squeeze=self.squeeze,
            gate=self.gate,
            dtype=dtype,
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def conv3x3(in_planes: int, out_planes: int, stride: int = 1, groups: int = 1, dtype: Any = np.float32) -> Conv2d:
    """3x3 convolution, padding 1, no bias (the batch norm after it has one)."""
    return Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, groups=groups, bias=False, dtype=dtype)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1, dtype: Any = np.float32) -> Conv2d:
    """1x1 convolution, no bias."""
    return Conv2d(in_planes, out_planes, 1, stride=stride, bias=False, dtype=dtype)


class ResidualBlock(Module):
    """``y = relu(F(x) + shortcut(x))`` with an optional SE block; subclasses define ``residual`` = F.

    The shortcut is a projection, ``downsample = Sequential(conv1x1(stride), BatchNorm2d)``, when the
    stride is not 1 or the channel count changes ("option B" of He et al. 2016), else the identity.
    """

    expansion = 1
    se: SEBlock | None
    downsample: Sequential | None

    def __init__(
        self, inplanes: int, planes: int, stride: int, se: SEConfig | None, inner: int, dtype: Any = np.float32
    ) -> None:
        super().__init__()
        out = planes * self.expansion
        self.inplanes, self.out_channels, self.stride = inplanes, out, stride
        self.placement = se.placement if se is not None else None
        self.relu = ReLU()
        if stride != 1 or inplanes != out:
            self.downsample = Sequential(conv1x1(inplanes, out, stride, dtype), BatchNorm2d(out, dtype=dtype))
        else:
            self.downsample = None
        # "pre" recalibrates the block's input, "3x3" the branch's ``inner`` channels after its 3x3
        # convolution, every other placement a tensor of the output's width
        se_channels = {"pre": inplanes, "3x3": inner}.get(se.placement, out) if se is not None else 0
        self.se = None if se is None else se.block(se_channels, dtype)

    def residual(self, x: Tensor) -> Tensor:  # pragma: no cover - every block overrides it
        raise NotImplementedError

    def se_3x3(self, x: Tensor) -> Tensor:
        """The SE block applied inside the branch, after its 3x3 convolution, if placement is "3x3"."""
        return self.se(x) if self.se is not None and self.placement == "3x3" else x

    @property
    def last_bn(self) -> BatchNorm2d:  # pragma: no cover - every block overrides it
        """The batch norm that ends the residual branch (zero-initialised by ``zero_init_residual``)."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        se, where = self.se, self.placement
        out = se(x) if se is not None and where == "pre" else x
        out = self.residual(out)
        se_fused = se is not None and where == "standard" and se_residual_fusable(se, self.relu)
        if se is not None and where == "standard" and not se_fused:
            out = se(out)
        identity = x if self.downsample is None else shortcut(self.downsample, x)
        if se is not None and where == "identity":
            identity = se(identity)
        if se_fused:
            out = se_residual_relu(se, out, identity)  # self.relu(se(out) + identity) as one op
        else:
            out = residual_relu(self.relu, out, identity)  # self.relu(out + identity), fused
        if se is not None and where == "post":
            out = se(out)
        return out

    def extra_repr(self) -> str:
        return f"placement={self.placement}" if self.placement else ""


class BasicBlock(ResidualBlock):
    """F(x) = bn2(conv2(relu(bn1(conv1(x))))), two 3x3 convolutions; the stride sits on conv1."""

    expansion = 1

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, se: SEConfig | None = None, dtype: Any = np.float32
    ) -> None:
        super().__init__(inplanes, planes, stride, se, planes, dtype)
        self.conv1 = conv3x3(inplanes, planes, stride, dtype=dtype)
        self.bn1 = BatchNorm2d(planes, dtype=dtype)
        self.conv2 = conv3x3(planes, planes, dtype=dtype)
        self.bn2 = BatchNorm2d(planes, dtype=dtype)

    def residual(self, x: Tensor) -> Tensor:
        out = self.se_3x3(conv_bn_relu(self.conv1, self.bn1, self.relu, x))  # relu(bn1(conv1(x))), fused
        return conv_bn(self.conv2, self.bn2, out)  # bn2(conv2(out)), one op in evaluation

    @property
    def last_bn(self) -> BatchNorm2d:
        return self.bn2


class Bottleneck(ResidualBlock):
    """F(x) = bn3(conv3(relu(bn2(conv2(relu(bn1(conv1(x)))))))): 1x1 reduce, 3x3, 1x1 expand (x4).

    The inner width is ``int(planes * base_width / 64) * groups``: ``planes`` for a ResNet, 128 in
    the first stage of a ResNeXt-50 (32x4d: 32 groups of width 4, conv2 a grouped convolution).
    The stride sits on the 3x3 convolution, as torchvision's "ResNet v1.5"; ``stride_in_1x1=True``
    puts it on the first 1x1 convolution, as the original Caffe models the SENet paper measured
    (the same parameters, ~6% fewer multiply-accumulates).
    """

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        se: SEConfig | None = None,
        groups: int = 1,
        base_width: int = 64,
        stride_in_1x1: bool = False,
        dtype: Any = np.float32,
    ) -> None:
        width = int(planes * (base_width / 64.0)) * groups
        super().__init__(inplanes, planes, stride, se, width, dtype)
        s1, s3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = conv1x1(inplanes, width, s1, dtype=dtype)
        self.bn1 = BatchNorm2d(width, dtype=dtype)
        self.conv2 = conv3x3(width, width, s3, groups, dtype=dtype)
        self.bn2 = BatchNorm2d(width, dtype=dtype)
        self.conv3 = conv1x1(width, planes * self.expansion, dtype=dtype)
        self.bn3 = BatchNorm2d(planes * self.expansion, dtype=dtype)

    def residual(self, x: Tensor) -> Tensor:
        out = conv_bn_relu(self.conv1, self.bn1, self.relu, x)  # relu(bn1(conv1(x))), fused
        out = self.se_3x3(conv_bn_relu(self.conv2, self.bn2, self.relu, out))
        return conv_bn(self.conv3, self.bn3, out)  # bn3(conv3(out)), one op in evaluation

    @property
    def last_bn(self) -> BatchNorm2d:
        return self.bn3


def zero_init_last_bn(model: Module) -> None:
    """Start every residual branch's last BN with weight 0, so each block begins as the identity
    (Goyal et al. 2017; torchvision's ``zero_init_residual``)."""
    for m in model.modules():
        if isinstance(m, ResidualBlock):
            m.last_bn.weight.data[...] = 0


def make_stage(
    block: type[BasicBlock] | type[Bottleneck],
    inplanes: int,
    planes: int,
    blocks: int,
    stride: int,
    se: SEConfig | None,
    **block_options: Any,
) -> Sequential:
    """``blocks`` residual blocks; the first one changes the stride and width (with a projection shortcut)."""
    layers: list[Module] = []
    for i in range(blocks):
        layers.append(block(inplanes, planes, stride if i == 0 else 1, se, **block_options))
        inplanes = planes * block.expansion
    return Sequential(*layers)


def check_se_stages(model: str, se_stages: Iterable[int] | None, num_stages: int) -> tuple[int, ...]:
    """The stages (numbered from 1) that carry SE blocks; ``None`` means all of them."""
    if se_stages is None:
        return tuple(range(1, num_stages + 1))
    stages = tuple(se_stages)
    bad = [s for s in stages if isinstance(s, bool) or not isinstance(s, int) or not 1 <= s <= num_stages]
    if bad:
        raise ValueError(
            f"{model}: se_stages={stages} names stages {bad} that do not exist - this model has stages "
            f"1..{num_stages}, e.g. se_stages={tuple(range(1, num_stages + 1))} (all) or se_stages=({num_stages},)"
        )
    return tuple(sorted(set(stages)))


def split_options(
    model: str, with_se: bool, options: dict[str, Any], allowed: Sequence[str]
) -> tuple[SEConfig | None, Any, dict[str, Any]]:
    """Split a builder's keyword options into (SEConfig or None, se_stages, the other options).

    A model without SE blocks rejects SE options rather than ignoring them: a silently ignored
    ``reduction=8`` would make an ablation measure nothing.
    """
    se_given = {k: options[k] for k in SE_OPTIONS if k in options}
    rest = {k: v for k, v in options.items() if k not in SE_OPTIONS}
    unknown = [k for k in rest if k not in allowed]
    if unknown:
        raise TypeError(
            f"{model}: unknown option(s) {unknown} - valid options are "
            f"{', '.join(list(allowed) + (list(SE_OPTIONS) if with_se else []))}"
        )
    if not with_se:
        if se_given:
            raise ValueError(
                f"{model}: has no SE blocks, so the SE option(s) {sorted(se_given)} would do nothing - "
                f"build se_{model} instead, or drop the option(s)"
            )
        return None, None, rest
    se_stages = se_given.pop("se_stages", None)
    return SEConfig(**se_given), se_stages, rest
