"""Optimizer: parameter groups, per-parameter state, zero_grad and a serialisable state_dict.

As in PyTorch, an optimizer holds ``param_groups``, a list of dicts each with ``"params"`` (a list
of Parameters) and that group's hyperparameters (``"lr"``, ``"weight_decay"``, ...; missing ones
come from the optimizer's defaults), and ``state``, a dict from parameter to its own state (SGD's
momentum buffer). Groups let some parameters train differently: the usual use is exempting batch
norm and bias parameters from weight decay (:func:`minise.optim.param_groups_no_decay`).

``state_dict()`` gives plain data, so a checkpoint can store it as JSON plus arrays:
``{"param_groups": [{"lr": 0.1, ..., "params": [0, 1, 2]}, ...], "state": {0: {"momentum_buffer": array}}}``,
where parameters are numbered in group order, as PyTorch does.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from minise import backend
from minise.tensor import Tensor


class Optimizer:
    """The base of every optimizer; subclasses define ``step`` and may check groups in ``check_group``."""

    def __init__(self, params: Iterable[Any], defaults: dict[str, Any]) -> None:
        self.defaults = dict(defaults)
        self.param_groups: list[dict[str, Any]] = []
        self.state: dict[Tensor, dict[str, Any]] = {}
        groups = list(params)
        if not groups:
            raise ValueError(
                f"{type(self).__name__}: got an empty parameter list - pass model.parameters() "
                "(a generator can be consumed only once: build the optimizer before using it elsewhere)"
            )
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        for group in groups:
            self.add_param_group(group)

    def check_group(self, group: dict[str, Any]) -> None:
        """Raise a ValueError if a group's hyperparameters are invalid (subclasses override)."""

    def add_param_group(self, group: dict[str, Any]) -> None:
        """Add a group: ``{"params": [...], "lr": ..., ...}``; missing hyperparameters take the defaults."""
        name = type(self).__name__
        if not isinstance(group, dict) or "params" not in group:
            raise TypeError(f"{name}: a parameter group must be a dict with a 'params' key, got {type(group).__name__}")
        params = group["params"]
        params = [params] if isinstance(params, Tensor) else list(params)
        for p in params:
            if not isinstance(p, Tensor):
                raise TypeError(
                    f"{name}: can only optimize Tensors, got a {type(p).__name__} - pass model.parameters()"
                )
            if not p.is_leaf:
                raise ValueError(f"{name}: can only optimize leaf tensors (parameters), got one computed by an op")
        unknown = [k for k in group if k != "params" and k not in self.defaults]
        if unknown:
            raise ValueError(
                f"{name}: parameter group has unknown option(s) {unknown} - valid: {', '.join(self.defaults)}"
            )
        new = {**self.defaults, **group, "params": params}
        self.check_group(new)
        existing = {id(p) for g in self.param_groups for p in g["params"]}
        if any(id(p) in existing for p in params) or len({id(p) for p in params}) != len(params):
            raise ValueError(f"{name}: some parameters appear in more than one parameter group - list each once")
        self.param_groups.append(new)

    def zero_grad(self) -> None:
        """Forget every gradient (``p.grad = None``), so the next backward starts from zero."""
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = None

    def step(self) -> None:  # pragma: no cover - every optimizer overrides it
        raise NotImplementedError

    # ------------------------------------------------------------------ state
    def _params(self) -> list[Tensor]:
        return [p for g in self.param_groups for p in g["params"]]

    def state_dict(self) -> dict[str, Any]:
        """Hyperparameters and per-parameter state as JSON-able dicts and (copied) arrays.

        Parameters are replaced by their index in group order; state arrays are copies, so the
        dict does not change as training goes on.
        """
        index = {id(p): i for i, p in enumerate(self._params())}
        groups = [
            {**{k: v for k, v in g.items() if k != "params"}, "params": [index[id(p)] for p in g["params"]]}
            for g in self.param_groups
        ]
        state = {
            index[id(p)]: {k: (v.copy() if hasattr(v, "shape") else v) for k, v in s.items()}
            for p, s in self.state.items()
            if id(p) in index
        }
        return {"param_groups": groups, "state": state}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore hyperparameters and state saved by :meth:`state_dict` (state keys may be strings, as
        after JSON). Arrays go to each parameter's backend and dtype. The groups must hold as many
        parameters as when saved; everything is checked before anything changes."""
        name = type(self).__name__
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(
                f"{name}.load_state_dict: the state has {len(saved_groups)} parameter groups but this optimizer "
                f"has {len(self.param_groups)} - build the optimizer with the same groups as when it was saved"
            )
        for i, (saved, own) in enumerate(zip(saved_groups, self.param_groups)):
            if len(saved["params"]) != len(own["params"]):
                raise ValueError(
                    f"{name}.load_state_dict: group {i} had {len(saved['params'])} parameters when saved but has "
                    f"{len(own['params'])} now - was the state saved for another model or grouping?"
                )
        params = self._params()
        new_state: dict[Tensor, dict[str, Any]] = {}
        for key, entry in state_dict["state"].items():
            i = int(key)
            if not 0 <= i < len(params):
                raise ValueError(f"{name}.load_state_dict: state for parameter {i}, but there are {len(params)}")
            p = params[i]
            new_state[p] = {}
            for k, v in entry.items():
                if hasattr(v, "shape"):
                    if tuple(v.shape) != p.shape:
                        raise ValueError(
                            f"{name}.load_state_dict: {k} of parameter {i} has shape {tuple(v.shape)} but the "
                            f"parameter has shape {p.shape} - the state belongs to another model"
                        )
                    xp = backend.get_array_module(p.data)
                    v = xp.array(backend.to_device(v, backend.backend_name(p.data)), dtype=p.dtype, copy=True)
                new_state[p][k] = v
        for saved, own in zip(saved_groups, self.param_groups):
            own.update({k: v for k, v in saved.items() if k != "params"})
        self.state = new_state

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__} ("]
        for i, g in enumerate(self.param_groups):
            opts = ", ".join(f"{k}={v}" for k, v in g.items() if k != "params")
            lines.append(f"  group {i}: {len(g['params'])} tensors, {opts}")
        return "\n".join(lines) + "\n)"
