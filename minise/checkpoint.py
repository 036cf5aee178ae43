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
import uuid
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from minise import backend

FORMAT = "minise-checkpoint-1"
ZIP_MAGIC = b"PK\x03\x04"  # how every .npz (a zip archive) begins


class CheckpointError(ValueError):
    """A file that is not a readable minise checkpoint, or one that does not fit the model."""


def save_checkpoint(path: str | Path, meta: dict[str, Any], arrays: dict[str, Any]) -> Path:
    """Write ``arrays`` (name -> array on any backend) and ``meta`` (JSON-able) to ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {name: backend.to_host(a) for name, a in arrays.items()}
    meta = {**meta, "format": FORMAT}  # ours wins: a caller's "format" key would make the file unreadable
    payload["__meta__"] = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
    # A fresh name in the same folder (os.replace is atomic only within one file system), created
    # exclusively and with the permissions the umask gives any new file (mkstemp would make it 0600).
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
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


def _one_line(error: BaseException) -> str:
    """``Type: message`` of an exception, on one line."""
    return f"{type(error).__name__}: {' '.join(str(error).split())}"


def load_checkpoint(path: str | Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(meta, arrays) from a checkpoint; raises CheckpointError with a one-line reason if it is unusable."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist - check the path (runs keep last.npz and best.npz)")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is not a file - give the .npz file, e.g. {path / 'last.npz'}")
    try:
        with open(path, "rb") as f:
            head = f.read(len(ZIP_MAGIC))
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {path} ({_one_line(e)}) - check its permissions") from None
    if head != ZIP_MAGIC:
        # Checked before numpy.load, which would otherwise read a .npy file as one array, or say of
        # random bytes that they might be a pickle to load "unsafely".
        what = "empty" if not head else "truncated" if ZIP_MAGIC.startswith(head) else "not a .npz archive"
        raise CheckpointError(f"{path} is not a minise checkpoint ({what}) - use a .npz file written by minise.train")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except ValueError as e:
        if "allow_pickle" in str(e):  # an object array: pickled Python objects, which minise never writes
            raise CheckpointError(
                f"checkpoint {path} holds pickled Python objects, which minise never writes and does not load "
                "(loading a pickle can run code) - use a checkpoint written by minise.train"
            ) from None
        raise CheckpointError(
            f"checkpoint {path} is corrupt or truncated ({_one_line(e)}) - use another checkpoint, e.g. best.npz"
        ) from None
    except (zipfile.BadZipFile, EOFError, OSError, KeyError, NotImplementedError) as e:
        raise CheckpointError(
            f"checkpoint {path} is corrupt or truncated ({_one_line(e)}) - use another checkpoint, e.g. best.npz"
        ) from None
    not_arrays = [name for name, value in arrays.items() if not isinstance(value, np.ndarray)]
    if not_arrays:  # numpy.load hands back the raw bytes of a zip member that is not a .npy file
        raise CheckpointError(
            f"{path} is not a minise checkpoint (entry {not_arrays[0]!r} is not an array) - use one minise.train wrote"
        )
    raw = arrays.pop("__meta__", None)
    if raw is None:
        raise CheckpointError(f"{path} is not a minise checkpoint (no __meta__ entry) - use one minise.train wrote")
    try:
        meta = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"checkpoint {path} has unreadable metadata ({_one_line(e)})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"checkpoint {path} has metadata of type {type(meta).__name__}, not a JSON object")
    if meta.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} has format {meta.get('format')!r}, expected {FORMAT!r} - it was not written by this minise"
        )
    return meta, arrays


def split(arrays: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    """The entries under ``prefix/``, with the prefix removed."""
    head = prefix + "/"
    return {k[len(head) :]: v for k, v in arrays.items() if k.startswith(head)}
