"""Checkpoints: arrays plus JSON metadata in a .npz, written atomically, read without pickle, and every
unreadable file refused with a CheckpointError of one line."""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from minise import checkpoint
from minise.checkpoint import FORMAT, CheckpointError, load_checkpoint, save_checkpoint, split

META = {"model": "resnet20", "epoch": 3, "nested": {"lr": [0.1, 0.01], "big": 2**80}, "none": None}


def arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "model/conv1.weight": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
        "model/bn1.running_var": np.ones(4, dtype=np.float32),
        "model/fc.bias": np.zeros(0, dtype=np.float64),  # empty arrays survive too
        "optim/0/momentum_buffer": rng.standard_normal((4, 3, 3, 3)),
        "step": np.array(7, dtype=np.int64),  # 0-d
        "flags": np.array([True, False]),
    }


def npz_bytes(**entries: Any) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **entries)
    return buf.getvalue()


def meta_entry(meta: Any) -> np.ndarray:
    return np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)


def refused(path: Path) -> str:
    """The CheckpointError message for ``path``, checked to be one line naming the file."""
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(path)
    message = str(exc.value)
    assert "\n" not in message and str(path) in message, message
    return message


def test_round_trip(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "sub" / "c.npz", META, arrays())
    assert path == tmp_path / "sub" / "c.npz"
    meta, loaded = load_checkpoint(path)
    assert meta == {**META, "format": FORMAT}
    expected = arrays()
    assert sorted(loaded) == sorted(expected)
    for name, value in expected.items():
        assert loaded[name].dtype == value.dtype and loaded[name].shape == value.shape, name
        assert np.array_equal(loaded[name], value), name
    assert sorted(split(loaded, "model")) == ["bn1.running_var", "conv1.weight", "fc.bias"]
    assert list(split(loaded, "optim")) == ["0/momentum_buffer"]


def test_metadata_cannot_override_the_format(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "c.npz", {"format": "something else"}, {})
    meta, loaded = load_checkpoint(path)
    assert meta["format"] == FORMAT and loaded == {}


def test_overwrite_leaves_no_temporary_file_and_usual_permissions(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "c.npz", {"epoch": 1}, arrays())
    save_checkpoint(tmp_path / "c.npz", {"epoch": 2}, arrays())
    assert [p.name for p in tmp_path.iterdir()] == ["c.npz"]
    assert load_checkpoint(tmp_path / "c.npz")[0]["epoch"] == 2
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "c.npz").stat().st_mode & 0o777 == 0o666 & ~umask


@pytest.mark.parametrize("where", ["savez", "replace"])
def test_a_failed_write_keeps_the_previous_file(where: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A crash (or Ctrl-C) while writing, or before the rename: the old checkpoint is intact and no
    temporary file remains."""
    path = save_checkpoint(tmp_path / "last.npz", {"epoch": 1}, arrays())
    before = path.read_bytes()

    def savez_then_fail(file: Any, *args: Any, **kwargs: Any) -> None:
        file.write(b"PK\x03\x04 half an archive")  # something really was written
        raise KeyboardInterrupt

    def fail(*args: Any, **kwargs: Any) -> None:
        raise OSError("disk full")

    if where == "savez":
        monkeypatch.setattr(checkpoint.np, "savez", savez_then_fail)
        error: type[BaseException] = KeyboardInterrupt
    else:
        monkeypatch.setattr(checkpoint.os, "replace", fail)
        error = OSError
    with pytest.raises(error):
        save_checkpoint(path, {"epoch": 2}, {k: v * 2 for k, v in arrays().items() if v.dtype != bool})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.npz"]
    assert load_checkpoint(path)[0]["epoch"] == 1


def test_loading_never_allows_pickle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An object array (a pickle inside the archive) is refused; np.load is called with allow_pickle=False."""
    path = tmp_path / "evil.npz"
    path.write_bytes(npz_bytes(__meta__=meta_entry({"format": FORMAT}), x=np.array([{"a": 1}], dtype=object)))
    assert "pickle" in refused(path)

    calls: list[dict[str, Any]] = []
    real_load = np.load

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(checkpoint.np, "load", spy)
    good = save_checkpoint(tmp_path / "good.npz", {}, arrays())
    load_checkpoint(good)
    assert calls and all(c.get("allow_pickle") is False for c in calls)


def test_truncated_files_are_refused(tmp_path: Path) -> None:
    good = save_checkpoint(tmp_path / "good.npz", META, arrays()).read_bytes()
    for n in (1, 3, 100, len(good) // 2, len(good) - 1):
        path = tmp_path / f"cut{n}.npz"
        path.write_bytes(good[:n])
        message = refused(path)
        assert "truncated" in message or "not a" in message, message


def test_corrupt_data_inside_the_archive_is_refused(tmp_path: Path) -> None:
    good = bytearray(save_checkpoint(tmp_path / "good.npz", META, arrays()).read_bytes())
    start = len(good) // 3
    good[start : start + 64] = bytes(b ^ 0xFF for b in good[start : start + 64])
    path = tmp_path / "flipped.npz"
    path.write_bytes(bytes(good))
    assert "corrupt" in refused(path)


@pytest.mark.parametrize(
    "content",
    [
        b"",
        os.urandom(2048),
        b"\x80\x04K\x01.",  # a pickle
        b"\x93NUMPY" + bytes(64),  # a broken .npy header
    ],
    ids=["empty", "random bytes", "pickle", "npy header"],
)
def test_files_that_are_not_archives_are_refused(content: bytes, tmp_path: Path) -> None:
    path = tmp_path / "c.npz"
    path.write_bytes(content)
    message = refused(path)
    assert "allow_pickle" not in message  # never a hint to load it unsafely


def test_a_plain_npy_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.npz"
    buf = io.BytesIO()
    np.save(buf, np.arange(3))
    path.write_bytes(buf.getvalue())
    assert "not a .npz archive" in refused(path)


def test_a_zip_that_is_not_an_npz_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.npz"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("__meta__.npy", b"not an array")
    refused(path)


@pytest.mark.parametrize(
    ("entries", "expected"),
    [
        ({"x": np.zeros(3)}, "no __meta__"),
        ({"__meta__": np.frombuffer(b"\xff\xfe{", dtype=np.uint8)}, "unreadable metadata"),
        ({"__meta__": np.frombuffer(b"{not json", dtype=np.uint8)}, "unreadable metadata"),
        ({"__meta__": meta_entry([1, 2])}, "not a JSON object"),
        ({"__meta__": meta_entry({"epoch": 1})}, "format None"),
        ({"__meta__": meta_entry({"format": "minise-checkpoint-0"})}, "'minise-checkpoint-0'"),
    ],
    ids=["missing meta", "not utf-8", "not json", "json list", "no format", "wrong format"],
)
def test_bad_metadata_is_refused(entries: dict[str, np.ndarray], expected: str, tmp_path: Path) -> None:
    path = tmp_path / "c.npz"
    path.write_bytes(npz_bytes(**entries))
    message = refused(path)
    assert expected in message, message


def test_missing_file_and_folder(tmp_path: Path) -> None:
    assert "does not exist" in refused(tmp_path / "nothing.npz")
    assert "not a file" in refused(tmp_path)


def test_checkpoint_error_is_a_value_error() -> None:
    assert issubclass(CheckpointError, ValueError)
