"""Bad input raises ValueError or TypeError worded as "op: what is wrong (the shapes) - how to fix it".

Each case names the exception, the call, and fragments the message must hold: the op's name first,
then the offending shapes or values.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import minise
import minise.functional as F
from minise import backend


def _f(*shape: int, dtype: Any = np.float64) -> minise.Tensor:
    return minise.Tensor(np.ones(shape, dtype=dtype))


X4 = _f(2, 3, 5, 5)  # a valid (N, C, H, W) batch
W4 = _f(4, 3, 3, 3)  # a valid conv weight for it


def conv(**kwargs: Any) -> Callable[[], Any]:
    x, w = kwargs.pop("x", X4), kwargs.pop("w", W4)
    return lambda: F.conv2d(x, w, **kwargs)


def se(x=None, w1=None, b1=None, w2=None, b2=None) -> Callable[[], Any]:
    x = _f(1, 4, 2, 2) if x is None else x
    w1 = _f(2, 4) if w1 is None else w1
    w2 = _f(4, 2) if w2 is None else w2
    return lambda: F.squeeze_excite(x, w1, b1, w2, b2)


def bn(x=None, rm=None, rv=None, **kwargs: Any) -> Callable[[], Any]:
    x = _f(2, 3, 2, 2) if x is None else x
    rm = np.zeros(3) if rm is None else rm
    rv = np.ones(3) if rv is None else rv
    return lambda: F.batch_norm(x, rm, rv, **kwargs)


LOGITS = _f(2, 3)

# (id, exception, call, fragments of the message; the first is always "op:")
CASES: list[tuple[str, type[Exception], Callable[[], Any], list[str]]] = [
    # wrong ranks
    ("conv2d 3-D input", ValueError, conv(x=_f(3, 5, 5)), ["conv2d:", "input", "(3, 5, 5)", "4-D", "batch axis"]),
    ("conv2d 2-D input", ValueError, conv(x=_f(5, 5)), ["conv2d:", "(5, 5)", "4-D"]),
    ("conv2d 3-D weight", ValueError, conv(w=_f(4, 3, 3)), ["conv2d:", "weight", "(4, 3, 3)", "4-D"]),
    ("max_pool2d 2-D input", ValueError, lambda: F.max_pool2d(_f(5, 5), 2), ["max_pool2d:", "(5, 5)", "4-D"]),
    (
        "avg_pool2d 3-D input",
        ValueError,
        lambda: F.avg_pool2d(_f(3, 5, 5), 2),
        ["avg_pool2d:", "(3, 5, 5)", "batch axis"],
    ),
    ("global_avg_pool2d 2-D", ValueError, lambda: F.global_avg_pool2d(_f(2, 3)), ["global_avg_pool2d:", "(2, 3)"]),
    ("adaptive 2-D", ValueError, lambda: F.adaptive_avg_pool2d(_f(2, 3), 1), ["adaptive_avg_pool2d:", "(2, 3)"]),
    (
        "adaptive not a divisor",
        ValueError,
        lambda: F.adaptive_avg_pool2d(_f(1, 1, 5, 4), 2),
        ["adaptive_avg_pool2d:", "(2, 2)", "(5, 4)"],
    ),
    ("linear 1-D weight", ValueError, lambda: F.linear(_f(2, 3), _f(3)), ["linear:", "weight", "(3,)", "2-D"]),
    (
        "linear feature mismatch",
        ValueError,
        lambda: F.linear(_f(2, 5), _f(3, 4)),
        ["linear:", "5 features", "(2, 5)", "expects 4", "(3, 4)"],
    ),
    ("linear bias shape", ValueError, lambda: F.linear(_f(2, 4), _f(3, 4), _f(4)), ["linear:", "bias", "(4,)", "(3,)"]),
    # channels and groups
    (
        "conv2d channel mismatch",
        ValueError,
        conv(w=_f(4, 2, 3, 3)),
        ["conv2d:", "3 channels", "expects 2", "(4, 2, 3, 3)", "groups=1"],
    ),
    (
        "conv2d grouped channel mismatch",
        ValueError,
        conv(x=_f(1, 6, 5, 5), w=_f(4, 2, 3, 3), groups=2),
        ["conv2d:", "6 channels", "expects 4", "(4, 2, 3, 3)", "groups=2"],
    ),
    (
        "conv2d groups not dividing in_channels",
        ValueError,
        conv(w=_f(4, 1, 3, 3), groups=2),
        ["conv2d:", "groups=2", "in_channels (3)", "out_channels (4)"],
    ),
    (
        "conv2d groups not dividing out_channels",
        ValueError,
        conv(x=_f(1, 4, 5, 5), w=_f(3, 2, 3, 3), groups=2),
        ["conv2d:", "groups=2", "out_channels (3)"],
    ),
    ("conv2d groups 0", TypeError, conv(groups=0), ["conv2d:", "groups", "0"]),
    ("conv2d groups float", TypeError, conv(groups=1.0), ["conv2d:", "groups", "1.0"]),
    ("conv2d groups bool", TypeError, conv(groups=True), ["conv2d:", "groups", "True"]),
    (
        "conv2d bias shape",
        ValueError,
        lambda: F.conv2d(X4, W4, _f(3)),
        ["conv2d:", "bias", "(3,)", "(4, 3, 3, 3)", "(4,)"],
    ),
    # kernel larger than the padded input
    (
        "conv2d kernel too large",
        ValueError,
        conv(x=_f(1, 3, 2, 2)),
        ["conv2d:", "kernel 3x3", "padded input 2x2", "(1, 3, 2, 2)"],
    ),
    (
        "conv2d dilated kernel too large",
        ValueError,
        conv(x=_f(1, 3, 4, 9), w=_f(4, 3, 2, 2), dilation=(4, 1)),
        ["conv2d:", "kernel 2x2", "spanning 5x2", "padded input 4x9", "(1, 3, 4, 9)"],
    ),
    (
        "conv2d kernel too large for padding",
        ValueError,
        conv(x=_f(1, 3, 1, 1), w=_f(4, 3, 4, 4), padding=1),
        ["conv2d:", "kernel 4x4", "padded input 3x3", "padding (1, 1)"],
    ),
    (
        "max_pool2d kernel too large",
        ValueError,
        lambda: F.max_pool2d(_f(1, 1, 2, 2), 3),
        ["max_pool2d:", "kernel (3, 3)", "padded input 2x2", "(1, 1, 2, 2)"],
    ),
    (
        "avg_pool2d kernel too large",
        ValueError,
        lambda: F.avg_pool2d(_f(1, 1, 2, 5), (3, 1)),
        ["avg_pool2d:", "kernel (3, 1)", "2x5"],
    ),
    (
        "max_pool2d padding above half the kernel",
        ValueError,
        lambda: F.max_pool2d(X4, 3, padding=2),
        ["max_pool2d:", "padding (2, 2)", "kernel size (3, 3)"],
    ),
    # stride / padding / dilation / kernel_size of the wrong kind
    ("conv2d stride float", TypeError, conv(stride=1.5), ["conv2d:", "stride", "1.5"]),
    ("conv2d stride str", TypeError, conv(stride="2"), ["conv2d:", "stride", "'2'"]),
    ("conv2d stride negative", ValueError, conv(stride=-1), ["conv2d:", "stride", "at least 1", "-1"]),
    ("conv2d stride zero", ValueError, conv(stride=(1, 0)), ["conv2d:", "stride", "(1, 0)"]),
    ("conv2d stride bool", TypeError, conv(stride=True), ["conv2d:", "stride", "True"]),
    ("conv2d stride 3-tuple", TypeError, conv(stride=(1, 1, 1)), ["conv2d:", "stride", "(1, 1, 1)"]),
    ("conv2d stride pair of floats", TypeError, conv(stride=(1.0, 2)), ["conv2d:", "stride", "(1.0, 2)"]),
    ("conv2d stride pair with a bool", TypeError, conv(stride=(1, False)), ["conv2d:", "stride", "(1, False)"]),
    ("conv2d padding negative", ValueError, conv(padding=-1), ["conv2d:", "padding", "at least 0", "-1"]),
    ("conv2d padding float", TypeError, conv(padding=0.5), ["conv2d:", "padding", "0.5"]),
    ("conv2d padding str", TypeError, conv(padding="same"), ["conv2d:", "padding", "'same'"]),
    ("conv2d padding 1-tuple", TypeError, conv(padding=(1,)), ["conv2d:", "padding", "(1,)"]),
    ("conv2d dilation zero", ValueError, conv(dilation=0), ["conv2d:", "dilation", "0"]),
    ("max_pool2d stride zero", ValueError, lambda: F.max_pool2d(X4, 2, stride=0), ["max_pool2d:", "stride", "0"]),
    ("max_pool2d stride float", TypeError, lambda: F.max_pool2d(X4, 2, stride=2.0), ["max_pool2d:", "stride", "2.0"]),
    ("max_pool2d kernel bool", TypeError, lambda: F.max_pool2d(X4, True), ["max_pool2d:", "kernel_size", "True"]),
    (
        "avg_pool2d padding negative",
        ValueError,
        lambda: F.avg_pool2d(X4, 2, padding=-1),
        ["avg_pool2d:", "padding", "-1"],
    ),
    ("avg_pool2d kernel 3-tuple", TypeError, lambda: F.avg_pool2d(X4, (2, 2, 2)), ["avg_pool2d:", "(2, 2, 2)"]),
    # integer tensors where floats are needed
    ("conv2d int input", TypeError, conv(x=_f(2, 3, 5, 5, dtype=np.int64)), ["conv2d:", "input", "int64", "float"]),
    ("conv2d int weight", TypeError, conv(w=_f(4, 3, 3, 3, dtype=np.int32)), ["conv2d:", "weight", "int32"]),
    ("relu int", TypeError, lambda: F.relu(_f(3, dtype=np.int64)), ["relu:", "int64", "float"]),
    ("sigmoid bool", TypeError, lambda: F.sigmoid(_f(3, dtype=bool)), ["sigmoid:", "bool"]),
    ("batch_norm int", TypeError, bn(x=_f(2, 3, 2, 2, dtype=np.int64)), ["batch_norm:", "int64", "float"]),
    ("max_pool2d int", TypeError, lambda: F.max_pool2d(_f(1, 1, 2, 2, dtype=np.int64), 2), ["max_pool2d:", "int64"]),
    ("softmax int", TypeError, lambda: F.softmax(_f(2, 3, dtype=np.int64)), ["softmax:", "int64"]),
    ("linear int", TypeError, lambda: F.linear(_f(2, 3, dtype=np.int64), _f(2, 3)), ["linear:", "int64"]),
    ("dropout int", TypeError, lambda: F.dropout(_f(3, dtype=np.int64)), ["dropout:", "int64"]),
    (
        "conv2d mixed float dtypes",
        TypeError,
        conv(x=_f(2, 3, 5, 5, dtype=np.float32)),
        ["conv2d:", "float32", "float64"],
    ),
    # cross_entropy
    (
        "cross_entropy target too large",
        ValueError,
        lambda: F.cross_entropy(LOGITS, np.array([0, 3])),
        ["cross_entropy:", "class 3", "3 classes", "[0, 2]"],
    ),
    (
        "cross_entropy target negative",
        ValueError,
        lambda: F.cross_entropy(LOGITS, np.array([-1, 0])),
        ["cross_entropy:", "class -1", "3 classes"],
    ),
    (
        "cross_entropy float target",
        TypeError,
        lambda: F.cross_entropy(LOGITS, np.array([0.0, 1.0])),
        ["cross_entropy:", "target", "float64", "int"],
    ),
    (
        "cross_entropy target shape",
        ValueError,
        lambda: F.cross_entropy(LOGITS, np.array([[0], [1]])),
        ["cross_entropy:", "target", "(2, 1)", "(2, 3)", "(2,)"],
    ),
    (
        "cross_entropy target length",
        ValueError,
        lambda: F.cross_entropy(LOGITS, np.array([0, 1, 2])),
        ["cross_entropy:", "(3,)", "(2, 3)", "(2,)"],
    ),
    (
        "cross_entropy 1-D logits",
        ValueError,
        lambda: F.cross_entropy(_f(3), np.array([0])),
        ["cross_entropy:", "(3,)", "2-D"],
    ),
    (
        "cross_entropy label_smoothing negative",
        ValueError,
        lambda: F.cross_entropy(LOGITS, np.array([0, 1]), label_smoothing=-0.1),
        ["cross_entropy:", "label_smoothing", "-0.1"],
    ),
    (
        "cross_entropy label_smoothing above 1",
        ValueError,
        lambda: F.cross_entropy(LOGITS, np.array([0, 1]), label_smoothing=1.5),
        ["cross_entropy:", "label_smoothing", "1.5"],
    ),
    # batch_norm
    (
        "batch_norm weight shape",
        ValueError,
        bn(weight=_f(4)),
        ["batch_norm:", "weight", "(4,)", "(2, 3, 2, 2)", "(3,)"],
    ),
    ("batch_norm bias shape", ValueError, bn(bias=_f(1)), ["batch_norm:", "bias", "(1,)", "(3,)"]),
    ("batch_norm running_mean shape", ValueError, bn(rm=np.zeros(2)), ["batch_norm:", "running_mean", "(2,)", "(3,)"]),
    ("batch_norm running_var shape", ValueError, bn(rv=np.ones((3, 1))), ["batch_norm:", "running_var", "(3, 1)"]),
    ("batch_norm 1-D input", ValueError, bn(x=_f(3)), ["batch_norm:", "(3,)"]),
    (
        "batch_norm eval without running stats",
        ValueError,
        lambda: F.batch_norm(_f(2, 3), None, None, training=False),
        ["batch_norm:", "running_mean", "running_var"],
    ),
    (
        "batch_norm training on one value per channel",
        ValueError,
        bn(x=_f(1, 3, 1, 1), training=True),
        ["batch_norm:", "(1, 3, 1, 1)", "more than one value"],
    ),
    # squeeze_excite
    ("se w1 columns", ValueError, se(w1=_f(2, 5)), ["squeeze_excite:", "w1", "(2, 5)", "(1, 4, 2, 2)", "(R, 4)"]),
    ("se w1 1-D", ValueError, se(w1=_f(4)), ["squeeze_excite:", "w1", "(4,)"]),
    ("se w2 shape", ValueError, se(w2=_f(4, 3)), ["squeeze_excite:", "w2", "(4, 3)", "(4, 2)"]),
    ("se w2 transposed", ValueError, se(w2=_f(2, 4)), ["squeeze_excite:", "w2", "(2, 4)", "(4, 2)"]),
    ("se b1 shape", ValueError, se(b1=_f(4)), ["squeeze_excite:", "b1", "(4,)", "(2,)"]),
    ("se b2 shape", ValueError, se(b2=_f(2)), ["squeeze_excite:", "b2", "(2,)", "(4,)"]),
    ("se 3-D input", ValueError, se(x=_f(4, 2, 2)), ["squeeze_excite:", "(4, 2, 2)", "4-D"]),
    ("se w2 missing", TypeError, lambda: F.squeeze_excite(_f(1, 4, 2, 2), _f(2, 4)), ["squeeze_excite:", "w2"]),
    ("se int input", TypeError, se(x=_f(1, 4, 2, 2, dtype=np.int64)), ["squeeze_excite:", "int64"]),
    # dropout
    ("dropout p negative", ValueError, lambda: F.dropout(_f(3), p=-0.1), ["dropout:", "p", "-0.1"]),
    ("dropout p above 1", ValueError, lambda: F.dropout(_f(3), p=1.5), ["dropout:", "p", "1.5"]),
    ("dropout p str", ValueError, lambda: F.dropout(_f(3), p="0.5"), ["dropout:", "p", "'0.5'"]),
    # tensor-level shape errors
    ("reshape size", ValueError, lambda: _f(2, 3).reshape(4), ["reshape:", "(2, 3)", "6 elements", "(4,)"]),
    ("sum axis out of range", ValueError, lambda: _f(2, 3).sum(axis=2), ["sum:", "axis 2", "2-D"]),
    ("max axis repeated", ValueError, lambda: _f(2, 3).max(axis=(1, -1)), ["max:", "(1, -1)"]),
    ("mean axis float", TypeError, lambda: _f(2, 3).mean(axis=(0.5,)), ["mean:", "axis"]),
    ("transpose not a permutation", ValueError, lambda: _f(2, 3).transpose(0, 0), ["transpose:", "(0, 0)"]),
]


@pytest.mark.parametrize(("exc", "call", "fragments"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_reported(exc: type[Exception], call: Callable[[], Any], fragments: list[str]) -> None:
    with pytest.raises(exc) as info:
        call()
    message = str(info.value)
    assert message.startswith(fragments[0]), message  # "op: ..."
    for fragment in fragments[1:]:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def test_backward_gradient_of_the_wrong_shape() -> None:
    y = F.sigmoid(minise.Tensor(np.ones((2, 3)), requires_grad=True))
    with pytest.raises(ValueError, match=r"backward: gradient has shape \(3,\) but the output has shape \(2, 3\)"):
        y.backward(np.ones(3))


def test_integer_tensor_cannot_require_grad() -> None:
    with pytest.raises(TypeError, match="int64"):
        minise.Tensor(np.ones(3, dtype=np.int64), requires_grad=True)


# --------------------------------------------------------------------------------------------------
# mixing NumPy and CuPy arrays
# --------------------------------------------------------------------------------------------------
class FakeCupyArray:
    """Stands in for a cupy.ndarray: minise tells backends apart by the class's module."""

    shape = (2, 3)
    dtype = np.dtype(np.float64)


FakeCupyArray.__module__ = "cupy._core.core"


def test_check_same_backend_names_the_op_and_both_backends() -> None:
    assert backend.backend_name(FakeCupyArray()) == "cupy"
    with pytest.raises(TypeError) as info:
        backend.check_same_backend("conv2d", np.ones((2, 3)), FakeCupyArray())
    message = str(info.value)
    assert message.startswith("conv2d:") and "numpy" in message and "cupy" in message
    assert ".to(" in message  # how to fix it


def test_check_same_backend_accepts_one_backend_and_ignores_none() -> None:
    backend.check_same_backend("add", np.ones(2), None, np.zeros(3))
    backend.check_same_backend("add", FakeCupyArray(), None, FakeCupyArray())


def test_function_apply_checks_backends() -> None:
    """Every op goes through Function.apply, which refuses mixed backends before forward runs."""

    class Probe(minise.autograd.Function):
        name = "probe"

        def forward(self, a: Any, b: Any) -> Any:  # pragma: no cover - must not run
            raise AssertionError("forward ran on mixed backends")

    fake = minise.Tensor(np.ones(3))
    fake.data = FakeCupyArray()
    with pytest.raises(TypeError, match=r"^probe: .*numpy.*cupy"):
        Probe().apply(minise.Tensor(np.ones(3)), fake)


@pytest.mark.cupy
@pytest.mark.skipif(not backend.cupy_available()[0], reason="CuPy backend unavailable (needs a GPU)")
def test_mixing_numpy_and_cupy_tensors_in_an_op() -> None:
    cupy = backend.xp_of_backend("cupy")
    x = minise.Tensor(cupy.ones((1, 3, 5, 5)))
    with pytest.raises(TypeError) as info:
        F.conv2d(x, minise.Tensor(np.ones((4, 3, 3, 3))))
    assert str(info.value).startswith("conv2d:") and "numpy" in str(info.value) and "cupy" in str(info.value)
    with pytest.raises(TypeError, match="add: .*numpy.*cupy"):
        _ = x + minise.Tensor(np.ones((1, 3, 5, 5)))


# --------------------------------------------------------------------------------------------------
# axes out of range are refused, not wrapped modulo ndim
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("axes", [(0, 3), (1, 2), (0, -3)])
def test_transpose_refuses_axes_out_of_range(axes: tuple[int, int]) -> None:
    """A 2-D tensor has axes 0 and 1 (or -2 and -1): transpose(0, 3) is an error, as in NumPy and PyTorch."""
    with pytest.raises(ValueError, match=r"^transpose: .*\(2, 3\)"):
        _f(2, 3).transpose(*axes)


@pytest.mark.parametrize(("start", "end"), [(4, -1), (1, 5), (-4, -1)])
def test_flatten_refuses_dims_out_of_range(start: int, end: int) -> None:
    """flatten of a (2, 3, 4) tensor from dim 4 is an error, as in PyTorch."""
    with pytest.raises(ValueError, match=r"^flatten: .*\(2, 3, 4\)"):
        F.flatten(_f(2, 3, 4), start, end)


def test_flatten_of_a_scalar_is_one_element() -> None:
    """flatten of a 0-d tensor returns shape (1,), as torch.flatten."""
    assert minise.tensor(3.0).flatten().shape == (1,)
