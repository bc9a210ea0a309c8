"""The rollout checks, pure (SciPy, loaded on first use): a check *fails* when the data show
harm at the given alpha: one-sided two-proportion test of the canary's error rate > baseline
+ max_increase; bootstrap CI of the p99 latency ratio (p90 below 2,000 samples per arm) above
max_ratio; Wilson upper bound of shadow agreement below min; Wilson upper bound of the
canary's outcome rate below the baseline's rate - max_drop."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..config import Rollout
from ..stats import wilson
from .evidence import Arm

P99_MIN_SAMPLES = 2000


def _wilson(k: float, n: int, alpha: float) -> tuple[float, float]:
    """Two-sided (1 - 2 alpha) Wilson interval: each bound is a one-sided alpha test."""
    bounds = wilson(k, n, 1 - 2 * alpha)
    assert bounds is not None  # callers check n > 0
    return bounds


def check_error_rate(base: Arm, canary: Arm, max_increase: float, alpha: float,
                     ) -> dict[str, Any]:
    """One-sided two-proportion z-test of H0: canary <= baseline + max_increase."""
    if not base.requests or not canary.requests:
        return {"check": "error_rate", "failed": False, "reason": "no data"}
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
    """Bootstrap CI of the p99 ratio (p90 below 2,000 samples per arm): fail above max_ratio."""
    nb, nc = len(base.latencies), len(canary.latencies)
    if nb < 20 or nc < 20:
        return {"check": "latency", "failed": False, "reason": "fewer than 20 samples"}
    q = 99 if min(nb, nc) >= P99_MIN_SAMPLES else 90
    from scipy import stats

    def ratio(c: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
        return np.percentile(c, q, axis=axis) / np.maximum(np.percentile(b, q, axis=axis),
                                                           1e-9)

    c, b = np.asarray(canary.latencies), np.asarray(base.latencies)
    result = stats.bootstrap((c, b), ratio, n_resamples=999, confidence_level=1 - 2 * alpha,
                             method="percentile", vectorized=True,
                             random_state=np.random.default_rng(seed))
    low = float(result.confidence_interval.low)
    return {"check": "latency", "quantile": f"p{q}", "failed": low > max_ratio,
            "ratio": float(ratio(c, b)), "ci_low": low,
            "ci_high": float(result.confidence_interval.high), "max_ratio": max_ratio}


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
