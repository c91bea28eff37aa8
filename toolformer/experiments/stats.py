"""The statistics our reports share: the Wilson interval of a proportion, the exact McNemar test on paired answers
(the same items under two settings), and the paired sign-flip permutation test on per-item differences (the
item, not a seed's copy of it, as the unit: what pools several seeds' answers to the same items validly)."""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Mapping, Sequence

MONTE_CARLO_N = 100_000  # sign-flip permutations when exact enumeration is not feasible
EXACT_MAX_NONZERO = 20  # exact enumeration of all 2^m sign patterns up to this many nonzero differences
_LATTICE_MAX_DENOMINATOR = 64  # differences that are multiples of 1/q (q <= this) are counted exactly for any m


def wilson(k: int, n: int, z: float = 1.96) -> list[float]:
    """95 % Wilson score interval of k successes in n, in %."""
    if n == 0:
        return [0.0, 0.0]
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [round(100 * max(0.0, centre - half), 1), round(100 * min(1.0, centre + half), 1)]


def mcnemar_p(a: int, b: int) -> float:
    """Exact two-sided McNemar p-value: a and b are the discordant pairs (right in one setting only); the binomial
    test of min(a, b) in a + b trials at 1/2, doubled, at most 1. Not rounded (a rounded 0.00996 would read 0.01)."""
    n = a + b
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(a, b) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def seed_mean_differences(first: Sequence[Mapping[str, bool]],
                          second: Sequence[Mapping[str, bool]]) -> dict[str, float]:
    """Per item: the mean over ``first``'s seeds of right (1) / wrong (0), minus the same mean over ``second``'s
    (one mapping for a model with a single answer, e.g. the base model). Items every mapping holds only."""
    if not first or not second:
        return {}
    common = set(first[0])
    for m in [*first[1:], *second]:
        common &= set(m)
    return {u: sum(bool(m[u]) for m in first) / len(first) - sum(bool(m[u]) for m in second) / len(second)
            for u in sorted(common)}


def _lattice(values: list[float]) -> int | None:
    """The smallest q <= 64 such that every value is a whole multiple of 1/q (to 1e-9), else None."""
    q = 1
    for v in values:
        f = Fraction(v).limit_denominator(_LATTICE_MAX_DENOMINATOR)
        if abs(float(f) - v) > 1e-9:
            return None
        q = q * f.denominator // math.gcd(q, f.denominator)
        if q > _LATTICE_MAX_DENOMINATOR:
            return None
    return q


def _exact_tail(values: list[float], observed: float) -> tuple[float, str]:
    """P(|sum of +-values| >= |observed|) over all 2^m equally likely sign patterns, counted by their sums (each
    pattern once: the same as enumerating them). Integers on a lattice when the values lie on one (exact
    arithmetic), else sums rounded to 1e-9 (m <= 20)."""
    m = len(values)
    q = _lattice(values)
    if q is not None:
        ints = [round(v * q) for v in values]
        target = abs(round(observed * q))
        counts: dict[int, int] = {0: 1}
        for x in ints:
            nxt: dict[int, int] = {}
            for s, c in counts.items():
                nxt[s + x] = nxt.get(s + x, 0) + c
                nxt[s - x] = nxt.get(s - x, 0) + c
            counts = nxt
        hit = sum(c for s, c in counts.items() if abs(s) >= target)
        return hit / 2 ** m, f"exact (all 2^{m} sign patterns, differences on the 1/{q} lattice)"
    fcounts: dict[float, int] = {0.0: 1}
    for x in values:
        nxt_f: dict[float, int] = {}
        for s, c in fcounts.items():
            for t in (round(s + x, 9), round(s - x, 9)):
                nxt_f[t] = nxt_f.get(t, 0) + c
        fcounts = nxt_f
    target_f = abs(observed) - 1e-9
    hit = sum(c for s, c in fcounts.items() if abs(s) >= target_f)
    return hit / 2 ** m, f"exact (all 2^{m} sign patterns)"


def paired_permutation_p(diffs: Sequence[float], n_permutations: int = MONTE_CARLO_N, seed: int = 0,
                         method: str = "auto") -> dict:
    """Two-sided paired sign-flip permutation test of mean(diffs) = 0, the unit being one difference (an item).

    Under the null each item's difference is as likely negative as positive; the statistic is the sum of the
    differences (items with difference 0 add nothing under any sign). Exact when it is cheap: up to 20 nonzero
    differences (all 2^m patterns), or any number when every difference is a multiple of 1/q, q <= 64 (the mean of
    a few seeds' 0/1 answers always is: the distribution of sums then has few values and is counted exactly).
    Otherwise Monte Carlo: ``n_permutations`` random sign patterns from ``numpy.random.default_rng(seed)``,
    p = (1 + hits) / (1 + n) (never 0); ``method="monte_carlo"`` forces it (``"exact"`` forces enumeration).
    Returns n, nonzero, mean difference (in the diffs' unit), p, method and test (its label)."""
    if method not in ("auto", "exact", "monte_carlo"):
        raise ValueError(f"method must be auto, exact or monte_carlo, not {method!r}")
    d = [float(x) for x in diffs]
    nonzero = [x for x in d if abs(x) > 1e-12]
    observed = sum(nonzero)
    out = {"n": len(d), "nonzero": len(nonzero), "mean": (observed / len(d)) if d else None}
    if not nonzero:
        return {**out, "p": 1.0, "method": "exact (no nonzero difference)",
                "test": "paired permutation over items (exact)"}
    feasible = len(nonzero) <= EXACT_MAX_NONZERO or _lattice([abs(x) for x in nonzero]) is not None
    if method == "exact" or (method == "auto" and feasible):
        p, method = _exact_tail([abs(x) for x in nonzero], observed)
        return {**out, "p": min(1.0, p), "method": method, "test": "paired permutation over items (exact)"}
    import numpy as np

    rng = np.random.default_rng(seed)
    mags = np.abs(np.asarray(nonzero, dtype=np.float64))
    target = abs(observed) - 1e-9
    hits, left = 0, n_permutations
    while left:
        chunk = min(left, 10_000)
        signs = rng.integers(0, 2, size=(chunk, len(mags)), dtype=np.int8) * 2 - 1
        hits += int((np.abs(signs @ mags) >= target).sum())
        left -= chunk
    p = (1 + hits) / (1 + n_permutations)
    return {**out, "p": p, "method": f"Monte Carlo, {n_permutations} random sign patterns, seed {seed}",
            "test": f"paired permutation over items (Monte Carlo n={n_permutations})"}
