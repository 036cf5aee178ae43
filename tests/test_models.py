"""The model zoo: shapes, parameter counts (published and by formula), every SE option, the
registry, the summary's MACs, and equality with a PyTorch build of the same architecture."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import minise
import minise.functional as F
from minise import backend, models
from minise.models import BasicBlock, Bottleneck, ResidualBlock, SEConfig
from minise.nn import Module, SEBlock
from minise.tensor import Tensor

CIFAR_N = {20: 3, 32: 5, 44: 7, 56: 9, 110: 18}

# published counts, 1000 classes (torchvision; Cadene's pretrainedmodels for the SE models)
IMAGENET_PARAMS = {
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnext50_32x4d": 25_028_904,
    "se_resnet50": 28_088_024,
    "se_resnext50_32x4d": 27_559_896,
}


def image(shape: tuple[int, ...], seed: int = 0, dtype: Any = np.float32) -> Tensor:
    return Tensor(np.random.default_rng(seed).standard_normal(shape).astype(dtype))


def blocks(model: Module) -> list[ResidualBlock]:
    return [m for m in model.modules() if isinstance(m, ResidualBlock)]


def se_blocks(model: Module) -> list[SEBlock]:
    return [m for m in model.modules() if isinstance(m, SEBlock)]


# --------------------------------------------------------------------------------------------------
# parameter counts by formula
# --------------------------------------------------------------------------------------------------
def se_params(c: int, r: int = 16, bias: bool = True, min_channels: int = 1) -> int:
    h = max(c // r, min_channels)
    return 2 * c * h + (h + c if bias else 0)


def cifar_params(depth: int, bottleneck: bool = False, classes: int = 10, r: int | None = None) -> int:
    """Conv weights + 2 per BN channel + projection shortcuts + SE + the classifier, counted by hand."""
    bn = lambda c: 2 * c
    total = 3 * 16 * 9 + bn(16)
    inplanes = 16
    n = (depth - 2) // (9 if bottleneck else 6)
    for planes in (16, 32, 64):
        out = planes * (4 if bottleneck else 1)
        for i in range(n):
            if bottleneck:
                total += inplanes * planes + planes * planes * 9 + planes * out + bn(planes) * 2 + bn(out)
            else:
                total += inplanes * planes * 9 + planes * planes * 9 + bn(planes) * 2
            if i == 0 and inplanes != out:
                total += inplanes * out + bn(out)
            if r is not None:
                total += se_params(out, r)
            inplanes = out
    return total + inplanes * classes + classes


def test_cifar_resnet20_has_272474_parameters_with_projection_shortcuts() -> None:
    assert cifar_params(20) == 272_474  # "0.27M"; option A (zero padding) would be 269,722
    assert models.resnet20().num_parameters() == 272_474


@pytest.mark.parametrize("depth", [20, 32, 44, 56, 110])
def test_cifar_basic_parameter_counts_match_the_formula(depth: int) -> None:
    assert models.create(f"resnet{depth}").num_parameters() == cifar_params(depth)
    assert models.create(f"se_resnet{depth}").num_parameters() == cifar_params(depth, r=16)


def test_cifar_resnet164_is_a_bottleneck_network_with_1_7m_parameters() -> None:
    plain, se = models.resnet164(), models.se_resnet164()
    assert plain.num_parameters() == cifar_params(164, bottleneck=True) == 1_704_154  # the paper's "1.7M"
    assert se.num_parameters() == cifar_params(164, bottleneck=True, r=16)
    assert all(isinstance(b, Bottleneck) for b in blocks(plain)) and len(blocks(plain)) == 54
    assert [s[-1].out_channels for s in plain.stages] == [64, 128, 256]
    assert sorted({s.hidden for s in se_blocks(se)}) == [4, 8, 16]


@pytest.mark.parametrize("name", sorted(IMAGENET_PARAMS))
def test_imagenet_parameter_counts_equal_the_published_ones(name: str) -> None:
    assert models.create(name).num_parameters() == IMAGENET_PARAMS[name]


def test_se_adds_the_se_blocks_parameters_to_every_imagenet_resnet() -> None:
    for depth in (18, 34):
        plain, se = models.create(f"resnet{depth}"), models.create(f"se_resnet{depth}")
        expected = sum(se_params(b.out_channels) for b in blocks(plain))
        assert se.num_parameters() - plain.num_parameters() == expected


def test_num_classes_changes_only_the_classifier() -> None:
    assert models.create("resnet20", num_classes=100).num_parameters() == cifar_params(20, classes=100)
    assert models.create("resnet50", num_classes=10).num_parameters() == 25_557_032 - 2048 * 990 - 990


# --------------------------------------------------------------------------------------------------
# forward and backward
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, shape",
    [
        ("resnet20", (2, 3, 32, 32)),
        ("se_resnet20", (2, 3, 32, 32)),
        ("se_resnet164", (2, 3, 32, 32)),
        ("se_resnet18", (1, 3, 64, 64)),
        ("se_resnext50_32x4d", (1, 3, 64, 64)),
    ],
)
def test_forward_gives_one_row_of_logits_per_image(name: str, shape: tuple[int, ...]) -> None:
    model = models.create(name)
    y = model(image(shape))
    classes = 10 if models.model_family(name) == "cifar" else 1000
    assert y.shape == (shape[0], classes)
    assert y.dtype == np.float32 and np.isfinite(y.numpy()).all()


def test_backward_through_se_resnet20_reaches_every_parameter() -> None:
    model = models.se_resnet20()
    loss = F.cross_entropy(model(image((2, 3, 32, 32))), np.array([3, 7]))
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert p.grad.shape == p.shape and np.isfinite(p.grad).all(), name
    assert any(np.abs(s.fc1.weight.grad).sum() > 0 for s in se_blocks(model))


def test_zero_init_residual_zeroes_the_last_bn_of_every_branch() -> None:
    for name in ("resnet20", "resnet164", "resnet18"):
        model = models.create(name, zero_init_residual=True)
        for b in blocks(model):
            assert (b.last_bn.weight.data == 0).all()
            assert (b.bn1.weight.data == 1).all()
    model = models.resnet20()
    assert all((b.bn2.weight.data == 1).all() for b in blocks(model))


def test_dtype_option_builds_a_float64_model() -> None:
    model = models.se_resnet20(dtype=np.float64)
    assert {p.dtype for p in model.parameters()} == {np.dtype(np.float64)}
    assert model(image((1, 3, 32, 32), dtype=np.float64)).dtype == np.float64


# --------------------------------------------------------------------------------------------------
# SE options
# --------------------------------------------------------------------------------------------------
def test_at_r16_resnet20_se_blocks_have_1_2_and_4_hidden_units() -> None:
    model = models.se_resnet20()
    assert [[b.se.hidden for b in stage] for stage in model.stages] == [[1] * 3, [2] * 3, [4] * 3]


def test_reduction_sets_the_hidden_width_and_the_count() -> None:
    model = models.se_resnet20(reduction=4)
    assert sorted({s.hidden for s in se_blocks(model)}) == [4, 8, 16]
    assert model.num_parameters() == cifar_params(20, r=4)
    r8 = models.se_resnet50(reduction=8)
    assert {s.hidden * 8 for s in se_blocks(r8)} == {256, 512, 1024, 2048}


def test_min_channels_floors_the_hidden_width() -> None:
    model = models.se_resnet20(min_channels=4)
    assert sorted({s.hidden for s in se_blocks(model)}) == [4]
    assert model.num_parameters() == cifar_params(20) + 3 * sum(se_params(c, min_channels=4) for c in (16, 32, 64))


def test_bias_false_removes_exactly_the_se_biases() -> None:
    biased, unbiased = models.se_resnet50(), models.se_resnet50(bias=False)
    se_biases = sum(s.hidden + s.channels for s in se_blocks(biased))
    assert biased.num_parameters() - unbiased.num_parameters() == se_biases
    assert all(s.fc1.bias is None and s.fc2.bias is None for s in se_blocks(unbiased))
    names = {n for n, _ in biased.named_parameters()} - {n for n, _ in unbiased.named_parameters()}
    assert names and all(n.endswith(("se.fc1.bias", "se.fc2.bias")) for n in names)


@pytest.mark.parametrize(
    "option",
    [{"squeeze": "max"}, {"squeeze": "none"}, {"gate": "tanh"}, {"gate": "relu"}]
    + [{"placement": p} for p in ("pre", "post", "identity", "3x3")],
)
def test_each_ablation_changes_the_output(option: dict[str, str]) -> None:
    x = image((2, 3, 32, 32))
    minise.manual_seed(0)
    standard = models.se_resnet20()(x).numpy()
    minise.manual_seed(0)
    again = models.se_resnet20()(x).numpy()
    minise.manual_seed(0)
    variant = models.se_resnet20(**option)(x).numpy()
    np.testing.assert_array_equal(standard, again)  # the seed fixes everything
    assert not np.allclose(standard, variant, rtol=1e-4, atol=1e-6)
    key, value = next(iter(option.items()))
    if key != "placement":
        assert all(getattr(s, key) == value for s in se_blocks(models.se_resnet20(**option)))


def test_se_stages_puts_se_blocks_only_in_the_listed_stages() -> None:
    model = models.se_resnet20(se_stages=(3,))
    assert [[b.se is not None for b in stage] for stage in model.stages] == [[False] * 3, [False] * 3, [True] * 3]
    assert model.num_parameters() == cifar_params(20) + 3 * se_params(64)
    r50 = models.se_resnet50(se_stages=[1, 4])
    assert [all(b.se is not None for b in s) for s in r50.stages] == [True, False, False, True]
    assert r50.num_parameters() == 25_557_032 + 3 * se_params(256) + 3 * se_params(2048)


def _leaf_calls(model: Module, prefix: str) -> list[str]:
    rows = models.summarize(model, (3, 32, 32)).rows
    return [r.name[len(prefix) :] for r in rows if r.name.startswith(prefix)]


@pytest.mark.parametrize(
    "placement, order, se_channels",
    [
        ("standard", ["conv1", "bn1", "relu", "conv2", "bn2", "se", "downsample.0", "downsample.1", "relu"], 32),
        ("pre", ["se", "conv1", "bn1", "relu", "conv2", "bn2", "downsample.0", "downsample.1", "relu"], 16),
        ("post", ["conv1", "bn1", "relu", "conv2", "bn2", "downsample.0", "downsample.1", "relu", "se"], 32),
        ("identity", ["conv1", "bn1", "relu", "conv2", "bn2", "downsample.0", "downsample.1", "se", "relu"], 32),
    ],
)
def test_placement_puts_the_se_block_where_the_paper_says(placement: str, order: list[str], se_channels: int) -> None:
    # layer2.0 goes from 16 to 32 channels: "pre" recalibrates the 16 input channels, the others 32
    model = models.se_resnet20(placement=placement)
    block = model.layer2[0]
    assert isinstance(block, BasicBlock) and block.se is not None and block.se.channels == se_channels
    assert _leaf_calls(model, "layer2.0.") == order
    # and numerically, from the block's own layers (eval mode: batch norm is a fixed affine map)
    model.eval()
    x = image((2, 16, 8, 8), seed=1)
    se, relu = block.se, F.relu
    assert block.downsample is not None
    res = lambda z: block.bn2(block.conv2(relu(block.bn1(block.conv1(z)))))
    short = block.downsample(x)
    expected = {
        "standard": lambda: relu(se(res(x)) + short),
        "pre": lambda: relu(res(se(x)) + short),
        "post": lambda: se(relu(res(x) + short)),
        "identity": lambda: relu(res(x) + se(short)),
    }[placement]()
    np.testing.assert_allclose(block(x).numpy(), expected.numpy(), rtol=1e-6, atol=1e-6)


def test_bad_se_options_are_rejected_with_the_fix() -> None:
    with pytest.raises(ValueError, match="placement='after'"):
        models.se_resnet20(placement="after")
    with pytest.raises(ValueError, match="squeeze"):
        models.se_resnet20(squeeze="median")
    with pytest.raises(ValueError, match="reduction"):
        models.se_resnet20(reduction=0)
    with pytest.raises(ValueError, match="stages 1..3"):
        models.se_resnet20(se_stages=(4,))
    with pytest.raises(ValueError, match="has no SE blocks.*se_resnet20"):
        models.create("resnet20", reduction=8)
    with pytest.raises(TypeError, match="unknown option"):
        models.create("resnet18", stride_in_1x1=True)  # basic blocks have no 1x1 convolution to stride
    with pytest.raises(TypeError, match="unknown option"):
        models.create("se_resnet20", redution=8)
    assert SEConfig().as_dict() == {
        "reduction": 16,
        "min_channels": 1,
        "bias": True,
        "squeeze": "avg",
        "gate": "sigmoid",
        "placement": "standard",
    }


def test_resnext_blocks_use_32_groups_of_width_4() -> None:
    model = models.se_resnext50_32x4d()
    first = model.layer1[0]
    assert isinstance(first, Bottleneck)
    assert (first.conv2.groups, first.conv2.in_channels, first.conv3.out_channels) == (32, 128, 256)
    assert model.layer4[0].conv2.in_channels == 1024


def test_stride_sits_on_the_3x3_conv_unless_stride_in_1x1() -> None:
    v15, caffe = Bottleneck(256, 128, stride=2), Bottleneck(256, 128, stride=2, stride_in_1x1=True)
    assert (v15.conv1.stride, v15.conv2.stride) == (1, 2)
    assert (caffe.conv1.stride, caffe.conv2.stride) == (2, 1)
    x = image((1, 256, 8, 8))
    assert v15(x).shape == caffe(x).shape == (1, 512, 4, 4)


# --------------------------------------------------------------------------------------------------
# registry
# --------------------------------------------------------------------------------------------------
def test_list_models_and_create() -> None:
    names = models.list_models()
    for depth in (20, 32, 44, 56, 110, 164):
        assert f"resnet{depth}" in names and f"se_resnet{depth}" in names
    for name in ("resnet18", "resnet34", "resnet50", "resnet101", "se_resnext50_32x4d"):
        assert name in names and (name.startswith("se_") or f"se_{name}" in names)
    assert models.list_models(family="cifar") + models.list_models(family="imagenet") == names
    assert isinstance(models.create("se_resnet20"), models.CifarResNet)
    assert models.create("resnet20", num_classes=100).fc.out_features == 100


def test_unknown_model_names_list_the_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown model 'se-resnet20'.*did you mean 'se_resnet20'.*resnet110"):
        models.create("se-resnet20")
    with pytest.raises(ValueError, match="family"):
        models.list_models(family="mnist")


# --------------------------------------------------------------------------------------------------
# summary
# --------------------------------------------------------------------------------------------------
def cifar_macs(depth: int) -> int:
    """Conv and FC MACs of a basic-block CIFAR ResNet by hand: every 3x3 conv of a stage costs the same."""
    n = (depth - 2) // 6
    per_conv = 16 * 32 * 32 * 16 * 9  # 2,359,296 in every stage: channels double as the area quarters
    stem, fc = 16 * 32 * 32 * 3 * 9, 64 * 10
    first = {32: 32 * 16 * 16 * 16 * 9, 64: 64 * 8 * 8 * 32 * 9}  # the stride-2 convolutions
    proj = {32: 32 * 16 * 16 * 16, 64: 64 * 8 * 8 * 32}
    return stem + 2 * n * per_conv + sum(first[c] + (2 * n - 1) * per_conv + proj[c] for c in (32, 64)) + fc


def test_summary_counts_every_parameter_and_the_macs_by_hand() -> None:
    model = models.se_resnet20()
    report = models.summarize(model, (3, 32, 32))
    assert report.total_params == report.params_in_rows == model.num_parameters() == 274_847
    se_weights = sum(s.fc1.weight.size + s.fc2.weight.size for s in se_blocks(model))
    assert report.total_macs == cifar_macs(20) + se_weights == 40_813_184 + se_weights
    assert report.rows[0].output_shape == (16, 32, 32) and report.rows[-1].output_shape == (10,)
    text = models.summary(model, (3, 32, 32))
    assert "Total params: 274,847" in text and "layer3.2.se (SEBlock)" in text and "MACs" in text
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        models.summary(model, (1, 3, 32, 32))


def test_imagenet_macs_torchvision_layout_and_the_papers_caffe_layout() -> None:
    # torchvision's v1.5 layout: 4.09 GMACs; the paper's Caffe layout (stride on the 1x1): 3.86 "GFLOPs"
    assert models.count_macs(models.resnet50(), (3, 224, 224)) == 4_089_184_256
    caffe = models.count_macs(models.resnet50(stride_in_1x1=True), (3, 224, 224))
    assert round(caffe / 1e9, 2) == 3.86
    se = models.se_resnet50(stride_in_1x1=True)
    se_weights = sum(s.fc1.weight.size + s.fc2.weight.size for s in se_blocks(se))
    assert models.count_macs(se, (3, 224, 224)) - caffe == se_weights  # SE adds its FCs' MACs only


def test_dry_walk_equals_a_real_forward_and_leaves_the_model_as_it_was() -> None:
    for name, shape in (("se_resnet20", (3, 32, 32)), ("se_resnext50_32x4d", (3, 64, 64))):
        model = models.create(name, placement="identity")
        bn = model.bn1
        before = bn.running_mean.copy()
        dry = models.summarize(model, shape)
        real = models.summarize(model, shape, dry_run=False)
        assert [(r.name, r.output_shape, r.params, r.macs) for r in dry.rows] == [
            (r.name, r.output_shape, r.params, r.macs) for r in real.rows
        ]
        assert model.training and all(m.training for m in model.modules())
        np.testing.assert_array_equal(bn.running_mean, before)  # eval mode: running statistics untouched
        assert "forward" not in vars(bn)  # the wrappers are gone


# --------------------------------------------------------------------------------------------------
# against PyTorch: the same architecture built in torch, its weights loaded into minise
# --------------------------------------------------------------------------------------------------
def torch_resnet(torch: Any, cifar: bool, bottleneck: bool, layers: tuple[int, ...], classes: int, **kw: Any) -> Any:
    """A plain PyTorch ResNet with torchvision's module names and standard SE blocks (se.fc1, se.fc2)."""
    nn = torch.nn
    groups, width_per_group, r = kw.get("groups", 1), kw.get("width_per_group", 64), kw.get("reduction")

    class SE(nn.Module):
        def __init__(self, c: int) -> None:
            super().__init__()
            h = max(c // r, 1)
            self.fc1, self.fc2 = nn.Linear(c, h), nn.Linear(h, c)

        def forward(self, x: Any) -> Any:
            e = torch.sigmoid(self.fc2(torch.relu(self.fc1(x.mean((2, 3))))))
            return x * e[:, :, None, None]

    class Block(nn.Module):
        def __init__(self, inp: int, planes: int, stride: int) -> None:
            super().__init__()
            exp = 4 if bottleneck else 1
            width = int(planes * width_per_group / 64) * groups if bottleneck else planes
            if bottleneck:
                self.conv1 = nn.Conv2d(inp, width, 1, bias=False)
                self.conv2 = nn.Conv2d(width, width, 3, stride, 1, groups=groups, bias=False)
                self.conv3 = nn.Conv2d(width, planes * exp, 1, bias=False)
                self.bn3 = nn.BatchNorm2d(planes * exp)
            else:
                self.conv1 = nn.Conv2d(inp, width, 3, stride, 1, bias=False)
                self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
            self.bn1, self.bn2 = nn.BatchNorm2d(width), nn.BatchNorm2d(width)
            self.se = SE(planes * exp) if r else None
            self.downsample = None
            if stride != 1 or inp != planes * exp:
                self.downsample = nn.Sequential(
                    nn.Conv2d(inp, planes * exp, 1, stride, bias=False), nn.BatchNorm2d(planes * exp)
                )

        def forward(self, x: Any) -> Any:
            out = torch.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            if bottleneck:
                out = self.bn3(self.conv3(torch.relu(out)))
            if self.se is not None:
                out = self.se(out)
            return torch.relu(out + (x if self.downsample is None else self.downsample(x)))

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            stem = 16 if cifar else 64
            self.conv1 = nn.Conv2d(3, stem, 3, 1, 1, bias=False) if cifar else nn.Conv2d(3, 64, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(stem)
            self.maxpool = nn.Identity() if cifar else nn.MaxPool2d(3, 2, 1)
            inp, exp = stem, 4 if bottleneck else 1
            planes_list = (16, 32, 64) if cifar else (64, 128, 256, 512)
            for i, (planes, n) in enumerate(zip(planes_list, layers), start=1):
                stage = []
                for j in range(n):
                    stage.append(Block(inp, planes, 2 if j == 0 and i > 1 else 1))
                    inp = planes * exp
                setattr(self, f"layer{i}", nn.Sequential(*stage))
            self.stages = len(layers)
            self.fc = nn.Linear(inp, classes)

        def forward(self, x: Any) -> Any:
            x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
            for i in range(1, self.stages + 1):
                x = getattr(self, f"layer{i}")(x)
            return self.fc(x.mean((2, 3)))

    return Net()


def load_from_torch(torch: Any, net: Any, model: Module) -> None:
    """Randomise the torch BN statistics and affine parameters, then copy every tensor into ``model``."""
    gen = torch.Generator().manual_seed(0)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            c = m.num_features
            m.weight.data = torch.rand(c, generator=gen, dtype=m.weight.dtype) + 0.5
            m.bias.data = torch.randn(c, generator=gen, dtype=m.bias.dtype) * 0.1
            m.running_mean = torch.randn(c, generator=gen, dtype=m.running_mean.dtype) * 0.1
            m.running_var = torch.rand(c, generator=gen, dtype=m.running_var.dtype) + 0.5
    state = {k: v.detach().numpy() for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    model.load_state_dict(state)


@pytest.mark.torch
@pytest.mark.parametrize("depth", [20, 32, 44, 56, 110, 164])
def test_cifar_parameter_counts_equal_a_torch_build(depth: int) -> None:
    torch = pytest.importorskip("torch")
    bottleneck = depth == 164
    n = 18 if bottleneck else CIFAR_N[depth]
    for se in (False, True):
        net = torch_resnet(torch, True, bottleneck, (n, n, n), 10, reduction=16 if se else None)
        expected = sum(p.numel() for p in net.parameters())
        assert models.create(f"{'se_' if se else ''}resnet{depth}").num_parameters() == expected


@pytest.mark.torch
@pytest.mark.parametrize(
    "name, cifar, bottleneck, layers, kw, shape",
    [
        ("se_resnet20", True, False, (3, 3, 3), {"reduction": 16}, (2, 3, 32, 32)),
        (
            "se_resnext50_32x4d",
            False,
            True,
            (3, 4, 6, 3),
            {"reduction": 16, "groups": 32, "width_per_group": 4},
            (1, 3, 64, 64),
        ),
    ],
)
def test_outputs_equal_a_torch_build_with_the_same_weights(
    name: str, cifar: bool, bottleneck: bool, layers: tuple[int, ...], kw: dict[str, int], shape: tuple[int, ...]
) -> None:
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    net = torch_resnet(torch, cifar, bottleneck, layers, 10 if cifar else 1000, **kw).double()
    model = models.create(name, dtype=np.float64)
    load_from_torch(torch, net, model)
    x = np.random.default_rng(0).standard_normal(shape)
    for train in (False, True):  # eval: running statistics; train: batch statistics
        net.train(train)
        model.train(train)
        with torch.no_grad():
            expected = net(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(model(Tensor(x)).numpy(), expected, rtol=1e-9, atol=1e-9)


# --------------------------------------------------------------------------------------------------
# backends: the models take their array module from the data (skipped on CuPy without a GPU)
# --------------------------------------------------------------------------------------------------
def test_models_and_summary_run_on_each_backend(backend_name: str) -> None:
    minise.manual_seed(3)
    host = models.se_resnet20(dtype=np.float64, placement="identity")
    minise.manual_seed(3)
    model = models.se_resnet20(dtype=np.float64, placement="identity").to(backend_name)
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32))
    y = model(Tensor(backend.to_device(x, backend_name)))
    assert y.device == backend_name
    np.testing.assert_allclose(y.numpy(), host(Tensor(x)).numpy(), rtol=1e-9, atol=1e-9)
    assert models.summarize(model, (3, 32, 32)).total_macs == models.summarize(host, (3, 32, 32)).total_macs
