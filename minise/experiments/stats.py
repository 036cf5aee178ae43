"""The statistics of a study over a few seeds: mean, standard deviation, a 95 % t-interval and a
paired t-test, with Student's t distribution written out (no SciPy).

With n seeds, the sample standard deviation ``sd = sqrt(sum (x - mean)^2 / (n - 1))`` and the 95 %
interval of the mean is ``mean +- t(0.975, n - 1) * sd / sqrt(n)``. Two variants trained with the same
seed see the same training batches in the same order, so their errors are compared seed by seed:
``d_s = err_variant(s) - err_baseline(s)``, ``t = mean(d) / (sd(d) / sqrt(n))`` with n - 1 degrees of
freedom (the paired t-test), two-sided p-value ``P(|T| >= |t|)``.

For an integer number of degrees of freedom nu the distribution function has a closed form
(Abramowitz & Stegun 26.7.3-4): with ``theta = atan(t / sqrt(nu))`` and ``c = cos(theta)^2``,
``A(t | nu) = P(|T| < t)`` is

* nu odd: ``(2 / pi) * (theta + sin(theta) cos(theta) * (1 + 2/3 c + 2*4/(3*5) c^2 + ...))``, the sum
  running to the term in ``c^((nu - 3) / 2)`` (no sum for nu = 1: ``A = 2 theta / pi``);
* nu even: ``sin(theta) * (1 + 1/2 c + 1*3/(2*4) c^2 + ...)``, to the term in ``c^((nu - 2) / 2)``.

The quantile ``t(q, nu)`` is found by bisection on ``A``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


def t_two_sided_mass(t: float, df: int) -> float:
    """``A(t | df) = P(|T| < |t|)`` for Student's t with an integer ``df >= 1`` (see the module docstring)."""
    if isinstance(df, bool) or not isinstance(df, int) or df < 1:
        raise ValueError(f"t_two_sided_mass: df must be an int >= 1, got {df!r}")
    if math.isinf(t):
        return 1.0
    theta = math.atan(abs(t) / math.sqrt(df))
    s, c = math.sin(theta), math.cos(theta) ** 2
    if df % 2 == 1:
        if df == 1:
            return 2 * theta / math.pi
        term, total = 1.0, 1.0
        for k in range(1, (df - 3) // 2 + 1):  # 2/3 c, 2*4/(3*5) c^2, ...
            term *= c * (2 * k) / (2 * k + 1)
            total += term
        return (2 / math.pi) * (theta + s * math.cos(theta) * total)
    term, total = 1.0, 1.0
    for k in range(1, (df - 2) // 2 + 1):  # 1/2 c, 1*3/(2*4) c^2, ...
        term *= c * (2 * k - 1) / (2 * k)
        total += term
    return s * total


def t_pvalue(t: float, df: int) -> float:
    """Two-sided p-value ``P(|T| >= |t|)`` of Student's t with ``df`` degrees of freedom."""
    return max(0.0, 1.0 - t_two_sided_mass(t, df))


def t_quantile(q: float, df: int) -> float:
    """``t(q, df)``, the q-quantile (0.5 < q < 1) of Student's t: e.g. 12.706 for q = 0.975, df = 1."""
    if not 0.5 < q < 1:
        raise ValueError(f"t_quantile: q must be in (0.5, 1), got {q}")
    mass = 2 * q - 1  # P(|T| < t)
    lo, hi = 0.0, 1.0
    while t_two_sided_mass(hi, df) < mass:
        hi *= 2
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if t_two_sided_mass(mid, df) < mass else (lo, mid)
    return 0.5 * (lo + hi)


@dataclass(frozen=True)
class Summary:
    """Mean, sample standard deviation and 95 % t-interval of n values (sd and interval need n >= 2)."""

    n: int
    mean: float
    sd: float | None
    low: float | None
    high: float | None


def summarize(values: Sequence[float]) -> Summary:
    """Mean, sd (n - 1 in the denominator) and the 95 % t-interval of the mean."""
    n = len(values)
    if n == 0:
        raise ValueError("summarize: no values - a variant without a finished run has no statistics")
    mean = sum(values) / n
    if n < 2:
        return Summary(n, mean, None, None, None)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = t_quantile(0.975, n - 1) * sd / math.sqrt(n)
    return Summary(n, mean, sd, mean - half, mean + half)


@dataclass(frozen=True)
class PairedTest:
    """The paired t-test of ``variant - baseline`` over the seeds both finished."""

    n: int
    mean_diff: float
    low: float | None
    high: float | None
    t: float | None
    p: float | None

    @property
    def within_noise(self) -> bool:
        """True unless the test rejects "no difference" at the 5 % level (too few seeds: True)."""
        return self.p is None or self.p >= 0.05


def paired_test(variant: dict[int, float], baseline: dict[int, float]) -> PairedTest:
    """Paired t-test over the seeds present in both ``{seed: value}`` maps."""
    seeds = sorted(set(variant) & set(baseline))
    d = [variant[s] - baseline[s] for s in seeds]
    n = len(d)
    if n == 0:
        return PairedTest(0, math.nan, None, None, None, None)
    mean = sum(d) / n
    if n < 2:
        return PairedTest(n, mean, None, None, None, None)
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1))
    half = t_quantile(0.975, n - 1) * sd / math.sqrt(n)
    if sd == 0:  # identical differences on every seed: no spread to test against
        t = 0.0 if mean == 0 else math.copysign(math.inf, mean)
    else:
        t = mean / (sd / math.sqrt(n))
    return PairedTest(n, mean, mean - half, mean + half, t, t_pvalue(t, n - 1))
