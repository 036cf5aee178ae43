"""Shared fixtures: the array-module fixture that runs a test on NumPy and on CuPy (skipped, with the
reason printed by ``pytest -rs``, where no GPU is present; on the CPU stand-in of CuPy with
``MINISE_CUPY_STANDIN=1``), the ``standin`` fixture, the path of the shared data, and a local HTTP server
on 127.0.0.1 for the download tests."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType

import cupy_standin
import numpy as np
import pytest

import minise
from minise import backend

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

# MINISE_CUPY_STANDIN=1: the CuPy backend is the strict CPU stand-in of tests/cupy_standin (a TEST TOOL: it
# checks CuPy's rules on the CPU, not a GPU), so the CuPy-marked tests run without a GPU.
STANDIN = os.environ.get("MINISE_CUPY_STANDIN", "") == "1"
if STANDIN:
    cupy_standin.install()
_cupy_ok, _cupy_reason = backend.cupy_available()


@pytest.fixture(
    params=["numpy", pytest.param("cupy", marks=pytest.mark.cupy)],
    scope="session",
)
def xp(request: pytest.FixtureRequest) -> ModuleType:
    """The array module of each backend; tests using it run once per backend."""
    if request.param == "cupy":
        if not _cupy_ok:
            pytest.skip(f"CuPy backend unavailable: {_cupy_reason.split(' - ')[0]}")
        return backend.xp_of_backend("cupy")
    return np


@pytest.fixture
def standin(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """The CuPy stand-in as minise's CuPy for one test (the backend's state is restored afterwards)."""
    monkeypatch.setattr(backend, "_current", backend._current)
    monkeypatch.setattr(backend, "_device_rng", None)
    monkeypatch.setattr(backend, "_cupy", None)
    already = STANDIN
    module = cupy_standin.install()
    cupy_standin.reset_counts()
    try:
        yield module
    finally:
        if not already:
            cupy_standin.uninstall()


@pytest.fixture
def backend_name(xp: ModuleType) -> str:
    return "numpy" if xp is np else "cupy"


def to_xp(xp: ModuleType, a: np.ndarray):  # type: ignore[no-untyped-def]
    """A host array on the backend of ``xp``."""
    return a if xp is np else xp.asarray(a)


NON_CONTIGUOUS_LAYOUTS = ["nhwc", "swap-hw", "fortran"]


def non_contiguous_leaf(x: np.ndarray, layout: str):  # type: ignore[no-untyped-def]
    """(leaf, view, back) for an (N, C, H, W) host array held in another memory layout: ``leaf`` a tensor
    requiring grad, ``view`` the same values as (N, C, H, W) but not C-contiguous (channels last, H and W
    swapped, or column-major), and ``back(g)`` the leaf's gradient in x's (N, C, H, W) order."""
    if layout == "nhwc":
        leaf = minise.Tensor(x.transpose(0, 2, 3, 1).copy(), requires_grad=True)
        return leaf, leaf.transpose(0, 3, 1, 2), (lambda g: g.transpose(0, 3, 1, 2))
    if layout == "swap-hw":
        leaf = minise.Tensor(x.transpose(0, 1, 3, 2).copy(), requires_grad=True)
        return leaf, leaf.transpose(0, 1, 3, 2), (lambda g: g.transpose(0, 1, 3, 2))
    leaf = minise.Tensor(np.asfortranarray(x), requires_grad=True)
    return leaf, leaf, (lambda g: g)


try:
    import torch  # noqa: F401

    HAVE_TORCH = True
except ImportError:  # torch is an optional reference
    HAVE_TORCH = False

requires_torch = pytest.mark.skipif(not HAVE_TORCH, reason="torch is not installed (optional reference)")


# --------------------------------------------------------------------------------------------------
# a local HTTP server for the download tests
# --------------------------------------------------------------------------------------------------
class Server:
    """Serves ``routes[path] = (body, announced Content-Length or None)`` and counts the requests."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[bytes, int | None]] = {}
        self.requests: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.requests.append(self.path)
                if self.path not in outer.routes:
                    self.send_error(404)
                    return
                body, announced = outer.routes[self.path]
                self.send_response(200)
                self.send_header("Content-Length", str(len(body) if announced is None else announced))
                self.end_headers()
                self.wfile.write(body)  # with HTTP/1.0 the connection closes after this

            def log_message(self, *args: object) -> None:  # keep the test output quiet
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05})

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"


@pytest.fixture
def server() -> Iterator[Server]:
    s = Server()
    s.thread.start()
    try:
        yield s
    finally:
        s.httpd.shutdown()
        s.httpd.server_close()
        s.thread.join(timeout=5)
    assert not s.thread.is_alive()


# MPI: tests that start real processes use the venv's mpiexec (MPICH from the `distributed` extra)
MPIEXEC = Path(sys.executable).parent / "mpiexec"


def why_no_mpi() -> str | None:
    """Why 2-process MPI tests cannot run here, or None when mpi4py and the venv's mpiexec are there."""
    try:
        import mpi4py  # noqa: F401, PLC0415
    except ImportError:
        return "mpi4py is not installed (pip install -e '.[distributed]')"
    if not MPIEXEC.exists():
        return f"no mpiexec next to {sys.executable} (pip install -e '.[distributed]' installs MPICH's)"
    return None


requires_mpi = pytest.mark.skipif(why_no_mpi() is not None, reason=str(why_no_mpi()))
