"""Models by name: ``create("se_resnet20", reduction=8)``, ``list_models("se_*")``.

The name picks the architecture; keyword options go to its builder: the SE options of
:class:`~minise.models.blocks.SEConfig` plus ``se_stages`` for SE models, and ``zero_init_residual``,
``dtype`` (and ``stride_in_1x1`` for bottleneck ImageNet models) for all. A model without SE blocks
rejects SE options with a ValueError instead of ignoring them.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable, Sequence
from typing import Any

from minise.models import cifar, imagenet
from minise.nn import Module

FAMILIES = ("cifar", "imagenet")

# name -> (builder, family, default number of classes); the order is the order list_models() gives
_MODELS: dict[str, tuple[Callable[..., Module], str, int]] = {
    **{
        name: (getattr(cifar, name), "cifar", 10)
        for name in (
            "resnet20",
            "resnet32",
            "resnet44",
            "resnet56",
            "resnet110",
            "resnet164",
            "se_resnet20",
            "se_resnet32",
            "se_resnet44",
            "se_resnet56",
            "se_resnet110",
            "se_resnet164",
        )
    },
    **{
        name: (getattr(imagenet, name), "imagenet", 1000)
        for name in (
            "resnet18",
            "resnet34",
            "resnet50",
            "resnet101",
            "resnext50_32x4d",
            "se_resnet18",
            "se_resnet34",
            "se_resnet50",
            "se_resnet101",
            "se_resnext50_32x4d",
        )
    },
}


def _patterns(value: str | Sequence[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def list_models(
    filter: str | Sequence[str] = "", family: str | None = None, exclude_filters: str | Sequence[str] = ""
) -> list[str]:
    """The names ``create`` accepts: CIFAR models first, then ImageNet ones, as timm's ``list_models``.

    ``filter``: shell-style patterns (``fnmatch``: ``*``, ``?``, ``[...]``), one or a list; a name is
    kept if it matches any, e.g. ``list_models("se_*")`` or ``list_models(["*resnet5?", "*resnext*"])``.
    ``exclude_filters`` drops names matching any of its patterns; ``family`` "cifar" or "imagenet"
    keeps one kind. Matching is case-sensitive.
    """
    if family is not None and family not in FAMILIES:
        raise ValueError(f"list_models: family={family!r} is not one of {FAMILIES} - or pass None for all")
    keep, drop = [p for p in _patterns(filter) if p], [p for p in _patterns(exclude_filters) if p]
    return [
        name
        for name, (_, fam, _) in _MODELS.items()
        if (family is None or fam == family)
        and (not keep or any(fnmatch.fnmatchcase(name, p) for p in keep))
        and not any(fnmatch.fnmatchcase(name, p) for p in drop)
    ]


def model_family(name: str) -> str:
    """ "cifar" (32x32 inputs, 10 classes by default) or "imagenet" (224x224, 1000 classes)."""
    return _MODELS[_check_name(name)][1]


def _check_name(name: str) -> str:
    if name not in _MODELS:
        close = difflib.get_close_matches(str(name), list(_MODELS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"create: unknown model {name!r}{hint} - valid names: {', '.join(_MODELS)}")
    return name


def create(name: str, num_classes: int | None = None, pretrained: str | None = None, **options: Any) -> Module:
    """Build model ``name`` with ``num_classes`` outputs (default 10 for CIFAR models, 1000 for
    ImageNet ones) and the given options, e.g. ``create("se_resnet50", reduction=8, bias=False)``.

    ``pretrained``: a timm/torchvision ``.safetensors`` file, or a hub name such as
    ``"timm/seresnet50.a1_in1k"``, loaded with :func:`~minise.timm_weights.load_timm`; the
    options that make the model equal timm's architecture (``TIMM_ARCHS``) are then the defaults."""
    builder, _, default_classes = _MODELS[_check_name(name)]
    classes = default_classes if num_classes is None else num_classes
    if isinstance(classes, bool) or not isinstance(classes, int) or classes < 1:
        raise ValueError(f"create: num_classes must be a positive int, got {classes!r}")
    if pretrained is None:
        return builder(classes, **options)
    from minise import timm_weights  # noqa: PLC0415  (only pretrained models need it)

    if name not in timm_weights.TIMM_ARCHS:
        raise ValueError(
            f"create: {name} has no timm twin to take pretrained weights from - use one of "
            f"{', '.join(timm_weights.TIMM_ARCHS)}"
        )
    model = builder(classes, **{**timm_weights.TIMM_ARCHS[name][1], **options})
    return timm_weights.load_timm(model, timm_weights.resolve_pretrained(pretrained))
