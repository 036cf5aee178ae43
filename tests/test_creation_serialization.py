"""minise.zeros/ones/randn/arange/from_numpy, the differentiable cat and stack (gradcheck over drawn
shapes, torch), and minise.save/load: round trips, atomic writes, no pickle, clear errors."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from conftest import requires_torch, to_xp
from hypothesis import example, given, settings
from hypothesis import strategies as st
from strategies import normal, seeds

import minise
import minise.nn as nn
from minise import backend
from minise.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from minise.functional.shape import CatOp


# --------------------------------------------------------------------------------------------------
# zeros, ones, randn, arange, from_numpy
# --------------------------------------------------------------------------------------------------
def test_zeros_ones_take_sizes_or_a_tuple_and_default_to_float32() -> None:
    for make, value in ((minise.zeros, 0.0), (minise.ones, 1.0)):
        a, b = make(2, 3), make((2, 3))
        assert a.shape == b.shape == (2, 3) and a.dtype == np.float32 and (a.numpy() == value).all()
        assert make(4, dtype=np.float64, requires_grad=True).requires_grad
        assert make().shape == ()
    with pytest.raises(TypeError, match=r"zeros: size must be non-negative ints"):
        minise.zeros(2, -1)


def test_randn_is_seeded_by_manual_seed_and_standard_normal() -> None:
    minise.manual_seed(3)
    a = minise.randn(2000)
    minise.manual_seed(3)
    b = minise.randn(2000)
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert a.dtype == np.float32 and abs(float(a.mean())) < 0.1 and abs(a.numpy().std() - 1) < 0.1


@requires_torch
@pytest.mark.torch
def test_arange_values_and_dtypes_match_torch() -> None:
    import torch

    for args in ((5,), (2, 7), (1, 10, 3), (0.0, 1.0, 0.25), (0, 1, 0.1), (5, 0, -1), (-1.5, 2)):
        ours, theirs = minise.arange(*args), torch.arange(*args)
        assert ours.dtype == np.dtype(str(theirs.dtype).replace("torch.", "")), args
        np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-7, err_msg=str(args))
    with pytest.raises(ValueError, match="arange: step must not be 0"):
        minise.arange(0, 3, 0)


def test_from_numpy_shares_memory_and_keeps_dtype_as_torch() -> None:
    a = np.arange(6.0).reshape(2, 3)
    t = minise.from_numpy(a)
    a[0, 0] = 42.0
    assert t.numpy()[0, 0] == 42.0 and t.dtype == np.float64
    with pytest.raises(TypeError, match=r"from_numpy: expected a numpy.ndarray, got list"):
        minise.from_numpy([1.0, 2.0])  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------
# cat and stack: differentiable
# --------------------------------------------------------------------------------------------------
@st.composite
def join_cases(draw):
    """(shapes of the inputs, dim, op): equal shapes except along dim for cat, equal for stack."""
    op = draw(st.sampled_from(["cat", "stack"]))
    ndim = draw(st.integers(1, 3))
    base = [draw(st.integers(1, 3)) for _ in range(ndim)]
    count = draw(st.integers(1, 3))
    if op == "cat":
        dim = draw(st.integers(-ndim, ndim - 1))
        shapes = []
        for _ in range(count):
            s = list(base)
            s[dim] = draw(st.integers(1, 3))
            shapes.append(tuple(s))
    else:
        dim = draw(st.integers(-ndim - 1, ndim))
        shapes = [tuple(base)] * count
    return shapes, dim, op, draw(seeds)


@settings(max_examples=40, deadline=None)
@given(case=join_cases())
@example(case=([(1, 1, 1)], 0, "cat", 0))  # one input, batch 1, 1x1
@example(case=([(1, 2), (1, 3), (1, 1)], 1, "cat", 1))
@example(case=([(2, 1), (2, 1)], -1, "stack", 2))  # stack at the end
def test_cat_and_stack_gradcheck_and_forward(xp, case) -> None:
    shapes, dim, op, seed = case
    arrays = [normal(seed + i, s) for i, s in enumerate(shapes)]
    ts = [minise.Tensor(to_xp(xp, a), requires_grad=True) for a in arrays]
    fn = getattr(minise, op)
    ref = getattr(np, {"cat": "concatenate", "stack": "stack"}[op])(arrays, axis=dim)
    np.testing.assert_array_equal(fn(ts, dim=dim).numpy(), ref)
    np.testing.assert_array_equal(fn(ts, axis=dim).numpy(), ref)
    assert minise.gradcheck(lambda *xs: fn(list(xs), dim), *ts).ok


def test_cat_gradcheck_catches_a_swapped_split() -> None:
    """The gradcheck bites: a cat whose backward hands the slices back in the wrong order fails it."""

    class Swapped(CatOp):
        def backward(self, gy):
            return tuple(reversed(super().backward(gy)))

    a, b = (minise.tensor(normal(i, (2, 2)), requires_grad=True) for i in range(2))
    assert minise.gradcheck(lambda x, y: CatOp(0).apply(x, y), a, b).ok
    assert not minise.gradcheck(lambda x, y: Swapped(0).apply(x, y), a, b, raise_on_failure=False).ok


def test_cat_and_stack_errors_name_the_op_shapes_and_fix() -> None:
    a, b = minise.zeros(2, 3), minise.zeros(2, 4)
    assert minise.cat([a, b], 1).shape == (2, 7)
    with pytest.raises(ValueError, match=r"cat: tensor 1 has shape \(2, 4\).*shapes equal except along dim 0"):
        minise.cat([a, b])
    with pytest.raises(ValueError, match=r"stack: tensor 1 has shape \(2, 4\).*every shape equal"):
        minise.stack([a, b])
    with pytest.raises(ValueError, match=r"dtype"):
        minise.cat([a, minise.zeros(2, 3, dtype=np.float64)])
    with pytest.raises(TypeError, match=r"cat: expected a non-empty list or tuple"):
        minise.cat([])
    with pytest.raises(ValueError, match=r"cat: dim 2 is out of range"):
        minise.cat([a, a], 2)
    with pytest.raises(TypeError, match=r"stack: got dim=0 and axis=0"):
        minise.stack([a, a], dim=0, axis=0)


@requires_torch
@pytest.mark.torch
@settings(max_examples=30, deadline=None)
@given(case=join_cases())
def test_cat_and_stack_match_torch(case) -> None:
    import torch

    shapes, dim, op, seed = case
    arrays = [normal(seed + i, s) for i, s in enumerate(shapes)]
    ts = [minise.tensor(a, requires_grad=True) for a in arrays]
    tts = [torch.tensor(a, requires_grad=True) for a in arrays]
    y, ty = getattr(minise, op)(ts, dim), getattr(torch, op)(tts, dim)
    gy = normal(seed + 99, tuple(ty.shape))
    y.backward(gy)
    ty.backward(torch.tensor(gy))
    np.testing.assert_array_equal(y.numpy(), ty.detach().numpy())
    for t, tt in zip(ts, tts, strict=True):
        np.testing.assert_array_equal(t.grad, tt.grad.numpy())


# --------------------------------------------------------------------------------------------------
# save and load
# --------------------------------------------------------------------------------------------------
def test_save_load_round_trips_tensors_state_dicts_and_nested_plain_values(tmp_path: Path) -> None:
    minise.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm2d(4))
    obj = {
        "model": model.state_dict(),
        "weights": minise.tensor(np.arange(4.0), requires_grad=True),
        "epoch": 3,
        "lr": 0.1,
        "name": "se",
        "done": False,
        "none": None,
        "history": [1.5, {"x": 2}],
        "pair": (np.ones(2, np.int32), "b"),
        7: "an int key",
    }
    path = minise.save(obj, tmp_path / "ckpt.pt")
    back = minise.load(path)
    assert list(back) == list(obj)
    assert list(back["model"]) == list(model.state_dict())
    for k, v in model.state_dict().items():
        assert back["model"][k].dtype == v.dtype
        np.testing.assert_array_equal(back["model"][k], v)
    assert isinstance(back["weights"], minise.Tensor) and back["weights"].requires_grad
    np.testing.assert_array_equal(back["weights"].numpy(), np.arange(4.0))
    assert (back["epoch"], back["lr"], back["name"], back["done"], back["none"]) == (3, 0.1, "se", False, None)
    assert back["history"] == [1.5, {"x": 2}] and isinstance(back["pair"], tuple)
    assert back["pair"][0].dtype == np.int32 and back[7] == "an int key"
    fresh = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm2d(4))
    assert fresh.load_state_dict(back["model"]) == ([], [])
    np.testing.assert_array_equal(fresh[0].weight.numpy(), model[0].weight.numpy())


def test_save_load_a_single_tensor_and_array(tmp_path: Path) -> None:
    t = minise.tensor(np.float32([[1, 2]]))
    minise.save(t, tmp_path / "t")
    back = minise.load(tmp_path / "t")
    assert isinstance(back, minise.Tensor) and back.dtype == np.float32 and not back.requires_grad
    minise.save(np.arange(3), tmp_path / "a")
    np.testing.assert_array_equal(minise.load(tmp_path / "a"), np.arange(3))


def test_save_writes_the_checkpoint_format_without_pickle(tmp_path: Path) -> None:
    minise.save({"w": np.ones(2)}, tmp_path / "x.npz")
    meta, arrays = load_checkpoint(tmp_path / "x.npz")  # the checkpoint reader accepts it
    assert meta["kind"] == "minise.save" and list(arrays) == ["obj/0"]
    with np.load(tmp_path / "x.npz", allow_pickle=False) as archive:  # no pickle inside
        assert sorted(archive.files) == ["__meta__", "obj/0"]


def test_save_refuses_what_it_would_have_to_pickle_and_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "keep.npz"
    minise.save({"w": np.ones(2)}, path)
    before = path.read_bytes()
    with pytest.raises(TypeError, match=r"save: cannot save obj\['model'\], a Sequential .* model.state_dict\(\)"):
        minise.save({"model": nn.Sequential()}, path)
    with pytest.raises(TypeError, match=r"array of Python objects"):
        minise.save([np.array([object()])], path)
    with pytest.raises(TypeError, match=r"key \(1, 2\) of type tuple"):
        minise.save({(1, 2): 0}, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["keep.npz"]  # no temporary file left behind


def test_load_reads_a_training_checkpoint_grouped_by_prefix(tmp_path: Path) -> None:
    model = nn.Linear(2, 2)
    arrays = {f"model/{k}": v for k, v in model.state_dict().items()}
    arrays["optim/0/momentum_buffer"] = np.zeros((2, 2), np.float32)
    save_checkpoint(tmp_path / "best.npz", {"model": "linear", "epoch": 4}, arrays)
    back = minise.load(tmp_path / "best.npz")
    assert back["meta"]["epoch"] == 4 and set(back) == {"meta", "model", "optim"}
    assert nn.Linear(2, 2).load_state_dict(back["model"]) == ([], [])
    assert list(back["optim"]) == ["0/momentum_buffer"]


def test_load_refuses_a_pickle_and_a_non_checkpoint_with_one_line(tmp_path: Path) -> None:
    np.save(tmp_path / "p.npy", np.array([object()]), allow_pickle=True)
    (tmp_path / "text.pt").write_text("hello")
    for name in ("p.npy", "text.pt", "missing.pt"):
        with pytest.raises(CheckpointError) as info:
            minise.load(tmp_path / name)
        assert "\n" not in str(info.value)


def test_save_to_the_cupy_backend_loads_on_numpy(xp, tmp_path: Path) -> None:
    t = minise.Tensor(to_xp(xp, np.arange(3.0)))
    minise.save({"t": t, "raw": t.data}, tmp_path / "d.npz")
    back = minise.load(tmp_path / "d.npz")
    assert isinstance(back["raw"], np.ndarray) and back["t"].device == backend.get_backend()
    np.testing.assert_array_equal(back["t"].numpy(), np.arange(3.0))
    assert os.listdir(tmp_path) == ["d.npz"]
