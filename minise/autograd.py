"""Reverse-mode automatic differentiation: Function, grad mode, and the backward walk.

A :class:`Function` is one differentiable op. Its ``forward`` takes raw arrays and returns one array;
its ``backward`` takes ``gy = dL/dy`` and returns ``dL/dx`` for every input (``None`` where an input
needs no gradient). ``Function.apply`` wraps both around :class:`~minise.tensor.Tensor` objects and
records the graph. :func:`backward` walks that graph once, in reverse topological order, found with an
explicit stack (no recursion, so a chain of 10,000 ops works), accumulating gradients that reach a
tensor along several paths, and frees each op's saved arrays as soon as its backward has run.
Lesson 02 builds this file from scratch.

Import direction: ``backend <- autograd <- tensor <- functional/* <- nn <- models``. This module
imports only :mod:`minise.backend` when it loads. A Function must wrap its output in a Tensor, so
``Function.apply`` imports :class:`~minise.tensor.Tensor` when it is first *called* (by then every
module is loaded): the two know each other at run time, as DeZero's Variable and Function do, but
neither needs the other to exist first, so any module of minise can be imported first.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from minise import backend

if TYPE_CHECKING:
    from minise.tensor import Tensor


# --------------------------------------------------------------------------------------------------
# grad mode
# --------------------------------------------------------------------------------------------------
class _GradMode(threading.local):
    """Whether ops record the graph, per thread (as in PyTorch): one thread inside ``no_grad()`` (an
    optimiser step, an evaluation) must not switch recording off for another thread's forward pass, e.g.
    the ranks of minise.distributed.LocalGroup, which are threads of one process."""

    enabled = True


_grad_mode = _GradMode()


def is_grad_enabled() -> bool:
    return _grad_mode.enabled


@contextlib.contextmanager
def no_grad() -> Iterator[None]:
    """Inside ``with no_grad():`` ops record no graph (evaluation, parameter updates), in this thread."""
    previous = _grad_mode.enabled
    _grad_mode.enabled = False
    try:
        yield
    finally:
        _grad_mode.enabled = previous


@contextlib.contextmanager
def enable_grad() -> Iterator[None]:
    previous = _grad_mode.enabled
    _grad_mode.enabled = True
    try:
        yield
    finally:
        _grad_mode.enabled = previous


# --------------------------------------------------------------------------------------------------
# broadcasting in backward
# --------------------------------------------------------------------------------------------------
def sum_to(g: Any, shape: tuple[int, ...]) -> Any:
    """Sum ``g`` down to ``shape``: the backward of broadcasting ``shape`` up to ``g.shape``.

    Broadcasting copies a value along new leading axes and along axes of size 1; in backward, the
    gradients of all those copies add up. So: sum away the extra leading axes, then sum (keeping the
    axis) wherever ``shape`` has a 1 and ``g`` does not.
    """
    if g.shape == tuple(shape):
        return g
    lead = g.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(lead + i for i, n in enumerate(shape) if n == 1 and g.shape[lead + i] != 1)
    g = g.sum(axis=axes, keepdims=True)
    return g.reshape(shape)


# --------------------------------------------------------------------------------------------------
# Function
# --------------------------------------------------------------------------------------------------
class Function:
    """One differentiable op: ``forward`` and ``backward`` on raw arrays.

    Subclasses keep options (stride, axis...) as attributes set in ``__init__``, call :meth:`save` in
    ``forward`` for what backward reads (nothing more), and read it back from ``self.saved``.
    ``self.needs_input_grad[i]`` tells backward whether input i needs a gradient, so work can be skipped.
    ``backward`` returns gradients it does not keep: an array it returns may become a leaf's ``.grad``
    as it is (see :func:`backward`), so it must not also sit in an attribute, in what was saved, or behind
    a view the op holds.
    """

    name = "op"

    def __init__(self) -> None:
        self.inputs: tuple[Tensor | None, ...] = ()
        self.saved: tuple[Any, ...] | None = ()
        self.needs_input_grad: tuple[bool, ...] = ()

    def save(self, *arrays: Any) -> None:
        self.saved = arrays

    def forward(self, *arrays: Any) -> Any:  # pragma: no cover - every op overrides it
        raise NotImplementedError

    def backward(self, gy: Any) -> Any:  # pragma: no cover - every op overrides it
        raise NotImplementedError

    def apply(self, *inputs: Any) -> Tensor:
        """Run ``forward`` on the inputs' arrays and, if any input requires grad, record this op."""
        from minise.tensor import Tensor  # noqa: PLC0415  (call time: see the module docstring)

        tensors = tuple(x if isinstance(x, Tensor) or x is None else Tensor(x) for x in inputs)
        arrays = [t.data if t is not None else None for t in tensors]
        backend.check_same_backend(self.name, *arrays)
        y = self.forward(*arrays)
        out = Tensor(y)
        needs = tuple(t is not None and t.requires_grad for t in tensors)
        if _grad_mode.enabled and any(needs):
            self.inputs = tensors
            self.needs_input_grad = needs
            out.requires_grad = True
            out.creator = self
        else:
            self.saved = None  # nothing will call backward: free what forward saved
        return out


# --------------------------------------------------------------------------------------------------
# the backward walk
# --------------------------------------------------------------------------------------------------
def topological_order(root: Tensor) -> list[Tensor]:
    """Tensors of the graph that ends at ``root``, each after every tensor it was computed from.

    A depth-first search with an explicit stack: a tensor is appended once all of its creator's
    inputs have been appended (post-order). Recursion would hit Python's limit near 1,000 ops.
    """
    order: list[Tensor] = []
    visited: set[int] = set()
    stack: list[tuple[Tensor, bool]] = [(root, False)]
    while stack:
        t, inputs_done = stack.pop()
        if inputs_done:
            order.append(t)
            continue
        if id(t) in visited:
            continue
        visited.add(id(t))
        stack.append((t, True))
        if t.creator is not None:
            for x in t.creator.inputs:
                if x is not None and x.requires_grad and id(x) not in visited:
                    stack.append((x, False))
    return order


def _owned(gx: Any, g: Any, in_grads: tuple[Any, ...], op: Function, saved: Any) -> bool:
    """Whether the gradient ``gx`` that ``op.backward(g)`` returned for one input is an array nobody else holds.

    Yes when it owns its memory (not a view: ``base`` is None) and is none of the arrays the op had at hand:
    not the incoming ``g`` (an add or a reshape hands g on), not returned for another input too, not one
    of the op's saved arrays or its inputs' data. Then the op made it for this input alone, and a leaf
    may keep it as its ``.grad`` without a copy.
    """
    if getattr(gx, "base", gx) is not None or gx is g:
        return False
    if sum(other is gx for other in in_grads) > 1:
        return False
    held = [*(saved or ()), *(x.data for x in op.inputs if x is not None)]
    return not any(a is gx for a in held)


def backward(root: Tensor, gradient: Any = None, retain_graph: bool = False) -> None:
    """Fill ``.grad`` of the leaves (and of tensors that called ``retain_grad``) with d root / d leaf.

    Gradients are kept in a dict keyed by tensor until every consumer has contributed, which is what
    reverse topological order guarantees; then the tensor's creator runs its backward once. Each op's
    saved arrays are freed right after its backward, unless ``retain_graph=True`` keeps them for a
    second backward through the same graph (which adds to ``.grad`` again, as PyTorch).

    A leaf's ``.grad`` must be an array nobody else holds, or a later in-place update of one would change
    the other. Where the gradient reaching the leaf is an array its op made for it alone (:func:`_owned`),
    ``.grad`` is that array; otherwise (the caller's ``gradient``, an array handed to several inputs, a
    view) it is a copy. PyTorch's AccumulateGrad does the same. The copy costs what a whole elementwise
    pass costs: in ``bench ops``'s batch norm, whose input is a leaf, dropping it took forward + backward from
    5.58 to 4.56 ms. The rule judges by identity, so an op must never keep a reference to an array its
    backward returns (in an attribute, a container or a view): the engine may hand that array to a leaf.
    """
    xp = backend.get_array_module(root.data)
    if gradient is None:
        if root.data.size != 1:
            raise RuntimeError(
                f"backward: the output has shape {root.shape}, not one element - pass gradient= "
                "(an array of that shape), or reduce it first, e.g. loss.sum().backward()"
            )
        gradient = xp.ones_like(root.data)
        root_owned = True  # made here: ours alone
    else:
        root_owned = False  # the caller's array (asarray does not copy)
        gradient = xp.asarray(gradient, dtype=root.dtype)  # Tensor.backward passes the array of a Tensor
        if gradient.shape != root.shape:
            raise ValueError(
                f"backward: gradient has shape {gradient.shape} but the output has shape {root.shape} "
                "- pass a gradient of the output's shape"
            )
    # per tensor: its gradient so far, and whether that array is ours alone (_owned)
    grads: dict[int, tuple[Any, bool]] = {id(root): (gradient, root_owned)}
    for t in reversed(topological_order(root)):
        g, owned = grads.pop(id(t), (None, False))
        if g is None:
            continue
        if t.creator is None or t.retains_grad:
            # .grad must be an array nobody else holds: the same array may reach several tensors (a + b hands
            # gy to both), and a non-leaf's g goes on into its creator's backward
            if t.grad is not None:
                t.grad = t.grad + g  # accumulate (a new array)
            elif owned and t.creator is None:
                t.grad = g  # the array its op made for this leaf alone: no copy
            else:
                t.grad = g.copy()
            if t._post_accumulate_grad_hooks and t.creator is None:  # the leaf's gradient is final: tell the hooks
                for hook in list(t._post_accumulate_grad_hooks):
                    hook(t)
        op = t.creator
        if op is None:
            continue
        if op.saved is None:
            raise RuntimeError(
                f"backward: {op.name}'s saved arrays were already freed by an earlier backward - "
                "run the forward again, or pass retain_graph=True to the first backward to keep them"
            )
        in_grads = op.backward(g)
        if not isinstance(in_grads, tuple):
            in_grads = (in_grads,)
        saved = op.saved
        if not retain_graph:
            op.saved = None  # free what forward saved: it is not needed any more
        for x, gx, needs in zip(op.inputs, in_grads, op.needs_input_grad, strict=True):
            if not needs or gx is None:
                continue
            assert x is not None
            if gx.shape != x.shape:  # a safety net: every op must return gradients of its inputs' shapes
                raise RuntimeError(f"{op.name}.backward returned a gradient of shape {gx.shape} for {x.shape}")
            prev = grads.get(id(x))
            if prev is None:
                grads[id(x)] = (gx, _owned(gx, g, in_grads, op, saved))
            else:
                grads[id(x)] = (prev[0] + gx, True)  # a new array
