"""Exercise 13: the measurements of lesson 13 on recorded gates, ``class_mean_gates(gates, labels,
num_classes) -> (K, C)`` and ``class_specificity(gates, labels) -> (between, within, ratio)``.

Checked against the lesson's definitions (written out here in NumPy) on gates, labels and class counts
drawn by hypothesis (one channel, one image per class and gates that do not vary among them); the
hints recognise class means divided by N instead of each class's count, the within-class spread
measured from the overall mean, and the between-class distance averaged over ordered pairs with the
zero diagonal.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

from minise.exercises.core import (
    Case,
    Exercise,
    Mistake,
    Report,
    draw_cases,
    grade_function,
    learner_function,
    rng_for,
    shape_text,
)

SOLUTION = '''"""Exercise 13: what the gates say about the classes (lesson 13, sections 4 and 5).

Start over:        python -m minise.lessons exercise 13 --force   (this file is kept as .bak)
Check it:          python -m minise.lessons check 13
"""

import numpy as np


def class_mean_gates(gates, labels, num_classes):
    """The mean gate vector of each class: (K, C) from gates (N, C) and labels (N,) in 0 .. K-1.

        means[k] = (1 / N_k) sum_{n: labels[n] = k} gates[n]        N_k = the number of images of class k

    Every class has at least one image. Write it without a Python loop over the images (a one-hot
    matrix (N, K) and one matrix product, or np.add.at).
    """
    # >>> your code
    onehot = np.eye(num_classes)[labels]  # (N, K)
    return (onehot.T @ gates) / onehot.sum(axis=0)[:, None]
    # <<<


def class_specificity(gates, labels):
    """(between, within, between / within) for gates (N, C) and labels (N,) (lesson 13, section 5):

        between = the mean of |mean_k - mean_l| over the pairs of classes k < l
        within  = the mean over the images of |gates[n] - mean_{labels[n]}|
    (|.| the Euclidean norm over the C channels); the ratio is 0 when within is 0 (gates that do not vary).
    labels may skip numbers: the classes are np.unique(labels).
    """
    gates = np.asarray(gates, dtype=np.float64)
    classes, index = np.unique(labels, return_inverse=True)  # index[n]: the position of labels[n] in classes
    means = class_mean_gates(gates, index, len(classes))  # (K, C)
    # >>> your code
    pairwise = np.linalg.norm(means[:, None, :] - means[None, :, :], axis=-1)  # (K, K)
    between = pairwise[np.triu_indices(len(classes), k=1)].mean()
    within = np.linalg.norm(gates - means[index], axis=1).mean()
    return between, within, (between / within if within > 0 else 0.0)
    # <<<
'''

COUNT_HINT = "each class mean divides by that class's number of images N_k, not by the number of all images N"
WITHIN_HINT = "within measures each image's distance to the mean of ITS OWN class, not to the mean over all images"
PAIRS_HINT = (
    "between averages over the K (K - 1) / 2 pairs k < l only: the diagonal (a class against itself, "
    "distance 0) does not count"
)


def reference(gates: Any, labels: Any, mistake: str = "") -> dict[str, Any]:
    """The lesson's definitions; ``mistake`` ("count", "within", "pairs") gives a classic wrong answer."""
    classes, index = np.unique(labels, return_inverse=True)
    onehot = np.eye(len(classes))[index]
    counts = np.full(len(classes), float(len(labels))) if mistake == "count" else onehot.sum(axis=0)
    means = onehot.T @ gates / counts[:, None]
    pairwise = np.linalg.norm(means[:, None, :] - means[None, :, :], axis=-1)
    between = pairwise.mean() if mistake == "pairs" else pairwise[np.triu_indices(len(classes), k=1)].mean()
    centre = gates.mean(axis=0) if mistake == "within" else means[index]
    within = np.linalg.norm(gates - centre, axis=1).mean()
    ratio = between / within if within > 0 else 0.0
    return {"means": means, "specificity": np.array([between, within, ratio])}


def _shapes(draw: Any) -> dict[str, Any]:
    k = draw(2, 5)
    return {"k": k, "n": k + draw(0, 12), "c": draw(1, 6), "constant": False, "skip": draw(0, 1)}


EDGE = [
    {"k": 3, "n": 12, "c": 1, "constant": False, "skip": 0},  # one channel
    {"k": 4, "n": 4, "c": 3, "constant": False, "skip": 0},  # one image per class
    {"k": 3, "n": 9, "c": 2, "constant": True, "skip": 0},  # gates that do not vary: ratio 0
    {"k": 3, "n": 10, "c": 4, "constant": False, "skip": 1},  # labels 0, 2, 4: numbers skipped
]


def make_cases() -> tuple[list[Case], list[Case]]:
    means_cases, spec_cases = [], []
    for i, sh in enumerate(draw_cases(_shapes, EDGE)):
        rng = rng_for(i)
        k, n, c = sh["k"], sh["n"], sh["c"]
        labels = np.concatenate([np.arange(k), rng.integers(0, k, n - k)])  # every class at least once
        rng.shuffle(labels)
        gates = np.full((n, c), 0.5) if sh["constant"] else 1 / (1 + np.exp(-rng.standard_normal((n, c))))
        where = shape_text(gates=gates) + f", {k} classes"
        right, count = reference(gates, labels), reference(gates, labels, "count")
        means_cases.append(Case(where, (gates, labels, k), {"means": right["means"]}, variants={COUNT_HINT: count}))
        shown = labels * (1 + sh["skip"])  # labels 0, 2, 4 ... when numbers are skipped
        spec_cases.append(
            Case(
                where + (" (labels skip numbers)" if sh["skip"] else ""),
                (gates, shown),
                {"specificity": right["specificity"]},
                variants={
                    COUNT_HINT: count,
                    WITHIN_HINT: reference(gates, labels, "within"),
                    PAIRS_HINT: reference(gates, labels, "pairs"),
                },
            )
        )
    return means_cases, spec_cases


def check(module: ModuleType, report: Report) -> None:
    means_cases, spec_cases = make_cases()
    grade_function(
        report,
        "class_mean_gates",
        learner_function(module, "class_mean_gates"),
        ("means",),
        means_cases,
        "the lesson's definition",
        against="the lesson's definition",
    )
    specificity = learner_function(module, "class_specificity")
    grade_function(
        report,
        "class_specificity",
        lambda gates, labels: np.array([float(v) for v in specificity(gates, labels)]),
        ("specificity",),
        spec_cases,
        "the lesson's definition (between, within, ratio)",
        against="the lesson's definition (between, within, ratio)",
    )


EXERCISE = Exercise(
    number=13,
    title="the gates per class: class_mean_gates, class_specificity",
    filename="ex13_class_gates.py",
    solution=SOLUTION,
    check=check,
    mistakes=(
        Mistake(
            "divided by N",
            "return (onehot.T @ gates) / onehot.sum(axis=0)[:, None]",
            "return (onehot.T @ gates) / len(labels)",
            "not by the number of all images",
        ),
        Mistake(
            "within from the overall mean",
            "within = np.linalg.norm(gates - means[index], axis=1).mean()",
            "within = np.linalg.norm(gates - gates.mean(axis=0), axis=1).mean()",
            "ITS OWN class",
        ),
        Mistake(
            "between with the diagonal",
            "between = pairwise[np.triu_indices(len(classes), k=1)].mean()",
            "between = pairwise.mean()",
            "pairs k < l only",
        ),
    ),
)
