"""Fused passes: fewer trips through memory for what a ResNet does after every convolution.

On the CPU an elementwise op over a (128, 64, 16, 16) activation is bound by memory, not arithmetic:
reading x and writing y costs more than the multiply-add. Batch norm followed by ReLU, run as two ops,
reads and writes the activation twice in the forward and three times in the backward (the ReLU's
gradient is a whole array that batch norm then reads twice). Fused, every step happens on a chunk of a
few images while it is in cache. The formulas are exactly those of the unfused ops; the tests hold the
fused ops equal to the composition and to finite differences.

* :class:`BatchNormReLUOp`: ``relu(batch_norm(x))`` (lesson 07);
* :class:`AddReLUOp`: ``relu(a + b)``, the end of every residual block;
* :func:`se_residual_relu`: ``relu(SE(out) + identity)``, the end of an SE residual block, as one op
  (:class:`~minise.functional.squeeze_excite.SqueezeExciteAddReLUOp`);
* :func:`fold_batch_norm`: for evaluation, each BN folded into the convolution before it (no BN pass at all),
  and :func:`conv_bn_relu`, which then runs convolution, bias and ReLU as one op
  (:func:`~minise.functional.conv.conv2d_relu`);
* evaluation without folding: :func:`conv_bn_relu`, :func:`conv_bn` and :func:`shortcut` fold each batch norm
  into its convolution for the call when the model is in eval mode under ``no_grad`` (the running statistics
  are constants then), where that pays (:func:`_folding_pays`), so ``model.eval()`` runs as fast as a folded
  copy, with the same logits up to float32 rounding, and the model is not changed.

The models call these helpers; each falls back to the plain module calls where a fused op could hide
something (hooks, ``models.summarize``) or would be wrong (training, gradients wanted), and everywhere with
``MINISE_FUSED=0`` (:func:`unfused`), which A/B measurements and ``check NN --train`` use.

The elementwise bodies (``_affine_relu``, ``_masked_affine2``, ...) go through ``backend.elementwise``, as
batch norm's own: on NumPy in chunks of a few images on all cores, on CuPy as one ``cupy.fuse`` kernel each.
"""

from __future__ import annotations

import contextlib
import copy
import os
from collections.abc import Iterator
from typing import Any

from minise import backend, cpu
from minise.autograd import Function, is_grad_enabled
from minise.backend import get_array_module
from minise.functional._checks import check_float, check_same_dtype, pair
from minise.functional.conv import conv2d, conv2d_relu
from minise.functional.elementwise import _relu_grad, relu, relu_of
from minise.functional.im2col import conv_out_size
from minise.functional.normalization import BatchNormOp, _affine2, _sum_chunks, batch_norm
from minise.functional.squeeze_excite import squeeze_excite_add_relu
from minise.tensor import Tensor, as_tensor


def _masked(g: Any, y: Any) -> Any:
    """g * [y > 0]: the ReLU's gradient (y > 0 exactly where its input was > 0)."""
    return g * (y > 0)


def _affine_relu(x: Any, a: Any, b: Any, out: Any = None) -> Any:
    """y = max(a x + b, 0)"""
    return relu_of(x * a + b, out=out)


def _masked_affine2(g: Any, y: Any, a: Any, b: Any, c: Any, x: Any, out: Any = None) -> Any:
    """dx = A g + B x + C with g = gy [y > 0] (batch norm's ``_affine2`` on the ReLU's gradient)"""
    return _affine2(_masked(g, y), a, b, c, x, out=out)


def _masked_scale(g: Any, y: Any, a: Any, out: Any = None) -> Any:
    """dx = A g with g = gy [y > 0] (evaluation)"""
    return get_array_module(g).multiply(_masked(g, y), a, out=out)


def _add_relu(a: Any, b: Any, out: Any = None) -> Any:
    """y = max(a + b, 0)"""
    return relu_of(a + b, out=out)


class BatchNormReLUOp(BatchNormOp):
    """y = relu(gamma * xhat + beta) = max(a x + b, 0),  a = gamma / sqrt(var + eps),  b = beta - mu a

    per channel, with mu, var as in :class:`~minise.functional.normalization.BatchNormOp` (batch moments
    in training, which also update the running statistics the same way; running ones in evaluation).
    Backward: with g = gy * [y > 0] (the ReLU's gradient), batch norm's backward on g:
        dbeta = sum g,   dgamma = sum g * xhat,
        dx = (gamma / sqrt(var + eps)) * (g - dbeta/m - xhat * dgamma/m)   (training; means over N, H, W)
        dx = g * gamma / sqrt(var + eps)                                      (evaluation)
    Derivation: lesson 07 (batch norm), lesson 04 (ReLU).

    How it saves memory traffic: the forward is one sweep for the moments and one that writes y =
    max(a x + b, 0) per chunk (the unfused pair writes the batch-norm output, then reads it again for the
    ReLU). The backward recomputes g = gy * [y > 0] per chunk in both of its sweeps (the sums, then dx)
    instead of writing g as a whole array and reading it back twice.
    """

    name = "batch_norm_relu"

    def forward(self, x: Any, gamma: Any, beta: Any) -> Any:
        n, c = x.shape[:2]
        x3 = x.reshape(n, c, -1)  # (N, C, L), L = H*W
        mu, inv_std, a, b = self.coefficients(x3, gamma, beta)  # batch norm's own statistics and update
        xp, length = get_array_module(x3), x3.shape[2]
        a3, b3 = cpu.channel_plane(xp, a, length), cpu.channel_plane(xp, b, length)
        y3 = backend.elementwise(_affine_relu, x3, a3, b3, like=x3)  # (N, C, L)
        y = y3.reshape(x.shape)
        self.save(x, y, mu, inv_std, gamma)
        return y

    def backward(self, gy: Any) -> tuple[Any, Any, Any]:
        x, y, mu, inv_std, gamma = self.saved  # type: ignore[misc]
        xp = get_array_module(x)
        n, c = x.shape[:2]
        x3, y3, g3 = x.reshape(n, c, -1), y.reshape(n, c, -1), gy.reshape(n, c, -1)  # (N, C, L)
        m = n * x3.shape[2]
        size = cpu.chunk_size(xp, n, x3[0].nbytes, budget=1 << 20)
        need_x, need_g, need_b = self.needs_input_grad

        def sums(a: int, z: int) -> Any:  # (2, C): sum g and sum g * x, g = gy [y > 0] made in cache
            g = _masked(g3[a:z], y3[a:z])
            return xp.stack([xp.einsum("ncl->c", g), xp.einsum("ncl,ncl->c", g, x3[a:z])])

        s = _sum_chunks(xp, n, size, sums)
        dgamma, dbeta, planes = self.gradients_from_sums(s, mu, inv_std, gamma, m, x3.shape[2], x.dtype)
        dx = None
        if need_x:  # batch norm's dx of g: A g + B x + C in training, A g in evaluation
            body = _masked_affine2 if self.training else _masked_scale
            rest = [x3] if self.training else []
            dx = backend.elementwise(body, g3, y3, *planes, *rest, like=x3, shape=x.shape)
        return dx, dgamma if need_g else None, dbeta if need_b else None


class AddReLUOp(Function):
    """y = relu(a + b) for a, b of one shape (a residual block's end);   da = db = gy * [y > 0]

    One pass writes y (the unfused pair writes a + b, then reads it again for the ReLU); the backward
    makes the one masked gradient both inputs receive.
    """

    name = "add_relu"

    def forward(self, a: Any, b: Any) -> Any:
        y = backend.elementwise(_add_relu, a, b, like=a)
        self.save(y)
        return y

    def backward(self, gy: Any) -> tuple[Any, Any]:
        (y,) = self.saved  # type: ignore[misc]
        g = backend.elementwise(_relu_grad, gy, y, like=gy)
        return g, g  # the same gradient for both inputs (autograd never changes a gradient in place)


def batch_norm_relu(
    input: Any,
    running_mean: Any,
    running_var: Any,
    weight: Any = None,
    bias: Any = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    """``relu(batch_norm(input, ...))`` in one fused op; the arguments and checks are :func:`batch_norm`'s
    (its errors name batch_norm)."""
    x = as_tensor(input)
    g = None if weight is None else as_tensor(weight)
    b = None if bias is None else as_tensor(bias)
    rm = running_mean.data if isinstance(running_mean, Tensor) else running_mean
    rv = running_var.data if isinstance(running_var, Tensor) else running_var
    c = x.shape[1] if x.ndim >= 2 else 0
    valid = (
        x.ndim in (2, 3, 4)
        and all(v is None or tuple(v.shape) == (c,) for v in (g, b, rm, rv))
        and ((rm is not None and rv is not None) if not training else x.size // c >= 2)
    )
    if not valid:  # batch_norm words the error
        return batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps)
    for name, t in (("input", x), ("weight", g), ("bias", b)):
        check_float("batch_norm", name, None if t is None else t.data)
    check_same_dtype(
        "batch_norm", input=x.data, weight=None if g is None else g.data, bias=None if b is None else b.data
    )
    return BatchNormReLUOp(rm, rv, training, momentum, eps).apply(x, g, b)


def fusion_enabled() -> bool:
    """Whether the models use the fused ops: yes unless ``MINISE_FUSED=0`` (read at each call, for A/B
    measurements and lessons; the results are the same either way, up to rounding)."""
    return os.environ.get("MINISE_FUSED", "1") != "0"


@contextlib.contextmanager
def unfused() -> Iterator[None]:
    """Within the block, the models call their ops one by one (``MINISE_FUSED=0``); the setting is restored."""
    before = os.environ.get("MINISE_FUSED")
    os.environ["MINISE_FUSED"] = "0"
    try:
        yield
    finally:
        if before is None:
            del os.environ["MINISE_FUSED"]
        else:
            os.environ["MINISE_FUSED"] = before


def _plain(module: Any, cls: Any) -> bool:
    """Whether ``module`` is exactly a ``cls`` whose call nobody watches (no hooks, no instance ``forward``
    as ``models.summarize`` installs), so that replacing the call by a fused op changes nothing visible."""
    return (
        fusion_enabled()
        and type(module) is cls
        and "forward" not in module.__dict__
        and not module._forward_hooks
        and not module._forward_pre_hooks
    )


def bn_relu(bn: Any, relu_: Any, x: Any) -> Tensor:
    """``relu_(bn(x))`` for a BatchNorm2d and a ReLU module, fused into one :class:`BatchNormReLUOp` when both
    are plain (:func:`_plain`); otherwise (hooks, a summary, the Identity of a folded model) the two calls."""
    from minise.nn.layers import BatchNorm2d, ReLU  # noqa: PLC0415  (nn imports functional)

    if _plain(bn, BatchNorm2d) and _plain(relu_, ReLU):
        return batch_norm_relu(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, bn.training, bn.momentum, bn.eps)
    return relu_(bn(x))  # type: ignore[no-any-return]


def conv_bn_relu(conv: Any, bn: Any, relu_: Any, x: Any) -> Tensor:
    """``relu_(bn(conv(x)))`` for a Conv2d, a BatchNorm2d and a ReLU module, as one
    :func:`~minise.functional.conv.conv2d_relu` op (bias and ReLU on each chunk of the output while it is in
    cache) where the batch norm is a fixed affine map:

    * in a model whose batch norm was folded into the convolution (:func:`fold_batch_norm` leaves an
      Identity in its place);
    * in evaluation mode under ``no_grad``: the batch norm is folded into the convolution's weights for
      this call (:func:`folded_conv_parameters`), the model itself unchanged.

    Otherwise (training, gradients wanted, hooks or a summary watching, ``MINISE_FUSED=0``) the convolution,
    then :func:`bn_relu`. All three modules must be plain (:func:`_plain`)."""
    from minise.nn.layers import ReLU  # noqa: PLC0415

    if _plain(relu_, ReLU):
        params = _conv_with_bn_folded(conv, bn, x)
        if params is not None:
            return conv2d_relu(x, *params, conv.stride, conv.padding, conv.dilation, conv.groups)
    return bn_relu(bn, relu_, conv(x))


def conv_bn(conv: Any, bn: Any, x: Any) -> Tensor:
    """``bn(conv(x))`` for a Conv2d and a BatchNorm2d module: one convolution with the batch norm folded into
    its weights in evaluation mode under ``no_grad`` (as :func:`conv_bn_relu`, without the ReLU), else the
    two calls. After :func:`fold_batch_norm` (bn an Identity) it is the folded convolution itself."""
    params = _conv_with_bn_folded(conv, bn, x)
    if params is not None:
        return conv2d(x, *params, conv.stride, conv.padding, conv.dilation, conv.groups)
    return bn(conv(x))  # type: ignore[no-any-return]


def shortcut(downsample: Any, x: Any) -> Tensor:
    """``downsample(x)`` for a residual block's projection shortcut, ``Sequential(Conv2d, BatchNorm2d)``: through
    :func:`conv_bn` (one op in evaluation under ``no_grad``) when the Sequential is plain and holds just those
    two; otherwise the Sequential's own call."""
    from minise.nn.module import Sequential  # noqa: PLC0415

    if _plain(downsample, Sequential) and len(downsample) == 2:
        return conv_bn(downsample[0], downsample[1], x)
    return downsample(x)  # type: ignore[no-any-return]


def _conv_with_bn_folded(conv: Any, bn: Any, x: Any) -> tuple[Any, Any] | None:
    """(weight, bias) of one convolution computing ``bn(conv(x))``, or None where that cannot or should not
    replace the two calls. conv and bn must be plain (:func:`_plain`), and bn either

    * an Identity (:func:`fold_batch_norm` already folded it): the convolution's own parameters; or
    * a BatchNorm2d in evaluation mode with gradients off, with running statistics, as many features as
      the convolution has output channels and the convolution's dtype (else the batch norm runs, and its
      own checks explain what is wrong). In training the batch statistics are not known before the
      convolution has run; with gradients on, the batch norm's parameters would need gradients through the
      folding. And only where it pays (:func:`_folding_pays`).
    """
    from minise.nn.layers import BatchNorm2d, Conv2d, Identity  # noqa: PLC0415

    if not _plain(conv, Conv2d):
        return None
    if _plain(bn, Identity):
        return conv.weight, conv.bias
    if not (_plain(bn, BatchNorm2d) and not bn.training and not is_grad_enabled()):
        return None
    w = conv.weight.data
    stats = (bn.running_mean, bn.running_var)
    if any(v is None or v.shape != (w.shape[0],) or v.dtype != w.dtype for v in stats):
        return None
    if not _folding_pays(as_tensor(x).shape, w.shape, conv):
        return None
    return folded_conv_parameters(w, None if conv.bias is None else conv.bias.data, bn)


def _folding_pays(x_shape: tuple[int, ...], w_shape: tuple[int, ...], conv: Any) -> bool:
    """Whether folding for one call costs less than it saves: it makes a few passes over the weight (to
    float64, scale, back), and saves the batch norm's pass over the output. So fold when the output has at
    least as many values as the weight: per output channel, n OH OW >= C/groups KH KW. Always true for the
    CIFAR ResNets at batch 8 and more; false for ResNet-50's last stage at batch 1 (2.4 million weights
    against 25,088 outputs in its 3x3 layers), where folding made evaluation slower (BENCHMARKS.md)."""
    n, _, h, wd = x_shape
    _, cg, kh, kw = w_shape
    (sh, sw), (ph, pw), (dh, dw) = (pair("conv", k, getattr(conv, k), 0) for k in ("stride", "padding", "dilation"))
    oh, ow = conv_out_size(h, kh, sh, ph, dh), conv_out_size(wd, kw, sw, pw, dw)
    return n * oh * ow >= cg * kh * kw


def folded_conv_parameters(w: Any, c: Any, bn: Any) -> tuple[Any, Any]:
    """W' and c' with conv(x, W') + c' = bn(conv(x, W) + c) for an evaluation-mode BatchNorm2d ``bn``:

        bn(y) = a (y - mu) + beta,   a = gamma / sqrt(running_var + eps)
        W'[o] = a[o] W[o],   c' = a (c - mu) + beta      (c = 0 without a bias)

    computed in float64 and returned in W's dtype."""
    xp = get_array_module(w)
    dtype = w.dtype
    a = (bn.weight.data if bn.weight is not None else 1.0) / xp.sqrt(bn.running_var.astype(xp.float64) + bn.eps)
    beta = bn.bias.data if bn.bias is not None else 0.0
    c0 = c if c is not None else 0.0
    w2 = w.astype(xp.float64) * a.reshape(-1, 1, 1, 1)
    bias = a * (c0 - bn.running_mean.astype(xp.float64)) + beta
    return w2.astype(dtype), xp.asarray(bias, dtype=dtype)


def residual_relu(relu_: Any, out: Any, identity: Any) -> Tensor:
    """``relu_(out + identity)``, the end of a residual block, as one :class:`AddReLUOp` when ``relu_`` is a
    plain ReLU module (:func:`_plain`); otherwise the two calls."""
    from minise.nn.layers import ReLU  # noqa: PLC0415

    if _plain(relu_, ReLU):
        return add_relu(out, identity)
    return relu_(out + identity)  # type: ignore[no-any-return]


def se_residual_fusable(se: Any, relu_: Any) -> bool:
    """Whether ``relu_(se(out) + identity)`` may run as one :func:`se_residual_relu`: ``se`` a plain SEBlock with
    the paper's average squeeze and sigmoid gate and ``relu_`` a plain ReLU (:func:`_plain`). A block checks
    this first, so that where it is false (hooks, a summary, an ablation) the SE block is called as itself,
    in its usual place before the shortcut."""
    from minise.nn.layers import ReLU  # noqa: PLC0415
    from minise.nn.se import SEBlock  # noqa: PLC0415

    return _plain(se, SEBlock) and se.squeeze == "avg" and se.gate == "sigmoid" and _plain(relu_, ReLU)


def se_residual_relu(se: Any, out: Any, identity: Any) -> Tensor:
    """``relu(se(out) + identity)``, the end of an SE residual block, as one
    :class:`~minise.functional.squeeze_excite.SqueezeExciteAddReLUOp` with the SE block's weights (for an
    ``se`` that :func:`se_residual_fusable` accepts)."""
    return squeeze_excite_add_relu(out, se.fc1.weight, se.fc1.bias, se.fc2.weight, se.fc2.bias, identity)


def add_relu(a: Any, b: Any) -> Tensor:
    """``relu(a + b)`` in one fused op, for a and b of the same shape and dtype (else as the two ops)."""
    ta, tb = as_tensor(a), as_tensor(b)
    if ta.shape != tb.shape or ta.dtype != tb.dtype:
        return relu(ta + tb)
    check_float("add_relu", "a", ta.data)
    return AddReLUOp().apply(ta, tb)


# --------------------------------------------------------------------------------------------------
# evaluation: batch norm folded into the convolution before it
# --------------------------------------------------------------------------------------------------
def fold_conv_bn(conv: Any, bn: Any) -> None:
    """Fold an evaluation-mode BatchNorm2d into the Conv2d before it, in place on ``conv``:

        bn(conv(x)) = a * (W * x + c) + (beta - mu a),   a = gamma / sqrt(running_var + eps)
                    = (a W) * x + (a (c - mu) + beta)

    so W' = a[o] W[o] per output channel o and c' = a (c - mu) + beta (c = 0 for a bias-free conv).
    The arithmetic is done in float64 and stored in the conv's dtype.
    """
    from minise.nn.module import Parameter  # noqa: PLC0415  (nn imports functional)

    w, bias = folded_conv_parameters(conv.weight.data, None if conv.bias is None else conv.bias.data, bn)
    conv.weight = Parameter(w)
    conv.bias = Parameter(bias)


def conv_bn_name_pairs(names: list[str], sequential: bool) -> list[tuple[str, str]]:
    """The (convolution, batch norm) candidates among a module's children ``names``, by the rule of
    :func:`fold_batch_norm`: consecutive children of a Sequential, else ``convK``/``bnK`` pairs (the names
    minise's and torchvision's ResNets use). The caller checks the children's types."""
    if sequential:
        return list(zip(names, names[1:]))
    return [(k, "bn" + k[4:]) for k in names if k.startswith("conv") and "bn" + k[4:] in names]


def fold_batch_norm(model: Any) -> Any:
    """An evaluation-only copy of ``model`` with every BatchNorm2d that directly follows a Conv2d folded
    into it (:func:`fold_conv_bn`) and replaced by Identity; the original model is untouched.

    "Directly follows" means: children ``convK``/``bnK`` of one module (the names minise's and
    torchvision's ResNets use), or consecutive children of a Sequential. The copy is in eval mode; its
    logits equal the original's in eval mode up to rounding (tested: 1e-5 in float32, 1e-10 in float64).
    """
    from minise.nn.layers import BatchNorm2d, Conv2d, Identity  # noqa: PLC0415
    from minise.nn.module import Sequential  # noqa: PLC0415

    folded = copy.deepcopy(model).eval()
    for module in list(folded.modules()):
        children = dict(module.named_children())
        for conv_name, bn_name in conv_bn_name_pairs(list(children), isinstance(module, Sequential)):
            conv, bn = children[conv_name], children[bn_name]
            if isinstance(conv, Conv2d) and isinstance(bn, BatchNorm2d):
                fold_conv_bn(conv, bn)
                setattr(module, bn_name, Identity())
                children[bn_name] = getattr(module, bn_name)
    return folded
