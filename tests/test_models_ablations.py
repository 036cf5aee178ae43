"""The last two ablations of the SENet paper as model options: SE after the 3x3 convolution
(``placement="3x3"``, Table 15) and NoSqueeze (``squeeze="none"``, Table 16). Where the block sits,
the parameter counts of the ImageNet SE-ResNet-50 variants against the paper's, the MACs, and the
gradients (float64 central differences on tiny shapes, a random cotangent)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

import minise
import minise.functional as F
from minise import models
from minise.gradcheck import gradcheck
from minise.models import BasicBlock, Bottleneck, SEConfig
from minise.nn import Conv2d, Module, SEBlock
from minise.tensor import Tensor


def image(shape: tuple[int, ...], seed: int = 0, dtype: Any = np.float64) -> Tensor:
    return Tensor(np.random.default_rng(seed).standard_normal(shape).astype(dtype))


def leaf_calls(model: Module, prefix: str, size: int = 32) -> list[str]:
    rows = models.summarize(model, (3, size, size)).rows
    return [r.name[len(prefix) :] for r in rows if r.name.startswith(prefix)]


def nosqueeze_numpy(x: np.ndarray, w1: np.ndarray, b1: np.ndarray, w2: np.ndarray, b2: np.ndarray) -> np.ndarray:
    """y = x * sigmoid(W2 relu(W1 x + b1) + b2) at every pixel; w1 (R, C, 1, 1), w2 (C, R, 1, 1)."""
    h = np.maximum(np.einsum("rc,nchw->nrhw", w1[:, :, 0, 0], x) + b1[:, None, None], 0)
    a2 = np.einsum("cr,nrhw->nchw", w2[:, :, 0, 0], h) + b2[:, None, None]
    return x * (1 / (1 + np.exp(-a2)))


# --------------------------------------------------------------------------------------------------
# where the SE block sits
# --------------------------------------------------------------------------------------------------
def test_se_3x3_sits_after_the_3x3_conv_of_a_bottleneck() -> None:
    model = models.se_resnet50(placement="3x3")
    block = model.layer2[0]
    assert isinstance(block, Bottleneck) and block.se is not None
    assert block.se.channels == 128  # the inner width, not the 512 output channels
    order = leaf_calls(model, "layer2.0.", 64)
    assert order == [
        "conv1", "bn1", "relu", "conv2", "bn2", "relu", "se", "conv3", "bn3",
        "downsample.0", "downsample.1", "relu",
    ]  # fmt: skip
    # ResNeXt: the SE block sees the 32 x 4 = 128 grouped channels of stage 1
    assert models.se_resnext50_32x4d(placement="3x3").layer1[0].se.channels == 128


def test_se_3x3_in_a_basic_block_sits_after_the_first_3x3_conv() -> None:
    model = models.se_resnet20(placement="3x3")
    block = model.layer2[0]
    assert isinstance(block, BasicBlock) and block.se is not None and block.se.channels == 32
    order = leaf_calls(model, "layer2.0.")
    assert order == ["conv1", "bn1", "relu", "se", "conv2", "bn2", "downsample.0", "downsample.1", "relu"]
    model.eval()  # batch norm is a fixed affine map: compare with the block's own layers
    x = image((2, 16, 8, 8), seed=1, dtype=np.float32)
    se, relu = block.se, F.relu
    assert block.downsample is not None
    expected = relu(block.bn2(block.conv2(se(relu(block.bn1(block.conv1(x)))))) + block.downsample(x))
    np.testing.assert_allclose(block(x).numpy(), expected.numpy(), rtol=1e-6, atol=1e-6)


def test_nosqueeze_block_has_1x1_convolutions_and_a_full_map_gate() -> None:
    se = SEBlock(32, reduction=8, squeeze="none", dtype=np.float64)
    assert isinstance(se.fc1, Conv2d) and isinstance(se.fc2, Conv2d)
    assert se.fc1.weight.shape == (4, 32, 1, 1) and se.fc2.weight.shape == (32, 4, 1, 1)
    x = image((2, 32, 5, 3), seed=2)
    e = se.excitation(x)
    assert e.shape == (2, 32, 5, 3)  # one gate per channel AND pixel: nothing is pooled
    assert float(e.numpy().std(axis=(2, 3)).min()) > 0  # it varies over the map
    p = {k: v for k, v in se.state_dict().items()}
    expected = nosqueeze_numpy(x.numpy(), p["fc1.weight"], p["fc1.bias"], p["fc2.weight"], p["fc2.bias"])
    np.testing.assert_allclose(se(x).numpy(), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("option", [{"placement": "3x3"}, {"squeeze": "none"}])
def test_new_ablations_run_through_the_registry_and_config(option: dict[str, str]) -> None:
    model = models.create("se_resnet20", **option)
    assert model(image((1, 3, 16, 16), dtype=np.float32)).shape == (1, 10)
    assert SEConfig(**option).as_dict()[next(iter(option))] == next(iter(option.values()))
    with pytest.raises(ValueError, match="placement='3x4'"):
        SEConfig(placement="3x4")


# --------------------------------------------------------------------------------------------------
# parameters and MACs of the ImageNet variants against the paper (Tables 15 and 16)
# --------------------------------------------------------------------------------------------------
def _se_params(c: int, r: int = 16) -> int:
    return 2 * c * (c // r) + c // r + c


def test_imagenet_parameter_counts_match_tables_15_and_16() -> None:
    # building an SE-ResNet-50 takes about 1.5 s here (measured); no need to count without building
    se3x3 = models.se_resnet50(placement="3x3").num_parameters()
    nosqueeze = models.se_resnet50(squeeze="none").num_parameters()
    # by formula: ResNet-50 + one SE block on each bottleneck's inner width (64/128/256/512 x 3/4/6/3)
    assert se3x3 == 25_557_032 + sum(n * _se_params(w) for w, n in ((64, 3), (128, 4), (256, 6), (512, 3)))
    assert se3x3 == 25_718_228
    # the paper prints 25.8 M (Table 15); this count is 25.72 M: within its rounding of 0.1 M
    assert abs(se3x3 / 1e6 - 25.8) < 0.1
    # NoSqueeze keeps exactly the SE weights, as 1x1 convolutions: 28.1 M (Table 16)
    assert nosqueeze == 28_088_024 and round(nosqueeze / 1e6, 1) == 28.1


def test_macs_of_nosqueeze_count_every_pixel() -> None:
    se = models.se_resnet20(squeeze="none")
    plain_se = models.se_resnet20()
    extra = models.count_macs(se, (3, 32, 32)) - models.count_macs(plain_se, (3, 32, 32))
    # at r = 16 the hidden widths are 1, 2, 4 on 32x32, 16x16 and 8x8 maps, 3 blocks each
    per_pixel = sum(3 * 2 * c * (c // 16) * (hw * hw - 1) for c, hw in ((16, 32), (32, 16), (64, 8)))
    assert extra == per_pixel


# --------------------------------------------------------------------------------------------------
# gradients: float64 central differences on tiny shapes
# --------------------------------------------------------------------------------------------------
def _check_module(module: Module, x: Tensor) -> None:
    params = list(module.parameters())
    report = gradcheck(lambda x, *ps: module(x), x, *params)
    assert report.ok, report


@settings(max_examples=15, deadline=None)
@given(
    n=st.integers(1, 3),
    c=st.integers(1, 6),
    hidden=st.integers(1, 4),
    h=st.integers(1, 4),
    w=st.integers(1, 4),
    bias=st.booleans(),
    gate=st.sampled_from(("sigmoid", "tanh")),
    seed=st.integers(0, 2**16),
)
@example(n=1, c=3, hidden=2, h=2, w=2, bias=True, gate="sigmoid", seed=1)  # batch 1
@example(n=2, c=1, hidden=1, h=3, w=2, bias=True, gate="sigmoid", seed=2)  # one channel
@example(n=2, c=4, hidden=2, h=1, w=1, bias=False, gate="sigmoid", seed=3)  # 1x1 spatial
def test_nosqueeze_block_gradients(
    n: int, c: int, hidden: int, h: int, w: int, bias: bool, gate: str, seed: int
) -> None:
    minise.manual_seed(seed)
    # a huge reduction with min_channels = hidden gives any hidden width, R > C included
    se = SEBlock(c, reduction=10**6, min_channels=hidden, bias=bias, squeeze="none", gate=gate, dtype=np.float64)
    assert se.hidden == hidden
    rng = np.random.default_rng(seed)
    x = Tensor(rng.standard_normal((n, c, h, w)), requires_grad=True)
    for p in se.parameters():
        p.data[...] = rng.standard_normal(p.shape)
    # central differences (eps 1e-6) across the inner relu's kink are meaningless: such a draw
    # (|a1| < 1e-4 somewhere, probability ~1e-4 per element) is rejected
    a1 = np.einsum("rc,nchw->nrhw", se.fc1.weight.data[:, :, 0, 0], x.data)
    if se.fc1.bias is not None:
        a1 += se.fc1.bias.data[:, None, None]
    assume(np.abs(a1).min() > 1e-4)
    _check_module(se, x)


@pytest.mark.parametrize("placement, squeeze", [("3x3", "avg"), ("standard", "none")], ids=["se3x3", "nosqueeze"])
@pytest.mark.parametrize("block_type", ["basic", "bottleneck"])
def test_residual_blocks_with_se_3x3_and_nosqueeze_pass_gradcheck(
    placement: str, squeeze: str, block_type: str
) -> None:
    minise.manual_seed(5)
    cfg = SEConfig(reduction=2, placement=placement, squeeze=squeeze)
    if block_type == "basic":
        block: Module = BasicBlock(2, 4, stride=2, se=cfg, dtype=np.float64)  # projection shortcut
        x = image((2, 2, 4, 4), seed=7)
    else:
        block = Bottleneck(4, 2, stride=1, se=cfg, dtype=np.float64)  # width 2, 8 output channels
        x = image((1, 4, 3, 3), seed=8)
    x.requires_grad = True
    block.eval()  # BN as a fixed affine map with non-trivial statistics
    rng = np.random.default_rng(11)
    for name, b in block.named_buffers():
        b[...] = rng.uniform(0.5, 1.5, b.shape) if name.endswith("var") else rng.standard_normal(b.shape) * 0.1
    _check_module(block, x)
    block.train()  # and with batch statistics
    _check_module(block, x)


# --------------------------------------------------------------------------------------------------
# against PyTorch
# --------------------------------------------------------------------------------------------------
@pytest.mark.torch
def test_nosqueeze_equals_torch_1x1_convolutions() -> None:
    torch = pytest.importorskip("torch")
    minise.manual_seed(0)
    se = SEBlock(12, reduction=4, squeeze="none", dtype=np.float64)
    x = np.random.default_rng(0).standard_normal((2, 12, 5, 4))
    p = {k: torch.from_numpy(v.copy()).requires_grad_() for k, v in se.state_dict().items()}
    xt = torch.from_numpy(x).requires_grad_()
    h = torch.relu(torch.nn.functional.conv2d(xt, p["fc1.weight"], p["fc1.bias"]))
    yt = xt * torch.sigmoid(torch.nn.functional.conv2d(h, p["fc2.weight"], p["fc2.bias"]))
    gy = np.random.default_rng(1).standard_normal(yt.shape)
    yt.backward(torch.from_numpy(gy))
    xm = Tensor(x, requires_grad=True)
    y = se(xm)
    y.backward(gy)
    np.testing.assert_allclose(y.numpy(), yt.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(xm.grad, xt.grad.numpy(), rtol=1e-10, atol=1e-12)
    for name, param in se.named_parameters():
        np.testing.assert_allclose(param.grad, p[name].grad.numpy(), rtol=1e-10, atol=1e-12, err_msg=name)
