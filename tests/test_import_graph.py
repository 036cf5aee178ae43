"""The import graph of minise has no loop, and every module can be imported first.

Two checks. (1) The module-level imports of every file under minise/, read with ``ast`` (imports
inside functions run when called, not when the module loads, and ``if TYPE_CHECKING:`` blocks never
run), form a graph without a cycle. Importing ``a.b.c`` first runs the ``__init__`` of ``a.b``, so that
edge counts too; an import of a module's own package does not (Python has already started it).
(2) In a fresh interpreter per module, with minise's own ``__init__`` kept from running (it would
fix the order), the module imports first and the rest of minise after it.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "minise"


def module_sources(package: Path = PACKAGE) -> dict[str, str]:
    """Dotted module name -> source, for every .py file of the package (a package is its __init__)."""
    out = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path.read_text(encoding="utf-8")
    return out


def load_time_imports(name: str, source: str, known: set[str]) -> set[str]:
    """The modules of ``known`` that module ``name`` imports when it loads (top-level statements only)."""
    targets: set[str] = set()
    for node in ast.parse(source).body:
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue  # an `if TYPE_CHECKING:` block, a def, ...: nothing imported at load time
        for target in names:
            parts = target.split(".")
            for i in range(2, len(parts) + 1):  # importing a.b.c runs a.b's __init__ first
                prefix = ".".join(parts[:i])
                if prefix in known:
                    targets.add(prefix)
    own_packages = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
    return targets - own_packages - {name}


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One cycle of the directed graph, as [a, b, ..., a], or [] if there is none (iterative DFS)."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    for start in sorted(graph):
        if state.get(start):
            continue
        path, stack = [start], [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph.get(nxt, ()))))
    return []


def import_graph(sources: dict[str, str]) -> dict[str, set[str]]:
    known = set(sources)
    root = min(known, key=len)  # the top package: its __init__ is the public surface that loads everything
    return {name: load_time_imports(name, src, known) - {root} for name, src in sources.items() if name != root}


def test_minise_has_no_import_loop() -> None:
    graph = import_graph(module_sources())
    assert "minise.tensor" in graph and len(graph) > 40
    assert find_cycle(graph) == [], "import loop (module-level imports)"
    # the documented direction: autograd and tensor load nothing of functional/, nn/ or models/
    assert graph["minise.autograd"] == {"minise.backend"}
    assert graph["minise.tensor"] <= {"minise.backend", "minise.autograd"}
    assert "minise.tensor" in graph["minise.functional.conv"]


def test_the_loop_finder_finds_the_loop_tensor_py_used_to_have() -> None:
    """The check bites: tensor.py importing its operators' package at load time (as it used to) is a loop."""
    sources = {
        "m": "",
        "m.autograd": "from m import backend\n",
        "m.backend": "",
        "m.tensor": "from m import autograd\nfrom m.functional import arithmetic as A\n",
        "m.functional": "from m.functional.conv import conv2d\n",
        "m.functional.arithmetic": "from m.autograd import Function\n",
        "m.functional.conv": "from m.tensor import Tensor\n",
    }
    cycle = find_cycle(import_graph(sources))
    assert cycle[0] == cycle[-1] and {"m.tensor", "m.functional", "m.functional.conv"} <= set(cycle)
    # ... and the same modules with the operator imports at call time are fine
    sources["m.tensor"] = "from m import autograd\ndef add():\n    from m.functional import arithmetic\n"
    assert find_cycle(import_graph(sources)) == []
    # an `if TYPE_CHECKING:` import and an import of one's own package are not load-time edges
    sources["m.autograd"] = "from m import backend\nif TYPE_CHECKING:\n    from m.tensor import Tensor\n"
    sources["m.functional.arithmetic"] = "from m.functional import conv\nfrom m.autograd import Function\n"
    assert find_cycle(import_graph(sources)) == []


# the modules of the old loop and their neighbours (each test interpreter costs about half a CPU second)
ISOLATED = [
    "minise.autograd",
    "minise.tensor",
    "minise.creation",
    "minise.serialization",
    "minise.functional",
    "minise.functional.arithmetic",
    "minise.functional.reduction",
    "minise.functional.shape",
    "minise.functional.elementwise",
    "minise.functional.loss",
    "minise.nn",
    "minise.models",
]

IMPORT_FIRST = """
import importlib, sys, types
root = types.ModuleType("minise")           # minise/__init__.py would import everything in its own order
root.__path__ = [{package!r}]
sys.modules["minise"] = root
importlib.import_module({target!r})          # the module under test, first
for name in {rest!r}:
    importlib.import_module(name)
x = sys.modules["minise.tensor"].Tensor([1.0, 2.0], requires_grad=True)
(x * x).sum().backward()                     # and the loaded modules work together
assert list(x.grad) == [2.0, 4.0]
"""


@pytest.mark.parametrize("batch", [ISOLATED[i::2] for i in range(2)], ids=["a", "b"])
def test_every_core_module_can_be_imported_first(batch: list[str]) -> None:
    """One fresh interpreter per module, six at a time."""
    procs = [
        (
            target,
            subprocess.Popen(
                [sys.executable, "-c", IMPORT_FIRST.format(package=str(PACKAGE), target=target, rest=ISOLATED)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                cwd=ROOT,
            ),
        )
        for target in batch
    ]
    failures = []
    for target, proc in procs:
        _, err = proc.communicate(timeout=120)
        if proc.returncode != 0:
            failures.append(f"{target}: {err.strip().splitlines()[-1] if err.strip() else proc.returncode}")
    assert not failures, failures
