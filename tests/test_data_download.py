"""download_url and extract_archive against a local HTTP server: no network is used.

The server runs on 127.0.0.1 on a free port in a thread, serves archives built here in the official
CIFAR-10 layout, and is shut down at the end of each test.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
from conftest import Server

from minise.data import (
    DownloadError,
    cache_dir,
    download,
    download_url,
    extract_archive,
    load_cifar,
    md5sum,
)

FOLDER = "cifar-10-batches-py"
NAMES = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]


# ----------------------------------------------------------------------------------------- helpers
def cifar10_files(rng: np.random.Generator) -> tuple[dict[str, bytes], dict[str, np.ndarray]]:
    """The files of a tiny CIFAR-10 folder in the official pickle format, and the arrays in them."""
    files, arrays = {}, {}
    for name, n in (("data_batch_1", 6), ("data_batch_2", 4), ("test_batch", 3)):
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, n).tolist()
        batch = {b"batch_label": name.encode(), b"labels": labels, b"data": data,
                 b"filenames": [f"img_{i}.png".encode() for i in range(n)]}  # fmt: skip
        files[name] = pickle.dumps(batch, protocol=2)
        arrays[name + "/data"], arrays[name + "/labels"] = data, np.array(labels)
    files["batches.meta"] = pickle.dumps({b"label_names": NAMES, b"num_vis": 3072}, protocol=2)
    return files, arrays


def make_tarball(members: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    """A .tar.gz in memory holding ``members`` (path -> bytes) and symbolic ``links`` (path -> target)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for path, content in members.items():
            info = tarfile.TarInfo(path)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
        for path, target in (links or {}).items():
            info = tarfile.TarInfo(path)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return buf.getvalue()


def cifar10_tarball(seed: int = 0) -> tuple[bytes, dict[str, np.ndarray]]:
    files, arrays = cifar10_files(np.random.default_rng(seed))
    return make_tarball({f"{FOLDER}/{name}": content for name, content in files.items()}), arrays


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def leftovers(folder: Path) -> list[str]:
    """Every file and folder under ``folder``, relative: what a failed download must not leave."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# ----------------------------------------------------------------------------------------- download
def test_cache_dir_honours_minise_data(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MINISE_DATA", str(tmp_path / "cache"))
    assert cache_dir() == tmp_path / "cache"
    monkeypatch.delenv("MINISE_DATA")
    assert cache_dir() == Path.home() / ".cache" / "minise"


def test_md5sum_matches_hashlib(tmp_path: Path) -> None:
    data = np.random.default_rng(0).bytes(3_000_000)  # spans several read chunks
    (tmp_path / "f").write_bytes(data)
    assert md5sum(tmp_path / "f") == md5(data)


def test_download_and_load_cifar(server: Server, tmp_path: Path) -> None:
    body, arrays = cifar10_tarball()
    server.routes["/c10.tgz"] = (body, None)
    ds = load_cifar("cifar10", root=tmp_path, download=True, url=server.url("/c10.tgz"), md5=md5(body))
    assert ds.images.shape == (10, 3, 32, 32) and ds.images.dtype == np.uint8
    expected = np.concatenate([arrays["data_batch_1/data"], arrays["data_batch_2/data"]])
    np.testing.assert_array_equal(ds.images.reshape(10, 3072), expected)
    np.testing.assert_array_equal(ds.labels, np.concatenate([arrays["data_batch_1/labels"],
                                                             arrays["data_batch_2/labels"]]))  # fmt: skip
    assert ds.classes[0] == "airplane"
    assert leftovers(tmp_path) == sorted([FOLDER] + [f"{FOLDER}/{n}" for n in
                                         ("data_batch_1", "data_batch_2", "test_batch", "batches.meta")])  # fmt: skip
    # Loading again, or loading the test split, reads the folder and does not download again.
    test = load_cifar("cifar10", root=tmp_path, train=False, download=True, url=server.url("/c10.tgz"))
    assert len(test) == 3 and server.requests == ["/c10.tgz"]


def test_present_file_with_right_md5_is_not_downloaded(server: Server, tmp_path: Path) -> None:
    (tmp_path / "f.bin").write_bytes(b"hello")
    assert download_url(server.url("/f.bin"), tmp_path / "f.bin", md5(b"hello"), progress=False).is_file()
    assert server.requests == []


def test_present_file_with_wrong_md5_is_downloaded_again(server: Server, tmp_path: Path) -> None:
    server.routes["/f.bin"] = (b"the right bytes", None)
    (tmp_path / "f.bin").write_bytes(b"stale")
    download_url(server.url("/f.bin"), tmp_path / "f.bin", md5(b"the right bytes"), progress=False)
    assert (tmp_path / "f.bin").read_bytes() == b"the right bytes"
    assert leftovers(tmp_path) == ["f.bin"]


def test_wrong_md5_raises_and_leaves_nothing(server: Server, tmp_path: Path) -> None:
    body, _ = cifar10_tarball()
    server.routes["/c10.tgz"] = (body, None)
    wrong = "0" * 32
    with pytest.raises(DownloadError) as info:
        load_cifar("cifar10", root=tmp_path, download=True, url=server.url("/c10.tgz"), md5=wrong)
    message = str(info.value)
    assert wrong in message and md5(body) in message and "removed" in message
    assert leftovers(tmp_path) == []


def test_connection_cut_short_raises_and_leaves_nothing(server: Server, tmp_path: Path) -> None:
    body, _ = cifar10_tarball()
    server.routes["/c10.tgz"] = (body, len(body) + 1000)  # announces more bytes than it sends
    with pytest.raises(DownloadError, match=f"announced {len(body) + 1000} bytes.*sent {len(body)}"):
        load_cifar("cifar10", root=tmp_path, download=True, url=server.url("/c10.tgz"), md5=md5(body))
    assert leftovers(tmp_path) == []


def test_truncated_archive_fails_the_checksum(server: Server, tmp_path: Path) -> None:
    body, _ = cifar10_tarball()
    server.routes["/c10.tgz"] = (body[: len(body) // 2], None)  # consistent headers, half the file
    with pytest.raises(DownloadError, match="MD5"):
        load_cifar("cifar10", root=tmp_path, download=True, url=server.url("/c10.tgz"), md5=md5(body))
    assert leftovers(tmp_path) == []


def test_expected_size_is_checked(server: Server, tmp_path: Path) -> None:
    server.routes["/f.bin"] = (b"12345", None)
    with pytest.raises(DownloadError, match="expected 6 bytes.*got 5"):
        download_url(server.url("/f.bin"), tmp_path / "f.bin", md5(b"12345"), size=6, progress=False)
    assert leftovers(tmp_path) == []


def test_http_error_names_the_url(server: Server, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="missing.bin.*404"):
        download_url(server.url("/missing.bin"), tmp_path / "f.bin", "0" * 32, progress=False)
    assert leftovers(tmp_path) == []


def test_interrupt_removes_the_partial_file(server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class CtrlC:
        def update(self, n: int) -> None:
            assert (tmp_path / "f.bin.part").is_file()  # the bytes really went to the .part file
            raise KeyboardInterrupt

        def close(self) -> None:
            pass

    monkeypatch.setattr(download, "_make_progress", lambda total, desc, enabled: CtrlC())
    server.routes["/f.bin"] = (b"x" * 1000, None)
    with pytest.raises(KeyboardInterrupt):
        download_url(server.url("/f.bin"), tmp_path / "f.bin", md5(b"x" * 1000))
    assert leftovers(tmp_path) == []


def test_plain_progress_bar_without_tqdm(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(__import__("sys").modules, "tqdm", None)  # makes `import tqdm` fail
    server.routes["/f.bin"] = (b"y" * 5000, None)
    download_url(server.url("/f.bin"), tmp_path / "f.bin", md5(b"y" * 5000), progress=True)
    assert "100.0%" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------- extract
def write(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "archive.tar.gz"
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    "members, links",
    [
        ({f"{FOLDER}/ok": b"1", "../evil.txt": b"pwned"}, None),
        ({f"{FOLDER}/ok": b"1", f"{FOLDER}/../../evil.txt": b"pwned"}, None),
        ({f"{FOLDER}/ok": b"1", "/tmp/minise-evil.txt": b"pwned"}, None),
        ({f"{FOLDER}/ok": b"1"}, {f"{FOLDER}/link": "../../outside"}),
        ({f"{FOLDER}/ok": b"1"}, {f"{FOLDER}/link": "/etc/passwd"}),
    ],
    ids=["dotdot", "nested-dotdot", "absolute", "link-out", "link-absolute"],
)
def test_unsafe_archive_is_refused(tmp_path: Path, members: dict[str, bytes], links: dict[str, str] | None) -> None:
    archive = write(tmp_path, make_tarball(members, links))
    dest = tmp_path / "dest"
    with pytest.raises(DownloadError, match="refusing"):
        extract_archive(archive, dest, FOLDER)
    assert leftovers(dest) == []  # not even the safe member, nor the temporary folder
    assert not (tmp_path / "evil.txt").exists() and not Path("/tmp/minise-evil.txt").exists()


def test_link_inside_the_archive_is_allowed(tmp_path: Path) -> None:
    archive = write(tmp_path, make_tarball({f"{FOLDER}/a": b"1"}, {f"{FOLDER}/b": "a"}))
    out = extract_archive(archive, tmp_path / "dest", FOLDER)
    assert (out / "b").read_bytes() == b"1"


def test_archive_without_the_expected_folder(tmp_path: Path) -> None:
    archive = write(tmp_path, make_tarball({"something-else/x": b"1"}))
    with pytest.raises(DownloadError, match=f"does not contain the folder '{FOLDER}'.*something-else"):
        extract_archive(archive, tmp_path / "dest", FOLDER)
    assert leftovers(tmp_path / "dest") == []


def test_corrupt_archive(tmp_path: Path) -> None:
    body, _ = cifar10_tarball()
    archive = write(tmp_path, body[: len(body) // 2])
    with pytest.raises(DownloadError, match="truncated or corrupt"):
        extract_archive(archive, tmp_path / "dest", FOLDER)
    assert leftovers(tmp_path / "dest") == []


def test_existing_destination_is_not_overwritten(tmp_path: Path) -> None:
    body, _ = cifar10_tarball()
    (tmp_path / "dest" / FOLDER).mkdir(parents=True)
    with pytest.raises(FileExistsError, match="already exists"):
        extract_archive(write(tmp_path, body), tmp_path / "dest", FOLDER)
