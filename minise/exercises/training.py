"""``check NN --train``: your op inside a real SE-ResNet-20, trained beside minise's own op.

The hook is :func:`swap_op`. minise's layers call their op through the module ``minise.functional``
at every call (``nn.Conv2d.forward`` runs ``F.conv2d(...)``, ``nn.BatchNorm2d`` ``F.batch_norm``,
``nn.SEBlock`` ``F.squeeze_excite``), so while ``with swap_op("conv2d", yours):`` runs, every
convolution of the network is yours; on leaving the block the original is back. Nothing in the
normal path changes: no registry lookup, no flag, no extra call. Both runs use the unfused layers
(``MINISE_FUSED=0``, :func:`~minise.functional.fused.unfused`): a fused op such as batch norm + ReLU or SE + add + ReLU
(``minise.functional.fused``) would compute that op with minise's own code, not yours.

"Yours" is a function with the signature of the op it replaces, returning a Tensor. The functions
below build one from your exercise: a :class:`~minise.autograd.Function` subclass whose forward (or
backward) calls your NumPy code, exactly as minise's own ops are written (lesson 02).

The run: ``se_resnet20`` on ``shapes`` images drawn at 16x16 pixels (the network is the same; a quarter
of the pixels made a step 3.3 times cheaper here: 0.34 s against 1.12 s at batch 32), batch 32, SGD with
momentum 0.9 and learning rate 0.02 (0.05 and 0.1 learned less in 200 steps, measured), the same seed,
data order and initial weights for both runs. ``check NN --train`` runs 200 steps twice. Measured with
the reference solutions of 05, 07, 08 and 09 on 2 CPU cores shared with other work: 135-270 s wall-clock
at a load of about 10, 69 s (for 09, with default settings) at a load of about 4, and 45-63 s of CPU
time for the two runs. Where other programs share the cores, ``OPENBLAS_NUM_THREADS=1`` keeps BLAS
threads from fighting over them: the learner's convolution took 9 s per step without it and 0.47 s with
it there (minise's own ops hold BLAS to one thread while they split work across cores).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

import minise
import minise.functional as F
from minise import models, optim
from minise.autograd import Function
from minise.data.shapes import make_shapes
from minise.functional.fused import unfused
from minise.functional.normalization import BatchNormOp
from minise.functional.squeeze_excite import SqueezeExciteOp
from minise.tensor import Tensor

IMAGE_SIZE, BATCH, LR, SEED = 16, 32, 0.02, 0


@contextlib.contextmanager
def swap_op(name: str, replacement: Callable[..., Tensor]) -> Iterator[None]:
    """Within the block, ``minise.functional.<name>`` (and so every layer that calls it) is ``replacement``."""
    original = getattr(F, name)
    setattr(F, name, replacement)
    try:
        yield
    finally:
        setattr(F, name, original)


def _as(dtype: Any, *arrays: Any) -> tuple[Any, ...]:
    """The learner's results in the op's dtype (a float64 answer to a float32 network is cast back)."""
    return tuple(None if a is None else np.asarray(a, dtype=dtype) for a in arrays)


# --------------------------------------------------------------------------------------------------
# ops built from a learner's code
# --------------------------------------------------------------------------------------------------
class _SEYourBackward(Function):
    """minise's SE forward; backward = your squeeze_excite_backward(gy, x, w1, b1, w2, b2)."""

    name = "squeeze_excite (your backward)"

    def __init__(self, backward_fn: Callable[..., Any]) -> None:
        super().__init__()
        self.backward_fn = backward_fn

    def forward(self, x: Any, w1: Any, b1: Any, w2: Any, b2: Any) -> Any:
        self.save(x, w1, b1, w2, b2)
        return SqueezeExciteOp().forward(x, w1, b1, w2, b2)

    def backward(self, gy: Any) -> tuple[Any, ...]:
        x, w1, b1, w2, b2 = self.saved  # type: ignore[misc]
        return _as(x.dtype, *self.backward_fn(gy, x, w1, b1, w2, b2))


class _SEYourForward(Function):
    """forward = your squeeze_excite_forward; backward = minise's (from its own forward's saved values)."""

    name = "squeeze_excite (your forward)"

    def __init__(self, forward_fn: Callable[..., Any]) -> None:
        super().__init__()
        self.forward_fn, self.inner = forward_fn, SqueezeExciteOp()

    def forward(self, x: Any, w1: Any, b1: Any, w2: Any, b2: Any) -> Any:
        self.inner.forward(x, w1, b1, w2, b2)  # minise's forward, for the values its backward reads
        (y,) = _as(x.dtype, self.forward_fn(x, w1, b1, w2, b2))
        return y

    def backward(self, gy: Any) -> Any:
        self.inner.needs_input_grad = self.needs_input_grad
        return self.inner.backward(gy)


def se_with_backward(backward_fn: Callable[..., Any]) -> Callable[..., Tensor]:
    """An ``F.squeeze_excite`` whose backward is the learner's (exercise 09)."""

    def squeeze_excite(input: Any, w1: Any, b1: Any = None, w2: Any = None, b2: Any = None) -> Tensor:
        return _SEYourBackward(backward_fn).apply(input, w1, b1, w2, b2)

    return squeeze_excite


def se_with_forward(forward_fn: Callable[..., Any]) -> Callable[..., Tensor]:
    """An ``F.squeeze_excite`` whose forward is the learner's (exercise 08)."""

    def squeeze_excite(input: Any, w1: Any, b1: Any = None, w2: Any = None, b2: Any = None) -> Tensor:
        return _SEYourForward(forward_fn).apply(input, w1, b1, w2, b2)

    return squeeze_excite


class _BatchNormYourBackward(BatchNormOp):
    """minise's training-mode batch norm forward (running statistics included); backward = yours."""

    name = "batch_norm (your backward)"

    def __init__(self, backward_fn: Callable[..., Any], *args: Any) -> None:
        super().__init__(*args)
        self.backward_fn = backward_fn

    def forward(self, x: Any, gamma: Any, beta: Any) -> Any:
        y = super().forward(x, gamma, beta)
        self.save(x, gamma)
        return y

    def backward(self, gy: Any) -> tuple[Any, Any, Any]:
        x, gamma = self.saved  # type: ignore[misc]
        return _as(x.dtype, *self.backward_fn(gy, x, gamma, self.eps))  # type: ignore[return-value]


def batch_norm_with_backward(backward_fn: Callable[..., Any]) -> Callable[..., Tensor]:
    """An ``F.batch_norm`` whose training-mode backward is the learner's (exercise 07)."""
    builtin = F.batch_norm

    def batch_norm(
        input: Any,
        running_mean: Any,
        running_var: Any,
        weight: Any = None,
        bias: Any = None,
        training: bool = False,
        momentum: float = 0.1,
        eps: float = 1e-5,
    ) -> Tensor:
        if not training:  # evaluation uses the running statistics: minise's op
            return builtin(input, running_mean, running_var, weight, bias, training, momentum, eps)
        return _BatchNormYourBackward(backward_fn, running_mean, running_var, True, momentum, eps).apply(
            input, weight, bias
        )

    return batch_norm


class _ConvYours(Function):
    """forward = your conv2d_forward, backward = your conv2d_backward (exercise 05)."""

    name = "conv2d (yours)"

    def __init__(self, forward_fn: Callable[..., Any], backward_fn: Callable[..., Any], stride: int, padding: int):
        super().__init__()
        self.forward_fn, self.backward_fn, self.stride, self.padding = forward_fn, backward_fn, stride, padding

    def forward(self, x: Any, w: Any, b: Any) -> Any:
        self.save(x, w)
        (y,) = _as(x.dtype, self.forward_fn(x, w, b, self.stride, self.padding))
        return y

    def backward(self, gy: Any) -> tuple[Any, ...]:
        x, w = self.saved  # type: ignore[misc]
        return _as(x.dtype, *self.backward_fn(gy, x, w, self.stride, self.padding))


def _square(v: Any) -> int | None:
    """3 or (3, 3) -> 3; (1, 2) -> None (the exercise's convolution takes one stride and one padding)."""
    if isinstance(v, int):
        return v
    return int(v[0]) if len(v) == 2 and v[0] == v[1] else None


def conv_with(forward_fn: Callable[..., Any], backward_fn: Callable[..., Any]) -> Callable[..., Tensor]:
    """An ``F.conv2d`` running the learner's forward and backward for square strides and paddings
    without dilation or groups (every convolution of se_resnet20); anything else goes to minise's op."""
    builtin = F.conv2d

    def conv2d(
        input: Any, weight: Any, bias: Any = None, stride: Any = 1, padding: Any = 0, dilation: Any = 1, groups: int = 1
    ) -> Tensor:
        s, p = _square(stride), _square(padding)
        if dilation not in (1, (1, 1)) or groups != 1 or s is None or p is None:
            return builtin(input, weight, bias, stride, padding, dilation, groups)
        return _ConvYours(forward_fn, backward_fn, s, p).apply(input, weight, bias)

    return conv2d


# --------------------------------------------------------------------------------------------------
# the training run
# --------------------------------------------------------------------------------------------------
def _data() -> tuple[np.ndarray, np.ndarray]:
    """The 5000 shapes training images at IMAGE_SIZE pixels, standardised per channel, and their labels
    (the same whatever the number of steps: a run of 80 steps is the start of a run of 200)."""
    images, labels = make_shapes(5000, seed=SEED, size=IMAGE_SIZE)
    x = images.astype(np.float32) / 255
    x = (x - x.mean(axis=(0, 2, 3), keepdims=True)) / x.std(axis=(0, 2, 3), keepdims=True)
    return x, labels


def train_losses(steps: int) -> list[float]:
    """The loss at each of ``steps`` SGD steps of a fresh se_resnet20 (same seed, data and order every call)."""
    x, labels = _data()
    with minise.use_backend("numpy"):
        minise.manual_seed(SEED)
        model = models.create("se_resnet20")
        model.train()
        opt = optim.SGD(model.parameters(), lr=LR, momentum=0.9)
        losses = []
        for step in range(steps):
            i = (step * BATCH) % (len(x) - BATCH + 1)
            loss = F.cross_entropy(model(minise.tensor(x[i : i + BATCH])), labels[i : i + BATCH])
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
    return losses


def compare_training(op_name: str, replacement: Callable[..., Tensor], steps: int, echo: bool = True) -> bool:
    """Train twice, with minise's op and with ``replacement``, print the losses side by side, and return
    whether yours trains like minise's:

    * at steps 1 and 2 (the forward, then the first step after an update made with your gradients) the
      two losses agree to 2e-6 relative. They differ only by rounding there (measured: at most 2.0e-7
      for the reference solutions of 05, 07, 08, 09), while each classic mistake moves them by 1.8e-5
      or more (a missing squeeze path of the SE gradient: 1.8e-5; the others 4e-5 to 2e-2);
    * every loss is finite, and the mean over the last tenth of the steps is at most 25 % above the
      built-in op's (a guard against a run that diverges).
    Later steps are compared by eye, not to a tolerance: rounding differences grow step after step
    (measured with the reference solutions: 1e-6 to 1e-5 relative by step 3; over the last 20 of 200
    steps the two means differed by 2 % to 13 % in either direction).
    """
    say = print if echo else (lambda *a, **k: None)
    say(
        f"training se_resnet20 on shapes ({IMAGE_SIZE}x{IMAGE_SIZE}, batch {BATCH}, SGD lr {LR} momentum 0.9, "
        f"seed {SEED}) for {steps} steps, twice: with minise's {op_name} and with yours"
    )
    start = time.time()
    with unfused():
        builtin = train_losses(steps)
    say(f"  minise's {op_name}: {time.time() - start:.0f} s")
    start = time.time()
    with unfused(), swap_op(op_name, replacement):
        yours = train_losses(steps)
    say(f"  yours: {time.time() - start:.0f} s")
    say(f"  {'step':>6}  {'loss, minise':>12}  {'loss, yours':>12}")
    every = max(1, steps // 10)
    shown = sorted({0, 1, *range(every - 1, steps, every), steps - 1} & set(range(steps)))
    for s in shown:
        say(f"  {s + 1:>6}  {builtin[s]:>12.4f}  {yours[s]:>12.4f}")
    first = range(min(2, steps))
    drift = max(abs(yours[k] - builtin[k]) / abs(builtin[k]) for k in first)
    same_start = drift <= 2e-6
    finite = all(math.isfinite(v) for v in yours)
    tail = max(1, steps // 10)
    mean_b, mean_y = float(np.mean(builtin[-tail:])), float(np.mean(yours[-tail:]))
    alike = mean_y <= 1.25 * mean_b
    say(f"  mean loss over the last {tail} steps: minise {mean_b:.4f}, yours {mean_y:.4f}")
    if not same_start:
        say(
            f"  steps 1-{len(first)}: your loss differs from minise's by {drift:.1e} (relative) where rounding "
            "alone gives below 2e-6 - your op computes something else"
        )
    elif not finite:
        say("  your loss became inf or nan")
    elif not alike:
        say("  your run's loss ends more than 25 % above minise's")
    ok = same_start and finite and alike
    say("  yours trains like minise's op" if ok else f"  yours does NOT train like minise's {op_name}")
    return ok
