"""minise.nn: Module bookkeeping, state dicts, Sequential, initialisation, BatchNorm2d, Dropout, SEBlock,
dtypes and backends, and a small CNN that learns."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import minise
import minise.functional as F
import minise.nn as nn
from minise import backend
from minise.nn import Module, Parameter


@pytest.fixture(autouse=True)
def seeded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test starts from seed 0; the generators in use before are put back afterwards."""
    monkeypatch.setattr(backend, "_host_rng", backend._host_rng)
    monkeypatch.setattr(backend, "_device_rng", backend._device_rng)
    monkeypatch.setattr(backend, "_seed_state", dict(backend._seed_state))
    minise.manual_seed(0)


class Block(Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.scale = Parameter(np.ones(4, np.float32))

    def forward(self, x: Any) -> Any:
        return F.relu(self.bn(self.conv(x))) * self.scale.reshape(1, 4, 1, 1)


class Net(Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = Block()
        self.pool = nn.GlobalAvgPool2d()
        self.head = nn.Linear(4, 3)
        self.plain = 5  # not a Parameter, Module or buffer: not registered

    def forward(self, x: Any) -> Any:
        return self.head(self.pool(self.block(x)))


def image_batch(n: int = 4, c: int = 2, h: int = 5, w: int = 5, dtype: Any = np.float32) -> minise.Tensor:
    return minise.tensor(np.random.default_rng(1).normal(size=(n, c, h, w)).astype(dtype))


# --------------------------------------------------------------------------------------------------
# registration
# --------------------------------------------------------------------------------------------------
def test_module_registers_parameters_buffers_and_children_with_dotted_names() -> None:
    net = Net()
    names = [n for n, _ in net.named_parameters()]
    assert names == [
        "block.scale",
        "block.conv.weight",
        "block.bn.weight",
        "block.bn.bias",
        "head.weight",
        "head.bias",
    ] or sorted(names) == sorted(
        ["block.scale", "block.conv.weight", "block.bn.weight", "block.bn.bias", "head.weight", "head.bias"]
    )
    assert len(names) == len(set(names)) == 6
    params = list(net.parameters())
    assert all(isinstance(p, Parameter) and p.requires_grad for p in params)
    assert dict(net.named_parameters())["block.conv.weight"] is net.block.conv.weight
    assert [n for n, _ in net.named_buffers()] == ["block.bn.running_mean", "block.bn.running_var"]
    assert list(net.buffers())[0] is net.block.bn.running_mean
    assert list(net.children()) == [net.block, net.pool, net.head]  # direct children only
    assert [n for n, _ in net.named_children()] == ["block", "pool", "head"]
    mods = list(net.modules())
    assert mods[0] is net and len(mods) == 6  # net, block, conv, bn, pool, head
    assert [n for n, _ in net.named_modules()] == ["", "block", "block.conv", "block.bn", "pool", "head"]
    assert net.num_parameters() == 4 + 4 * 2 * 9 + 4 + 4 + 3 * 4 + 3


def test_reassigning_an_attribute_replaces_its_registration() -> None:
    net = Net()
    net.head = nn.Linear(4, 5)  # a new module under the same name
    assert dict(net.named_parameters())["head.weight"].shape == (5, 4)
    net.head = 3  # no longer a module
    assert "head" not in dict(net.named_children())
    assert not any(n.startswith("head.") for n, _ in net.named_parameters())


def test_assigning_an_array_to_a_buffer_name_keeps_it_a_buffer() -> None:
    bn = nn.BatchNorm2d(2)
    bn.running_mean = np.full(2, 3.0, np.float32)
    assert [n for n, _ in bn.named_buffers()] == ["running_mean", "running_var"]
    np.testing.assert_array_equal(bn.state_dict()["running_mean"], [3.0, 3.0])


def test_assigning_before_super_init_is_a_clear_error() -> None:
    class Bad(Module):
        def __init__(self) -> None:
            self.w = Parameter(np.ones(2))

    with pytest.raises(AttributeError, match="super"):
        Bad()


def test_train_and_eval_propagate_to_every_module() -> None:
    net = Net()
    assert all(m.training for m in net.modules())
    assert net.eval() is net
    assert not any(m.training for m in net.modules())
    net.train()
    assert all(m.training for m in net.modules())
    net.train(False)
    assert not net.block.bn.training


def test_zero_grad_clears_every_parameter_gradient() -> None:
    net = Net()
    F.cross_entropy(net(image_batch()), np.array([0, 1, 2, 0])).backward()
    assert all(p.grad is not None and p.grad.shape == p.shape for p in net.parameters())
    net.zero_grad()
    assert all(p.grad is None for p in net.parameters())


# --------------------------------------------------------------------------------------------------
# state_dict / load_state_dict
# --------------------------------------------------------------------------------------------------
def snapshot(m: Module) -> dict[str, np.ndarray]:
    return {k: backend.to_host(v).copy() for k, v in m.state_dict().items()}


def test_state_dict_holds_parameters_and_buffers_under_dotted_names() -> None:
    net = Net()
    sd = net.state_dict()
    assert set(sd) == {n for n, _ in net.named_parameters()} | {"block.bn.running_mean", "block.bn.running_var"}
    assert sd["head.weight"] is net.head.weight.data
    assert sd["block.bn.running_var"] is net.block.bn.running_var


def test_load_state_dict_round_trip_copies_values_in_place() -> None:
    source = Net()
    source.train()
    source(image_batch())  # move the running statistics away from 0/1
    minise.manual_seed(1)
    target = Net()
    arrays_before = {k: v for k, v in target.state_dict().items()}
    want = snapshot(source)
    assert not all(np.array_equal(want[k], v) for k, v in snapshot(target).items())
    target.load_state_dict(source.state_dict())
    got = target.state_dict()
    for k, v in want.items():
        np.testing.assert_array_equal(got[k], v, err_msg=k)
        assert got[k] is arrays_before[k], f"{k} was replaced, not copied into"
        assert got[k] is not source.state_dict()[k]  # a copy: the two models do not share memory
    x = image_batch()
    source.eval()
    target.eval()
    np.testing.assert_array_equal(target(x).numpy(), source(x).numpy())  # the same function now
    target.head.weight.data[...] = 0  # and two models: changing one leaves the other alone
    assert np.all(source.head.weight.numpy() != 0)


def test_load_state_dict_casts_to_the_model_dtype_and_accepts_tensors() -> None:
    net = nn.Linear(3, 2)
    state = {"weight": minise.tensor(np.full((2, 3), 0.5)), "bias": np.array([1.0, 2.0])}  # float64 in
    net.load_state_dict(state)
    assert net.weight.dtype == np.float32 and net.bias.dtype == np.float32
    np.testing.assert_array_equal(net.weight.numpy(), 0.5)
    np.testing.assert_array_equal(net.bias.numpy(), [1.0, 2.0])


def test_load_state_dict_names_every_missing_and_unexpected_key_and_changes_nothing() -> None:
    net = Net()
    before = snapshot(net)
    state = {k: np.zeros_like(v) for k, v in before.items()}  # right shapes: a partial load would show
    del state["head.bias"], state["block.bn.running_var"]
    state["head.extra"] = np.zeros(3)
    state["fc.weight"] = np.zeros((3, 4))
    with pytest.raises(KeyError) as info:
        net.load_state_dict(state)
    text = str(info.value)
    for key in ("head.bias", "block.bn.running_var", "head.extra", "fc.weight"):
        assert key in text, key
    assert text.index("head.bias") < text.index("unexpected") < text.index("head.extra")
    after = snapshot(net)
    for k in before:
        np.testing.assert_array_equal(after[k], before[k], err_msg=k)


def test_load_state_dict_names_every_mis_shaped_key_and_changes_nothing() -> None:
    net = Net()
    before = snapshot(net)
    state = {k: np.zeros_like(v) for k, v in before.items()}
    state["head.weight"] = np.zeros((5, 4))
    state["block.conv.weight"] = np.zeros((4, 2, 1, 1))
    state["block.bn.running_mean"] = np.zeros(6)
    with pytest.raises(ValueError) as info:
        net.load_state_dict(state)
    text = str(info.value)
    for key, shapes in (
        ("head.weight", ("(5, 4)", "(3, 4)")),
        ("block.conv.weight", ("(4, 2, 1, 1)", "(4, 2, 3, 3)")),
        ("block.bn.running_mean", ("(6,)", "(4,)")),
    ):
        assert key in text, key
        for s in shapes:
            assert s in text, (key, s)
    assert "head.bias" not in text  # only the mismatched keys are named
    after = snapshot(net)
    for k in before:
        np.testing.assert_array_equal(after[k], before[k], err_msg=k)


# --------------------------------------------------------------------------------------------------
# Sequential
# --------------------------------------------------------------------------------------------------
def test_sequential_indexing_len_iteration_and_names() -> None:
    layers = [nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)]
    seq = nn.Sequential(*layers)
    assert len(seq) == 3
    assert seq[0] is layers[0] and seq[2] is layers[2] and seq[-1] is layers[2]
    assert list(seq) == layers
    assert [n for n, _ in seq.named_parameters()] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    x = minise.tensor(np.random.default_rng(2).normal(size=(5, 3)).astype(np.float32))
    np.testing.assert_array_equal(seq(x).numpy(), layers[2](layers[1](layers[0](x))).numpy())
    assert len(nn.Sequential()) == 0


# --------------------------------------------------------------------------------------------------
# initialisation
# --------------------------------------------------------------------------------------------------
def test_conv2d_init_is_kaiming_normal_fan_out() -> None:
    out, cin, k = 256, 64, 3
    conv = nn.Conv2d(cin, out, k)
    w = conv.weight.numpy().astype(np.float64)
    assert w.shape == (out, cin, k, k)
    std = np.sqrt(2.0 / (out * k * k))  # fan_out; fan_in would give sqrt(2/(cin*k*k)), twice as large here
    assert abs(w.std() / std - 1) < 0.03
    assert abs(w.mean()) < 0.02 * std
    # normal, not uniform: about 68% within one standard deviation (a uniform gives 58%)
    assert abs(np.mean(np.abs(w) < std) - 0.6827) < 0.01
    bound = 1 / np.sqrt(cin * k * k)
    b = conv.bias.numpy()
    assert b.shape == (out,) and np.all(np.abs(b) <= bound)
    assert nn.Conv2d(4, 8, 3, bias=False).bias is None


def test_linear_init_is_uniform_within_one_over_sqrt_fan_in() -> None:
    fan_in, out = 400, 300
    lin = nn.Linear(fan_in, out)
    bound = 1 / np.sqrt(fan_in)
    w, b = lin.weight.numpy(), lin.bias.numpy()
    assert w.shape == (out, fan_in) and b.shape == (out,)
    assert np.all(np.abs(w) <= bound) and np.all(np.abs(b) <= bound)
    assert np.abs(w).max() > 0.99 * bound  # the whole interval is used
    assert abs(w.std() / (bound / np.sqrt(3)) - 1) < 0.02  # the std of U(-a, a) is a / sqrt(3)
    assert abs(w.mean()) < 0.01 * bound
    assert nn.Linear(3, 2, bias=False).bias is None
    assert [n for n, _ in nn.Linear(3, 2, bias=False).named_parameters()] == ["weight"]


# --------------------------------------------------------------------------------------------------
# BatchNorm2d and Dropout
# --------------------------------------------------------------------------------------------------
def test_batchnorm2d_initial_state() -> None:
    bn = nn.BatchNorm2d(5)
    np.testing.assert_array_equal(bn.weight.numpy(), np.ones(5))
    np.testing.assert_array_equal(bn.bias.numpy(), np.zeros(5))
    np.testing.assert_array_equal(backend.to_host(bn.running_mean), np.zeros(5))
    np.testing.assert_array_equal(backend.to_host(bn.running_var), np.ones(5))
    assert [n for n, _ in bn.named_parameters()] == ["weight", "bias"]
    assert [n for n, _ in bn.named_buffers()] == ["running_mean", "running_var"]


def test_batchnorm2d_updates_running_stats_only_in_train_mode() -> None:
    bn = nn.BatchNorm2d(3, momentum=0.1)
    x = np.random.default_rng(3).normal(2.0, 3.0, size=(4, 3, 5, 5)).astype(np.float32)
    bn.eval()
    y = bn(minise.tensor(x))
    np.testing.assert_array_equal(backend.to_host(bn.running_mean), np.zeros(3))
    np.testing.assert_array_equal(backend.to_host(bn.running_var), np.ones(3))
    np.testing.assert_allclose(y.numpy(), x / np.sqrt(1 + bn.eps), rtol=1e-6)  # running stats 0 / 1
    bn.train()
    y = bn(minise.tensor(x))
    mu = x.mean(axis=(0, 2, 3), dtype=np.float64)
    var_unbiased = x.var(axis=(0, 2, 3), ddof=1, dtype=np.float64)
    np.testing.assert_allclose(backend.to_host(bn.running_mean), 0.1 * mu, rtol=1e-5)
    np.testing.assert_allclose(backend.to_host(bn.running_var), 0.9 + 0.1 * var_unbiased, rtol=1e-5)
    yn = y.numpy()  # batch statistics: each channel is normalised
    np.testing.assert_allclose(yn.mean(axis=(0, 2, 3)), 0, atol=1e-5)
    np.testing.assert_allclose(yn.std(axis=(0, 2, 3)), 1, rtol=1e-3)
    rm = backend.to_host(bn.running_mean).copy()
    bn.eval()
    bn(minise.tensor(x))
    np.testing.assert_array_equal(backend.to_host(bn.running_mean), rm)


def test_dropout_is_the_identity_in_eval_and_scaled_in_train() -> None:
    drop = nn.Dropout(0.25)
    x = minise.tensor(np.random.default_rng(4).uniform(1.0, 2.0, size=(200, 500)).astype(np.float32))
    drop.eval()
    np.testing.assert_array_equal(drop(x).numpy(), x.numpy())
    drop.train()
    xt = minise.tensor(x.numpy(), requires_grad=True)
    y = drop(xt)
    yn, xn = y.numpy(), x.numpy()
    kept = yn != 0
    np.testing.assert_allclose(yn[kept], xn[kept] / 0.75, rtol=1e-6)  # survivors scaled by 1/(1-p)
    assert abs((~kept).mean() - 0.25) < 0.01  # about p of the values are dropped
    y.sum().backward()
    np.testing.assert_allclose(xt.grad, kept / np.float32(0.75), rtol=1e-6)  # same mask in backward


# --------------------------------------------------------------------------------------------------
# SEBlock
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("channels", "reduction", "min_channels", "hidden"),
    [(64, 16, 1, 4), (8, 16, 1, 1), (32, 16, 8, 8), (64, 4, 8, 16), (16, 1, 1, 16)],
)
def test_seblock_hidden_width_and_parameter_shapes(
    channels: int, reduction: int, min_channels: int, hidden: int
) -> None:
    se = nn.SEBlock(channels, reduction=reduction, min_channels=min_channels)
    assert se.hidden == hidden == max(channels // reduction, min_channels)
    shapes = {n: p.shape for n, p in se.named_parameters()}
    assert shapes == {
        "fc1.weight": (hidden, channels),
        "fc1.bias": (hidden,),
        "fc2.weight": (channels, hidden),
        "fc2.bias": (channels,),
    }


def test_seblock_without_bias_has_only_the_two_weights() -> None:
    se = nn.SEBlock(16, reduction=4, bias=False)
    assert se.fc1.bias is None and se.fc2.bias is None
    assert [n for n, _ in se.named_parameters()] == ["fc1.weight", "fc2.weight"]
    x = image_batch(2, 16, 3, 3)
    np.testing.assert_allclose(se(x).numpy(), se_reference(x.numpy(), se), rtol=1e-5, atol=1e-6)


def test_seblock_rejects_unknown_options() -> None:
    with pytest.raises(ValueError, match="squeeze"):
        nn.SEBlock(8, squeeze="min")
    with pytest.raises(ValueError, match="gate"):
        nn.SEBlock(8, gate="softmax")
    with pytest.raises(ValueError, match="reduction"):
        nn.SEBlock(8, reduction=0)


def se_reference(x: np.ndarray, se: Any) -> np.ndarray:
    """The SE block in plain NumPy, float64, written from the options' names."""
    x = x.astype(np.float64)
    w1, w2 = se.fc1.weight.numpy().astype(np.float64), se.fc2.weight.numpy().astype(np.float64)
    b1 = se.fc1.bias.numpy().astype(np.float64) if se.fc1.bias is not None else 0.0
    b2 = se.fc2.bias.numpy().astype(np.float64) if se.fc2.bias is not None else 0.0
    s = x.mean(axis=(2, 3)) if se.squeeze == "avg" else x.max(axis=(2, 3))  # (N, C)
    h = np.maximum(s @ w1.T + b1, 0.0)  # (N, R)
    a2 = h @ w2.T + b2  # (N, C)
    e = {"sigmoid": lambda a: 1 / (1 + np.exp(-a)), "tanh": np.tanh, "relu": lambda a: np.maximum(a, 0)}[se.gate](a2)
    return x * e[:, :, None, None]


def test_seblock_default_path_is_the_fused_op() -> None:
    se = nn.SEBlock(16, reduction=4)
    x = image_batch(3, 16, 4, 5)
    y = se(x)
    assert type(y.creator).__name__ == "SqueezeExciteOp"
    fused = F.squeeze_excite(x, se.fc1.weight, se.fc1.bias, se.fc2.weight, se.fc2.bias)
    np.testing.assert_array_equal(y.numpy(), fused.numpy())
    np.testing.assert_allclose(y.numpy(), se_reference(x.numpy(), se), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("squeeze", "gate"), [("max", "sigmoid"), ("avg", "tanh"), ("avg", "relu"), ("max", "relu")])
def test_seblock_variants_compute_what_their_names_say(squeeze: str, gate: str) -> None:
    se = nn.SEBlock(16, reduction=4, squeeze=squeeze, gate=gate, dtype=np.float64)
    x = image_batch(3, 16, 4, 5, dtype=np.float64)
    x.requires_grad = True
    y = se(x)
    np.testing.assert_allclose(y.numpy(), se_reference(x.numpy(), se), rtol=1e-12, atol=1e-12)
    # and the variant is a different function from the default one (the option is not ignored)
    default = nn.SEBlock(16, reduction=4, dtype=np.float64)
    default.load_state_dict(se.state_dict())
    assert not np.allclose(default(x).numpy(), y.numpy())
    y.sum().backward()  # gradients reach the input and every parameter
    assert x.grad is not None and all(p.grad is not None for p in se.parameters())


def test_seblock_excitation_is_the_per_channel_gate() -> None:
    se = nn.SEBlock(8, reduction=2)
    x = image_batch(2, 8, 3, 3)
    e = se.excitation(x).numpy()
    assert e.shape == (2, 8) and np.all((e > 0) & (e < 1))
    np.testing.assert_allclose(se(x).numpy(), x.numpy() * e[:, :, None, None], rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------------------
# dtypes and backends
# --------------------------------------------------------------------------------------------------
def all_layers(dtype: Any = None) -> list[Module]:
    kw = {} if dtype is None else {"dtype": dtype}
    return [nn.Conv2d(3, 4, 3, **kw), nn.Linear(5, 2, **kw), nn.BatchNorm2d(4, **kw), nn.SEBlock(8, 2, **kw)]


def test_layers_default_to_float32() -> None:
    for layer in all_layers():
        for name, v in layer.state_dict().items():
            assert v.dtype == np.float32, (type(layer).__name__, name)


def test_layers_built_with_float64_stay_float64() -> None:
    conv, lin, bn, se = all_layers(np.float64)
    for layer in (conv, lin, bn, se):
        for name, v in layer.state_dict().items():
            assert v.dtype == np.float64, (type(layer).__name__, name)
    x = image_batch(2, 3, 6, 6, dtype=np.float64)
    y = bn(conv(x))
    assert y.dtype == np.float64
    assert se(image_batch(2, 8, 3, 3, dtype=np.float64)).dtype == np.float64
    assert lin(minise.tensor(np.ones((2, 5)))).dtype == np.float64
    bn(conv(x)).sum().backward()
    assert conv.weight.grad.dtype == np.float64 and bn.weight.grad.dtype == np.float64
    assert backend.to_host(bn.running_var).dtype == np.float64  # the update kept the buffer's dtype


def test_module_to_numpy_keeps_values_dtypes_and_registration() -> None:
    net = Net()
    before = snapshot(net)
    params = list(net.parameters())
    assert net.to("numpy") is net
    after = snapshot(net)
    for k in before:
        np.testing.assert_array_equal(after[k], before[k], err_msg=k)
        assert after[k].dtype == before[k].dtype
    assert list(net.parameters()) == params  # the same Parameter objects, still registered and trainable
    assert all(p.requires_grad and isinstance(p.data, np.ndarray) for p in params)
    assert [n for n, _ in net.named_buffers()] == ["block.bn.running_mean", "block.bn.running_var"]
    assert net.block.bn.running_mean is net.state_dict()["block.bn.running_mean"]


# --------------------------------------------------------------------------------------------------
# a small CNN learns
# --------------------------------------------------------------------------------------------------
def test_small_cnn_with_se_trains_with_hand_written_sgd() -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.SEBlock(8, reduction=2),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(8 * 4 * 4, 4),
    )
    data = np.random.default_rng(5)
    x = minise.tensor(data.normal(size=(16, 3, 8, 8)).astype(np.float32))
    target = np.arange(16) % 4
    lr = 0.2
    losses = []
    for _ in range(30):
        model.zero_grad()
        loss = F.cross_entropy(model(x), target)
        loss.backward()
        with minise.no_grad():
            for p in model.parameters():
                p.data -= lr * p.grad
        losses.append(loss.item())
    assert np.isfinite(losses).all()
    assert losses[-1] < losses[0] / 10, losses
    model.eval()
    with minise.no_grad():
        accuracy = (model(x).numpy().argmax(axis=1) == target).mean()
    assert accuracy >= 0.9  # it fits the batch (1.0 for every seed tried), judged with running statistics
    assert all(p.dtype == np.float32 for p in model.parameters())
