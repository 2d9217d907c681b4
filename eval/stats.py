"""Small exact statistics for accuracy claims: chance level, significance, intervals.

- Random guessing on item i with k_i options succeeds with p_i = 1/k_i, so the number correct
  under pure guessing is Poisson-binomial; `poisson_binomial_pvalue` is the MMAR paper's test.
- `mcnemar_exact` compares two systems on the same items through their discordant pairs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def random_expectation(n_choices: Sequence[int]) -> float:
    """Expected accuracy (fraction) of uniform guessing: mean(1/k_i)."""
    if not n_choices:
        return float("nan")
    return float(np.mean([1.0 / k for k in n_choices]))


def poisson_binomial_pmf(probs: Sequence[float]) -> np.ndarray:
    """P(X = j), j = 0..n, for X = sum of independent Bernoulli(p_i), by DP convolution."""
    pmf = np.zeros(len(probs) + 1)
    pmf[0] = 1.0
    for i, p in enumerate(probs):
        # Each item either fails (mass stays) or succeeds (mass shifts up by one).
        pmf[1 : i + 2] = pmf[1 : i + 2] * (1.0 - p) + pmf[0 : i + 1] * p
        pmf[0] *= 1.0 - p
    return pmf


def poisson_binomial_pvalue(probs: Sequence[float], observed: int) -> float:
    """One-sided P(X >= observed) under the Poisson-binomial distribution of `probs`."""
    if observed <= 0:
        return 1.0
    if observed > len(probs):
        return 0.0
    pmf = poisson_binomial_pmf(probs)
    return float(min(1.0, pmf[observed:].sum()))


def bonferroni(p: float, m: int) -> float:
    """Bonferroni-adjusted p-value for m comparisons (capped at 1)."""
    return float(min(1.0, p * max(1, m)))


def wilson_ci(correct: int, total: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval for a proportion, as fractions; (nan, nan) for total == 0."""
    if total <= 0:
        return float("nan"), float("nan")
    phat = correct / total
    denom = 1 + z * z / total
    center = (phat + z * z / (2 * total)) / denom
    half = z * math.sqrt(phat * (1 - phat) / total + z * z / (4 * total * total)) / denom
    return max(0.0, center - half), min(1.0, center + half)


def bootstrap_ci(
    flags: Sequence[bool], n_boot: int = 2000, seed: int = 0, alpha: float = 0.05
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of 0/1 flags (seeded, so reproducible)."""
    x = np.asarray(flags, dtype=float)
    if x.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def binom_two_sided(k: int, n: int) -> float:
    """Exact two-sided binomial test of k successes in n trials at p = 0.5."""
    if n == 0:
        return 1.0
    # Log space: 2**n overflows a float beyond n = 1023 discordant pairs.
    logpmf = np.array(
        [math.lgamma(n + 1) - math.lgamma(j + 1) - math.lgamma(n - j + 1) for j in range(n + 1)]
    )
    pmf = np.exp(logpmf - n * math.log(2.0))
    # Sum the outcomes no more likely than the observed one (scipy's rule, with its tolerance).
    return float(min(1.0, pmf[pmf <= pmf[k] * (1 + 1e-7)].sum()))


def mcnemar_exact(a_correct: Sequence[bool], b_correct: Sequence[bool]) -> dict:
    """Exact McNemar test on paired 0/1 outcomes: binomial test on the discordant pairs.

    Returns {"b_only": items only B got right, "a_only": only A, "p_value": two-sided}.
    """
    if len(a_correct) != len(b_correct):
        raise ValueError(f"paired outcomes differ in length: {len(a_correct)} vs {len(b_correct)}")
    a_only = sum(1 for a, b in zip(a_correct, b_correct) if a and not b)
    b_only = sum(1 for a, b in zip(a_correct, b_correct) if b and not a)
    return {"a_only": a_only, "b_only": b_only, "p_value": binom_two_sided(b_only, a_only + b_only)}
