"""Module, Parameter and Sequential: how layers hold parameters, buffers and sub-layers.

Also the two hooks PyTorch users reach for to look inside a model without editing it:
``register_forward_pre_hook(fn)`` runs ``fn(module, args)`` before ``forward`` and
``register_forward_hook(fn)`` runs ``fn(module, args, output)`` after it; each returns a
:class:`RemovableHandle` whose ``remove()`` takes the hook off again.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

from minise import backend
from minise.tensor import Tensor


class Parameter(Tensor):
    """A tensor that a Module registers as trainable: requires_grad is True by default."""

    def __init__(self, data: Any, requires_grad: bool = True) -> None:
        super().__init__(data, requires_grad=requires_grad)

    def __repr__(self) -> str:
        return "Parameter(" + super().__repr__() + ")"


class IncompatibleKeys(NamedTuple):
    """What ``load_state_dict(strict=False)`` returns, as PyTorch's ``_IncompatibleKeys``."""

    missing_keys: list[str]
    unexpected_keys: list[str]


class StateDictKeyError(KeyError, RuntimeError):
    """Missing or unexpected keys in ``load_state_dict(strict=True)``: a KeyError, and a RuntimeError as
    PyTorch raises, so ``except RuntimeError`` written for PyTorch catches it too."""

    def __str__(self) -> str:
        return str(self.args[0])  # KeyError would print the message in quotes


class StateDictShapeError(ValueError, RuntimeError):
    """Keys whose arrays have the wrong shape in ``load_state_dict``: a ValueError and a RuntimeError."""


_hook_ids = itertools.count()


class RemovableHandle:
    """What ``register_forward_hook`` / ``register_forward_pre_hook`` return: ``handle.remove()`` takes
    the hook off (removing twice does nothing). Also a context manager: ``with m.register_forward_hook(f):``
    keeps the hook only inside the block."""

    def __init__(self, hooks: OrderedDict[int, Callable[..., Any]]) -> None:
        self.id = next(_hook_ids)
        self._hooks = hooks

    def remove(self) -> None:
        self._hooks.pop(self.id, None)

    def __enter__(self) -> RemovableHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


class Module:
    """The base of every layer and model, as ``torch.nn.Module``.

    Assigning a Parameter or a Module to an attribute registers it; ``register_buffer`` registers an
    array that is state but not trained (batch norm's running statistics). ``state_dict`` maps dotted
    names to arrays; ``load_state_dict`` copies them back in place and names every key that is missing,
    unexpected or of the wrong shape.
    """

    training: bool
    _parameters: OrderedDict[str, Parameter | None]
    _buffers: OrderedDict[str, Any]
    _modules: OrderedDict[str, Module]
    _forward_pre_hooks: OrderedDict[int, Callable[..., Any]]
    _forward_hooks: OrderedDict[int, Callable[..., Any]]

    def __init__(self) -> None:
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "_forward_pre_hooks", OrderedDict())
        object.__setattr__(self, "_forward_hooks", OrderedDict())
        object.__setattr__(self, "training", True)

    def __setattr__(self, name: str, value: Any) -> None:
        if "_parameters" not in self.__dict__:
            raise AttributeError(f"{type(self).__name__}: call super().__init__() before assigning {name!r}")
        if name in self._buffers and not isinstance(value, (Parameter, Module)):
            self._buffers[name] = value  # assigning to a buffer keeps it a buffer (BN's running statistics)
        elif name in self._parameters and value is not None and not isinstance(value, Parameter):
            raise TypeError(
                f"{type(self).__name__}: cannot assign a {type(value).__name__} to parameter {name!r} - "
                "assign a minise.nn.Parameter (or None), or change the values in place with .data[...] = ..."
            )
        else:
            for table in (self._parameters, self._modules, self._buffers):
                table.pop(name, None)
            if isinstance(value, Parameter):
                self._parameters[name] = value
            elif isinstance(value, Module):
                self._modules[name] = value
            elif value is None and name in ("bias", "weight"):
                self._parameters[name] = None
        object.__setattr__(self, name, value)

    def register_buffer(self, name: str, array: Any) -> None:
        self._buffers[name] = array
        object.__setattr__(self, name, array)

    def forward(self, *args: Any, **kwargs: Any) -> Any:  # pragma: no cover - every layer overrides it
        raise NotImplementedError(f"{type(self).__name__} has no forward")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """``forward``, with the hooks around it, in the order they were registered (as PyTorch).

        A pre-hook ``fn(module, args)`` may return new inputs (a tuple, or one value for one input);
        a forward hook ``fn(module, args, output)`` may return a new output. ``None`` keeps them.
        """
        for hook in list(self._forward_pre_hooks.values()):
            result = hook(self, args)
            if result is not None:
                args = result if isinstance(result, tuple) else (result,)
        output = self.forward(*args, **kwargs)
        for hook in list(self._forward_hooks.values()):
            result = hook(self, args, output)
            if result is not None:
                output = result
        return output

    # ------------------------------------------------------------------ hooks
    def register_forward_pre_hook(self, hook: Callable[..., Any]) -> RemovableHandle:
        """Run ``hook(module, args)`` before every ``forward``; it may return replaced inputs."""
        handle = RemovableHandle(self._forward_pre_hooks)
        self._forward_pre_hooks[handle.id] = hook
        return handle

    def register_forward_hook(self, hook: Callable[..., Any]) -> RemovableHandle:
        """Run ``hook(module, args, output)`` after every ``forward``; it may return a replaced output.

        E.g. record what every SE block multiplies its input by (``args[0]`` is the block's input):
        ``h = se.register_forward_hook(lambda m, args, y: seen.append(m.excitation(args[0]).numpy()))``,
        run the model, then ``h.remove()``.
        """
        handle = RemovableHandle(self._forward_hooks)
        self._forward_hooks[handle.id] = hook
        return handle

    # ------------------------------------------------------------------ walking the tree
    def named_children(self) -> Iterator[tuple[str, Module]]:
        yield from self._modules.items()

    def children(self) -> Iterator[Module]:
        for _, m in self.named_children():
            yield m

    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, Module]]:
        yield prefix, self
        for name, m in self._modules.items():
            yield from m.named_modules(f"{prefix}.{name}" if prefix else name)

    def modules(self) -> Iterator[Module]:
        for _, m in self.named_modules():
            yield m

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Parameter]]:
        for mname, m in self.named_modules(prefix):
            for name, p in m._parameters.items():
                if p is not None:
                    yield (f"{mname}.{name}" if mname else name), p

    def parameters(self) -> Iterator[Parameter]:
        for _, p in self.named_parameters():
            yield p

    def named_buffers(self) -> Iterator[tuple[str, Any]]:
        for mname, m in self.named_modules():
            for name, b in m._buffers.items():
                yield (f"{mname}.{name}" if mname else name), b

    def buffers(self) -> Iterator[Any]:
        for _, b in self.named_buffers():
            yield b

    # ------------------------------------------------------------------ modes and gradients
    def train(self, mode: bool = True) -> Module:
        for m in self.modules():
            object.__setattr__(m, "training", mode)
        return self

    def eval(self) -> Module:
        return self.train(False)

    def apply(self, fn: Callable[[Module], Any]) -> Module:
        """Call ``fn(m)`` on every sub-module, children first, then on self (as PyTorch); returns self.

        E.g. ``model.apply(lambda m: m.bias.data.fill(0) if isinstance(m, nn.Linear) else None)``.
        """
        for m in self.children():
            m.apply(fn)
        fn(self)
        return self

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad = None

    def num_parameters(self) -> int:
        return sum(p.size for p in self.parameters())

    # ------------------------------------------------------------------ backends
    def to(self, backend_name: str) -> Module:
        """Move every parameter and buffer to backend "numpy" (or "cpu") or "cupy" (or "cuda", "gpu"), in
        place; returns self. Any other name is a ValueError listing these."""
        backend_name = backend.canonical_backend(backend_name, "Module.to")
        for m in self.modules():
            for p in m._parameters.values():
                if p is not None:
                    p.data = backend.to_device(p.data, backend_name)
                    p.grad = None
            for name, b in list(m._buffers.items()):
                m.register_buffer(name, backend.to_device(b, backend_name))
        return self

    # ------------------------------------------------------------------ state
    def state_dict(self) -> OrderedDict[str, Any]:
        """Dotted name -> array (the live arrays, not copies): parameters, then buffers."""
        out: OrderedDict[str, Any] = OrderedDict()
        for name, p in self.named_parameters():
            out[name] = p.data
        for name, b in self.named_buffers():
            out[name] = b
        return out

    def load_state_dict(self, state: dict[str, Any], strict: bool = True) -> IncompatibleKeys:
        """Copy arrays into this module's parameters and buffers, in place, on their current backend.

        Returns ``(missing_keys, unexpected_keys)`` as a named tuple, as PyTorch. With ``strict=True``
        (the default) any such key raises :class:`StateDictKeyError` naming every one; a key of the wrong
        shape always raises :class:`StateDictShapeError` naming every one (both are RuntimeErrors, as
        PyTorch's). Either error comes before anything is changed.
        """
        own = self.state_dict()
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        wrong = [
            f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
            for k in own
            if k in state and tuple(state[k].shape) != tuple(own[k].shape)
        ]
        if strict and (missing or unexpected):
            raise StateDictKeyError(
                f"load_state_dict: {type(self).__name__} state does not match - missing keys: "
                f"{missing or 'none'}; unexpected keys: {unexpected or 'none'} - was it saved from another "
                "model or with other options?"
            )
        if wrong:
            raise StateDictShapeError(
                f"load_state_dict: {type(self).__name__} has shape mismatches - {'; '.join(wrong)} - "
                "build the model with the options it was saved with"
            )
        for k, target in own.items():
            if k in state:
                value = state[k].data if isinstance(state[k], Tensor) else state[k]
                xp = backend.get_array_module(target)
                target[...] = xp.asarray(backend.to_device(value, backend.backend_name(target)), dtype=target.dtype)
        return IncompatibleKeys(missing, unexpected)

    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__}({self.extra_repr()}"]
        for name, m in self._modules.items():
            child = repr(m).replace("\n", "\n  ")
            lines.append(f"  ({name}): {child}")
        return lines[0] + (")" if len(lines) == 1 else "\n" + "\n".join(lines[1:]) + "\n)")


class Sequential(Module):
    """Modules applied one after another; children are named "0", "1", ... as in PyTorch."""

    def __init__(self, *modules: Module) -> None:
        super().__init__()
        for i, m in enumerate(modules):
            setattr(self, str(i), m)

    def forward(self, x: Any) -> Any:
        for m in self._modules.values():
            x = m(x)
        return x

    def __len__(self) -> int:
        return len(self._modules)

    def __getitem__(self, i: int) -> Module:
        return list(self._modules.values())[i]

    def __iter__(self) -> Iterator[Module]:
        return iter(self._modules.values())
