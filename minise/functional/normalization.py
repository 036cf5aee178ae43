"""Batch normalisation (Ioffe & Szegedy, 2015) with the closed-form backward."""

from __future__ import annotations

from typing import Any

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
    """

    name = "batch_norm"

    def __init__(self, running_mean: Any, running_var: Any, training: bool, momentum: float, eps: float) -> None:
        super().__init__()
        self.running_mean, self.running_var = running_mean, running_var
        self.training, self.momentum, self.eps = training, momentum, eps

    def forward(self, x: Any, gamma: Any, beta: Any) -> Any:
        xp = get_array_module(x)
        axes = _axes(x)
        if self.training:
            m = x.size // x.shape[1]
            mu = x.mean(axis=axes)  # (C,)
            xc = x - _per_channel(mu, x.ndim)
            var = (xc * xc).mean(axis=axes)  # (C,) biased
            if self.running_mean is not None:
                self.running_mean *= 1 - self.momentum
                self.running_mean += self.momentum * mu
            if self.running_var is not None:
                self.running_var *= 1 - self.momentum
                self.running_var += self.momentum * var * (m / max(m - 1, 1))
        else:
            mu, var = self.running_mean, self.running_var
            xc = x - _per_channel(mu, x.ndim)
        inv_std = 1.0 / xp.sqrt(var + self.eps)  # (C,)
        xhat = xc
        xhat *= _per_channel(inv_std, x.ndim)  # in place: xc is not needed any more
        y = xhat * _per_channel(gamma, x.ndim) if gamma is not None else xhat.copy()
        if beta is not None:
            y += _per_channel(beta, x.ndim)
        self.save(xhat, inv_std, gamma)
        return y

    def backward(self, gy: Any) -> tuple[Any, Any, Any]:
        xhat, inv_std, gamma = self.saved  # type: ignore[misc]
        axes, nd = _axes(gy), gy.ndim
        need_x, need_g, need_b = self.needs_input_grad
        dbeta = gy.sum(axis=axes) if need_b or (need_x and self.training) else None
        dgamma = (gy * xhat).sum(axis=axes) if need_g or (need_x and self.training) else None
        dx = None
        if need_x:
            scale = inv_std if gamma is None else gamma * inv_std  # (C,)
            if self.training:
                m = gy.size // gy.shape[1]
                # g = gy*gamma; mean(g) = gamma*dbeta/m; mean(g*xhat) = gamma*dgamma/m
                dx = gy - _per_channel(dbeta / m, nd)
                dx -= xhat * _per_channel(dgamma / m, nd)
                dx *= _per_channel(scale, nd)
            else:
                dx = gy * _per_channel(scale, nd)
        return dx, dgamma if need_g else None, dbeta if need_b else None


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
                f"{name} must have shape ({c},); was the layer built with BatchNorm2d({c})?"
            )
    if not training and (rm is None or rv is None):
        raise ValueError(f"{op}: evaluation (training=False) needs running_mean and running_var - pass them")
    if training and x.size // c < 2:
        raise ValueError(
            f"{op}: training needs more than one value per channel to compute a variance, got input {x.shape} - "
            "use a batch larger than 1 or evaluate with training=False"
        )
    check_same_dtype(op, input=x.data, weight=None if g is None else g.data, bias=None if b is None else b.data)
    return BatchNormOp(rm, rv, training, momentum, eps).apply(x, g, b)
