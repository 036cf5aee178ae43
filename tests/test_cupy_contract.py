"""The CuPy contract, part 1: every ``cupy.*`` / ``cupyx.*`` name and keyword minise's code uses exists in the
real CuPy. The list is derived from minise's source (tests/cupy_contract.py), never kept by hand.

Real CuPy installs and imports without a GPU (``pip install cupy-cuda12x``; only touching the device fails), and
CI installs it (.ci/run). Without it these tests skip, saying so.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cupy_contract import Use, contract_violations, cupy_uses, package_uses

PACKAGE = Path(__file__).resolve().parents[1] / "minise"

try:
    import cupy as real_cupy
    import cupyx as real_cupyx

    REAL = not getattr(real_cupy, "__standin__", False)
except ImportError as e:  # pragma: no cover - depends on the machine
    real_cupy = real_cupyx = None
    REAL, WHY = False, f"real CuPy is not importable ({e}) - pip install cupy-cuda12x (imports without a GPU)"
else:
    WHY = "the CuPy stand-in is installed as cupy in this process (MINISE_CUPY_STANDIN=1): run without it"

needs_real_cupy = pytest.mark.skipif(not REAL, reason=WHY)


def test_the_walk_finds_each_kind_of_use() -> None:
    source = (
        "import cupy\n"
        "def f(x):\n"
        "    xp = get_array_module(x)\n"
        "    y = xp.sum(x, axis=1, keepdims=True)\n"
        "    xp.add.at(y, 0, 1)\n"
        "    get_array_module(x).lib.stride_tricks.as_strided(x, shape=(1,), strides=(4,))\n"
        "    cupy.cuda.Device().synchronize()\n"
        "    np.zeros(3)\n"  # NumPy's own names are not CuPy's business
        "    return _import_cupy().random.default_rng(0)\n"
    )
    uses = {(u.name, u.keywords) for u in cupy_uses(source, "m.py")}
    assert uses == {
        ("cupy.sum", ("axis", "keepdims")),
        ("cupy.add.at", ()),
        ("cupy.lib.stride_tricks.as_strided", ("shape", "strides")),
        ("cupy.cuda.Device", ()),
        ("cupy.random.default_rng", ()),
    }


@needs_real_cupy
def test_the_contract_check_fails_on_planted_mistakes() -> None:
    planted = (
        "def f(x):\n"
        "    xp = get_array_module(x)\n"
        "    with xp.errstate(over='ignore'):\n"  # NumPy has it, CuPy does not
        "        y = xp.sum(x, axis=1, keepdim=True)\n"  # torch's spelling: CuPy takes keepdims
        "    z = xp.maximum(y, 0, outt=y)\n"  # a ufunc's keywords come from its documented signature
        "    xp.fuse(kernel_nam='k')\n"  # a keyword of a **kwargs function, checked against its documented Args
        "    return xp.linalg.no_such_function(z)\n"
    )
    found = contract_violations(cupy_uses(planted, "planted.py"), real_cupy, real_cupyx)
    assert len(found) == 5, found
    assert any("cupy.fuse has no keyword 'kernel_nam'" in f for f in found)
    assert any("cupy.errstate does not exist" in f for f in found)
    assert any("cupy.sum has no keyword 'keepdim'" in f for f in found)
    assert any("cupy.maximum has no keyword 'outt'" in f for f in found)
    assert any("cupy.linalg.no_such_function does not exist" in f for f in found)
    good = (
        "def f(x):\n    xp = get_array_module(x)\n    return xp.maximum(xp.sum(x, axis=1, keepdims=True), 0, out=x)\n"
    )
    assert contract_violations(cupy_uses(good, "good.py"), real_cupy, real_cupyx) == []


@needs_real_cupy
def test_every_cupy_name_and_keyword_minise_uses_exists_in_real_cupy() -> None:
    uses = package_uses(PACKAGE)
    names = {u.name for u in uses}
    # the walk sees minise's CuPy path (a wrong path or a broken walk would make this test vacuous)
    assert {"cupy.add.at", "cupy.lib.stride_tricks.as_strided", "cupy.cuda.runtime.getDeviceCount"} <= names
    assert len(uses) > 50
    violations = contract_violations(uses, real_cupy, real_cupyx)
    assert not violations, f"CuPy {real_cupy.__version__} lacks what minise uses:\n" + "\n".join(violations)


def test_minise_uses_no_deprecated_cupy_name() -> None:
    deprecated = {"cupyx.scatter_add": "cupy.add.at"}  # deprecated in CuPy 14
    uses: list[Use] = package_uses(PACKAGE)
    found = [f"{u.where}: {u.name} (use {deprecated[u.name]})" for u in uses if u.name in deprecated]
    assert not found, found
