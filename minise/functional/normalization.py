"""Batch normalisation (Ioffe & Szegedy, 2015) with the closed-form backward."""

from __future__ import annotations

from typing import Any

from minise import backend, cpu
from minise.autograd import Function
from minise.backend import get_array_module
from minise.functional._checks import check_float, check_same_dtype
from minise.tensor import Tensor, as_tensor


def _axes(x: Any) -> tuple[int, ...]:
    """The axes statistics are taken over: every axis but the channel axis 1."""
    return (0, *range(2, x.ndim))


def _per_channel(v: Any, ndim: int) -> Any:
    """(C,) -> (1, C, 1, 1) (or (1, C) for 2-D input), to broadcast against x."""
    return v.reshape(1, -1, *([1] * (ndim - 2)))


class BatchNormOp(Function):
    """y = gamma * xhat + beta,  xhat = (x - mu) / sqrt(var + eps), per channel c over (N, H, W)

    Training: mu, var are the batch mean and (biased) variance over the m = N*H*W values of each
    channel, and the running statistics are updated in place with the unbiased variance:
        running_mean <- (1 - momentum) running_mean + momentum mu
        running_var  <- (1 - momentum) running_var  + momentum var * m / (m - 1)
    Backward (training), with g = gy * gamma:
        dx = (1 / sqrt(var + eps)) * (g - mean(g) - xhat * mean(g * xhat))     (means over N, H, W)
        dgamma = sum gy * xhat,   dbeta = sum gy
    Evaluation uses the running statistics, which are constants: dx = gy * gamma / sqrt(var + eps).
    Derivation: lesson 07.

    How it is computed: every formula above is per channel an affine map, y = a x + b and
    dx = A gy + B x + C with (C,) coefficients, plus a few per-channel sums. So the op works through
    the batch in chunks of a few images (on all cores, see ``cpu.run_chunks``): one pass for the
    sums (the moments combined across chunks exactly, see ``_batch_moments``), one for the affine
    map, each chunk small enough to stay in cache, instead of a chain of
    whole-batch temporaries (x - mu, its square, xhat, gamma xhat ...) each streamed through memory.
    The (C,) coefficients go into those passes as planes repeated along the pixels (``cpu.channel_plane``),
    so that NumPy's inner loop runs once per image rather than once per channel and image.
    On CuPy the batch is one chunk and each affine map is one fused kernel (``backend.elementwise``).
    xhat is not stored; backward recomputes it from x, mu and 1/sqrt(var + eps).
    """

    name = "batch_norm"

    def __init__(self, running_mean: Any, running_var: Any, training: bool, momentum: float, eps: float) -> None:
        super().__init__()
        self.running_mean, self.running_var = running_mean, running_var
        self.training, self.momentum, self.eps = training, momentum, eps

    def coefficients(self, x3: Any, gamma: Any, beta: Any) -> tuple[Any, Any, Any, Any]:
        """(mu, inv_std, a, b) per channel, with y = a x + b: the batch's moments in training (and the
        running statistics updated in place), the running statistics in evaluation."""
        xp = get_array_module(x3)
        n = x3.shape[0]
        m = n * x3.shape[2]
        size = cpu.chunk_size(xp, n, x3[0].nbytes, budget=1 << 20)
        if self.training:
            mu, var = _batch_moments(xp, x3, size)  # (C,), (C,) biased
            if self.running_mean is not None:
                keep, weight = 1.0 - self.momentum, self.momentum  # scalars combined here, not in the kernel
                self.running_mean[...] = backend.fused(_moving_average, self.running_mean, mu, keep, weight)
            if self.running_var is not None:
                keep, weight = 1.0 - self.momentum, self.momentum * m / max(m - 1, 1)  # the unbiased variance
                self.running_var[...] = backend.fused(_moving_average, self.running_var, var, keep, weight)
        else:
            mu, var = self.running_mean, self.running_var
        mu = mu.astype(x3.dtype, copy=False)
        inv_std = backend.fused(_inv_std, var, self.eps).astype(x3.dtype)  # (C,)
        a = inv_std if gamma is None else gamma * inv_std  # y = a x + b
        b = backend.fused(_shift, mu, a) if beta is None else backend.fused(_shift_beta, beta, mu, a)
        return mu, inv_std, a, b

    def forward(self, x: Any, gamma: Any, beta: Any) -> Any:
        n, c = x.shape[:2]
        x3 = x.reshape(n, c, -1)  # (N, C, L), L = H*W
        mu, inv_std, a, b = self.coefficients(x3, gamma, beta)
        xp, length = get_array_module(x3), x3.shape[2]
        a3, b3 = cpu.channel_plane(xp, a, length), cpu.channel_plane(xp, b, length)  # (1, C, L) or (1, C, 1)
        y3 = backend.elementwise(_affine, x3, a3, b3, like=x3)  # (N, C, L)
        self.save(x, mu, inv_std, gamma)
        return y3.reshape(x.shape)

    def backward(self, gy: Any) -> tuple[Any, Any, Any]:
        x, mu, inv_std, gamma = self.saved  # type: ignore[misc]
        xp = get_array_module(x)
        n, c = x.shape[:2]
        x3, g3 = x.reshape(n, c, -1), gy.reshape(n, c, -1)  # (N, C, L)
        m = n * x3.shape[2]
        size = cpu.chunk_size(xp, n, x3[0].nbytes, budget=1 << 20)
        need_x, need_g, need_b = self.needs_input_grad

        def sums(a: int, z: int) -> Any:  # (2, C): sum gy and sum gy * x
            return xp.stack([xp.einsum("ncl->c", g3[a:z]), xp.einsum("ncl,ncl->c", g3[a:z], x3[a:z])])

        s = _sum_chunks(xp, n, size, sums)
        dgamma, dbeta, planes = self.gradients_from_sums(s, mu, inv_std, gamma, m, x3.shape[2], x.dtype)
        dx = None
        if need_x:
            body = _affine2 if self.training else _scale  # A gy + B x + C, or A gy
            rest = [x3] if self.training else []
            dx = backend.elementwise(body, g3, *planes, *rest, like=x3, shape=x.shape)
        return dx, dgamma if need_g else None, dbeta if need_b else None

    def gradients_from_sums(
        self, s: Any, mu: Any, inv_std: Any, gamma: Any, m: int, length: int, dtype: Any
    ) -> tuple[Any, Any, list[Any]]:
        """dgamma, dbeta and dx's per-channel coefficients as planes (``cpu.channel_plane``) from the sums
        s = (sum g, sum g x) of the gradient g reaching batch norm: [A, B, C] of dx = A g + B x + C in training,
        [A] of dx = A g in evaluation. Shared with :class:`~minise.functional.fused.BatchNormReLUOp`, whose g
        is gy [y > 0]."""
        xp = get_array_module(s)
        # the sums were accumulated in float64; the gradients take the input's dtype, as every gradient does
        dbeta = s[0].astype(dtype)  # sum g
        dgamma = backend.fused(_dgamma, s[1], s[0], mu, inv_std).astype(dtype)  # sum g * xhat
        scale = inv_std if gamma is None else gamma * inv_std  # (C,)
        coefficients = [scale]  # A
        if self.training:
            # dx = scale (g - dbeta/m - xhat dgamma/m) = A g + B x + C, per channel
            coef_b = backend.fused(_coef_b, scale, inv_std, dgamma, 1.0 / m)
            coefficients += [coef_b, backend.fused(_coef_c, scale, dbeta, coef_b, mu, 1.0 / m)]
        return dgamma, dbeta, [cpu.channel_plane(xp, v, length) for v in coefficients]


# The per-channel coefficients (backend.fused) and the elementwise passes (backend.elementwise): ufuncs and
# operators only, so that CuPy fuses each into one kernel. Every operator in them has an array operand: inside
# cupy.fuse an operation on Python scalars alone is computed in float16 (1 - 0.1 became 0.89990234 on
# CuPy 14.2, and 1e20 * 1.0 inf), so scalars are combined in Python before the call.
def _moving_average(r: Any, v: Any, keep: float, weight: float) -> Any:
    """keep r + weight v: with keep = 1 - momentum and weight = momentum (times m / (m - 1) for the variance)"""
    return r * keep + v * weight


def _inv_std(var: Any, eps: float) -> Any:
    """1 / sqrt(var + eps)"""
    return 1.0 / get_array_module(var).sqrt(var + eps)


def _shift(mu: Any, a: Any) -> Any:
    """b = -mu a"""
    return -(mu * a)


def _shift_beta(beta: Any, mu: Any, a: Any) -> Any:
    """b = beta - mu a"""
    return beta - mu * a


def _dgamma(sum_gx: Any, sum_g: Any, mu: Any, inv_std: Any) -> Any:
    """sum gy xhat = (sum gy x - mu sum gy) / sigma"""
    return (sum_gx - mu * sum_g) * inv_std


def _coef_b(scale: Any, inv_std: Any, dgamma: Any, inv_m: float) -> Any:
    """B = -scale dgamma / (sigma m)"""
    return -(scale * inv_std * dgamma) * inv_m


def _coef_c(scale: Any, dbeta: Any, coef_b: Any, mu: Any, inv_m: float) -> Any:
    """C = -scale dbeta / m - B mu"""
    return -(scale * dbeta) * inv_m - coef_b * mu


def _affine(x: Any, a: Any, b: Any, out: Any = None) -> Any:
    """y = a x + b"""
    return get_array_module(x).add(x * a, b, out=out)


def _affine2(g: Any, a: Any, b: Any, c: Any, x: Any, out: Any = None) -> Any:
    """dx = A gy + B x + C"""
    return get_array_module(g).add(g * a + x * b, c, out=out)


def _scale(g: Any, a: Any, out: Any = None) -> Any:
    """dx = A gy"""
    return get_array_module(g).multiply(g, a, out=out)


def _batch_moments(xp: Any, x3: Any, size: int) -> tuple[Any, Any]:
    """Per-channel mean and biased variance of x3 (N, C, L) over axes 0 and 2, in one sweep over memory.

    Each chunk computes its own mean and sum of squared deviations M2 while it is in cache (two
    passes over the chunk, none over memory again); the chunks are then combined exactly, as in Chan
    et al.'s parallel algorithm:  mean = sum_i n_i m_i / n,  M2 = sum_i M2_i + sum_i n_i (m_i - mean)^2.
    This is as accurate as the two-pass formula, unlike E[x^2] - mean^2, which cancels in float32.
    """
    n, c, length = x3.shape

    def moments(a: int, z: int) -> Any:
        chunk = x3[a:z]
        count = (z - a) * length
        m = xp.einsum("ncl->c", chunk) / count  # (C,) chunk mean
        centred = chunk - cpu.channel_plane(xp, m.astype(chunk.dtype), length)
        return count, m, xp.einsum("ncl,ncl->c", centred, centred)

    parts = cpu.run_chunks(xp, n, size, moments)
    if len(parts) == 1:  # one chunk (always on CuPy): nothing to combine
        return parts[0][1].astype(xp.float64), parts[0][2].astype(xp.float64) / parts[0][0]
    total = sum(p[0] for p in parts)
    mean = sum(p[0] * p[1].astype(xp.float64) for p in parts) / total
    m2 = sum(p[2].astype(xp.float64) + p[0] * (p[1] - mean) ** 2 for p in parts)
    return mean, m2 / total


def _sum_chunks(xp: Any, n: int, size: int, part: Any) -> Any:
    """The sum over chunks of ``part(start, stop)``, accumulated in float64 on the host side of rounding."""
    parts = cpu.run_chunks(xp, n, size, part)
    total = parts[0].astype(xp.float64)
    for p in parts[1:]:
        total += p
    return total


def checked_arguments(
    op: str, layer: str, input: Any, weight: Any, bias: Any, running_mean: Any, running_var: Any, training: bool
) -> tuple[Tensor, Tensor | None, Tensor | None, Any, Any]:
    """The checks batch norm and sync batch norm share: float tensors, an input of 2 to 4 axes, every per-channel
    argument of shape (C,), running statistics in evaluation. Returns (x, weight, bias, running_mean,
    running_var), the first three as tensors, the running statistics as arrays. ``layer`` names the nn layer
    in the error (``BatchNorm2d``)."""
    x = as_tensor(input)
    g = None if weight is None else as_tensor(weight)
    b = None if bias is None else as_tensor(bias)
    rm = running_mean.data if isinstance(running_mean, Tensor) else running_mean
    rv = running_var.data if isinstance(running_var, Tensor) else running_var
    for name, t in (("input", x), ("weight", g), ("bias", b)):
        check_float(op, name, None if t is None else t.data)
    if x.ndim not in (2, 3, 4):
        raise ValueError(f"{op}: input must be (N, C), (N, C, L) or (N, C, H, W), got shape {x.shape}")
    c = x.shape[1]
    for name, v in (("weight", g), ("bias", b), ("running_mean", rm), ("running_var", rv)):
        if v is not None and tuple(v.shape) != (c,):
            raise ValueError(
                f"{op}: {name} has shape {tuple(v.shape)} but input {x.shape} has {c} channels - "
                f"{name} must have shape ({c},); was the layer built with {layer}({c})?"
            )
    if not training and (rm is None or rv is None):
        raise ValueError(f"{op}: evaluation (training=False) needs running_mean and running_var - pass them")
    return x, g, b, rm, rv


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
    """Batch normalisation over channel axis 1, with PyTorch's signature.

    ``running_mean``/``running_var`` (arrays or tensors of shape (C,), or None in training mode) are
    updated in place when ``training`` is True.
    """
    op = "batch_norm"
    x, g, b, rm, rv = checked_arguments(op, "BatchNorm2d", input, weight, bias, running_mean, running_var, training)
    c = x.shape[1]
    if training and x.size // c < 2:
        raise ValueError(
            f"{op}: training needs more than one value per channel to compute a variance, got input {x.shape} - "
            "use a batch larger than 1 or evaluate with training=False"
        )
    check_same_dtype(op, input=x.data, weight=None if g is None else g.data, bias=None if b is None else b.data)
    return BatchNormOp(rm, rv, training, momentum, eps).apply(x, g, b)
