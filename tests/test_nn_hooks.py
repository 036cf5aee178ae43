"""Module hooks, Module.apply and load_state_dict's (missing_keys, unexpected_keys), with PyTorch's semantics."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from conftest import requires_torch

import minise
import minise.nn as nn
from minise.nn.module import IncompatibleKeys


def _model() -> nn.Sequential:
    return nn.Sequential(nn.Linear(3, 4, dtype=np.float64), nn.ReLU(), nn.Linear(4, 2, dtype=np.float64))


def _x() -> minise.Tensor:
    return minise.tensor(np.random.default_rng(0).normal(size=(5, 3)))


# --------------------------------------------------------------------------------------------------
# forward hooks
# --------------------------------------------------------------------------------------------------
def test_forward_hook_sees_module_inputs_and_output_and_is_removed_by_its_handle() -> None:
    model, x = _model(), _x()
    seen: list[tuple[Any, Any, Any]] = []
    handle = model[0].register_forward_hook(lambda m, args, out: seen.append((m, args, out)))
    y = model(x)
    assert len(seen) == 1
    m, args, out = seen[0]
    assert m is model[0] and isinstance(args, tuple) and args[0] is x
    np.testing.assert_array_equal(out.numpy(), model[0].forward(x).numpy())
    assert y.shape == (5, 2)
    handle.remove()
    handle.remove()  # removing twice does nothing, as in PyTorch
    model(x)
    assert len(seen) == 1


def test_forward_hook_may_replace_the_output_and_hooks_run_in_registration_order() -> None:
    model, x = _model(), _x()
    order: list[str] = []
    model[1].register_forward_hook(lambda m, a, out: order.append("first"))
    model[1].register_forward_hook(lambda m, a, out: (order.append("second"), out * 0.0)[1])
    y = model(x)
    assert order == ["first", "second"]
    # the ReLU's output became zero, so the last layer outputs its bias alone
    np.testing.assert_allclose(y.numpy(), np.broadcast_to(model[2].bias.numpy(), (5, 2)))


def test_forward_pre_hook_may_replace_the_inputs_with_a_tuple_or_a_single_value() -> None:
    lin = nn.Linear(3, 2, dtype=np.float64)
    x = _x()
    h = lin.register_forward_pre_hook(lambda m, args: args[0] * 2.0)  # one value: wrapped in a tuple
    np.testing.assert_allclose(lin(x).numpy(), lin.forward(x * 2.0).numpy())
    h.remove()
    h = lin.register_forward_pre_hook(lambda m, args: (args[0] * 3.0,))
    np.testing.assert_allclose(lin(x).numpy(), lin.forward(x * 3.0).numpy())
    h.remove()
    np.testing.assert_allclose(lin(x).numpy(), lin.forward(x).numpy())


def test_handle_as_context_manager_keeps_the_hook_only_inside_the_block() -> None:
    lin, x, calls = nn.Linear(3, 2, dtype=np.float64), _x(), []
    with lin.register_forward_hook(lambda m, a, y: calls.append(1)):
        lin(x)
    lin(x)
    assert calls == [1]


def test_forward_hook_records_se_excitations_and_gradients_still_flow() -> None:
    """The recipe for lessons and reports: record what each SE block multiplies its input by."""
    minise.manual_seed(0)
    se = nn.SEBlock(8, reduction=4, dtype=np.float64)
    x = minise.tensor(np.random.default_rng(2).normal(size=(2, 8, 3, 3)), requires_grad=True)
    excitations: list[np.ndarray] = []

    def record(m: Any, args: tuple[Any, ...], out: Any) -> None:
        with minise.no_grad():
            excitations.append(m.excitation(args[0]).numpy())

    handle = se.register_forward_hook(record)
    y = se(x)
    handle.remove()
    assert excitations[0].shape == (2, 8) and ((excitations[0] > 0) & (excitations[0] < 1)).all()
    np.testing.assert_allclose(y.numpy(), x.numpy() * excitations[0][:, :, None, None], rtol=1e-12)
    y.sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape


@requires_torch
@pytest.mark.torch
def test_hook_semantics_match_torch() -> None:
    """The same hooks on the same model give the same outputs and call orders in minise and torch."""
    import torch

    ours = _model()
    theirs = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2)).double()
    with torch.no_grad():
        for (_, p), (_, tp) in zip(ours.named_parameters(), theirs.named_parameters(), strict=True):
            tp.copy_(torch.tensor(p.numpy()))
    x = _x()
    results = []
    for model, inp in ((ours, x), (theirs, torch.tensor(x.numpy()))):
        log: list[str] = []
        h1 = model[0].register_forward_pre_hook(lambda m, a, log=log: (log.append("pre"), (a[0] + 1.0,))[1])
        h2 = model[0].register_forward_hook(lambda m, a, y, log=log: (log.append("post"), y * 2.0)[1])
        h3 = model.register_forward_hook(lambda m, a, y, log=log: log.append("outer"))
        out = model(inp)
        h1.remove()
        out_removed = model(inp)
        h2.remove()
        h3.remove()
        results.append((log, np.asarray(out.detach().numpy()), np.asarray(out_removed.detach().numpy())))
    assert results[0][0] == results[1][0] == ["pre", "post", "outer", "post", "outer"]
    np.testing.assert_allclose(results[0][1], results[1][1], rtol=1e-12)
    np.testing.assert_allclose(results[0][2], results[1][2], rtol=1e-12)


# --------------------------------------------------------------------------------------------------
# apply
# --------------------------------------------------------------------------------------------------
def test_apply_visits_children_before_self_and_returns_self() -> None:
    model = _model()
    visited: list[str] = []
    assert model.apply(lambda m: visited.append(type(m).__name__)) is model
    assert visited == ["Linear", "ReLU", "Linear", "Sequential"]  # torch's order: children first


def test_apply_can_reinitialise_every_linear_bias() -> None:
    model = _model()
    model.apply(lambda m: m.bias.data.fill(0) if isinstance(m, nn.Linear) else None)
    assert all((m.bias.numpy() == 0).all() for m in model.modules() if isinstance(m, nn.Linear))


# --------------------------------------------------------------------------------------------------
# load_state_dict(strict=...)
# --------------------------------------------------------------------------------------------------
def test_load_state_dict_returns_missing_and_unexpected_keys_as_a_named_tuple() -> None:
    src, dst = _model(), _model()
    state = dict(src.state_dict())
    del state["2.bias"]
    state["extra"] = np.zeros(3)
    result = dst.load_state_dict(state, strict=False)
    assert isinstance(result, IncompatibleKeys) and isinstance(result, tuple)
    assert result.missing_keys == ["2.bias"] and result.unexpected_keys == ["extra"]
    missing, unexpected = result
    assert (missing, unexpected) == (["2.bias"], ["extra"])
    np.testing.assert_array_equal(dst[0].weight.numpy(), src[0].weight.numpy())  # the rest was loaded
    assert dst.load_state_dict(src.state_dict()) == IncompatibleKeys([], [])


def test_load_state_dict_strict_names_every_bad_key_and_wrong_shapes_always_raise() -> None:
    dst = _model()
    state = dict(_model().state_dict())
    del state["0.weight"]
    state["ghost"] = np.zeros(1)
    with pytest.raises(KeyError, match=r"0\.weight.*ghost"):
        dst.load_state_dict(state)
    state = dict(_model().state_dict())
    state["0.weight"] = np.zeros((9, 9))
    for strict in (True, False):
        with pytest.raises(ValueError, match=r"0\.weight: checkpoint \(9, 9\) vs model \(4, 3\)"):
            dst.load_state_dict(state, strict=strict)
    # both are RuntimeErrors too, as PyTorch's, and print without KeyError's quotes
    with pytest.raises(RuntimeError) as info:
        dst.load_state_dict({"ghost": np.zeros(1)})
    assert str(info.value).startswith("load_state_dict: Sequential state does not match - missing keys: ['0.weight'")
    with pytest.raises(RuntimeError):
        dst.load_state_dict(state)


@requires_torch
@pytest.mark.torch
def test_load_state_dict_result_matches_torch() -> None:
    import torch

    ours = _model()
    theirs = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2)).double()
    state = {k: v.numpy() for k, v in theirs.state_dict().items()}
    del state["2.bias"]
    state["extra"] = np.zeros(3)
    r_ours = ours.load_state_dict(state, strict=False)
    r_theirs = theirs.load_state_dict({k: torch.tensor(v) for k, v in state.items()}, strict=False)
    assert (r_ours.missing_keys, r_ours.unexpected_keys) == (r_theirs.missing_keys, r_theirs.unexpected_keys)
