"""A layer-by-layer table of output shapes, parameters and multiply-accumulates (MACs).

How it works: the model's own ``forward`` runs once on a batch of one image, under ``no_grad`` and in
eval mode, while every *leaf* layer (a module without children, or an SE block, counted whole) is
temporarily wrapped so that each call records its output shape. By default (``dry_run=True``) a leaf
whose type has a shape rule below does not compute at all: it returns zeros of the shape the rule
gives, so a ResNet-50 at 224 px is walked in milliseconds; only the glue in the model's forward (the
residual additions, the SE scaling) touches those zeros. Leaves without a rule run for real.
``dry_run=False`` runs every layer for real (the tests hold both walks equal).

The MAC convention (per image, i.e. for a batch of one):

* ``Conv2d``: output elements x (in_channels / groups x KH x KW);
* ``Linear``: output elements x in_features;
* ``SEBlock``: its two FC layers, C x R + R x C; the squeeze (a mean) and the scale (a product with x)
  are elementwise and not counted, like batch norm, ReLU, pooling and the residual additions; for
  NoSqueeze (``squeeze="none"``) the two layers are 1x1 convolutions, C x R x 2 at each of H x W pixels;
* biases are not counted.

The SENet paper counts MACs and calls them FLOPs: ResNet-50 3.86 "GFLOPs", SE-ResNet-50 3.87
(Table 2), for the Caffe layout with the stride on the first 1x1 convolution: with
``stride_in_1x1=True`` this count gives 3.858 G for ResNet-50 and 3.861 G for SE-ResNet-50.
torchvision's layout, the default here, puts the stride on the 3x3 convolution and costs 4.089 G
(4.092 G with SE): the extra 0.23 G is the first 1x1 convolution of the three downsampling blocks
running at 4x the spatial size. The paper's SE increment (+0.01 G, "0.26%") is larger than the
2.5 M MACs of the SE blocks' FC layers counted here: it evidently also counts the squeeze (a mean)
and the scale (a product), ~5.5 M operations each on ResNet-50, which this convention leaves out.
ResNeXt-50 32x4d: 4.230 G here (4.233 G with SE), 4.24/4.25 in the paper.

The ablations of Tables 15 and 16 (Caffe layout, ``stride_in_1x1=True``): SE_3x3 costs 3.858 G here
(paper 3.86); NoSqueeze 4.269 G here (paper 4.27): its 1x1 convolutions, C x R x 2 MACs at every pixel,
add 0.41 G.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from minise.autograd import no_grad
from minise.backend import get_array_module
from minise.functional._checks import pair
from minise.functional.im2col import conv_out_size
from minise.nn import (
    AvgPool2d,
    BatchNorm2d,
    Conv2d,
    Dropout,
    Flatten,
    GlobalAvgPool2d,
    Identity,
    Linear,
    MaxPool2d,
    Module,
    ReLU,
    SEBlock,
    Sigmoid,
    Tanh,
)
from minise.tensor import Tensor

Shape = tuple[int, ...]


# --------------------------------------------------------------------------------------------------
# shape rules and MAC counts of the leaf layers
# --------------------------------------------------------------------------------------------------
def _conv_shape(m: Conv2d, s: Shape) -> Shape:
    (kh, kw), (sh, sw) = m.kernel_size, pair("summary", "stride", m.stride, 1)
    (ph, pw), (dh, dw) = pair("summary", "padding", m.padding, 0), pair("summary", "dilation", m.dilation, 1)
    return (s[0], m.out_channels, conv_out_size(s[2], kh, sh, ph, dh), conv_out_size(s[3], kw, sw, pw, dw))


def _pool_shape(m: MaxPool2d, s: Shape) -> Shape:
    kh, kw = pair("summary", "kernel_size", m.kernel_size, 1)
    sh, sw = (kh, kw) if m.stride is None else pair("summary", "stride", m.stride, 1)
    ph, pw = pair("summary", "padding", m.padding, 0)
    return (s[0], s[1], conv_out_size(s[2], kh, sh, ph, 1), conv_out_size(s[3], kw, sw, pw, 1))


def _flatten_shape(m: Flatten, s: Shape) -> Shape:
    start, end = m.start_dim % len(s), m.end_dim % len(s)
    return (*s[:start], math.prod(s[start : end + 1]), *s[end + 1 :])


def _same(m: Module, s: Shape) -> Shape:
    return s


SHAPE_RULES: dict[type, Callable[[Any, Shape], Shape]] = {
    Conv2d: _conv_shape,
    Linear: lambda m, s: (*s[:-1], m.out_features),
    MaxPool2d: _pool_shape,
    AvgPool2d: _pool_shape,
    GlobalAvgPool2d: lambda m, s: s[:2],
    Flatten: _flatten_shape,
    BatchNorm2d: _same,
    ReLU: _same,
    Sigmoid: _same,
    Tanh: _same,
    Identity: _same,
    Dropout: _same,
    SEBlock: _same,
}


def layer_macs(module: Module, input_shape: Shape, output_shape: Shape) -> int:
    """Multiply-accumulates of one call of a leaf layer (for the whole batch of ``output_shape``)."""
    if isinstance(module, Conv2d):
        kh, kw = module.kernel_size
        return math.prod(output_shape) * (module.in_channels // module.groups) * kh * kw
    if isinstance(module, Linear):
        return math.prod(output_shape) * module.in_features
    if isinstance(module, SEBlock):
        # fc1 (C -> R) and fc2 (R -> C) once per image, or at every pixel for NoSqueeze (squeeze="none")
        positions = input_shape[0] * (math.prod(input_shape[2:]) if module.squeeze == "none" else 1)
        return positions * 2 * module.channels * module.hidden
    return 0


# --------------------------------------------------------------------------------------------------
# the table
# --------------------------------------------------------------------------------------------------
@dataclass
class LayerRow:
    """One call of a leaf layer: its dotted name, type, output shape (without the batch axis),
    the parameters it holds (counted at its first call only) and its MACs."""

    name: str
    kind: str
    output_shape: Shape
    params: int
    macs: int


@dataclass
class ModelSummary:
    """The rows of :func:`summarize` and their totals; ``str()`` gives the table."""

    input_shape: Shape
    rows: list[LayerRow] = field(default_factory=list)
    total_params: int = 0
    trainable_params: int = 0

    @property
    def total_macs(self) -> int:
        """Multiply-accumulates of one forward pass of one image."""
        return sum(r.macs for r in self.rows)

    @property
    def params_in_rows(self) -> int:
        """Parameters held by the layers the forward called (equals total_params unless some are unused)."""
        return sum(r.params for r in self.rows)

    def __str__(self) -> str:
        head = f"{'Layer (type)':<44} {'Output shape':<20} {'Params':>12} {'MACs':>15}"
        lines = [head, "=" * len(head)]
        for r in self.rows:
            lines.append(f"{r.name + ' (' + r.kind + ')':<44} {str(r.output_shape):<20} {r.params:>12,} {r.macs:>15,}")
        lines += [
            "=" * len(head),
            f"Input: {self.input_shape}, one image",
            f"Total params: {self.total_params:,}",
            f"Trainable params: {self.trainable_params:,}",
            f"Total MACs: {self.total_macs:,} ({self.total_macs / 1e9:.2f} G; the SENet paper calls MACs 'FLOPs')",
        ]
        return "\n".join(lines)


def _leaves(module: Module, prefix: str = "") -> Iterator[tuple[str, Module]]:
    """Modules without children, and SE blocks (their FC layers are counted as part of the block)."""
    if isinstance(module, SEBlock) or next(module.children(), None) is None:
        yield prefix, module
        return
    for name, child in module.named_children():
        yield from _leaves(child, f"{prefix}.{name}" if prefix else name)


def _own_params(module: Module) -> int:
    return sum(p.size for p in module.parameters())


def summarize(model: Module, input_shape: tuple[int, ...], dry_run: bool = True) -> ModelSummary:
    """Walk ``model`` on one image of shape ``input_shape`` = (C, H, W); see the module docstring."""
    if len(input_shape) != 3 or not all(isinstance(d, int) and d > 0 for d in input_shape):
        raise ValueError(
            f"summary: input_shape must be one image's (C, H, W), got {input_shape} - e.g. (3, 32, 32) "
            "for CIFAR or (3, 224, 224) for ImageNet; leave out the batch axis"
        )
    first = next(model.parameters(), None)
    dtype = first.dtype if first is not None else "float32"
    xp = get_array_module(first.data) if first is not None else get_array_module()
    report = ModelSummary(tuple(input_shape))
    report.total_params = model.num_parameters()
    report.trainable_params = sum(p.size for p in model.parameters() if p.requires_grad)
    seen: set[int] = set()

    def wrap(name: str, m: Module) -> Callable[..., Any]:
        real = m.forward
        rule = SHAPE_RULES.get(type(m)) if dry_run else None

        def forward(x: Tensor, *args: Any, **kwargs: Any) -> Any:
            if rule is not None and not args and not kwargs:
                out = Tensor(xp.zeros(rule(m, x.shape), dtype=x.dtype))
            else:
                out = real(x, *args, **kwargs)
            params = 0 if id(m) in seen else _own_params(m)
            seen.add(id(m))
            macs = layer_macs(m, x.shape, out.shape)
            report.rows.append(LayerRow(name, type(m).__name__, out.shape[1:], params, macs))
            return out

        return forward

    modes = [(m, m.training) for m in model.modules()]
    leaves = list(_leaves(model))
    wrapped: list[tuple[Module, Any]] = []
    try:
        model.eval()  # batch norm must not update its running statistics here
        for name, m in leaves:
            if any(m is w for w, _ in wrapped):
                continue  # one module reached under two names: record each call once
            wrapped.append((m, m.__dict__.get("forward")))
            object.__setattr__(m, "forward", wrap(name or type(m).__name__, m))
        with no_grad():
            model(Tensor(xp.zeros((1, *input_shape), dtype=dtype)))
    finally:
        for m, previous in wrapped:
            if previous is None:
                del m.__dict__["forward"]
            else:
                object.__setattr__(m, "forward", previous)
        for m, mode in modes:
            object.__setattr__(m, "training", mode)
    return report


def summary(model: Module, input_shape: tuple[int, ...], dry_run: bool = True) -> str:
    """The table of :func:`summarize` as a string: ``print(summary(model, (3, 32, 32)))``."""
    return str(summarize(model, input_shape, dry_run))


def count_macs(model: Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of one forward pass on one image of shape (C, H, W)."""
    return summarize(model, input_shape).total_macs
