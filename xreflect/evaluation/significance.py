"""Paired tests over the random splits: is a strategy's per-split metric different from another's?

Both strategies are scored on the same splits, so the per-split values are paired. The paired
t-test is the main test; the Wilcoxon signed-rank test (exact, two-sided) is a check that does not
assume normal differences. With 5 splits it cannot reach p < 0.0625 whatever the data, and the
t-test has 4 degrees of freedom: only large, consistent differences show up as significant.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class PairedTest:
    n: int
    mean_difference: float
    t_p: float          # paired two-sided t-test
    wilcoxon_p: float   # exact two-sided Wilcoxon signed-rank test


def paired_test(a: list[float], b: list[float]) -> PairedTest:
    a_arr, b_arr = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a_arr.shape != b_arr.shape or a_arr.ndim != 1:
        raise ValueError(f"paired test needs the same number of splits on both sides, got "
                         f"{a_arr.shape} and {b_arr.shape}")
    diff = a_arr - b_arr
    n = len(diff)
    if n < 2 or np.allclose(diff, 0.0, rtol=0.0, atol=1e-12):
        # No variation to test (identical per-split values): no evidence of a difference.
        return PairedTest(n, float(diff.mean()) if n else 0.0, 1.0, 1.0)
    if np.allclose(diff, diff[0], rtol=0.0, atol=1e-12):
        t_p = 0.0  # a constant non-zero difference: the t statistic is infinite
    else:
        t_p = float(stats.ttest_rel(a_arr, b_arr).pvalue)
    nonzero = diff[np.abs(diff) > 1e-12]
    wilcoxon_p = float(stats.wilcoxon(nonzero, method="exact").pvalue)
    return PairedTest(n, float(diff.mean()), t_p, wilcoxon_p)


def smallest_wilcoxon_p(n: int) -> float:
    """The smallest two-sided p the exact signed-rank test can give with n pairs: 2 / 2**n."""
    return 2.0 / 2 ** n


def mark(p: float, symbol: str) -> str:
    """`symbol` once for p < 0.05, twice for p < 0.01 (the usual reading), else nothing."""
    if p < 0.01:
        return symbol * 2
    if p < 0.05:
        return symbol
    return ""
