"""What minise asks of CuPy, read from minise's own source: the ``cupy.*`` / ``cupyx.*`` names and the keyword
arguments its code uses, each looked up in the real, installed CuPy (which imports without a GPU).

A *use* is an attribute chain whose root is the CuPy module object or an array module that may be CuPy:
a name ``xp``, ``cupy``, ``cupyx``, ``_cupy``, or the result of ``backend._import_cupy()``,
``get_array_module(...)`` or ``xp_of_backend(...)``. ``xp.add.at(t, i, v)`` is the use ``cupy.add.at``;
``xp.sum(x, axis=1, keepdims=True)`` the use ``cupy.sum`` with keywords ``axis`` and ``keepdims``. Chains stop at
a call: ``xp.cuda.Device().synchronize()`` checks ``cupy.cuda.Device`` only. Methods of device arrays
(``x.sum(axis=...)``) are not seen here: the stand-in (``tests/cupy_standin``) offers only the methods real
``cupy.ndarray`` has, so a test run under it finds those.
"""

from __future__ import annotations

import ast
import inspect
import re
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT_NAMES = {"xp": "cupy", "cupy": "cupy", "_cupy": "cupy", "cupyx": "cupyx"}
ROOT_CALLS = {"_import_cupy", "get_array_module", "xp_of_backend"}


@dataclass(frozen=True)
class Use:
    where: str  # path:line
    module: str  # "cupy" or "cupyx"
    chain: tuple[str, ...]  # ("add", "at")
    keywords: tuple[str, ...]

    @property
    def name(self) -> str:
        return ".".join((self.module, *self.chain))


def _call_name(node: ast.AST) -> str:
    if isinstance(node, ast.Call):
        f = node.func
        return f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
    return ""


def cupy_uses(source: str, relpath: str) -> list[Use]:
    """Every use of a CuPy name in one module's source."""
    tree = ast.parse(source, filename=relpath)
    parent: dict[ast.AST, ast.AST] = {}
    for node in ast.walk(tree):
        for child in ast.iter_child_nodes(node):
            parent[child] = node
    uses = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute) or isinstance(parent.get(node), ast.Attribute):
            continue  # only the outermost attribute of a chain
        chain: list[str] = []
        root: ast.AST = node
        while isinstance(root, ast.Attribute):
            chain.append(root.attr)
            root = root.value
        if isinstance(root, ast.Name) and root.id in ROOT_NAMES:
            module = ROOT_NAMES[root.id]
        elif _call_name(root) in ROOT_CALLS:
            module = "cupy"
        else:
            continue
        up = parent.get(node)
        keywords: tuple[str, ...] = ()
        if isinstance(up, ast.Call) and up.func is node:
            keywords = tuple(k.arg for k in up.keywords if k.arg is not None)
        uses.append(Use(f"{relpath}:{node.lineno}", module, tuple(reversed(chain)), keywords))
    return uses


def package_uses(package: Path) -> list[Use]:
    root = package.parent
    uses: list[Use] = []
    for path in sorted(package.rglob("*.py")):
        uses += cupy_uses(path.read_text(encoding="utf-8"), path.relative_to(root).as_posix())
    return uses


def _doc_signature(obj: Any) -> inspect.Signature | None:
    """The keywords of the signature in the first line of a docstring (a CuPy ufunc's
    ``add(x1, x2, /, out=None, \\*, casting='same_kind', dtype=None)``), and for ``**kwargs`` those its
    "Args:" section documents."""
    doc = (getattr(obj, "__doc__", None) or "").strip().splitlines()
    m = re.match(r"^\w+\((.*)\)$", doc[0]) if doc else None
    if m is None:
        return None
    try:
        fn = ast.parse(f"def f({m.group(1).replace(chr(92), '')}): pass").body[0]
    except SyntaxError:
        return None
    assert isinstance(fn, ast.FunctionDef)
    a = fn.args
    names = [x.arg for x in a.posonlyargs + a.args] + [x.arg for x in a.kwonlyargs]
    if a.kwarg is not None:  # ``fuse(*args, **kwargs)``: the keywords its "Args:" section documents
        names += re.findall(r"^\s{4}(\w+) \(", "\n".join(doc), flags=re.MULTILINE)
    params = [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY) for n in dict.fromkeys(names)]
    return inspect.Signature(params)


def contract_violations(uses: list[Use], cupy: ModuleType, cupyx: ModuleType) -> list[str]:
    """Each use whose name is missing from the real module, or whose keyword its signature does not take."""
    found = []
    for use in uses:
        obj: Any = cupy if use.module == "cupy" else cupyx
        for i, part in enumerate(use.chain):
            if not hasattr(obj, part):
                found.append(f"{use.where}: {'.'.join((use.module, *use.chain[: i + 1]))} does not exist in CuPy")
                break
            obj = getattr(obj, part)
        else:
            if not use.keywords:
                continue
            try:
                sig: inspect.Signature | None = inspect.signature(obj)
            except (TypeError, ValueError):
                sig = _doc_signature(obj)
            if sig is None:
                found.append(f"{use.where}: {use.name} takes keywords {use.keywords} but has no signature to check")
                continue
            if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values()):
                continue
            for k in use.keywords:
                if k not in sig.parameters:
                    found.append(f"{use.where}: {use.name} has no keyword {k!r} in CuPy {sig}")
    return found
