"""Download a file safely and unpack a tarball safely.

Two promises make a download safe to interrupt and to trust:

1. **Nothing half-written ever sits at the final path.** Bytes stream into ``<dest>.part``; only
   when the byte count and the MD5 checksum are right is the file renamed with :func:`os.replace`,
   which is atomic on one file system. A failure of any kind - a wrong checksum, a connection cut
   short, Ctrl-C - removes the ``.part`` file, so the next attempt starts clean.
2. **An archive cannot write outside the folder it is unpacked into.** A tar member may be named
   ``../../.bashrc`` or be a link to ``/etc``; :func:`extract_archive` checks every member before
   extracting anything, unpacks into a temporary folder next to the destination, and moves the
   expected top-level folder into place in one rename.

Only the standard library is used (``urllib``, ``hashlib``, ``tarfile``); ``tqdm`` draws the
progress bar when it is installed, otherwise a plain bar is written to standard error.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import shutil
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path, PurePosixPath
from typing import Protocol

__all__ = ["DownloadError", "cache_dir", "download_url", "extract_archive", "md5sum"]

CHUNK_SIZE = 1 << 20  # 1 MiB: big enough to be fast, small enough for a smooth progress bar
TIMEOUT_S = 60.0  # seconds without a byte before urllib gives up


class DownloadError(RuntimeError):
    """A download or an archive is not what was expected (checksum, size or content)."""


def cache_dir() -> Path:
    """The folder where data sets are downloaded: ``$MINISE_DATA`` if set, else ``~/.cache/minise``."""
    env = os.environ.get("MINISE_DATA")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "minise"


def md5sum(path: str | Path, chunk_size: int = CHUNK_SIZE) -> str:
    """The MD5 hex digest of a file, read in chunks so a large file never sits in memory.

    MD5 is broken as a defence against an attacker, but it is what the CIFAR authors publish, and
    it reliably catches what we fear here: a truncated or corrupted download.
    """
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


# ----------------------------------------------------------------------------------------- progress
class _Progress(Protocol):
    def update(self, n: int) -> None: ...
    def close(self) -> None: ...


class _PlainBar:
    """A minimal progress bar on standard error, for when tqdm is not installed."""

    def __init__(self, total: int | None, desc: str) -> None:
        self.total, self.desc, self.done = total, desc, 0
        self._last = 0.0

    def update(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if now - self._last >= 0.1 or (self.total is not None and self.done >= self.total):
            self._last = now
            self._draw()

    def _draw(self) -> None:
        mb = self.done / 1e6
        if self.total:
            frac = min(self.done / self.total, 1.0)
            bar = "#" * int(30 * frac)
            line = f"\r{self.desc}: [{bar:<30}] {100 * frac:5.1f}% {mb:.1f}/{self.total / 1e6:.1f} MB"
        else:
            line = f"\r{self.desc}: {mb:.1f} MB"
        sys.stderr.write(line)
        sys.stderr.flush()

    def close(self) -> None:
        self._draw()
        sys.stderr.write("\n")
        sys.stderr.flush()


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _make_progress(total: int | None, desc: str, enabled: bool) -> _Progress:
    """A progress bar: tqdm if importable, else a plain one on stderr, or nothing if disabled."""
    if not enabled:
        return _NoBar()
    try:
        from tqdm import tqdm
    except ImportError:
        return _PlainBar(total, desc)
    bar: _Progress = tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024)
    return bar


# ----------------------------------------------------------------------------------------- download
def download_url(url: str, dest: str | Path, md5: str, size: int | None = None, progress: bool = True) -> Path:
    """Download ``url`` to ``dest``, check its size and MD5, and only then put it in place.

    Args:
        url: what to fetch (``http``, ``https`` or ``file``).
        dest: the final path of the file; its folder is created if needed.
        md5: the expected MD5 hex digest.
        size: the expected number of bytes, if known (checked in addition to ``Content-Length``).
        progress: draw a progress bar on standard error.

    Returns:
        ``dest`` as a :class:`~pathlib.Path`. If ``dest`` already exists with the right MD5 nothing
        is downloaded.

    Raises:
        DownloadError: the server failed, or the bytes received are too few, too many or have the
            wrong checksum. In every failure (Ctrl-C included) the partial ``<dest>.part`` is removed.
    """
    dest = Path(dest)
    md5 = md5.lower()
    if dest.is_file() and md5sum(dest) == md5:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_suffix(dest.suffix + ".part")
    removed = f"the partial file {part} was removed"
    try:
        digest = hashlib.md5(usedforsecurity=False)
        received = 0
        try:
            with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
                length = response.headers.get("Content-Length")
                announced = int(length) if length is not None and length.isdigit() else None
                bar = _make_progress(announced if announced is not None else size, dest.name, progress)
                try:
                    with open(part, "wb") as f:
                        while chunk := response.read(CHUNK_SIZE):
                            f.write(chunk)
                            digest.update(chunk)
                            received += len(chunk)
                            bar.update(len(chunk))
                finally:
                    bar.close()
        except (urllib.error.URLError, http.client.HTTPException, OSError) as err:
            raise DownloadError(
                f"download_url: fetching {url} failed ({type(err).__name__}: {err}); {removed} - "
                "check the URL and your network connection, then try again"
            ) from err
        if announced is not None and received != announced:
            raise DownloadError(
                f"download_url: {url} announced {announced} bytes (Content-Length) but sent {received}; "
                f"{removed} - the connection was cut short, try again"
            )
        if size is not None and received != size:
            raise DownloadError(
                f"download_url: expected {size} bytes from {url} but got {received}; {removed} - "
                "the download was cut short or the URL serves a different file"
            )
        got = digest.hexdigest()
        if got != md5:
            raise DownloadError(
                f"download_url: MD5 of {url} is {got} but expected {md5} ({received} bytes); {removed} - "
                "the file is corrupt or the URL serves a different file; try again or check url/md5"
            )
        os.replace(part, dest)  # atomic: dest is either absent or complete
    except BaseException:  # KeyboardInterrupt too: never leave a half-written file behind
        part.unlink(missing_ok=True)
        raise
    return dest


# ----------------------------------------------------------------------------------------- extract
def _check_member(member: tarfile.TarInfo, archive: Path) -> None:
    """Refuse a tar member that could write outside the extraction folder."""
    what = f"extract_archive: {archive} holds member {member.name!r}"
    fix = "refusing to extract it - the archive is corrupt or malicious; download it again from the official URL"
    name = PurePosixPath(member.name)
    if name.is_absolute() or member.name.startswith("\\") or re.match(r"[A-Za-z]:", member.name):
        raise DownloadError(f"{what} with an absolute path; {fix}")
    if ".." in name.parts:
        raise DownloadError(f"{what} with '..' in its path (path traversal); {fix}")
    if member.issym() or member.islnk():
        link = PurePosixPath(member.linkname)
        # A symbolic link is resolved from the member's folder, a hard link from the archive root.
        base = name.parent if member.issym() else PurePosixPath()
        target = os.path.normpath(base / link)
        if link.is_absolute() or target == ".." or target.startswith("../"):
            raise DownloadError(f"{what}, a link to {member.linkname!r} outside the archive; {fix}")
    elif not (member.isfile() or member.isdir()):
        raise DownloadError(f"{what}, a device or pipe, not a file or folder; {fix}")


def extract_archive(archive: str | Path, dest_dir: str | Path, expected: str) -> Path:
    """Unpack a ``.tar.gz``/``.tgz`` and move its top-level folder ``expected`` to ``dest_dir/expected``.

    Every member is checked before anything is written: absolute paths, ``..`` and links pointing
    outside the archive are refused. The archive is unpacked into a temporary folder inside
    ``dest_dir`` (same file system, so the final :func:`os.replace` is atomic); the final path
    therefore never holds a half-extracted folder. The temporary folder is removed in every case.

    Returns:
        The path ``dest_dir/expected``.

    Raises:
        DownloadError: the archive is unreadable, unsafe, or lacks the folder ``expected``.
        FileExistsError: ``dest_dir/expected`` already exists.
    """
    archive, dest_dir = Path(archive), Path(dest_dir)
    final = dest_dir / expected
    if final.exists():
        raise FileExistsError(f"extract_archive: {final} already exists - remove it to extract again")
    dest_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=dest_dir))
    try:
        try:
            with tarfile.open(archive, "r:*") as tar:
                members = tar.getmembers()
                for member in members:
                    _check_member(member, archive)
                if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4 / 3.10.12: a second line of defence
                    tar.extractall(tmp, members=members, filter="data")
                else:  # pragma: no cover - older Pythons: our own checks above are the defence
                    tar.extractall(tmp, members=members)
        except (tarfile.TarError, EOFError, OSError) as err:
            raise DownloadError(
                f"extract_archive: cannot read {archive} ({type(err).__name__}: {err}) - "
                "the archive is truncated or corrupt; delete it and download it again"
            ) from err
        if not (tmp / expected).is_dir():
            found = sorted(p.name for p in tmp.iterdir())
            raise DownloadError(
                f"extract_archive: {archive} does not contain the folder {expected!r} (found {found}) - "
                "this is not the expected archive; check the URL"
            )
        os.replace(tmp / expected, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
