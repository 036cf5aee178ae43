"""A strict CPU stand-in for CuPy, for minise's tests only (see README.md): ``install()`` makes ``import cupy`` and
``import cupyx`` return the stand-in modules, so that minise's CuPy path runs on the CPU under CuPy's rules.

    import cupy_standin
    cupy_standin.install()          # before minise first asks for CuPy (or use the ``standin`` fixture)
    ...
    cupy_standin.counts().kernels    # device calls since the last reset_counts()

``MINISE_CUPY_STANDIN=1 python -m pytest -m cupy`` runs the CuPy-marked tests under it (tests/conftest.py), and
``python -m cupy_standin minise.train --backend cupy ...`` (with ``tests`` on ``PYTHONPATH``) runs a command.
"""

from __future__ import annotations

import sys
from types import ModuleType
from typing import Any

from cupy_standin import _state
from cupy_standin._array import IMPLICIT, ndarray
from cupy_standin._module import cupy, cupyx
from cupy_standin._state import Counts, StandinRefusal

__all__ = [
    "IMPLICIT",
    "Counts",
    "StandinRefusal",
    "counts",
    "cupy",
    "cupyx",
    "install",
    "ndarray",
    "reset_counts",
    "uninstall",
]

_saved: dict[str, Any] = {}


def install() -> ModuleType:
    """Make ``import cupy`` / ``import cupyx`` give the stand-in, and forget any CuPy minise has cached."""
    for name, module in (("cupy", cupy), ("cupyx", cupyx)):
        if name not in _saved:
            _saved[name] = sys.modules.get(name)
        sys.modules[name] = module
    backend = sys.modules.get("minise.backend")
    if backend is not None:
        backend._cupy = None  # type: ignore[attr-defined]
        backend._device_rng = None  # type: ignore[attr-defined]
    return cupy


def uninstall() -> None:
    """Undo ``install()``: the modules that were there before (or none) come back."""
    for name, module in _saved.items():
        if module is None:
            sys.modules.pop(name, None)
        else:
            sys.modules[name] = module
    _saved.clear()
    backend = sys.modules.get("minise.backend")
    if backend is not None:
        if backend._cupy is cupy:  # type: ignore[attr-defined]
            backend._cupy = None  # type: ignore[attr-defined]
        if backend.get_backend() == "cupy":  # type: ignore[attr-defined]
            backend._current = "numpy"  # type: ignore[attr-defined]
        backend._device_rng = None  # type: ignore[attr-defined]


def counts() -> Counts:
    return _state.COUNTS


def reset_counts() -> Counts:
    """Start counting afresh; returns the counts so far."""
    return _state.reset_counts()
