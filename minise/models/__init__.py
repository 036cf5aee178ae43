"""minise.models: CIFAR and ImageNet ResNets with Squeeze-and-Excitation options, by name.

    from minise import models
    net = models.create("se_resnet20", reduction=16, placement="standard")
    print(models.summary(net, (3, 32, 32)))
    models.list_models()

Every ablation of the SENet paper is a constructor option (see :class:`SEConfig`): ``reduction``,
``min_channels``, ``bias``, ``squeeze``, ``gate``, ``placement`` and ``se_stages``.
"""

from minise.models.blocks import PLACEMENTS, BasicBlock, Bottleneck, ResidualBlock, SEConfig
from minise.models.cifar import (
    CifarResNet,
    resnet20,
    resnet32,
    resnet44,
    resnet56,
    resnet110,
    resnet164,
    se_resnet20,
    se_resnet32,
    se_resnet44,
    se_resnet56,
    se_resnet110,
    se_resnet164,
)
from minise.models.imagenet import (
    ResNet,
    resnet18,
    resnet34,
    resnet50,
    resnet101,
    resnext50_32x4d,
    se_resnet18,
    se_resnet34,
    se_resnet50,
    se_resnet101,
    se_resnext50_32x4d,
)
from minise.models.registry import create, list_models, model_family
from minise.models.summary import LayerRow, ModelSummary, count_macs, summarize, summary
from minise.timm_weights import TIMM_ARCHS, WeightsError, load_timm, save_timm

__all__ = [
    "PLACEMENTS",
    "BasicBlock",
    "Bottleneck",
    "CifarResNet",
    "LayerRow",
    "ModelSummary",
    "ResNet",
    "ResidualBlock",
    "SEConfig",
    "TIMM_ARCHS",
    "WeightsError",
    "count_macs",
    "create",
    "list_models",
    "load_timm",
    "model_family",
    "resnet18",
    "resnet20",
    "resnet32",
    "resnet34",
    "resnet44",
    "resnet50",
    "resnet56",
    "resnet101",
    "resnet110",
    "resnet164",
    "resnext50_32x4d",
    "se_resnet18",
    "se_resnet20",
    "se_resnet32",
    "se_resnet34",
    "se_resnet44",
    "se_resnet50",
    "se_resnet56",
    "se_resnet101",
    "se_resnet110",
    "se_resnet164",
    "se_resnext50_32x4d",
    "save_timm",
    "summarize",
    "summary",
]
