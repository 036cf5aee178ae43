"""``python -m minise.experiments STUDY --dataset ... [training options] --seeds 3 --out DIR [--jobs K]``

Trains every variant of STUDY (an ablation of the SENet paper, or a file listing variants) with
seeds 0..N-1, each an ordinary ``python -m minise.train`` run under ``DIR/runs/``, then writes
``DIR/report.md``, ``DIR/results.csv`` and ``DIR/errors.png``. Every option this command does not
know goes to the training command unchanged (``--dataset``, ``--epochs``, ``--lr``, ...). Finished
runs are skipped and interrupted ones continued, so an interrupted study continues where it stopped
when the same command is run again. Under ``mpiexec -n N`` the runs are dealt to the N processes (see
:mod:`minise.experiments.ranks`). See :mod:`minise.experiments`.
"""

from __future__ import annotations

import sys

from minise.experiments.cli import main

if __name__ == "__main__":
    sys.exit(main())
