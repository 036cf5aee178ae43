"""CIFAR ResNets (He et al. 2016, Sec. 4.2) and their SE versions (Hu et al., SENet, Table 4).

The network for 32x32 images: a 3x3 convolution to 16 channels + BN + ReLU, then three stages of
16, 32 and 64 channels on 32x32, 16x16 and 8x8 maps (the first block of stages 2 and 3 has stride 2),
global average pooling and a linear classifier. With n basic blocks per stage the depth is 6n + 2
(n = 3, 5, 7, 9, 18 give ResNet-20, 32, 44, 56, 110). ResNet-164 uses n = 18 bottleneck blocks
(depth 9n + 2) of base widths 16/32/64, i.e. 64/128/256 output channels (He et al., "Identity
Mappings", 2016; here with the original post-activation block). Shortcuts are projections where the
shape changes ("option B"): ResNet-20 then has 272,474 parameters (the paper's "0.27M" is option A's
269,722, which pads with zeros instead of projecting).

SE blocks are narrow here: at the paper's r = 16 a ResNet-20 has SE hidden widths 16 // 16 = 1,
32 // 16 = 2 and 64 // 16 = 4 in its three stages (``min_channels`` raises that floor).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from minise.functional.fused import conv_bn_relu
from minise.models.blocks import (
    BasicBlock,
    Bottleneck,
    SEConfig,
    check_se_stages,
    conv3x3,
    make_stage,
    split_options,
    zero_init_last_bn,
)
from minise.nn import BatchNorm2d, GlobalAvgPool2d, Linear, Module, ReLU, Sequential
from minise.tensor import Tensor

CIFAR_OPTIONS = ("zero_init_residual", "dtype")


class CifarResNet(Module):
    """ResNet for 32x32 inputs: depth 6n + 2 (basic blocks) or 9n + 2 (``bottleneck=True``).

    ``se`` (an :class:`SEConfig`, or None for a plain ResNet) puts an SE block in every residual block
    of the stages listed in ``se_stages`` (numbered 1..3; None = all). ``zero_init_residual`` starts
    the last batch norm of every residual branch at gamma = 0, so each block starts as the identity.
    Weights: convolutions Kaiming-normal (fan-out), batch norm gamma 1 and beta 0, linear layers as
    PyTorch's default - torchvision's initialisation.
    """

    layer1: Sequential
    layer2: Sequential
    layer3: Sequential

    def __init__(
        self,
        depth: int,
        bottleneck: bool = False,
        num_classes: int = 10,
        se: SEConfig | None = None,
        se_stages: Iterable[int] | None = None,
        zero_init_residual: bool = False,
        dtype: Any = np.float32,
    ) -> None:
        super().__init__()
        per_block = 9 if bottleneck else 6
        if depth < per_block + 2 or (depth - 2) % per_block:
            kind = "bottleneck" if bottleneck else "basic-block"
            raise ValueError(
                f"CifarResNet: depth {depth} is not {per_block}n + 2 for a {kind} network - use e.g. "
                + ("164 (n = 18)" if bottleneck else "20, 32, 44, 56 or 110")
            )
        n = (depth - 2) // per_block
        block = Bottleneck if bottleneck else BasicBlock
        self.depth, self.bottleneck = depth, bottleneck
        if se is None and se_stages is not None:
            raise ValueError("CifarResNet: se_stages needs SE blocks - pass se=SEConfig(...) too, or drop se_stages")
        self.se_config = se
        self.se_stages = check_se_stages("CifarResNet", se_stages, 3) if se is not None else ()
        self.conv1 = conv3x3(3, 16, dtype=dtype)
        self.bn1 = BatchNorm2d(16, dtype=dtype)
        self.relu = ReLU()
        inplanes = 16
        for i, (planes, stride) in enumerate(zip((16, 32, 64), (1, 2, 2)), start=1):
            stage_se = se if i in self.se_stages else None
            setattr(self, f"layer{i}", make_stage(block, inplanes, planes, n, stride, stage_se, dtype=dtype))
            inplanes = planes * block.expansion
        self.avgpool = GlobalAvgPool2d()
        self.fc = Linear(inplanes, num_classes, dtype=dtype)
        self.num_features = inplanes
        if zero_init_residual:
            zero_init_last_bn(self)

    @property
    def stages(self) -> list[Sequential]:
        return [self.layer1, self.layer2, self.layer3]

    def forward(self, x: Tensor) -> Tensor:
        x = conv_bn_relu(self.conv1, self.bn1, self.relu, x)  # (N, 16, 32, 32); relu(bn1(conv1(x))) fused
        x = self.layer3(self.layer2(self.layer1(x)))  # (N, 64 or 256, 8, 8)
        return self.fc(self.avgpool(x))  # type: ignore[no-any-return]  # (N, num_classes)


def _build(name: str, depth: int, bottleneck: bool, with_se: bool, num_classes: int, options: Any) -> CifarResNet:
    se, se_stages, rest = split_options(name, with_se, options, CIFAR_OPTIONS)
    return CifarResNet(depth, bottleneck, num_classes, se=se, se_stages=se_stages, **rest)


def resnet20(num_classes: int = 10, **options: Any) -> CifarResNet:
    """ResNet-20 for CIFAR (n = 3): 272,474 parameters with 10 classes. Options: zero_init_residual, dtype."""
    return _build("resnet20", 20, False, False, num_classes, options)


def resnet32(num_classes: int = 10, **options: Any) -> CifarResNet:
    """ResNet-32 for CIFAR (n = 5)."""
    return _build("resnet32", 32, False, False, num_classes, options)


def resnet44(num_classes: int = 10, **options: Any) -> CifarResNet:
    """ResNet-44 for CIFAR (n = 7)."""
    return _build("resnet44", 44, False, False, num_classes, options)


def resnet56(num_classes: int = 10, **options: Any) -> CifarResNet:
    """ResNet-56 for CIFAR (n = 9)."""
    return _build("resnet56", 56, False, False, num_classes, options)


def resnet110(num_classes: int = 10, **options: Any) -> CifarResNet:
    """ResNet-110 for CIFAR (n = 18), one of the paper's CIFAR baselines (Table 4)."""
    return _build("resnet110", 110, False, False, num_classes, options)


def resnet164(num_classes: int = 10, **options: Any) -> CifarResNet:
    """ResNet-164 for CIFAR: 18 bottleneck blocks per stage, 64/128/256 output channels (Table 4)."""
    return _build("resnet164", 164, True, False, num_classes, options)


def se_resnet20(num_classes: int = 10, **options: Any) -> CifarResNet:
    """SE-ResNet-20. SE options: reduction (16), min_channels (1), bias (True), squeeze ("avg"),
    gate ("sigmoid"), placement ("standard"), se_stages (all); at r = 16 the SE blocks have 1, 2 and 4
    hidden units in stages 1, 2 and 3. Other options: zero_init_residual, dtype."""
    return _build("se_resnet20", 20, False, True, num_classes, options)


def se_resnet32(num_classes: int = 10, **options: Any) -> CifarResNet:
    """SE-ResNet-32 (SE options as :func:`se_resnet20`)."""
    return _build("se_resnet32", 32, False, True, num_classes, options)


def se_resnet44(num_classes: int = 10, **options: Any) -> CifarResNet:
    """SE-ResNet-44 (SE options as :func:`se_resnet20`)."""
    return _build("se_resnet44", 44, False, True, num_classes, options)


def se_resnet56(num_classes: int = 10, **options: Any) -> CifarResNet:
    """SE-ResNet-56 (SE options as :func:`se_resnet20`)."""
    return _build("se_resnet56", 56, False, True, num_classes, options)


def se_resnet110(num_classes: int = 10, **options: Any) -> CifarResNet:
    """SE-ResNet-110, the paper's CIFAR SE model (Table 4; SE options as :func:`se_resnet20`)."""
    return _build("se_resnet110", 110, False, True, num_classes, options)


def se_resnet164(num_classes: int = 10, **options: Any) -> CifarResNet:
    """SE-ResNet-164: SE on 64/128/256 channels, hidden widths 4/8/16 at r = 16 (Table 4)."""
    return _build("se_resnet164", 164, True, True, num_classes, options)
