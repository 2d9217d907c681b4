"""Chance level, Poisson-binomial p-values, intervals and McNemar against references."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy.stats import binomtest

from eval import stats


def _brute_force_pmf(probs):
    pmf = np.zeros(len(probs) + 1)
    for outcome in itertools.product([0, 1], repeat=len(probs)):
        pmf[sum(outcome)] += math.prod(p if o else 1 - p for p, o in zip(probs, outcome))
    return pmf


@pytest.mark.parametrize("seed", range(5))
def test_poisson_binomial_matches_enumeration(seed):
    rng = np.random.default_rng(seed)
    probs = [1 / k for k in rng.choice([2, 3, 4, 5, 6], size=int(rng.integers(1, 11)))]
    ref = _brute_force_pmf(probs)
    np.testing.assert_allclose(stats.poisson_binomial_pmf(probs), ref, atol=1e-12)
    for observed in range(len(probs) + 2):
        assert stats.poisson_binomial_pvalue(probs, observed) == pytest.approx(
            ref[observed:].sum(), abs=1e-12
        )


def test_poisson_binomial_equal_probs_is_binomial():
    p = stats.poisson_binomial_pvalue([0.25] * 40, 18)
    assert p == pytest.approx(binomtest(18, 40, 0.25, alternative="greater").pvalue, rel=1e-9)


def test_random_expectation_mmar_mix():
    ks = [4] * 815 + [2] * 171 + [3] * 10 + [5] * 3 + [6]
    assert 100 * stats.random_expectation(ks) == pytest.approx(29.33, abs=0.01)


def test_bonferroni():
    assert stats.bonferroni(0.01, 3) == pytest.approx(0.03)
    assert stats.bonferroni(0.6, 3) == 1.0


def test_wilson_ci():
    lo, hi = stats.wilson_ci(50, 100)
    assert lo == pytest.approx(0.4038, abs=1e-4) and hi == pytest.approx(0.5962, abs=1e-4)
    assert stats.wilson_ci(0, 10)[0] == 0.0
    assert all(math.isnan(v) for v in stats.wilson_ci(0, 0))


def test_bootstrap_ci_seeded():
    flags = [True] * 30 + [False] * 70
    a = stats.bootstrap_ci(flags, seed=1)
    assert a == stats.bootstrap_ci(flags, seed=1)
    assert a[0] < 0.3 < a[1]


@pytest.mark.parametrize("seed", range(6))
def test_mcnemar_matches_scipy_binomtest(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 400))
    a = rng.random(n) < rng.uniform(0.2, 0.8)
    b = rng.random(n) < rng.uniform(0.2, 0.8)
    res = stats.mcnemar_exact(a.tolist(), b.tolist())
    b_only, a_only = int((b & ~a).sum()), int((a & ~b).sum())
    assert (res["a_only"], res["b_only"]) == (a_only, b_only)
    expected = binomtest(b_only, a_only + b_only, 0.5).pvalue if a_only + b_only else 1.0
    assert res["p_value"] == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_mcnemar_large_discordant_count_does_not_overflow():
    a = [True] * 700 + [False] * 500
    b = [False] * 700 + [True] * 500
    expected = binomtest(500, 1200, 0.5).pvalue
    assert stats.mcnemar_exact(a, b)["p_value"] == pytest.approx(expected, rel=1e-6)


def test_mcnemar_length_mismatch():
    with pytest.raises(ValueError, match="length"):
        stats.mcnemar_exact([True], [True, False])
