"""The checker bites: gradcheck must catch planted backward bugs and say where.

Planted bugs: a sign error (sigmoid), a factor 2 in batch norm's dx, a broadcast operand whose
gradient is not summed back (add), a single wrong element. The batch-norm bug is invisible to a
``sum()`` loss (an all-ones cotangent), which is why gradcheck uses a random cotangent: shown below.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import minise
import minise.functional as F
from minise.autograd import Function, sum_to
from minise.functional.arithmetic import AddOp
from minise.functional.elementwise import SigmoidOp
from minise.functional.normalization import BatchNormOp
from minise.gradcheck import InputReport


# --------------------------------------------------------------------------------------------------
# faulty ops
# --------------------------------------------------------------------------------------------------
class SignErrorSigmoid(SigmoidOp):
    """sigmoid whose backward has a sign error: dx = -gy * y * (1 - y)."""

    def backward(self, gy: Any) -> Any:
        (y,) = self.saved  # type: ignore[misc]
        return -gy * y * (1 - y)


class DoubledDxBatchNorm(BatchNormOp):
    """batch norm whose input gradient is off by a factor 2 (dgamma and dbeta are right)."""

    def backward(self, gy: Any) -> tuple[Any, Any, Any]:
        dx, dgamma, dbeta = super().backward(gy)
        return 2 * dx, dgamma, dbeta


class NoSumToAdd(AddOp):
    """a + b whose backward forgets sum_to: the broadcast operand gets the full-size gradient."""

    def backward(self, gy: Any) -> tuple[Any, Any]:
        return gy, gy


class FirstRowAdd(AddOp):
    """a + b that 'un-broadcasts' b by taking the first row instead of summing the rows: right shape, wrong values."""

    def backward(self, gy: Any) -> tuple[Any, Any]:
        sa, sb = self.saved  # type: ignore[misc]
        return sum_to(gy, sa), gy[:1].reshape(sb)


class OneWrongElementSquare(Function):
    """y = x**2 whose backward is right everywhere but at flat index 5."""

    name = "square"

    def forward(self, x: Any) -> Any:
        self.save(x)
        return x * x

    def backward(self, gy: Any) -> Any:
        (x,) = self.saved  # type: ignore[misc]
        dx = 2 * x * gy
        dx.reshape(-1)[5] += 0.25
        return dx


def bad_sigmoid(x):
    return SignErrorSigmoid().apply(x)


def bad_batch_norm(x, gamma=None, beta=None):
    return DoubledDxBatchNorm(None, None, True, 0.1, 1e-5).apply(x, gamma, beta)


def _x(shape, seed=7):  # not 0: gradcheck draws its cotangent with seed 0, and x must not equal it
    return minise.Tensor(np.random.default_rng(seed).standard_normal(shape), requires_grad=True)


def _failing(report: minise.GradcheckReport) -> list[int]:
    return [r.index for r in report.inputs if not r.ok]


def _assert_report_names(err: minise.GradcheckError, index: int) -> InputReport:
    """The message names the failing input, its worst index and both values there."""
    r = next(r for r in err.report.inputs if r.index == index)
    text = str(err)
    assert "FAILED" in text
    line = next(line for line in text.splitlines() if line.strip().startswith(f"input {index} "))
    assert str(r.shape) in line and f"worst at {r.worst_at}" in line
    assert f"analytical {r.analytical:.10g}" in line and f"numerical {r.numerical:.10g}" in line
    assert "mismatch" in line
    return r


# --------------------------------------------------------------------------------------------------
# each planted bug is caught and located
# --------------------------------------------------------------------------------------------------
def test_sign_error_is_caught() -> None:
    x = _x((3, 4))
    weights = np.random.default_rng(1).uniform(0.5, 2.0, (3, 4))
    with pytest.raises(minise.GradcheckError) as info:
        minise.gradcheck(lambda t: (bad_sigmoid(t) * weights).sum(), x)
    r = _assert_report_names(info.value, 0)
    assert not info.value.report.ok and _failing(info.value.report) == [0]
    # a scalar output: the cotangent is one number, so the worst element is where |w y (1 - y)| is largest
    y = 1 / (1 + np.exp(-x.data))
    assert r.worst_at == np.unravel_index(np.argmax(np.abs(weights * y * (1 - y))), (3, 4))
    assert r.numerical != 0 and r.analytical == pytest.approx(-r.numerical, rel=1e-6)
    assert r.max_rel_error == pytest.approx(2.0, rel=1e-6)


def test_sign_error_is_caught_elementwise() -> None:
    with pytest.raises(minise.GradcheckError) as info:
        minise.gradcheck(bad_sigmoid, _x((2, 5)))
    r = _assert_report_names(info.value, 0)
    assert r.analytical == pytest.approx(-r.numerical, rel=1e-6)


def test_one_wrong_element_is_located() -> None:
    x = _x((2, 4))
    with pytest.raises(minise.GradcheckError) as info:
        minise.gradcheck(lambda t: OneWrongElementSquare().apply(t), x)
    r = _assert_report_names(info.value, 0)
    assert r.worst_at == (1, 1)  # flat index 5 of a (2, 4) array
    assert r.analytical - r.numerical == pytest.approx(0.25, rel=1e-6)
    assert r.max_abs_error == pytest.approx(0.25, rel=1e-6)


def test_batch_norm_doubled_dx_is_caught_and_only_x_is_blamed() -> None:
    x = _x((4, 3, 2, 2))
    gamma = minise.Tensor(np.array([0.5, 1.5, -1.0]), requires_grad=True)
    beta = minise.Tensor(np.array([0.1, -0.2, 0.3]), requires_grad=True)
    with pytest.raises(minise.GradcheckError) as info:
        minise.gradcheck(bad_batch_norm, x, gamma, beta)
    report = info.value.report
    assert _failing(report) == [0]  # gamma's and beta's gradients are right
    r = _assert_report_names(info.value, 0)
    assert r.analytical == pytest.approx(2 * r.numerical, rel=1e-5)
    assert [i.index for i in report.inputs] == [0, 1, 2]


def test_missing_broadcast_sum_is_reported_as_a_clear_error() -> None:
    """Forgetting sum_to hands b a gradient of the output's shape: autograd names the op and both shapes."""
    a, b = _x((3, 4)), _x((4,), seed=1)
    with pytest.raises(RuntimeError, match=r"add\.backward returned a gradient of shape \(3, 4\) for \(4,\)"):
        minise.gradcheck(lambda p, q: NoSumToAdd().apply(p, q), a, b)


def test_wrong_broadcast_reduction_is_caught() -> None:
    """b of shape (1, 4) broadcast over 3 rows: taking one row instead of the sum has the right shape but is wrong."""
    a, b = _x((3, 4)), _x((1, 4), seed=1)
    with pytest.raises(minise.GradcheckError) as info:
        minise.gradcheck(lambda p, q: FirstRowAdd().apply(p, q), a, b)
    assert _failing(info.value.report) == [1]
    _assert_report_names(info.value, 1)


def test_report_without_raising() -> None:
    report = minise.gradcheck(bad_sigmoid, _x((3,)), raise_on_failure=False)
    assert not report.ok and "FAILED" in str(report)


# --------------------------------------------------------------------------------------------------
# why the cotangent must be random
# --------------------------------------------------------------------------------------------------
def test_sum_cotangent_cannot_see_the_batch_norm_bug() -> None:
    """With an all-ones cotangent (a sum() loss) batch norm's true dx is 0 (it sums to zero per channel
    whatever x is), and twice 0 is 0: the doubled dx agrees with finite differences. A random cotangent
    makes dx non-zero, and the factor 2 shows."""
    xa = np.random.default_rng(5).standard_normal((4, 2, 3))
    eps = 1e-6

    def analytical(cot):
        x = minise.Tensor(xa.copy(), requires_grad=True)
        bad_batch_norm(x).backward(cot)
        return x.grad

    def numerical(cot):
        g = np.zeros_like(xa)
        for j in range(xa.size):
            plus, minus = xa.copy(), xa.copy()
            plus.flat[j] += eps
            minus.flat[j] -= eps
            f_plus = (F.batch_norm(minise.Tensor(plus), None, None, training=True).numpy() * cot).sum()
            f_minus = (F.batch_norm(minise.Tensor(minus), None, None, training=True).numpy() * cot).sum()
            g.flat[j] = (f_plus - f_minus) / (2 * eps)
        return g

    ones = np.ones(xa.shape)
    np.testing.assert_allclose(analytical(ones), numerical(ones), atol=1e-8)  # the bug hides
    assert np.abs(analytical(ones)).max() < 1e-12

    cot = np.random.default_rng(6).standard_normal(xa.shape)
    a, n = analytical(cot), numerical(cot)
    assert not np.allclose(a, n, atol=1e-6)  # the bug shows
    np.testing.assert_allclose(a, 2 * n, rtol=1e-5, atol=1e-8)

    # and gradcheck of a sum() loss is blind too (its cotangent is one number), while gradcheck of the op is not
    assert minise.gradcheck(lambda t: bad_batch_norm(t).sum(), minise.Tensor(xa.copy(), requires_grad=True)).ok
    with pytest.raises(minise.GradcheckError):
        minise.gradcheck(bad_batch_norm, minise.Tensor(xa.copy(), requires_grad=True))


# --------------------------------------------------------------------------------------------------
# what gradcheck accepts, and what it returns on correct ops
# --------------------------------------------------------------------------------------------------
def test_gradcheck_refuses_float32() -> None:
    x = minise.Tensor(np.ones((2, 3), dtype=np.float32), requires_grad=True)
    with pytest.raises(TypeError, match=r"gradcheck: inputs must be float64 \(got float32 for shape \(2, 3\)\)"):
        minise.gradcheck(F.sigmoid, x)


def test_gradcheck_needs_an_input_that_requires_grad() -> None:
    with pytest.raises(ValueError, match="gradcheck: no input requires grad"):
        minise.gradcheck(F.sigmoid, minise.Tensor(np.ones(3)))


def test_gradcheck_passes_on_correct_ops_with_per_input_worst_errors() -> None:
    rng = np.random.default_rng(0)
    x = minise.Tensor(rng.standard_normal((5, 3)), requires_grad=True)
    w = minise.Tensor(rng.standard_normal((2, 3)), requires_grad=True)
    b = minise.Tensor(rng.standard_normal(2), requires_grad=True)
    report = minise.gradcheck(lambda x, w, b: F.sigmoid(F.linear(x, w, b)), x, w, b)
    assert isinstance(report, minise.GradcheckReport) and report.ok
    assert [(r.index, r.shape) for r in report.inputs] == [(0, (5, 3)), (1, (2, 3)), (2, (2,))]
    for r in report.inputs:
        assert r.ok and r.max_abs_error < 1e-8 and r.max_rel_error < 1e-6
        assert len(r.worst_at) == len(r.shape)
        assert abs(r.analytical - r.numerical) <= report.atol + report.rtol * abs(r.numerical)
    assert str(report).startswith("gradcheck passed") and "mismatch" not in str(report)


def test_gradcheck_skips_inputs_that_need_no_grad_and_keeps_their_positions() -> None:
    const = minise.Tensor(np.random.default_rng(1).standard_normal((2, 3)))
    x = _x((2, 3))
    report = minise.gradcheck(lambda c, t: c * F.tanh(t), const, x)
    assert [r.index for r in report.inputs] == [1]
