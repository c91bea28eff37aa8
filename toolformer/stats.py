"""The two statistics our reports share: the Wilson interval of a proportion and the exact McNemar test on
paired answers (the same items under two settings)."""

from __future__ import annotations

import math


def wilson(k: int, n: int, z: float = 1.96) -> list[float]:
    """95 % Wilson score interval of k successes in n, in %."""
    if n == 0:
        return [0.0, 0.0]
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [round(100 * max(0.0, centre - half), 1), round(100 * min(1.0, centre + half), 1)]


def mcnemar_p(a: int, b: int) -> float:
    """Exact two-sided McNemar p-value: a and b are the discordant pairs (right in one setting only)."""
    n = a + b
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(a, b) + 1)) / 2 ** n
    return round(min(1.0, 2 * tail), 4)
