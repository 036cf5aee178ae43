"""Checkpoints: ``.npz`` archives of arrays plus JSON metadata, written atomically, loaded without pickle.

Layout of the archive (every entry a plain array):
    model/<dotted name>          parameters and buffers (``Module.state_dict``)
    optim/<index>/<name>         optimiser state, e.g. momentum buffers
    __meta__                     UTF-8 JSON as a uint8 array: model name and options, optimiser and
                                 schedule hyperparameters, epoch and step, RNG state, minise version

Loading uses ``numpy.load(allow_pickle=False)``: a checkpoint can hold only arrays and text, so loading
one never runs code (a pickle can). Writing goes to a temporary file in the same folder, is flushed to
disk, and is then renamed over the target (``os.replace`` is atomic), so a crash or Ctrl-C mid-write
leaves the previous checkpoint intact, never half a file.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from minise import backend

FORMAT = "minise-checkpoint-1"


class CheckpointError(ValueError):
    """A file that is not a readable minise checkpoint, or one that does not fit the model."""


def save_checkpoint(path: str | Path, meta: dict[str, Any], arrays: dict[str, Any]) -> Path:
    """Write ``arrays`` (name -> array on any backend) and ``meta`` (JSON-able) to ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {name: backend.to_host(a) for name, a in arrays.items()}
    meta = {"format": FORMAT, **meta}
    payload["__meta__"] = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **payload)  # type: ignore[arg-type]
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(meta, arrays) from a checkpoint; raises CheckpointError with a one-line reason if it is unusable."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist - check the path (runs keep last.npz and best.npz)")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError) as e:
        raise CheckpointError(
            f"checkpoint {path} is corrupt or truncated ({type(e).__name__}: {e}) - "
            "use another checkpoint, e.g. best.npz"
        ) from None
    raw = arrays.pop("__meta__", None)
    if raw is None:
        raise CheckpointError(f"{path} is not a minise checkpoint (no __meta__ entry)")
    try:
        meta = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"checkpoint {path} has unreadable metadata ({e})") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} has format {meta.get('format')!r}, expected {FORMAT!r}")
    return meta, arrays


def split(arrays: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    """The entries under ``prefix/``, with the prefix removed."""
    head = prefix + "/"
    return {k[len(head) :]: v for k, v in arrays.items() if k.startswith(head)}
