"""Exercise 10: an SE residual block as an ``nn.Module``, ``SEBasicBlock(inplanes, planes, stride, reduction)``.

Its weights are copied from the model library's ``BasicBlock`` with an SE block (``minise.models.blocks``),
and its output and every gradient (input and parameters, through minise's autograd) are compared
with the library block's; the hints name the placement (Table 14 of the paper) the learner built by
mistake (an SE block of the input's width among them), a missing SE block, the final ReLU missing or
moved before the addition, a projection shortcut missing or misplaced, and parameters named otherwise.
A case whose parameters do not match is reported once, and the other parts are graded on the rest.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

import minise
import minise.functional as F
from minise.exercises.core import Exercise, Mistake, Report, close, draw_cases, learner_function, rng_for
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
RELU_BEFORE_HINT = (
    "your ReLU acts on the branch before the addition, relu(SE(F(x))) + shortcut(x); it comes after it: "
    "relu(SE(F(x)) + shortcut(x)), so that the block's output is never negative"
)
NAMES_HINT = (
    "keep the attribute names of the docstring (conv1, bn1, conv2, bn2, se, downsample): the checker copies the "
    "library's weights into yours by name"
)
DOWNSAMPLE_HINT = (
    "build downsample exactly where the shape changes (stride != 1 or inplanes != planes): "
    "nn.Sequential(1x1 conv inplanes -> planes with the stride, BatchNorm2d(planes)); elsewhere it is None"
)
SE_WIDTH_HINT = (
    "your SE block is built for the block's input, inplanes channels (the 'pre' placement of Table 14); the "
    "SE-ResNet applies it to the residual branch's output, which has planes channels: "
    "nn.SEBlock(planes, reduction=reduction)"
)
SHAPES_HINT = "build {layers} with the sizes of the docstring (conv1: inplanes -> planes with the stride, ...)"
SE_SIZE_HINT = (
    "only the SE block's shapes are wrong ({keys}): build it as nn.SEBlock(planes, reduction=reduction) - "
    "its hidden width is planes // reduction (at least 1), so pass the block's own reduction on"
)


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


PARTS = {  # part -> the verb of its "right" line
    "the parameters' names and shapes": "match",
    "forward y": "matches",
    "dL/dx": "matches",
    "the parameter gradients": "match",
}


def check(module: ModuleType, report: Report) -> None:
    learner_class = learner_function(module, "SEBasicBlock")
    cases = draw_cases(_shapes, EDGE, count=6)
    laid_out: list[int] = []  # the cases whose parameters match the library's: the others cannot be compared
    with minise.use_backend("numpy"):
        with report.part("SEBasicBlock: the parameters' names and shapes"):
            for i, sh in enumerate(cases):
                if _check_layout(report, learner_class, sh, i, first_failure=len(laid_out) == i):
                    laid_out.append(i)
            if len(laid_out) == len(cases):
                report.ok(f"SEBasicBlock: the parameters' names and shapes match the library's on {len(cases)} cases")
        if not laid_out:
            return
        others = f" (the other {len(cases) - len(laid_out)}: see above)" if len(laid_out) < len(cases) else ""
        for part, verb in list(PARTS.items())[1:]:
            with report.part(f"SEBasicBlock: {part}"):
                for i in laid_out:
                    _check_case(report, learner_class, cases[i], i, part)
                report.ok(
                    f"SEBasicBlock: {part} {verb} the model library's SE BasicBlock on {len(laid_out)} cases{others}"
                )


def _where(sh: dict[str, Any]) -> str:
    return (
        f"inplanes {sh['inplanes']}, planes {sh['planes']}, stride {sh['stride']}, reduction {sh['reduction']}, "
        f"x ({sh['n']}, {sh['inplanes']}, {sh['size']}, {sh['size']})"
    )


def _names(names: list[str], buffers: set[str]) -> str:
    """'a, b (parameters); c (buffers)' for the report."""
    params = [k for k in names if k not in buffers]
    bufs = [k for k in names if k in buffers]
    text = "; ".join(
        f"{', '.join(group)} ({kind}{'s' * (len(group) != 1)})"
        for group, kind in ((params, "parameter"), (bufs, "batch-norm buffer"))
        if group
    )
    return text or "none"


def _check_layout(report: Report, learner_class: Any, sh: dict[str, Any], i: int, first_failure: bool) -> bool:
    """Whether the learner's block has the library's parameters and buffers (names and shapes); the first
    case that does not is reported, with hints for a missing projection, an SE of the input's width, names."""
    minise.manual_seed(i)
    library = _library_block(sh, "standard")
    report.calling = f"SEBasicBlock({sh['inplanes']}, {sh['planes']}, {sh['stride']}, {sh['reduction']})"
    yours = learner_class(sh["inplanes"], sh["planes"], sh["stride"], sh["reduction"])
    own = {k: tuple(v.shape) for k, v in yours.state_dict().items()}
    want = {k: tuple(v.shape) for k, v in library.state_dict().items()}
    if own == want:
        return True
    if not first_failure:
        return False
    buffers = set(want) - {k for k, _ in library.named_parameters()}
    buffers |= set(own) - {k for k, _ in yours.named_parameters()}
    missing, extra = sorted(set(want) - set(own)), sorted(set(own) - set(want))
    shapes = [f"{k} {own[k]} (should be {want[k]})" for k in sorted(set(own) & set(want)) if own[k] != want[k]]
    wrong = set(missing) | set(extra) | {k for k in set(own) & set(want) if own[k] != want[k]}
    pre = {k: tuple(v.shape) for k, v in _library_block(sh, "pre").state_dict().items() if k.startswith("se.")}
    hints = []
    if any(k.startswith("downsample.") for k in wrong):
        hints.append(DOWNSAMPLE_HINT)
    if any(k.startswith("se.") for k in wrong) and {k: v for k, v in own.items() if k.startswith("se.")} == pre:
        hints.append(SE_WIDTH_HINT)
    if any(not k.startswith("downsample.") for k in set(missing) | set(extra)):
        hints.append(NAMES_HINT)
    if not hints and all(k.startswith("se.") for k in wrong):
        hints.append(SE_SIZE_HINT.format(keys=", ".join(sorted(wrong))))
    elif not hints:
        hints.append(SHAPES_HINT.format(layers=", ".join(sorted({k.split(".")[0] for k in wrong}))))
    report.fail(
        f"SEBasicBlock: your block's parameters and buffers (its state_dict) differ from the library's ({_where(sh)})",
        details=f"missing: {_names(missing, buffers)}\nunexpected: {_names(extra, buffers)}\n"
        f"wrong shapes: {', '.join(shapes) or 'none'}",
        hints=hints,
    )
    return False


def _check_case(report: Report, learner_class: Any, sh: dict[str, Any], i: int, part: str) -> None:
    where = _where(sh)
    minise.manual_seed(i)
    library = _library_block(sh, "standard")
    report.calling = f"SEBasicBlock({sh['inplanes']}, {sh['planes']}, {sh['stride']}, {sh['reduction']})"
    yours = learner_class(sh["inplanes"], sh["planes"], sh["stride"], sh["reduction"])
    state = library.state_dict()
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
            no_relu, relu_before = _wrong_relus(library, x)
            return (
                found
                + ([RELU_HINT] if close(y, no_relu, rtol=1e-4) else [])
                + ([RELU_BEFORE_HINT] if close(y, relu_before, rtol=1e-4) else [])
            )

        report.expect_close("SEBasicBlock: forward y", y, y_ref, where, hints, rtol=rtol, atol=atol)
    elif part == "dL/dx":
        report.expect_close("SEBasicBlock: dL/dx", dx, dx_ref, where, rtol=rtol, atol=atol)
    else:
        for name, g in dp_ref.items():
            report.expect_close(f"SEBasicBlock: dL/d{name}", dp[name], g, where, rtol=rtol, atol=atol)


def _wrong_relus(library: BasicBlock, x: np.ndarray) -> tuple[Any, Any]:
    """The output without the final ReLU, SE(F(x)) + shortcut(x), and with the ReLU before the addition,
    relu(SE(F(x))) + shortcut(x)."""
    xt = minise.tensor(x)
    out = library.se(library.residual(xt))  # type: ignore[misc]
    shortcut = xt if library.downsample is None else library.downsample(xt)
    return (out + shortcut).numpy(), (F.relu(out) + shortcut).numpy()


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
        Mistake(  # the next three are a fresh reader's: the first two got no hint, or an unrelated one
            "ReLU before the addition",
            "return F.relu(out + shortcut)",
            "return F.relu(out) + shortcut",
            "your ReLU acts on the branch before the addition",
        ),
        Mistake(
            "SE on the block's input",
            "        self.se = nn.SEBlock(planes, reduction=reduction)\n",
            "        self.se = nn.SEBlock(inplanes, reduction=reduction)\n",
            "built for the block's input, inplanes channels",
        ),
        Mistake(
            "no projection shortcut",
            "        if stride != 1 or inplanes != planes:\n",
            "        if stride != 1:\n",
            "build downsample exactly where the shape changes",
        ),
        Mistake(  # a fresh reader's: it got the conv1 hint, though only se.* had wrong shapes
            "SE reduction ignored",
            "        self.se = nn.SEBlock(planes, reduction=reduction)\n",
            "        self.se = nn.SEBlock(planes)\n",
            "only the SE block's shapes are wrong (se.",
        ),
    ),
)
