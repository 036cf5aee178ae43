"""SGD and the learning-rate schedules: step by step against their formulas and against PyTorch,
parameter groups, and state_dict round trips (through JSON) that resume exactly."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest

from minise import backend, models, optim
from minise.nn import BatchNorm2d, Conv2d, Linear, Module, Parameter, Sequential
from minise.optim import (
    SGD,
    CosineAnnealingLR,
    LinearLR,
    LinearWarmup,
    LRScheduler,
    MultiStepLR,
    SequentialLR,
    StepLR,
    param_groups_no_decay,
)

SHAPES = [(3, 4), (5,), (2, 3, 2)]
CONFIGS = [
    {"momentum": 0.0},
    {"momentum": 0.9},
    {"momentum": 0.9, "nesterov": True},
    {"momentum": 0.9, "dampening": 0.5},
    {"momentum": 0.0, "weight_decay": 0.1},
    {"momentum": 0.9, "nesterov": True, "weight_decay": 1e-2},
    {"momentum": 0.5, "dampening": 0.1, "weight_decay": 5e-2},
]


def make_params(seed: int = 0) -> list[Parameter]:
    rng = np.random.default_rng(seed)
    return [Parameter(rng.standard_normal(s)) for s in SHAPES]


def grads(steps: int, seed: int = 1) -> list[list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [[rng.standard_normal(s) for s in SHAPES] for _ in range(steps)]


def reference_sgd(
    params: list[np.ndarray],
    all_grads: list[list[np.ndarray]],
    lr: float,
    momentum: float = 0.0,
    dampening: float = 0.0,
    nesterov: bool = False,
    weight_decay: float = 0.0,
) -> list[list[np.ndarray]]:
    """The update rule written out, one parameter at a time; returns the parameters after each step."""
    p = [x.copy() for x in params]
    bufs: list[Any] = [None] * len(p)
    history = []
    for gs in all_grads:
        for i, grad in enumerate(gs):
            g = grad + weight_decay * p[i]
            if momentum:
                bufs[i] = g.copy() if bufs[i] is None else momentum * bufs[i] + (1 - dampening) * g
                g = g + momentum * bufs[i] if nesterov else bufs[i]
            p[i] = p[i] - lr * g
        history.append([x.copy() for x in p])
    return history


def run_sgd(params: list[Parameter], opt: SGD, all_grads: list[list[np.ndarray]]) -> list[list[np.ndarray]]:
    history = []
    for gs in all_grads:
        for p, g in zip(params, gs):
            p.grad = g.copy()
        opt.step()
        history.append([p.data.copy() for p in params])
    return history


# --------------------------------------------------------------------------------------------------
# SGD
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_sgd_follows_the_update_rule_step_by_step(config: dict[str, Any]) -> None:
    params = make_params()
    start = [p.data.copy() for p in params]
    gs = grads(6)
    got = run_sgd(params, SGD(params, lr=0.1, **config), gs)
    expected = reference_sgd(start, gs, 0.1, **config)
    for step_got, step_expected in zip(got, expected):
        for a, b in zip(step_got, step_expected):
            np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-14)


def test_sgd_first_momentum_step_is_plain_sgd_and_the_second_adds_momentum() -> None:
    p = Parameter(np.array([1.0]))
    opt = SGD([p], lr=0.5, momentum=0.9)
    p.grad = np.array([2.0])
    opt.step()
    assert p.data[0] == 1.0 - 0.5 * 2.0  # buf = g
    p.grad = np.array([2.0])
    opt.step()
    assert p.data[0] == pytest.approx(0.0 - 0.5 * (0.9 * 2.0 + 2.0))  # buf = 0.9 buf + g


def test_sgd_updates_in_place_and_skips_parameters_without_a_gradient() -> None:
    a, b = Parameter(np.ones(3)), Parameter(np.ones(2))
    data = a.data
    opt = SGD([a, b], lr=0.1, momentum=0.9, weight_decay=0.5)
    a.grad = np.ones(3)
    opt.step()
    assert a.data is data  # the same array, changed in place
    np.testing.assert_array_equal(b.data, np.ones(2))  # no grad: not even weight decay touches it
    assert b not in opt.state and a in opt.state
    opt.zero_grad()
    assert a.grad is None and b.grad is None


def test_sgd_defaults_are_pytorchs_momentum_0() -> None:
    group = SGD(make_params(), lr=0.1).param_groups[0]
    assert (group["momentum"], group["dampening"], group["nesterov"], group["weight_decay"]) == (0.0, 0.0, False, 0.0)


@pytest.mark.torch
def test_sgd_defaults_equal_torchs() -> None:
    torch = pytest.importorskip("torch")
    ours = SGD(make_params(), lr=0.1).param_groups[0]
    theirs = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1).param_groups[0]
    for key in ("momentum", "dampening", "nesterov", "weight_decay"):
        assert ours[key] == theirs[key], key


@pytest.mark.torch
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_sgd_equals_torch_sgd_in_float64(config: dict[str, Any]) -> None:
    torch = pytest.importorskip("torch")
    params = make_params()
    tparams = [torch.tensor(p.data.copy(), requires_grad=True) for p in params]
    # two groups: the second with its own learning rate and no weight decay
    opt = SGD([{"params": params[:2]}, {"params": params[2:], "lr": 0.03, "weight_decay": 0.0}], lr=0.1, **config)
    topt = torch.optim.SGD(
        [{"params": tparams[:2]}, {"params": tparams[2:], "lr": 0.03, "weight_decay": 0.0}], lr=0.1, **config
    )
    for gs in grads(8):
        for p, t, g in zip(params, tparams, gs):
            p.grad, t.grad = g.copy(), torch.from_numpy(g.copy())
        opt.step()
        topt.step()
        for p, t in zip(params, tparams):
            np.testing.assert_allclose(p.data, t.detach().numpy(), rtol=1e-12, atol=1e-13)


def tiny_model() -> Module:
    return Sequential(
        Conv2d(3, 4, 3, dtype=np.float64), BatchNorm2d(4, dtype=np.float64), Linear(4, 2, dtype=np.float64)
    )


def test_param_groups_no_decay_exempts_bn_and_biases() -> None:
    model = tiny_model()
    groups = param_groups_no_decay(model, 1e-4)
    assert [g["weight_decay"] for g in groups] == [1e-4, 0.0]
    named = dict(model.named_parameters())
    decayed = {n for n, p in named.items() if any(p is q for q in groups[0]["params"])}
    exempt = {n for n, p in named.items() if any(p is q for q in groups[1]["params"])}
    assert decayed == {"0.weight", "2.weight"}
    assert exempt == {"0.bias", "1.weight", "1.bias", "2.bias"}
    # with zero gradients only weight decay moves a parameter: the exempt ones stay put
    opt = SGD(groups, lr=1.0, momentum=0.0)
    before = {n: p.data.copy() for n, p in named.items()}
    for p in named.values():
        p.grad = np.zeros_like(p.data)
    opt.step()
    for n, p in named.items():
        if n in exempt:
            np.testing.assert_array_equal(p.data, before[n])
        else:
            np.testing.assert_allclose(p.data, before[n] * (1 - 1e-4))
    se = models.se_resnet20()
    g = param_groups_no_decay(se, 5e-4)
    assert sum(p.size for grp in g for p in grp["params"]) == se.num_parameters()
    assert all(p.ndim == 1 for p in g[1]["params"]) and all(p.ndim > 1 for p in g[0]["params"])


def test_sgd_state_dict_round_trip_through_json_resumes_exactly() -> None:
    gs = grads(6)
    # uninterrupted
    params = make_params()
    full = run_sgd(params, SGD(params, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3), gs)
    # interrupted after 3 steps, the state written as JSON + arrays, loaded into a fresh optimizer
    params = make_params()
    opt = SGD(params, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3)
    run_sgd(params, opt, gs[:3])
    state = opt.state_dict()
    saved_buffers = {k: v["momentum_buffer"].copy() for k, v in state["state"].items()}
    run_sgd(params, opt, gs[3:4])  # training on must not change what was saved
    for k, v in state["state"].items():
        np.testing.assert_array_equal(v["momentum_buffer"], saved_buffers[k])
    groups = json.loads(json.dumps(state["param_groups"]))
    arrays = {str(k): {"momentum_buffer": v["momentum_buffer"]} for k, v in state["state"].items()}
    resumed = [Parameter(p) for p in full[2]]
    opt2 = SGD(resumed, lr=99.0, momentum=0.0)  # hyperparameters come from the state
    opt2.load_state_dict({"param_groups": groups, "state": arrays})
    assert opt2.param_groups[0]["lr"] == 0.1 and opt2.param_groups[0]["nesterov"] is True
    rest = run_sgd(resumed, opt2, gs[3:])
    for a, b in zip(rest, full[3:]):
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)


def test_sgd_state_dict_layout() -> None:
    params = make_params()
    opt = SGD(
        [{"params": params[:1]}, {"params": params[1:], "weight_decay": 0.0}], lr=0.1, momentum=0.9, weight_decay=1e-4
    )
    run_sgd(params, opt, grads(1))
    state = opt.state_dict()
    assert [g["params"] for g in state["param_groups"]] == [[0], [1, 2]]
    assert [g["weight_decay"] for g in state["param_groups"]] == [1e-4, 0.0]
    assert sorted(state["state"]) == [0, 1, 2]
    assert state["state"][1]["momentum_buffer"].shape == SHAPES[1]
    json.dumps(state["param_groups"])  # JSON-able


def test_sgd_rejects_bad_options_as_pytorch() -> None:
    with pytest.raises(ValueError, match="Nesterov"):
        SGD(make_params(), lr=0.1, momentum=0.0, nesterov=True)
    with pytest.raises(ValueError, match="Nesterov"):
        SGD(make_params(), lr=0.1, momentum=0.9, dampening=0.1, nesterov=True)
    with pytest.raises(ValueError, match="lr"):
        SGD(make_params(), lr=-0.1)
    with pytest.raises(ValueError, match="empty parameter list"):
        SGD([], lr=0.1)
    p = make_params()
    with pytest.raises(ValueError, match="more than one parameter group"):
        SGD([{"params": p}, {"params": p[:1]}], lr=0.1)
    with pytest.raises(ValueError, match="unknown option"):
        SGD([{"params": p, "betas": (0.9, 0.99)}], lr=0.1)
    opt = SGD(p, lr=0.1)
    with pytest.raises(ValueError, match="parameter groups"):
        opt.load_state_dict({"param_groups": [{"params": [0]}, {"params": [1, 2]}], "state": {}})
    with pytest.raises(ValueError, match="shape"):
        opt.load_state_dict({"param_groups": [{"params": [0, 1, 2]}], "state": {0: {"momentum_buffer": np.ones(2)}}})


# --------------------------------------------------------------------------------------------------
# learning-rate schedules
# --------------------------------------------------------------------------------------------------
def two_group_sgd() -> SGD:
    p = make_params()
    return SGD([{"params": p[:2]}, {"params": p[2:], "lr": 0.01}], lr=0.1, momentum=0.9)


def lrs(sched: LRScheduler, steps: int) -> list[list[float]]:
    """The learning rates at t = 0 (construction) .. steps, read from the optimizer."""
    out = [[g["lr"] for g in sched.optimizer.param_groups]]
    for _ in range(steps):
        sched.step()
        out.append([g["lr"] for g in sched.optimizer.param_groups])
        assert sched.get_last_lr() == out[-1]
    return out


BASES = (0.1, 0.01)
FORMULAS = {
    "step": (lambda o: StepLR(o, step_size=3, gamma=0.1), lambda b, t: b * 0.1 ** (t // 3)),
    "multistep": (
        lambda o: MultiStepLR(o, [2, 5, 6], gamma=0.5),
        lambda b, t: b * 0.5 ** sum(t >= m for m in (2, 5, 6)),
    ),
    "cosine": (
        lambda o: CosineAnnealingLR(o, T_max=10, eta_min=1e-4),
        lambda b, t: 1e-4 + (b - 1e-4) * (1 + math.cos(math.pi * t / 10)) / 2,
    ),
    "linear": (
        lambda o: LinearLR(o, start_factor=0.25, end_factor=0.75, total_iters=4),
        lambda b, t: b * (0.25 + 0.5 * min(t, 4) / 4),
    ),
    "warmup": (
        lambda o: LinearWarmup(o, warmup_steps=5, start_factor=0.1),
        lambda b, t: b * (0.1 + 0.9 * min(t, 5) / 5),
    ),
}


@pytest.mark.parametrize("kind", sorted(FORMULAS))
def test_schedules_follow_their_formulas_step_by_step(kind: str) -> None:
    build, formula = FORMULAS[kind]
    got = lrs(build(two_group_sgd()), 12)
    for t, row in enumerate(got):
        assert row == pytest.approx([formula(b, t) for b in BASES], rel=1e-12), t


def test_warmup_then_cosine_per_iteration() -> None:
    opt = two_group_sgd()
    warm, cos = LinearWarmup(opt, warmup_steps=4, start_factor=0.1), CosineAnnealingLR(opt, T_max=8)
    got = lrs(SequentialLR(opt, [warm, cos], milestones=[4]), 12)
    for t, row in enumerate(got):
        expected = [b * (0.1 + 0.9 * t / 4) if t < 4 else b * (1 + math.cos(math.pi * (t - 4) / 8)) / 2 for b in BASES]
        assert row == pytest.approx(expected, rel=1e-12, abs=1e-15), t
    assert got[4] == pytest.approx(list(BASES)) and got[12] == pytest.approx([0.0, 0.0], abs=1e-15)


def test_the_papers_step_schedule_drives_sgd() -> None:
    p = Parameter(np.zeros(1))
    opt = SGD([p], lr=0.1, momentum=0.0)
    sched = StepLR(opt, step_size=30)
    seen = []
    for _epoch in range(90):
        p.grad = np.ones(1)
        before = p.data.copy()
        opt.step()
        seen.append(float(before[0] - p.data[0]))  # the step taken is the current learning rate
        sched.step()
    assert seen == pytest.approx([0.1] * 30 + [0.01] * 30 + [1e-3] * 30, rel=1e-9)


TORCH_CASES = {
    "step": (lambda m, o: m.StepLR(o, step_size=3, gamma=0.1)),
    "multistep": (lambda m, o: m.MultiStepLR(o, [2, 5, 6], gamma=0.5)),
    "cosine": (lambda m, o: m.CosineAnnealingLR(o, T_max=10, eta_min=1e-4)),
    "linear": (lambda m, o: m.LinearLR(o, start_factor=0.25, end_factor=0.75, total_iters=4)),
    "warmup": (lambda m, o: m.LinearLR(o, start_factor=0.1, end_factor=1.0, total_iters=5)),
    "sequential": (
        lambda m, o: m.SequentialLR(
            o, [m.LinearLR(o, start_factor=0.1, total_iters=4), m.CosineAnnealingLR(o, T_max=8)], milestones=[4]
        )
    ),
}


@pytest.mark.torch
@pytest.mark.parametrize("kind", sorted(TORCH_CASES))
def test_schedules_equal_torch_lr_scheduler(kind: str) -> None:
    torch = pytest.importorskip("torch")
    t = [torch.zeros(2, requires_grad=True), torch.zeros(2, requires_grad=True)]
    topt = torch.optim.SGD([{"params": t[:1]}, {"params": t[1:], "lr": 0.01}], lr=0.1)
    tsched = TORCH_CASES[kind](torch.optim.lr_scheduler, topt)
    opt = two_group_sgd()
    if kind == "sequential":
        sched: LRScheduler = SequentialLR(
            opt, [LinearWarmup(opt, 4, start_factor=0.1), CosineAnnealingLR(opt, T_max=8)], milestones=[4]
        )
    else:
        sched = FORMULAS[kind][0](opt)
    for step in range(13):
        assert sched.get_last_lr() == pytest.approx(tsched.get_last_lr(), rel=1e-9, abs=1e-15), step
        topt.step()
        tsched.step()
        sched.step()


@pytest.mark.parametrize("kind", ["cosine", "sequential"])
def test_scheduler_state_dict_round_trip_through_json_resumes_exactly(kind: str) -> None:
    def build(opt: SGD) -> LRScheduler:
        if kind == "cosine":
            return CosineAnnealingLR(opt, T_max=10, eta_min=1e-3)
        return SequentialLR(opt, [LinearWarmup(opt, 3), CosineAnnealingLR(opt, T_max=9)], milestones=[3])

    full = lrs(build(two_group_sgd()), 12)
    sched = build(two_group_sgd())
    lrs(sched, 5)
    state = json.loads(json.dumps(sched.state_dict()))
    fresh_opt = two_group_sgd()
    resumed = build(fresh_opt)
    resumed.load_state_dict(state)
    assert resumed.last_epoch == 5 and resumed.get_last_lr() == full[5]
    assert [g["lr"] for g in fresh_opt.param_groups] == full[5]
    assert lrs(resumed, 7) == full[5:]


def test_schedulers_reject_bad_arguments() -> None:
    opt = two_group_sgd()
    with pytest.raises(ValueError, match="step_size"):
        StepLR(opt, step_size=0)
    with pytest.raises(ValueError, match="increasing"):
        MultiStepLR(opt, [5, 2])
    with pytest.raises(ValueError, match="milestones"):
        SequentialLR(opt, [StepLR(opt, 2), StepLR(opt, 3)], milestones=[])
    with pytest.raises(ValueError, match="another optimizer"):
        SequentialLR(opt, [StepLR(opt, 2), StepLR(two_group_sgd(), 3)], milestones=[2])
    with pytest.raises(KeyError, match="initial_lr"):
        StepLR(two_group_sgd(), 2, last_epoch=4)
    with pytest.raises(ValueError, match="start_factor"):
        LinearWarmup(opt, 5, start_factor=0.0)


def test_public_names() -> None:
    assert optim.lr_scheduler.StepLR is StepLR and optim.SGD is SGD


# --------------------------------------------------------------------------------------------------
# backends (skipped on CuPy without a GPU)
# --------------------------------------------------------------------------------------------------
def test_sgd_runs_on_each_backend_and_its_state_moves_between_them(backend_name: str) -> None:
    gs = grads(4)
    host = make_params()
    expected = reference_sgd([p.data.copy() for p in host], gs, 0.1, momentum=0.9, weight_decay=1e-2)
    params = [Parameter(backend.to_device(p.data, backend_name)) for p in host]
    opt = SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-2)
    for g_step in gs[:2]:
        for p, g in zip(params, g_step):
            p.grad = backend.to_device(g, backend_name)
        opt.step()
    assert all(p.device == backend_name for p in params)
    # resume on the host from the device's state
    state = opt.state_dict()
    resumed = [Parameter(p.numpy()) for p in params]
    opt2 = SGD(resumed, lr=0.1, momentum=0.9)
    opt2.load_state_dict(state)
    assert all(backend.backend_name(s["momentum_buffer"]) == "numpy" for s in opt2.state.values())
    run_sgd(resumed, opt2, gs[2:])
    for p, e in zip(resumed, expected[-1]):
        np.testing.assert_allclose(p.data, e, rtol=1e-12, atol=1e-13)
