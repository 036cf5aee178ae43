"""``minise.save(obj, path)`` and ``minise.load(path)``: tensors and state dicts, as ``torch.save`` /
``torch.load``, but without pickle.

``obj`` is a Tensor, an array, or a dict, list or tuple of those and of plain values (int, float,
str, bool, None), nested as deep as you like: a ``state_dict()``, or ``{"model": ..., "epoch": 3}``.
It is written in the checkpoint format of :mod:`minise.checkpoint` (an ``.npz`` of plain arrays plus
JSON metadata, written atomically), so a crash mid-write never destroys the previous file and loading
never runs code. The arrays become entries ``obj/0``, ``obj/1``, ...; the JSON metadata records where
each sits in the object (``"kind": "minise.save"``).

``load`` gives back the same structure: tensors as Tensors on the current backend (with their
``requires_grad``), arrays as NumPy arrays, plain values as they were. A checkpoint written by
``minise.train`` loads too, as ``{"meta": ..., "model": {name: array}, ...}`` (its entries grouped by
their first path component), so ``model.load_state_dict(minise.load("best.npz")["model"])`` works.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from minise import backend, checkpoint
from minise.tensor import Tensor, tensor

KIND = "minise.save"
PLAIN = (int, float, str, bool, type(None))


def _is_array(x: Any) -> bool:
    return isinstance(x, np.ndarray) or backend.backend_name(x) == "cupy"


def _encode(obj: Any, arrays: dict[str, Any], where: str) -> Any:
    """The JSON description of ``obj``; its arrays are added to ``arrays`` as ``obj/<n>``."""
    if isinstance(obj, Tensor) or _is_array(obj):
        data = obj.data if isinstance(obj, Tensor) else obj
        if data.dtype.kind == "O":
            raise TypeError(f"save: {where} is an array of Python objects, which minise does not pickle")
        name = f"obj/{len(arrays)}"
        arrays[name] = data
        if isinstance(obj, Tensor):
            return {"tensor": name, "requires_grad": obj.requires_grad}
        return {"array": name}
    if isinstance(obj, PLAIN):
        return {"value": obj}
    if isinstance(obj, (list, tuple)):
        items = [_encode(v, arrays, f"{where}[{i}]") for i, v in enumerate(obj)]
        return {"tuple" if isinstance(obj, tuple) else "list": items}
    if isinstance(obj, dict):
        bad = [k for k in obj if not isinstance(k, (str, int)) or isinstance(k, bool)]
        if bad:
            raise TypeError(f"save: {where} has a key {bad[0]!r} of type {type(bad[0]).__name__} - use str or int keys")
        return {"dict": [[k, _encode(v, arrays, f"{where}[{k!r}]")] for k, v in obj.items()]}
    raise TypeError(
        f"save: cannot save {where}, a {type(obj).__name__} - minise.save takes tensors, arrays, and dicts, "
        "lists and tuples of them and of int, float, str, bool, None (it never pickles); for a model, save "
        "model.state_dict()"
    )


def _decode(node: Any, arrays: dict[str, np.ndarray], path: Path) -> Any:
    if not isinstance(node, dict) or len(node) not in (1, 2):
        raise checkpoint.CheckpointError(f"{path}: unreadable minise.save structure near {str(node)[:60]!r}")
    if "tensor" in node:
        return tensor(arrays[node["tensor"]], requires_grad=bool(node.get("requires_grad", False)))
    if "array" in node:
        return arrays[node["array"]]
    if "value" in node:
        return node["value"]
    if "list" in node:
        return [_decode(v, arrays, path) for v in node["list"]]
    if "tuple" in node:
        return tuple(_decode(v, arrays, path) for v in node["tuple"])
    if "dict" in node:
        return {k: _decode(v, arrays, path) for k, v in node["dict"]}
    raise checkpoint.CheckpointError(f"{path}: unknown entry {sorted(node)} in a minise.save file")


def save(obj: Any, path: str | Path) -> Path:
    """Write ``obj`` (a tensor, an array, or nested dicts/lists/tuples of them and of plain values) to
    ``path``, atomically and without pickle. Returns the path."""
    arrays: dict[str, Any] = {}
    structure = _encode(obj, arrays, "obj")
    return checkpoint.save_checkpoint(path, {"kind": KIND, "object": structure}, arrays)


def load(path: str | Path) -> Any:
    """What :func:`save` wrote, rebuilt (tensors on the current backend); a ``minise.train``
    checkpoint as ``{"meta": meta, "model": {...}, "optim": {...}}``. Raises
    :class:`~minise.checkpoint.CheckpointError` with a one-line reason for anything else."""
    path = Path(path)
    meta, arrays = checkpoint.load_checkpoint(path)
    if meta.get("kind") == KIND:
        try:
            return _decode(meta["object"], arrays, path)
        except (KeyError, TypeError, ValueError) as e:
            raise checkpoint.CheckpointError(f"{path}: damaged minise.save structure ({e!r})") from None
    grouped: dict[str, Any] = {"meta": meta}
    for name in arrays:
        head, _, rest = name.partition("/")
        if rest:
            grouped.setdefault(head, {})[rest] = arrays[name]
        else:
            grouped[head] = arrays[name]
    return grouped
