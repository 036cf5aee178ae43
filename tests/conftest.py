"""Shared fixtures: the array-module fixture that runs a test on NumPy and on CuPy (skipped, with the
reason printed by ``pytest -rs``, where no GPU is present), and the path of the shared data."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from minise import backend

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

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
def backend_name(xp: ModuleType) -> str:
    return "numpy" if xp is np else "cupy"


def to_xp(xp: ModuleType, a: np.ndarray):  # type: ignore[no-untyped-def]
    """A host array on the backend of ``xp``."""
    return a if xp is np else xp.asarray(a)


try:
    import torch  # noqa: F401

    HAVE_TORCH = True
except ImportError:  # torch is an optional reference
    HAVE_TORCH = False

requires_torch = pytest.mark.skipif(not HAVE_TORCH, reason="torch is not installed (optional reference)")
