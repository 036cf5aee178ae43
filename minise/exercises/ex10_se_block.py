"""Exercise 10: an SE residual block as an ``nn.Module``, ``SEBasicBlock(inplanes, planes, stride, reduction)``.

Its weights are copied from the model library's ``BasicBlock`` with an SE block (``minise.models.blocks``),
and its output and every gradient (input and parameters, through minise's autograd) are compared
with the library block's; the hints name the placement (Table 14 of the paper) the learner built by
mistake, a missing SE block, a missing projection shortcut and parameters named otherwise.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

import minise
from minise.exercises.core import Exercise, Mistake, PartFailed, Report, close, draw_cases, learner_function, rng_for
from minise.models.blocks import BasicBlock, SEConfig
from minise.nn import Module

SOLUTION = '''"""Exercise 10: the SE residual block, as an nn.Module (lesson 10, sections 1-4).

Start over:        python -m minise.lessons exercise 10 --force   (this file is kept as .bak)
Check it:          python -m minise.lessons check 10
"""

from minise import nn
import minise.functional as F


class SEBasicBlock(nn.Module):
    """y = relu(SE(F(x)) + shortcut(x)),  F(x) = bn2(conv2(relu(bn1(conv1(x)))))    (SENet, Fig. 3)

    conv1: 3x3, inplanes -> planes, stride `stride`, padding 1, no bias; bn1: BatchNorm2d(planes)
    conv2: 3x3, planes -> planes, padding 1, no bias;                    bn2: BatchNorm2d(planes)
    se:    nn.SEBlock(planes, reduction=reduction) on the residual branch, before the addition
    downsample: where the shape changes (stride != 1 or inplanes != planes) the shortcut is a
        projection nn.Sequential(1x1 conv inplanes -> planes with the stride and no bias, BatchNorm2d(planes));
        otherwise None and the shortcut is x itself.
    Keep these attribute names: the checker copies the model library's weights into yours by name.
    """

    def __init__(self, inplanes, planes, stride=1, reduction=16):
        super().__init__()
        # >>> your code
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.se = nn.SEBlock(planes, reduction=reduction)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            projection = nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False)
            self.downsample = nn.Sequential(projection, nn.BatchNorm2d(planes))
        # <<<

    def forward(self, x):
        # >>> your code
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.se(self.bn2(self.conv2(out)))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(out + shortcut)
        # <<<
'''

PLACEMENT_HINTS = {
    "post": "your SE block sits after the addition (the 'post' placement of Table 14); the SE-ResNet puts it on "
    "the residual branch, before the addition: relu(SE(F(x)) + shortcut(x))",
    "pre": "your SE block recalibrates the block's input (the 'pre' placement of Table 14); the SE-ResNet puts it "
    "at the end of the residual branch: relu(SE(F(x)) + shortcut(x))",
    "identity": "your SE block sits on the shortcut (the 'identity' placement of Table 14); the SE-ResNet puts it "
    "on the residual branch: relu(SE(F(x)) + shortcut(x))",
    "none": "your block's output does not depend on the SE block: apply self.se to the residual branch, before "
    "the addition",
}
RELU_HINT = "the ReLU comes after the addition: relu(SE(F(x)) + shortcut(x)), not SE(F(x)) + shortcut(x)"


def _shapes(draw: Any) -> dict[str, Any]:
    stride = draw(1, 2)
    return {
        "n": draw(1, 3),
        "inplanes": (4, 8)[draw(0, 1)],
        "planes": (4, 8)[draw(0, 1)],
        "stride": stride,
        "size": max(draw(2, 5), 2 * stride - 1 + (stride == 2)),
        "reduction": (1, 2, 4)[draw(0, 2)],
    }


EDGE = [
    {"n": 1, "inplanes": 4, "planes": 4, "stride": 1, "size": 3, "reduction": 2},  # batch 1, identity shortcut
    {"n": 2, "inplanes": 1, "planes": 1, "stride": 1, "size": 3, "reduction": 1},  # one channel
    {"n": 4, "inplanes": 4, "planes": 8, "stride": 1, "size": 1, "reduction": 4},  # 1x1 spatial, projection
    {"n": 2, "inplanes": 4, "planes": 8, "stride": 2, "size": 4, "reduction": 2},  # stride 2, projection
]


def _library_block(sh: dict[str, Any], placement: str | None) -> BasicBlock:
    se = None if placement is None else SEConfig(reduction=sh["reduction"], placement=placement)
    return BasicBlock(sh["inplanes"], sh["planes"], sh["stride"], se=se)


def _run(block: Module, x: np.ndarray, gy: np.ndarray) -> tuple[Any, Any, dict[str, Any]]:
    """y, dL/dx and dL/d(each parameter, by name) of a block in training mode, for the upstream gradient gy."""
    block.train()
    block.zero_grad()
    xt = minise.tensor(x, requires_grad=True)
    y = block(xt)
    y.backward(gy.astype(y.data.dtype))
    return y.numpy(), xt.grad, {name: p.grad for name, p in block.named_parameters()}


def _wrong_answers(sh: dict[str, Any], state: dict[str, Any], x: np.ndarray, gy: np.ndarray) -> dict[str, Any]:
    """hint -> the output of a block built with the wrong placement (or none), same weights."""
    answers = {}
    for placement in ("post", "pre", "identity", None):
        block = _library_block(sh, placement)
        try:
            block.load_state_dict(state, strict=False)
        except ValueError:  # "pre" on a block that changes width has an SE of another size
            continue
        answers[PLACEMENT_HINTS[placement or "none"]] = _run(block, x, gy)[0]
    return answers


def check(module: ModuleType, report: Report) -> None:
    learner_class = learner_function(module, "SEBasicBlock")
    cases = draw_cases(_shapes, EDGE, count=6)
    with minise.use_backend("numpy"):
        for part in ("the parameters' names and shapes", "forward y", "dL/dx", "the parameter gradients"):
            with report.part(f"SEBasicBlock: {part}"):
                for i, sh in enumerate(cases):
                    _check_case(report, learner_class, sh, i, part)
                report.ok(f"SEBasicBlock: {part} match the model library's SE BasicBlock on {len(cases)} cases")


def _check_case(report: Report, learner_class: Any, sh: dict[str, Any], i: int, part: str) -> None:
    where = (
        f"inplanes {sh['inplanes']}, planes {sh['planes']}, stride {sh['stride']}, reduction {sh['reduction']}, "
        f"x ({sh['n']}, {sh['inplanes']}, {sh['size']}, {sh['size']})"
    )
    minise.manual_seed(i)
    library = _library_block(sh, "standard")
    report.calling = f"SEBasicBlock({sh['inplanes']}, {sh['planes']}, {sh['stride']}, {sh['reduction']})"
    yours = learner_class(sh["inplanes"], sh["planes"], sh["stride"], sh["reduction"])
    state = library.state_dict()
    own = {k: tuple(v.shape) for k, v in yours.state_dict().items()}
    want = {k: tuple(v.shape) for k, v in state.items()}
    if own != want:
        missing = sorted(set(want) - set(own))
        extra = sorted(set(own) - set(want))
        shapes = [f"{k} {own[k]} (should be {want[k]})" for k in sorted(set(own) & set(want)) if own[k] != want[k]]
        report.fail(
            f"your block's parameters do not match the library's ({where})",
            details=f"missing: {missing or 'none'}; unexpected: {extra or 'none'}; wrong shapes: {shapes or 'none'}",
            hints=[
                "keep the attribute names of the docstring (conv1, bn1, conv2, bn2, se, downsample) and build "
                "downsample only where the stride or the width changes"
            ],
        )
        raise PartFailed
    if part == "the parameters' names and shapes":
        return
    yours.load_state_dict(state)
    rng = rng_for(i)
    x = rng.standard_normal((sh["n"], sh["inplanes"], sh["size"], sh["size"])).astype(np.float32)
    out = (sh["size"] - 1) // sh["stride"] + 1
    gy = rng.standard_normal((sh["n"], sh["planes"], out, out)).astype(np.float32)
    y_ref, dx_ref, dp_ref = _run(library, x, gy)
    report.calling = f"your SEBasicBlock's forward and backward ({where})"
    y, dx, dp = _run(yours, x, gy)
    rtol, atol = 2e-4, 1e-5  # the layers compute in float32
    if part == "forward y":

        def hints() -> list[str]:
            found = [h for h, v in _wrong_answers(sh, state, x, gy).items() if close(y, v, rtol=1e-4)]
            relu_missing = _wrong_answers_no_relu(library, x, gy)
            return found + ([RELU_HINT] if close(y, relu_missing, rtol=1e-4) else [])

        report.expect_close("forward y", y, y_ref, where, hints, rtol=rtol, atol=atol)
    elif part == "dL/dx":
        report.expect_close("dL/dx", dx, dx_ref, where, rtol=rtol, atol=atol)
    else:
        for name, g in dp_ref.items():
            report.expect_close(f"dL/d{name}", dp[name], g, where, rtol=rtol, atol=atol)


def _wrong_answers_no_relu(library: BasicBlock, x: np.ndarray, gy: np.ndarray) -> Any:
    """The output without the final ReLU: SE(F(x)) + shortcut(x)."""
    xt = minise.tensor(x)
    out = library.se(library.residual(xt))  # type: ignore[misc]
    shortcut = xt if library.downsample is None else library.downsample(xt)
    return (out + shortcut).numpy()


EXERCISE = Exercise(
    number=10,
    title="an SE residual block: SEBasicBlock",
    filename="ex10_se_block.py",
    solution=SOLUTION,
    check=check,
    mistakes=(
        Mistake(
            "SE after the addition",
            "        out = self.se(self.bn2(self.conv2(out)))\n"
            "        shortcut = x if self.downsample is None else self.downsample(x)\n"
            "        return F.relu(out + shortcut)\n",
            "        out = self.bn2(self.conv2(out))\n"
            "        shortcut = x if self.downsample is None else self.downsample(x)\n"
            "        return self.se(F.relu(out + shortcut))\n",
            "'post' placement",
        ),
        Mistake(
            "SE on the shortcut",
            "        out = self.se(self.bn2(self.conv2(out)))\n"
            "        shortcut = x if self.downsample is None else self.downsample(x)\n",
            "        out = self.bn2(self.conv2(out))\n"
            "        shortcut = self.se(x if self.downsample is None else self.downsample(x))\n",
            "'identity' placement",
        ),
        Mistake(
            "no final ReLU", "return F.relu(out + shortcut)", "return out + shortcut", "ReLU comes after the addition"
        ),
    ),
)
