"""Statistics both the rollout controller and the reports use, defined once.

SciPy is imported when a statistic is first computed, never at import: a serving process
without a rollout never loads it (docs/architecture.md "Rules").
"""

from __future__ import annotations


def wilson(successes: float, n: int, confidence: float = 0.95) -> tuple[float, float] | None:
    """Wilson score interval of a proportion (SciPy); None without observations."""
    if n == 0:
        return None
    from scipy import stats
    ci = stats.binomtest(int(round(successes)), n).proportion_ci(
        confidence_level=confidence, method="wilson")
    return (float(ci.low), float(ci.high))
