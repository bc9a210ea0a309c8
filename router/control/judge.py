"""The rollout checks, pure (SciPy, loaded on first use): a check *fails* when the data show
harm at the given alpha: one-sided two-proportion test of the canary's error rate > baseline
+ max_increase; bootstrap CI of the p99 latency ratio (p90 below 2,000 samples per arm) above
max_ratio, from latency samples or, where only a Prometheus histogram exists (a fleet), from
its cumulative buckets; Wilson upper bound of shadow agreement below min; Wilson upper bound
of the canary's outcome rate below the baseline's rate - max_drop. A result with
``"insufficient": True`` has too little data to judge: it does not fail, and it is no pass."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..config import Rollout
from ..stats import wilson
from .evidence import Arm

MIN_LATENCIES = 20          # samples (or histogram observations) per arm to judge latency
P99_MIN_SAMPLES = 2000
RESAMPLES = 999


def _insufficient(check: str, reason: str) -> dict[str, Any]:
    return {"check": check, "failed": False, "reason": reason, "insufficient": True}


def _wilson(k: float, n: int, alpha: float) -> tuple[float, float]:
    """Two-sided (1 - 2 alpha) Wilson interval: each bound is a one-sided alpha test."""
    bounds = wilson(k, n, 1 - 2 * alpha)
    assert bounds is not None  # callers check n > 0
    return bounds


# -- histograms (Prometheus semantics) ------------------------------------------------------------

def _histogram(buckets: Sequence[tuple[float, float]]) -> tuple[np.ndarray, np.ndarray] | None:
    """(upper bounds, cumulative counts) sorted by bound, counts forced monotonic (``increase()``
    extrapolates each bucket series on its own, so a bucket can come out a little below the one
    before it); None unless the last bound is +Inf with a finite one before it."""
    if len(buckets) < 2:
        return None
    pairs = np.asarray(buckets, dtype=float)
    pairs = pairs[np.argsort(pairs[:, 0], kind="stable")]
    upper = pairs[:, 0]
    if upper[-1] != math.inf or not np.isfinite(upper[-2]):
        return None
    return upper, np.maximum.accumulate(np.maximum(pairs[:, 1], 0.0))


def _quantiles(q: float, upper: np.ndarray, cumulative: np.ndarray) -> np.ndarray:
    """The q-quantile of each row of ``cumulative`` (rows x buckets, monotonic), interpolated
    linearly within its bucket as Prometheus's ``histogram_quantile`` does: the first bucket
    starts at 0 (or is its own bound when that is <= 0), a quantile in the +Inf bucket is the
    largest finite bound, a row without observations is NaN."""
    rows = np.arange(cumulative.shape[0])
    last = len(upper) - 1
    total = cumulative[:, -1]
    rank = q * total
    # The first bucket whose count reaches the rank (a count, as counts are monotonic).
    b = (cumulative[:, :-1] < rank[:, None]).sum(axis=1)
    finite_b = np.minimum(b, last - 1)
    end, count = upper[finite_b], cumulative[rows, finite_b]
    start = np.where(finite_b > 0, upper[finite_b - 1], 0.0)
    before = np.where(finite_b > 0, cumulative[rows, finite_b - 1], 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        value = start + (end - start) * (rank - before) / (count - before)
    value = np.where((b == 0) & (upper[0] <= 0), upper[0], value)
    value = np.where(b == last, upper[last - 1], value)
    return np.where(total > 0, value, math.nan)


def histogram_quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float:
    """Prometheus's ``histogram_quantile(q, ...)`` of cumulative (le, count) buckets, +Inf last:
    -Inf below q = 0, +Inf above q = 1; NaN without observations, without a +Inf bucket or
    without a finite bucket."""
    if math.isnan(q):
        return math.nan
    if q < 0 or q > 1:
        return -math.inf if q < 0 else math.inf
    histogram = _histogram(buckets)
    if histogram is None:
        return math.nan
    upper, cumulative = histogram
    return float(_quantiles(q, upper, cumulative[None, :])[0])


def _resample(cumulative: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """RESAMPLES cumulative histograms (rows) drawn from a multinomial with the observed
    per-bucket proportions and the observed total (rounded: ``increase()`` counts are not
    integers)."""
    counts = np.diff(cumulative, prepend=0.0)
    draws = rng.multinomial(round(cumulative[-1]), counts / counts.sum(), size=RESAMPLES)
    return np.cumsum(draws, axis=1)


def check_error_rate(base: Arm, canary: Arm, max_increase: float, alpha: float,
                     ) -> dict[str, Any]:
    """One-sided two-proportion z-test of H0: canary <= baseline + max_increase."""
    if not base.requests or not canary.requests:
        return _insufficient("error_rate", "no data")
    pb, pc = base.errors / base.requests, canary.errors / canary.requests
    se = math.sqrt(max(pb * (1 - pb), 1e-12) / base.requests
                   + max(pc * (1 - pc), 1e-12) / canary.requests)
    z = (pc - pb - max_increase) / se
    from scipy import stats  # loaded when a rollout is first judged, not by serving
    p_value = float(stats.norm.sf(z))
    return {"check": "error_rate", "failed": p_value < alpha, "baseline": pb, "canary": pc,
            "max_increase": max_increase, "z": z, "p_value": p_value}


def check_latency(base: Arm, canary: Arm, max_ratio: float, alpha: float,
                  seed: int = 0) -> dict[str, Any]:
    """Bootstrap CI of the p99 ratio (p90 below 2,000 per arm): fail when its low end is above
    max_ratio. From samples when both arms have 20, else from histograms when both have them;
    otherwise insufficient. Seeded: the same evidence gives the same verdict."""
    if len(base.latencies) >= MIN_LATENCIES and len(canary.latencies) >= MIN_LATENCIES:
        return _latency_from_samples(base, canary, max_ratio, alpha, seed)
    if base.buckets and canary.buckets:
        return _latency_from_buckets(base, canary, max_ratio, alpha, seed)
    return _insufficient("latency", f"fewer than {MIN_LATENCIES} samples")


def _latency_result(source: str, q: int, ratio: float, low: float, high: float,
                    max_ratio: float) -> dict[str, Any]:
    return {"check": "latency", "source": source, "quantile": f"p{q}", "failed": low > max_ratio,
            "ratio": ratio, "ci_low": low, "ci_high": high, "max_ratio": max_ratio}


def _latency_from_samples(base: Arm, canary: Arm, max_ratio: float, alpha: float,
                          seed: int) -> dict[str, Any]:
    nb, nc = len(base.latencies), len(canary.latencies)
    q = 99 if min(nb, nc) >= P99_MIN_SAMPLES else 90
    from scipy import stats

    def ratio(c: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
        return np.percentile(c, q, axis=axis) / np.maximum(np.percentile(b, q, axis=axis),
                                                           1e-9)

    c, b = np.asarray(canary.latencies), np.asarray(base.latencies)
    result = stats.bootstrap((c, b), ratio, n_resamples=RESAMPLES, confidence_level=1 - 2 * alpha,
                             method="percentile", vectorized=True,
                             random_state=np.random.default_rng(seed))
    return _latency_result("samples", q, float(ratio(c, b)),
                           float(result.confidence_interval.low),
                           float(result.confidence_interval.high), max_ratio)


def _latency_from_buckets(base: Arm, canary: Arm, max_ratio: float, alpha: float,
                          seed: int) -> dict[str, Any]:
    """The quantile of each arm by interpolation; the CI of their ratio by a parametric
    bootstrap of the bucket counts (each arm's draws multinomial, all at once)."""
    hb, hc = _histogram(base.buckets), _histogram(canary.buckets)
    if hb is None or hc is None:
        return _insufficient("latency", "a histogram without +Inf and finite buckets")
    (upper_b, cum_b), (upper_c, cum_c) = hb, hc
    n = round(min(cum_b[-1], cum_c[-1]))
    if n < MIN_LATENCIES:
        return _insufficient("latency", f"fewer than {MIN_LATENCIES} observations")
    q = 99 if n >= P99_MIN_SAMPLES else 90

    def ratio(c: np.ndarray, b: np.ndarray) -> np.ndarray:
        return (_quantiles(q / 100, upper_c, c)
                / np.maximum(_quantiles(q / 100, upper_b, b), 1e-9))

    rng = np.random.default_rng(seed)
    ratios = ratio(_resample(cum_c, rng), _resample(cum_b, rng))
    low, high = np.percentile(ratios, [100 * alpha, 100 * (1 - alpha)])
    return _latency_result("buckets", q, float(ratio(cum_c[None, :], cum_b[None, :])[0]),
                           float(low), float(high), max_ratio)


def check_agreement(canary: Arm, minimum: float, alpha: float) -> dict[str, Any]:
    if not canary.shadow_compared:
        return {"check": "shadow_agreement", "failed": False, "reason": "no shadow of canary"}
    low, high = _wilson(canary.shadow_agreed, canary.shadow_compared, alpha)
    rate = canary.shadow_agreed / canary.shadow_compared
    return {"check": "shadow_agreement", "failed": high < minimum, "agreement": rate,
            "wilson_low": low, "wilson_high": high, "min": minimum,
            "n": canary.shadow_compared}


def check_outcome(base: Arm, canary: Arm, name: str, max_drop: float,
                  alpha: float) -> dict[str, Any]:
    if not base.outcome_n or not canary.outcome_n:
        return {"check": "outcome", "name": name, "failed": False, "reason": "no feedback"}
    rate_b = base.outcome_k / base.outcome_n
    low, high = _wilson(canary.outcome_k, canary.outcome_n, alpha)
    return {"check": "outcome", "name": name, "failed": high < rate_b - max_drop,
            "baseline": rate_b, "canary": canary.outcome_k / canary.outcome_n,
            "wilson_low": low, "wilson_high": high, "max_drop": max_drop,
            "n": canary.outcome_n}


def judge(rollout: Rollout, base: Arm, canary: Arm, alpha: float) -> list[dict[str, Any]]:
    """Every configured check at ``alpha``; each result says whether it failed."""
    c = rollout.checks
    results = []
    if c.error_rate_max_increase is not None:
        results.append(check_error_rate(base, canary, c.error_rate_max_increase, alpha))
    if c.latency_p99_max_ratio is not None:
        results.append(check_latency(base, canary, c.latency_p99_max_ratio, alpha))
    if c.shadow_agreement_min is not None:
        results.append(check_agreement(canary, c.shadow_agreement_min, alpha))
    if c.outcome_name is not None and c.outcome_max_drop is not None:
        results.append(check_outcome(base, canary, c.outcome_name, c.outcome_max_drop, alpha))
    return results
