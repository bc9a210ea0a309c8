"""Latency judged from Prometheus histograms (a fleet's evidence): histogram_quantile with
Prometheus's semantics, and check_latency on cumulative buckets (pure tier)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from router.control.evidence import Arm
from router.control.judge import (
    check_agreement,
    check_error_rate,
    check_latency,
    check_outcome,
    histogram_quantile,
)
from router.metrics import DURATION_BUCKETS

INF = math.inf
BOUNDS = (*DURATION_BUCKETS, INF)
MAX_RATIO = 1.25


def histogram(samples: np.ndarray, scale: float = 1.0) -> tuple[tuple[float, float], ...]:
    """Samples binned as request_duration_seconds_bucket counts them (value <= le); ``scale``
    stands for increase()'s extrapolation, which leaves counts non-integer."""
    return tuple((le, scale * float(np.count_nonzero(samples <= le))) for le in BOUNDS)


def latencies(n: int, seed: int, factor: float = 1.0) -> np.ndarray:
    """Lognormal latencies, median 20 ms times ``factor``."""
    return factor * np.random.default_rng(seed).lognormal(math.log(0.020), 0.5, n)


def bucket_arm(n: int, seed: int, factor: float = 1.0, scale: float = 1.0) -> Arm:
    return Arm(buckets=histogram(latencies(n, seed, factor), scale))


# -- histogram_quantile --------------------------------------------------------------------------

# Prometheus's own test table (promql engine tests, "testhistogram" at 50m).
POSITIVE = ((0.1, 50.0), (0.2, 70.0), (1.0, 110.0), (INF, 120.0))
NEGATIVE = ((-0.2, 10.0), (-0.1, 20.0), (0.3, 20.0), (INF, 30.0))


@pytest.mark.parametrize(("q", "buckets", "expected"), [
    (0.2, POSITIVE, 0.048),
    (0.5, POSITIVE, 0.15),
    (0.8, POSITIVE, 0.72),
    (0.0, POSITIVE, 0.0),
    (1.0, POSITIVE, 1.0),
    (0.2, NEGATIVE, -0.2),
    (0.5, NEGATIVE, -0.15),
    (0.8, NEGATIVE, 0.3),
    (-0.1, POSITIVE, -INF),
    (1.01, POSITIVE, INF),
    (0.5, ((1.0, 2.5), (2.0, 7.5), (INF, 10.0)), 1.5),
    (0.9, ((0.1, 0.0), (0.2, 0.0), (INF, 7.0)), 0.2),
    (0.5, ((0.1, 5.0), (0.2, 4.9), (INF, 10.0)), 0.1),
    (0.75, ((INF, 20.0), (0.2, 20.0), (0.1, 10.0)), 0.15),
], ids=["prom-q0.2", "prom-q0.5", "prom-q0.8", "prom-q0", "prom-q1-in-inf",
        "negative-first-bound", "negative-interpolated", "negative-in-inf", "q-below-0",
        "q-above-1", "non-integer-counts", "all-in-inf", "non-monotonic-forced",
        "unsorted-input"])
def test_histogram_quantile_known_values(q: float, buckets: tuple[tuple[float, float], ...],
                                         expected: float) -> None:
    assert histogram_quantile(q, buckets) == pytest.approx(expected)


@pytest.mark.parametrize("buckets", [
    (),
    ((INF, 5.0),),
    ((0.1, 3.0), (0.2, 5.0)),
    ((0.1, 0.0), (0.2, 0.0), (INF, 0.0)),
], ids=["empty", "only-inf", "no-inf-bucket", "no-observations"])
def test_histogram_quantile_is_nan_without_a_usable_histogram(
        buckets: tuple[tuple[float, float], ...]) -> None:
    assert math.isnan(histogram_quantile(0.9, buckets))


@pytest.mark.parametrize("q", [0.5, 0.9, 0.99], ids=["p50", "p90", "p99"])
@pytest.mark.parametrize("factor", [0.1, 1.0, 10.0], ids=["2ms", "20ms", "200ms"])
def test_histogram_quantile_within_the_bucket_of_np_percentile(q: float, factor: float) -> None:
    samples = latencies(10_000, seed=7, factor=factor)
    exact = float(np.percentile(samples, 100 * q))
    i = int(np.searchsorted(BOUNDS, exact))  # the bucket (BOUNDS[i-1], BOUNDS[i]] holding it
    assert BOUNDS[i] < INF, "the case must fall in a finite bucket to say anything"
    lower = BOUNDS[i - 1] if i else 0.0
    assert lower <= histogram_quantile(q, histogram(samples)) <= BOUNDS[i]


# -- check_latency from buckets -----------------------------------------------------------------

@pytest.mark.parametrize("alpha", [0.05, 0.001], ids=["promote-alpha", "harm-alpha"])
@pytest.mark.parametrize(("n", "quantile"), [(500, "p90"), (5000, "p99")], ids=["p90", "p99"])
def test_twice_slower_canary_fails(alpha: float, n: int, quantile: str) -> None:
    result = check_latency(bucket_arm(n, seed=1), bucket_arm(n, seed=2, factor=2.0),
                           MAX_RATIO, alpha)
    assert result["source"] == "buckets" and result["quantile"] == quantile
    assert 1.6 < result["ratio"] < 2.5
    assert result["ci_low"] <= result["ratio"] <= result["ci_high"]
    assert result["ci_low"] > MAX_RATIO and result["failed"] is True
    assert "insufficient" not in result


@pytest.mark.parametrize("alpha", [0.05, 0.001], ids=["promote-alpha", "harm-alpha"])
@pytest.mark.parametrize("n", [500, 5000], ids=["p90", "p99"])
def test_equal_latency_does_not_fail(alpha: float, n: int) -> None:
    result = check_latency(bucket_arm(n, seed=3), bucket_arm(n, seed=4), MAX_RATIO, alpha)
    assert result["source"] == "buckets"
    assert 0.8 < result["ratio"] < MAX_RATIO
    assert result["ci_low"] < 1.0 < result["ci_high"]
    assert result["failed"] is False and "insufficient" not in result


@pytest.mark.parametrize(("n_base", "n_canary", "quantile"), [
    (1999, 5000, "p90"), (2000, 5000, "p99"), (5000, 1999, "p90"),
], ids=["base-1999", "both-2000", "canary-1999"])
def test_p99_needs_2000_observations_in_each_arm(n_base: int, n_canary: int,
                                                 quantile: str) -> None:
    result = check_latency(bucket_arm(n_base, seed=5), bucket_arm(n_canary, seed=6),
                           MAX_RATIO, 0.05)
    assert result["quantile"] == quantile


@pytest.mark.parametrize(("base", "canary", "reason"), [
    (bucket_arm(19, seed=1), bucket_arm(5000, seed=2, factor=3.0),
     "fewer than 20 observations"),
    (bucket_arm(5000, seed=1), bucket_arm(19, seed=2, factor=3.0),
     "fewer than 20 observations"),
    (bucket_arm(20, seed=1, scale=0.97), bucket_arm(5000, seed=2, factor=3.0),
     "fewer than 20 observations"),
    (Arm(buckets=tuple((le, 0.0) for le in BOUNDS)), bucket_arm(5000, seed=2, factor=3.0),
     "fewer than 20 observations"),
    (Arm(), Arm(), "fewer than 20 samples"),
    (Arm(latencies=list(latencies(500, seed=1))), bucket_arm(5000, seed=2, factor=3.0),
     "fewer than 20 samples"),
    (Arm(buckets=((0.1, 900.0), (0.2, 1000.0))), bucket_arm(5000, seed=2, factor=3.0),
     "a histogram without +Inf and finite buckets"),
], ids=["base-19", "canary-19", "19.4-rounds-down", "all-zero", "no-evidence",
        "samples-beside-buckets", "no-inf-bucket"])
def test_too_little_latency_evidence_is_insufficient(base: Arm, canary: Arm,
                                                     reason: str) -> None:
    assert check_latency(base, canary, MAX_RATIO, 0.05) == {
        "check": "latency", "failed": False, "reason": reason, "insufficient": True}


@pytest.mark.parametrize("scale", [1.0, 0.98], ids=["20", "19.6-rounds-up"])
def test_twenty_observations_are_judged(scale: float) -> None:
    result = check_latency(bucket_arm(20, seed=1, scale=scale), bucket_arm(20, seed=2),
                           MAX_RATIO, 0.05)
    assert result["source"] == "buckets" and result["quantile"] == "p90"
    assert "insufficient" not in result


@pytest.mark.parametrize(("factor", "failed"), [(2.0, True), (1.0, False)],
                         ids=["twice-slower", "equal"])
def test_non_integer_counts(factor: float, failed: bool) -> None:
    """increase() extrapolates each series: counts are scaled, non-integer, and a bucket can
    come out slightly below the one before it."""
    base, canary = bucket_arm(3000, seed=8), bucket_arm(3000, seed=9, factor=factor)
    scaled_base = bucket_arm(3000, seed=8, scale=1.37)
    scaled_canary = bucket_arm(3000, seed=9, factor=factor, scale=1.37)
    jittered = list(scaled_canary.buckets)  # 10 s a little below 5 s (both hold everything)
    jittered[-2] = (jittered[-2][0], jittered[-3][1] - 0.4)
    scaled_canary.buckets = tuple(jittered)
    exact = check_latency(base, canary, MAX_RATIO, 0.05)
    scaled = check_latency(scaled_base, scaled_canary, MAX_RATIO, 0.05)
    assert scaled["quantile"] == "p99"
    assert scaled["ratio"] == pytest.approx(exact["ratio"], rel=0.02)
    assert scaled["failed"] is exact["failed"] is failed


def test_canary_beyond_the_largest_bucket_fails() -> None:
    slow = Arm(buckets=tuple((le, 0.0 if le < INF else 500.0) for le in BOUNDS))
    result = check_latency(bucket_arm(500, seed=1), slow, MAX_RATIO, 0.001)
    assert result["failed"] is True
    assert result["ratio"] == pytest.approx(
        DURATION_BUCKETS[-1] / histogram_quantile(0.9, bucket_arm(500, seed=1).buckets))


def test_both_arms_beyond_the_largest_bucket_do_not_fail() -> None:
    """Both quantiles are the largest finite bound: the data cannot tell the arms apart."""
    slow = Arm(buckets=tuple((le, 0.0 if le < INF else 500.0) for le in BOUNDS))
    result = check_latency(slow, slow, MAX_RATIO, 0.05)
    assert (result["ratio"], result["ci_low"], result["ci_high"]) == (1.0, 1.0, 1.0)
    assert result["failed"] is False


def test_samples_are_judged_before_buckets() -> None:
    """Both arms with 20 samples: the samples decide, whatever the buckets say."""
    fast = list(latencies(300, seed=1))
    base = Arm(latencies=fast, buckets=bucket_arm(300, seed=1).buckets)
    canary = Arm(latencies=fast, buckets=bucket_arm(300, seed=2, factor=3.0).buckets)
    result = check_latency(base, canary, MAX_RATIO, 0.05)
    assert result["source"] == "samples" and result["ratio"] == pytest.approx(1.0)
    assert result["failed"] is False


def test_bucket_bootstrap_is_seeded() -> None:
    base, canary = bucket_arm(1000, seed=1), bucket_arm(1000, seed=2, factor=1.2)
    first = check_latency(base, canary, MAX_RATIO, 0.05, seed=11)
    assert check_latency(base, canary, MAX_RATIO, 0.05, seed=11) == first
    assert check_latency(base, canary, MAX_RATIO, 0.05, seed=12)["ci_low"] != first["ci_low"]


# -- "no data" elsewhere -------------------------------------------------------------------------

def test_error_rate_without_requests_is_insufficient() -> None:
    assert check_error_rate(Arm(requests=500), Arm(), 0.01, 0.05) == {
        "check": "error_rate", "failed": False, "reason": "no data", "insufficient": True}


def test_not_applicable_checks_are_not_insufficient() -> None:
    """No shadow of the canary or no feedback means the check does not apply, not that it waits."""
    agreement = check_agreement(Arm(), 0.98, 0.05)
    outcome = check_outcome(Arm(outcome_n=100, outcome_k=50), Arm(), "converted", 0.02, 0.05)
    assert agreement["failed"] is False and "insufficient" not in agreement
    assert outcome["failed"] is False and "insufficient" not in outcome



@pytest.mark.parametrize("alpha", [0.05, 0.1], ids=["alpha-0.05", "alpha-0.1"])
def test_ci_bounds_are_quantiles_of_the_resampled_counts(alpha: float) -> None:
    """A case with a known bootstrap distribution: the baseline's p90 is fixed (all in one
    bucket); the canary's p90 falls in (1, 2] at 1 + (rank - K) / (n - K), K ~ Binomial(n, 1/2)
    its count in (0, 1]. So ci_low comes from K's upper alpha quantile, ci_high from its lower
    one, up to the Monte Carlo error of 999 resamples (about 1.5 in K)."""
    from scipy import stats

    n = 1999  # the most observations still judged at p90
    rank = 0.9 * n
    base = Arm(buckets=((1.0, n), (2.0, n), (INF, n)))
    canary = Arm(buckets=((1.0, n // 2), (2.0, n), (INF, n)))
    result = check_latency(base, canary, MAX_RATIO, alpha)
    assert result["quantile"] == "p90"

    def k_of(ratio: float) -> float:  # inverts ratio = (1 + (rank - K) / (n - K)) / 0.9
        y = ratio * 0.9 - 1
        return (rank - n * y) / (1 - y)

    k_low, k_high = stats.binom.ppf([alpha, 1 - alpha], n, 0.5)
    assert k_of(result["ci_low"]) == pytest.approx(k_high, abs=3.5)
    assert k_of(result["ci_high"]) == pytest.approx(k_low, abs=3.5)
