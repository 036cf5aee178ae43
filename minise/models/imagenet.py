"""ImageNet ResNets, SE-ResNets and SE-ResNeXt-50 in torchvision's layout (Hu et al., SENet, Table 2).

A 7x7 stride-2 convolution to 64 channels + BN + ReLU, a 3x3 stride-2 max pool, four stages of
64/128/256/512 base widths on 56/28/14/7-pixel maps (at 224 px), global average pooling and a
linear classifier. ResNet-18/34 stack basic blocks, ResNet-50/101 bottleneck blocks (expansion 4);
ResNeXt-50 32x4d makes the 3x3 convolution of each bottleneck a grouped one (32 groups of width 4).
Parameter counts equal the published ones (1000 classes):

============================ ===========
resnet18                      11,689,512
resnet34                      21,797,672
resnet50                      25,557,032
resnet101                     44,549,160
resnext50_32x4d               25,028,904
se_resnet50 (r=16, biases)    28,088,024
se_resnext50_32x4d            27,559,896
============================ ===========

The stride of a downsampling bottleneck sits on its 3x3 convolution ("ResNet v1.5", as
torchvision): ResNet-50 then costs 4.09 GMACs at 224 px. The SENet paper measured the original
Caffe models, which put the stride on the first 1x1 convolution (3.86 "GFLOPs", Table 2): build
them with ``stride_in_1x1=True`` (same parameters, see :mod:`minise.models.summary`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from minise.functional.fused import conv_bn_relu
from minise.models.blocks import (
    BasicBlock,
    Bottleneck,
    SEConfig,
    check_se_stages,
    make_stage,
    split_options,
    zero_init_last_bn,
)
from minise.nn import BatchNorm2d, Conv2d, GlobalAvgPool2d, Linear, MaxPool2d, Module, ReLU, Sequential
from minise.tensor import Tensor

IMAGENET_OPTIONS = ("zero_init_residual", "stride_in_1x1", "dtype")


class ResNet(Module):
    """ResNet / ResNeXt for 224x224 inputs with optional SE blocks, torchvision's module names.

    ``layers`` gives the number of blocks per stage (e.g. (3, 4, 6, 3) for ResNet-50); ``groups`` and
    ``width_per_group`` make a ResNeXt (32 and 4 for 32x4d). ``se`` (an :class:`SEConfig`, or None)
    puts an SE block in every residual block of the stages in ``se_stages`` (numbered 1..4; None =
    all). ``stride_in_1x1`` moves a bottleneck's stride to its first 1x1 convolution (the Caffe
    models the paper measured). ``zero_init_residual``: the last BN of every residual branch starts
    at gamma = 0. Initialisation as torchvision: convolutions Kaiming-normal (fan-out), BN 1 and 0.
    """

    layer1: Sequential
    layer2: Sequential
    layer3: Sequential
    layer4: Sequential

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: Sequence[int],
        num_classes: int = 1000,
        groups: int = 1,
        width_per_group: int = 64,
        se: SEConfig | None = None,
        se_stages: Iterable[int] | None = None,
        zero_init_residual: bool = False,
        stride_in_1x1: bool = False,
        dtype: Any = np.float32,
    ) -> None:
        super().__init__()
        if len(layers) != 4:
            raise ValueError(
                f"ResNet: layers must give the number of blocks of 4 stages, got {tuple(layers)} - e.g. (3, 4, 6, 3)"
            )
        block_options: dict[str, Any] = {"dtype": dtype}
        if block is Bottleneck:
            block_options.update(groups=groups, base_width=width_per_group, stride_in_1x1=stride_in_1x1)
        elif groups != 1 or width_per_group != 64 or stride_in_1x1:
            raise ValueError(
                "ResNet: groups, width_per_group and stride_in_1x1 apply to bottleneck blocks only - "
                "use block=Bottleneck (resnet50/101, se_resnext50_32x4d) or keep the defaults"
            )
        if se is None and se_stages is not None:
            raise ValueError("ResNet: se_stages needs SE blocks - pass se=SEConfig(...) too, or drop se_stages")
        self.se_config = se
        self.se_stages = check_se_stages("ResNet", se_stages, 4) if se is not None else ()
        self.conv1 = Conv2d(3, 64, 7, stride=2, padding=3, bias=False, dtype=dtype)
        self.bn1 = BatchNorm2d(64, dtype=dtype)
        self.relu = ReLU()
        self.maxpool = MaxPool2d(3, stride=2, padding=1)
        inplanes = 64
        for i, (planes, stride, n) in enumerate(zip((64, 128, 256, 512), (1, 2, 2, 2), layers), start=1):
            stage_se = se if i in self.se_stages else None
            setattr(self, f"layer{i}", make_stage(block, inplanes, planes, n, stride, stage_se, **block_options))
            inplanes = planes * block.expansion
        self.avgpool = GlobalAvgPool2d()
        self.fc = Linear(inplanes, num_classes, dtype=dtype)
        self.num_features = inplanes
        if zero_init_residual:
            zero_init_last_bn(self)

    @property
    def stages(self) -> list[Sequential]:
        return [self.layer1, self.layer2, self.layer3, self.layer4]

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(conv_bn_relu(self.conv1, self.bn1, self.relu, x))  # (N, 64, H/4, W/4), fused
        for stage in self.stages:
            x = stage(x)  # (N, 512 * expansion, H/32, W/32) after the last
        return self.fc(self.avgpool(x))  # type: ignore[no-any-return]  # (N, num_classes)


# name -> (block, blocks per stage, groups, width per group)
_ARCHS: dict[str, tuple[type[BasicBlock] | type[Bottleneck], tuple[int, int, int, int], int, int]] = {
    "resnet18": (BasicBlock, (2, 2, 2, 2), 1, 64),
    "resnet34": (BasicBlock, (3, 4, 6, 3), 1, 64),
    "resnet50": (Bottleneck, (3, 4, 6, 3), 1, 64),
    "resnet101": (Bottleneck, (3, 4, 23, 3), 1, 64),
    "resnext50_32x4d": (Bottleneck, (3, 4, 6, 3), 32, 4),
}


def _build(name: str, arch: str, with_se: bool, num_classes: int, options: Any) -> ResNet:
    block, layers, groups, width_per_group = _ARCHS[arch]
    allowed = IMAGENET_OPTIONS if block is Bottleneck else ("zero_init_residual", "dtype")
    se, se_stages, rest = split_options(name, with_se, options, allowed)
    return ResNet(block, layers, num_classes, groups, width_per_group, se=se, se_stages=se_stages, **rest)


def resnet18(num_classes: int = 1000, **options: Any) -> ResNet:
    """ResNet-18: 11,689,512 parameters. Options: zero_init_residual, dtype."""
    return _build("resnet18", "resnet18", False, num_classes, options)


def resnet34(num_classes: int = 1000, **options: Any) -> ResNet:
    """ResNet-34: 21,797,672 parameters. Options: zero_init_residual, dtype."""
    return _build("resnet34", "resnet34", False, num_classes, options)


def resnet50(num_classes: int = 1000, **options: Any) -> ResNet:
    """ResNet-50: 25,557,032 parameters. Options: zero_init_residual, stride_in_1x1, dtype."""
    return _build("resnet50", "resnet50", False, num_classes, options)


def resnet101(num_classes: int = 1000, **options: Any) -> ResNet:
    """ResNet-101: 44,549,160 parameters. Options: zero_init_residual, stride_in_1x1, dtype."""
    return _build("resnet101", "resnet101", False, num_classes, options)


def resnext50_32x4d(num_classes: int = 1000, **options: Any) -> ResNet:
    """ResNeXt-50 (32x4d): 25,028,904 parameters, the baseline of SE-ResNeXt-50 (Table 2)."""
    return _build("resnext50_32x4d", "resnext50_32x4d", False, num_classes, options)


def se_resnet18(num_classes: int = 1000, **options: Any) -> ResNet:
    """SE-ResNet-18. SE options: reduction (16), min_channels (1), bias (True), squeeze ("avg"),
    gate ("sigmoid"), placement ("standard"), se_stages (all of 1..4)."""
    return _build("se_resnet18", "resnet18", True, num_classes, options)


def se_resnet34(num_classes: int = 1000, **options: Any) -> ResNet:
    """SE-ResNet-34 (SE options as :func:`se_resnet18`)."""
    return _build("se_resnet34", "resnet34", True, num_classes, options)


def se_resnet50(num_classes: int = 1000, **options: Any) -> ResNet:
    """SE-ResNet-50: 28,088,024 parameters with r = 16 and biased FC layers (SE options as
    :func:`se_resnet18`; also stride_in_1x1 for the paper's 3.87 "GFLOPs" layout)."""
    return _build("se_resnet50", "resnet50", True, num_classes, options)


def se_resnet101(num_classes: int = 1000, **options: Any) -> ResNet:
    """SE-ResNet-101 (SE options as :func:`se_resnet50`)."""
    return _build("se_resnet101", "resnet101", True, num_classes, options)


def se_resnext50_32x4d(num_classes: int = 1000, **options: Any) -> ResNet:
    """SE-ResNeXt-50 (32x4d): 27,559,896 parameters; 32 groups of width 4 in every 3x3 convolution
    (SE options as :func:`se_resnet50`)."""
    return _build("se_resnext50_32x4d", "resnext50_32x4d", True, num_classes, options)
