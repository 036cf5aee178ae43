"""Tensor: an array (NumPy or CuPy) that remembers the op that made it, so gradients can flow back.

Import direction: ``backend <- autograd <- tensor <- functional/* <- nn <- models``. When this module
loads it imports only :mod:`minise.backend` and :mod:`minise.autograd`. Its operators (``+``, ``@``,
``sum``, ``reshape``...) are ops of ``minise.functional`` (``AddOp``, ``SumOp``, ``ReshapeOp``...),
and ``minise.functional`` imports ``Tensor`` from here; so each operator imports its op module when
it is *called*, never at load time (about a microsecond per call, against the tens of microseconds of
the op). There is no import loop, and any module of minise can be imported first
(``tests/test_import_graph.py`` proves both).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from minise import autograd, backend


class HookHandle:
    """What ``Tensor.register_post_accumulate_grad_hook`` returns: ``remove()`` takes the hook off."""

    def __init__(self, hooks: list[Callable[[Tensor], None]], hook: Callable[[Tensor], None]) -> None:
        self.hooks, self.hook = hooks, hook

    def remove(self) -> None:
        if self.hook in self.hooks:
            self.hooks.remove(self.hook)


class Tensor:
    """An n-dimensional array plus what autograd needs: ``requires_grad``, ``grad`` and ``creator``.

    ``data`` is the backend array (``numpy.ndarray`` or ``cupy.ndarray``) and keeps the dtype it was
    given: float64 stays float64. ``grad`` is filled by :meth:`backward` on leaves (tensors made by
    the user, such as parameters) and accumulates over calls, as in PyTorch: zero it between steps.
    """

    __array_priority__ = 1000  # so that ndarray + Tensor calls Tensor.__radd__

    def __init__(self, data: Any, requires_grad: bool = False) -> None:
        if isinstance(data, Tensor):
            data = data.data
        if not (isinstance(data, np.ndarray) or backend.backend_name(data) == "cupy"):  # lists, scalars ...
            data = np.asarray(data)
        self.data: Any = data
        self.grad: Any = None
        self.creator: autograd.Function | None = None
        self.retains_grad = False
        self.requires_grad = False
        if requires_grad:
            if self.data.dtype.kind not in "fc":
                raise TypeError(
                    f"Tensor: only floating-point tensors can require gradients, got dtype {self.data.dtype} - "
                    "create it with a float dtype, e.g. minise.tensor(values, dtype='float32')"
                )
            self.requires_grad = True

    # ---------------------------------------------------------------------------------------------
    # what the array is
    # ---------------------------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    @property
    def ndim(self) -> int:
        return int(self.data.ndim)

    @property
    def dtype(self) -> Any:
        return self.data.dtype

    @property
    def size(self) -> int:
        """The number of elements, as NumPy's ``size`` (PyTorch's ``size()`` is the shape: use ``.shape``)."""
        return int(self.data.size)

    def numel(self) -> int:
        """The number of elements, as PyTorch's ``numel()``."""
        return int(self.data.size)

    def dim(self) -> int:
        """The number of axes, as PyTorch's ``dim()`` (``ndim`` too)."""
        return int(self.data.ndim)

    @property
    def device(self) -> str:
        """ "numpy" (host) or "cupy" (GPU)."""
        return backend.backend_name(self.data)

    @property
    def is_leaf(self) -> bool:
        return self.creator is None

    def __len__(self) -> int:
        if self.ndim == 0:
            raise TypeError("len() of a 0-d tensor")
        return int(self.data.shape[0])

    def __bool__(self) -> bool:
        """The truth of a one-element tensor (``if loss < best:``); ambiguous for more elements, as NumPy."""
        if self.data.size != 1:
            raise ValueError(
                f"bool(): the truth value of a tensor with {self.data.size} elements (shape {self.shape}) is "
                "ambiguous - use .any() or .all()"
            )
        return bool(self.item())

    def any(self) -> bool:
        return bool(self.data.any())

    def all(self) -> bool:
        return bool(self.data.all())

    def __repr__(self) -> str:
        grad = ", requires_grad=True" if self.requires_grad else ""
        body = np.array2string(self.numpy(), separator=", ", prefix="tensor(")
        return f"tensor({body}, dtype={self.dtype}{grad}{', device=cupy' if self.device == 'cupy' else ''})"

    # ---------------------------------------------------------------------------------------------
    # autograd
    # ---------------------------------------------------------------------------------------------
    def backward(self, gradient: Any = None, retain_graph: bool = False) -> None:
        """Accumulate d self / d leaf into every leaf's ``.grad`` (seed 1 if self has one element).

        ``retain_graph=True`` keeps the graph's saved arrays, so that backward can run through it again.
        """
        if not self.requires_grad:
            raise RuntimeError(
                "backward: this tensor does not require grad and has no graph - create the inputs with "
                "requires_grad=True, and do not compute it inside no_grad()"
            )
        if isinstance(gradient, Tensor):
            gradient = gradient.data
        autograd.backward(self, gradient, retain_graph)

    def retain_grad(self) -> Tensor:
        """Keep ``.grad`` on this intermediate tensor too (leaves always keep theirs)."""
        self.retains_grad = True
        return self

    # --- grad-ready hooks (used by minise.distributed to start a bucket's all-reduce during backward) ---
    _post_accumulate_grad_hooks: list[Callable[[Tensor], None]] | None = None  # per leaf, set on first register

    def register_post_accumulate_grad_hook(self, hook: Callable[[Tensor], None]) -> HookHandle:
        """Call ``hook(self)`` whenever backward has finished accumulating this leaf's ``.grad`` (it holds
        every contribution of that backward then), as PyTorch's method of the same name. Returns a handle
        whose ``remove()`` takes the hook off."""
        if self.creator is not None:
            raise RuntimeError(
                "register_post_accumulate_grad_hook: this tensor is the output of an op, not a leaf - register "
                "the hook on a leaf (a parameter or a tensor created with requires_grad=True)"
            )
        if self._post_accumulate_grad_hooks is None:
            self._post_accumulate_grad_hooks = []
        self._post_accumulate_grad_hooks.append(hook)
        return HookHandle(self._post_accumulate_grad_hooks, hook)

    def detach(self) -> Tensor:
        """The same data, cut from the graph (no copy)."""
        return Tensor(self.data)

    def requires_grad_(self, requires_grad: bool = True) -> Tensor:
        """Set ``requires_grad`` in place and return self, as PyTorch (e.g. to train an input image)."""
        if requires_grad and self.data.dtype.kind != "f":
            raise TypeError(f"requires_grad_: dtype {self.dtype} cannot require gradients - use a float dtype")
        self.requires_grad = requires_grad
        return self

    def zero_grad(self) -> None:
        self.grad = None

    # ---------------------------------------------------------------------------------------------
    # host / device
    # ---------------------------------------------------------------------------------------------
    def numpy(self) -> np.ndarray:
        """The values as a host NumPy array (copied from the GPU if needed)."""
        return backend.to_host(self.data)

    def __float__(self) -> float:
        """``float(t)`` of a one-element tensor, as PyTorch (any other size is an error)."""
        self._check_one_element("float")
        return float(self.item())

    def __int__(self) -> int:
        """``int(t)`` of a one-element tensor, truncating toward zero as PyTorch."""
        self._check_one_element("int")
        return int(self.item())

    def _check_one_element(self, what: str) -> None:
        if self.data.size != 1:
            raise ValueError(
                f"{what}(): only a one-element tensor converts to a Python scalar, got shape {self.shape} - "
                "reduce it first (e.g. t.sum()) or index one element"
            )

    def item(self) -> float | int | bool:
        if self.data.size != 1:
            raise ValueError(f"item: only a one-element tensor converts to a Python number, got shape {self.shape}")
        return self.numpy().reshape(()).item()  # type: ignore[no-any-return]

    def tolist(self) -> Any:
        return self.numpy().tolist()

    def to(self, backend_name: str) -> Tensor:
        """A copy on backend ``"numpy"`` (or ``"cpu"``) or ``"cupy"`` (or ``"cuda"``, ``"gpu"``): a new leaf,
        with the same requires_grad."""
        moved = backend.to_device(self.data, backend.canonical_backend(backend_name, "Tensor.to"))
        if moved is self.data or backend.backend_name(moved) == self.device:
            moved = moved.copy()
        return Tensor(moved, requires_grad=self.requires_grad)

    def astype(self, dtype: Any) -> Tensor:
        """A copy with another dtype, cut from the graph."""
        return Tensor(self.data.astype(dtype))

    # ---------------------------------------------------------------------------------------------
    # operators (each a Function from minise.functional)
    # ---------------------------------------------------------------------------------------------
    def _other(self, other: Any) -> Any:
        """Python numbers take this tensor's dtype, so float32 * 2.0 stays float32."""
        if isinstance(other, Tensor):
            return other
        if isinstance(other, (int, float)):
            xp = backend.get_array_module(self.data)
            return xp.asarray(other, dtype=self.dtype if self.dtype.kind == "f" else None)
        return other

    def __add__(self, other: Any) -> Tensor:
        from minise.functional import arithmetic as A  # noqa: PLC0415  (see the module docstring)

        return A.AddOp().apply(self, self._other(other))

    def __radd__(self, other: Any) -> Tensor:
        from minise.functional import arithmetic as A  # noqa: PLC0415  (see the module docstring)

        return A.AddOp().apply(self._other(other), self)

    def __sub__(self, other: Any) -> Tensor:
        from minise.functional import arithmetic as A  # noqa: PLC0415  (see the module docstring)

        return A.SubOp().apply(self, self._other(other))

    def __rsub__(self, other: Any) -> Tensor:
        from minise.functional import arithmetic as A  # noqa: PLC0415  (see the module docstring)

        return A.SubOp().apply(self._other(other), self)

    def __mul__(self, other: Any) -> Tensor:
        from minise.functional import arithmetic as A  # noqa: PLC0415  (see the module docstring)

        return A.MulOp().apply(self, self._other(other))

    def __rmul__(self, other: Any) -> Tensor:
        from minise.functional import arithmetic as A  # noqa: PLC0415  (see the module docstring)

        return A.MulOp().apply(self._other(other), self)

    def __truediv__(self, other: Any) -> Tensor:
        from minise.functional import arithmetic as A  # noqa: PLC0415  (see the module docstring)

        return A.DivOp().apply(self, self._other(other))

    def __rtruediv__(self, other: Any) -> Tensor:
        from minise.functional import arithmetic as A  # noqa: PLC0415  (see the module docstring)

        return A.DivOp().apply(self._other(other), self)

    def __neg__(self) -> Tensor:
        from minise.functional import arithmetic as A  # noqa: PLC0415  (see the module docstring)

        return A.NegOp().apply(self)

    def __pow__(self, other: Any) -> Tensor:
        from minise.functional import arithmetic as A  # noqa: PLC0415  (see the module docstring)

        return A.PowOp().apply(self, self._other(other))

    def __rpow__(self, other: Any) -> Tensor:
        from minise.functional import arithmetic as A  # noqa: PLC0415  (see the module docstring)

        return A.PowOp().apply(self._other(other), self)

    def __matmul__(self, other: Any) -> Tensor:
        from minise.functional import arithmetic as A  # noqa: PLC0415  (see the module docstring)

        return A.MatMulOp().apply(self, other)

    def __rmatmul__(self, other: Any) -> Tensor:
        from minise.functional import arithmetic as A  # noqa: PLC0415  (see the module docstring)

        return A.MatMulOp().apply(other, self)

    # comparisons: boolean tensors, no gradient
    def _compare(self, other: Any, fn: Any) -> Tensor:
        o = other.data if isinstance(other, Tensor) else other
        return Tensor(fn(self.data, o))

    def __lt__(self, other: Any) -> Tensor:
        return self._compare(other, lambda a, b: a < b)

    def __le__(self, other: Any) -> Tensor:
        return self._compare(other, lambda a, b: a <= b)

    def __gt__(self, other: Any) -> Tensor:
        return self._compare(other, lambda a, b: a > b)

    def __ge__(self, other: Any) -> Tensor:
        return self._compare(other, lambda a, b: a >= b)

    def __eq__(self, other: Any) -> Tensor:  # type: ignore[override]
        return self._compare(other, lambda a, b: a == b)

    def __ne__(self, other: Any) -> Tensor:  # type: ignore[override]
        return self._compare(other, lambda a, b: a != b)

    __hash__ = object.__hash__  # tensors are used as dict keys by identity, as in PyTorch

    def __getitem__(self, index: Any) -> Tensor:
        from minise.functional import shape as S  # noqa: PLC0415  (see the module docstring)

        if isinstance(index, Tensor):
            index = index.data
        elif isinstance(index, tuple):
            index = tuple(i.data if isinstance(i, Tensor) else i for i in index)
        return S.GetItemOp(index).apply(self)

    # ---------------------------------------------------------------------------------------------
    # shape and reductions
    # ---------------------------------------------------------------------------------------------
    def reshape(self, *shape: Any) -> Tensor:
        from minise.functional import shape as S  # noqa: PLC0415  (see the module docstring)

        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        return S.ReshapeOp(tuple(shape)).apply(self)

    def view(self, *shape: Any) -> Tensor:
        return self.reshape(*shape)

    def transpose(self, *axes: Any) -> Tensor:
        """Permute axes (NumPy's meaning: no argument reverses them; ``transpose(1, 0, 2)`` permutes)."""
        from minise.functional import shape as S  # noqa: PLC0415  (see the module docstring)

        if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
            axes = tuple(axes[0])
        return S.TransposeOp(tuple(axes) if axes else None).apply(self)

    def permute(self, *axes: int) -> Tensor:
        return self.transpose(*axes)

    @property
    def T(self) -> Tensor:
        return self.transpose()

    def flatten(self, start_dim: int = 0, end_dim: int = -1) -> Tensor:
        from minise.functional import shape as S  # noqa: PLC0415  (see the module docstring)

        return S.flatten(self, start_dim, end_dim)  # type: ignore[no-any-return]

    # Reductions take PyTorch's dim/keepdim or NumPy's axis/keepdims alike (passing both is an error).
    def sum(
        self, dim: Any = None, keepdim: bool | None = None, *, axis: Any = None, keepdims: bool | None = None
    ) -> Tensor:
        from minise.functional import reduction as R  # noqa: PLC0415  (see the module docstring)

        axis, keep = R.pick_axis("sum", dim, axis), R.pick_keepdims("sum", keepdim, keepdims)
        return R.SumOp(axis, keep).apply(self)

    def mean(
        self, dim: Any = None, keepdim: bool | None = None, *, axis: Any = None, keepdims: bool | None = None
    ) -> Tensor:
        from minise.functional import reduction as R  # noqa: PLC0415  (see the module docstring)

        axis, keep = R.pick_axis("mean", dim, axis), R.pick_keepdims("mean", keepdim, keepdims)
        return R.MeanOp(axis, keep).apply(self)

    def max(
        self, dim: Any = None, keepdim: bool | None = None, *, axis: Any = None, keepdims: bool | None = None
    ) -> Tensor:
        """The maximum values (PyTorch's ``amax``: ``max(dim)`` returns values only, not (values, indices))."""
        from minise.functional import reduction as R  # noqa: PLC0415  (see the module docstring)

        axis, keep = R.pick_axis("max", dim, axis), R.pick_keepdims("max", keepdim, keepdims)
        return R.MaxOp(axis, keep).apply(self)

    def argmax(self, dim: int | None = None, keepdim: bool = False, *, axis: int | None = None) -> Tensor:
        from minise.functional import reduction as R  # noqa: PLC0415  (see the module docstring)

        axis = R.pick_axis("argmax", dim, axis)
        out = self.data.argmax(axis=axis, keepdims=keepdim)
        return Tensor(out)

    def softmax(self, dim: int | None = None, *, axis: int | None = None) -> Tensor:
        from minise.functional.loss import softmax  # noqa: PLC0415

        return softmax(self, dim, axis=axis)

    def log_softmax(self, dim: int | None = None, *, axis: int | None = None) -> Tensor:
        from minise.functional.loss import log_softmax  # noqa: PLC0415

        return log_softmax(self, dim, axis=axis)

    # elementwise functions that learners reach for as methods
    def abs(self) -> Tensor:
        from minise.functional.elementwise import abs  # noqa: PLC0415

        return abs(self)

    def __abs__(self) -> Tensor:
        return self.abs()

    def exp(self) -> Tensor:
        from minise.functional.elementwise import exp  # noqa: PLC0415

        return exp(self)

    def log(self) -> Tensor:
        from minise.functional.elementwise import log  # noqa: PLC0415

        return log(self)

    def relu(self) -> Tensor:
        from minise.functional.elementwise import relu  # noqa: PLC0415

        return relu(self)

    def sigmoid(self) -> Tensor:
        from minise.functional.elementwise import sigmoid  # noqa: PLC0415

        return sigmoid(self)

    def tanh(self) -> Tensor:
        from minise.functional.elementwise import tanh  # noqa: PLC0415

        return tanh(self)


def tensor(data: Any, dtype: Any = None, requires_grad: bool = False, backend_name: str | None = None) -> Tensor:
    """Make a tensor from a list, scalar or array on the current backend (or ``backend_name``).

    The values are copied, as ``torch.tensor``: changing the tensor never changes ``data``
    (``Tensor(array)`` wraps an array without copying). The dtype is kept (a float64 array stays
    float64); pass ``dtype`` to convert.
    """
    if isinstance(data, Tensor):
        data = data.data
    if backend_name is not None:
        backend_name = backend.canonical_backend(backend_name, "tensor")
    xp = backend.xp_of_backend(backend_name)
    arr = backend.to_device(data, backend_name or backend.get_backend()) if xp is not np else backend.to_host(data)
    if arr is data or backend.backend_name(data) == backend.backend_name(arr):
        arr = arr.copy()
    if dtype is not None:
        arr = arr.astype(dtype, copy=False)
    return Tensor(arr, requires_grad=requires_grad)


def as_tensor(x: Any) -> Tensor:
    """``x`` itself if it is a Tensor, else a constant Tensor wrapping it."""
    return x if isinstance(x, Tensor) else Tensor(x)
