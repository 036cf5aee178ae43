"""The paper in one command: the SENet ablations (Tables 10-16) as studies over seeds.

    python -m minise.experiments integration --dataset cifar10 --data-dir DIR --epochs 10 --seeds 3 --out study/

``studies`` holds what each study trains and the paper's numbers, ``runner`` runs the variant x seed
training runs (skipping finished ones, continuing interrupted ones, ``--jobs K`` side by side),
``stats`` the t-interval and the paired t-test, ``report`` the report.md / results.csv / errors.png.

On MPI ranks (``ranks``), e.g. on a cluster's nodes::

    mpiexec -n 4 python -m minise.experiments integration --dataset cifar10 --data-dir DIR --seeds 3 --out study/

the unfinished runs are dealt to the 4 processes, the i-th to rank i mod 4; each rank trains its share
one run after another (one thread each unless ``MINISE_NUM_THREADS`` is set; ``--jobs K``: K side by
side on every rank); rank 0 writes the report once every rank has finished, and every rank exits 1 if
any run failed. Without mpiexec (or mpi4py), or with one process, nothing changes.
"""

from minise.experiments.stats import PairedTest, Summary, paired_test, summarize, t_pvalue, t_quantile
from minise.experiments.studies import STUDIES, Study, StudyError, Variant, get_study, read_study_file

__all__ = [
    "STUDIES",
    "PairedTest",
    "Study",
    "StudyError",
    "Summary",
    "Variant",
    "get_study",
    "paired_test",
    "read_study_file",
    "summarize",
    "t_pvalue",
    "t_quantile",
]
