"""``python -m cupy_standin MODULE [ARGS...]``: run ``python -m MODULE ARGS...`` with the stand-in installed as
``cupy`` (a test tool: ``tests`` must be on ``PYTHONPATH``)."""

import runpy
import sys

import cupy_standin

if len(sys.argv) < 2:
    print("usage: python -m cupy_standin MODULE [ARGS...]", file=sys.stderr)
    sys.exit(2)
cupy_standin.install()
module = sys.argv[1]
sys.argv = [module, *sys.argv[2:]]
runpy.run_module(module, run_name="__main__", alter_sys=True)
