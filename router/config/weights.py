"""Compile the rule that owns a route's weights: exactly one of ``split``, ``blue_green`` or
``rollout``, each into the listed weights and bucket bounds the router hashes users into."""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from .problems import Problems, join, nearest
from .snapshot import BlueGreen, Checks, Rollout, bucket_bounds

OWNERS = ("split", "blue_green", "rollout")


@dataclass(frozen=True, slots=True)
class Weights:
    """What a route's weight rule compiles to (``Route`` fields of the same names)."""

    split: tuple[tuple[str, float], ...] = ()
    bounds: tuple[int, ...] = ()
    blue_green: BlueGreen | None = None
    rollout: Rollout | None = None


def compile_weights(p: Problems, path: str, spec: Mapping[str, Any],
                    versions: Mapping[str, Any]) -> Weights:
    """The route's weight rule; ``versions`` are the names the route lists. A rollout with no
    state yet starts at its first step."""
    owners = [k for k in OWNERS if k in spec]
    if "rollout" in spec and len(owners) > 1:
        others = " and ".join(k for k in owners if k != "rollout")
        block = spec["rollout"]
        baseline, canary = ((block or {}).get("baseline"), (block or {}).get("canary")) \
            if isinstance(block, dict) else ("?", "?")
        p.error(path, f"{others} beside rollout: the rollout (baseline {baseline} -> canary "
                f"{canary}) owns this route's weights; remove {others}")
    elif len(owners) != 1:
        p.error(path, "give exactly one of split, blue_green or rollout")
    split: tuple[tuple[str, float], ...] = ()
    bounds: tuple[int, ...] = ()
    blue_green = rollout = None
    if "split" in spec:
        split, bounds = _split(p, join(path, "split"), spec["split"], versions)
    if "blue_green" in spec:
        blue_green = _blue_green(p, join(path, "blue_green"), spec["blue_green"], versions)
    if "rollout" in spec:
        rollout = _rollout(p, join(path, "rollout"), spec["rollout"], versions)
        if rollout is not None and not split:
            split, bounds = rollout.split(rollout.steps[0])
    return Weights(split=split, bounds=bounds, blue_green=blue_green, rollout=rollout)


def known_version(p: Problems, path: str, value: Any, versions: Mapping[str, Any],
                  ) -> str | None:
    """``value`` when it names one of the route's versions; else an error with a hint."""
    name = p.name(path, value)
    if name is None:
        return None
    if name not in versions:
        hint = nearest(name, versions)
        extra = f" (did you mean '{hint}'?)" if hint else ""
        p.error(path, f"unknown version '{name}'{extra}; this route has: "
                + ", ".join(versions))
        return None
    return name


def _split(p: Problems, path: str, raw: Any, versions: Mapping[str, Any],
           ) -> tuple[tuple[tuple[str, float], ...], tuple[int, ...]]:
    spec = p.mapping(path, raw)
    if not spec:
        if spec is not None:
            p.error(path, "must list at least one version")
        return (), ()
    entries: list[tuple[str, float]] = []
    for vname, weight in spec.items():
        vpath = join(path, str(vname))
        name = known_version(p, vpath, vname, versions)
        w = p.number(vpath, weight, low=0, high=100)
        if name is not None and w is not None:
            entries.append((name, w))
    total = sum(w for _, w in entries)
    if len(entries) == len(spec) and abs(total - 100) > 1e-9:
        p.error(path, f"weights sum to {total:g}, expected 100")
    return tuple(entries), bucket_bounds(w for _, w in entries)


def _blue_green(p: Problems, path: str, raw: Any, versions: Mapping[str, Any],
                ) -> BlueGreen | None:
    spec = p.mapping(path, raw, ("blue", "green", "active"), required=("blue", "green", "active"))
    if not spec or len(spec) < 3:
        return None
    blue = known_version(p, join(path, "blue"), spec.get("blue"), versions)
    green = known_version(p, join(path, "green"), spec.get("green"), versions)
    active = p.string(join(path, "active"), spec.get("active"), ("blue", "green"))
    if blue and green and blue == green:
        p.error(path, "blue and green must be different versions")
    if not (blue and green and active):
        return None
    return BlueGreen(blue=blue, green=green, active=active)  # type: ignore[arg-type]


_ROLLOUT_KEYS = ("baseline", "canary", "steps", "step_min_s", "step_min_requests", "max_wait_s",
                 "checks", "on_failure")


def _rollout(p: Problems, path: str, raw: Any, versions: Mapping[str, Any]) -> Rollout | None:
    spec = p.mapping(path, raw, _ROLLOUT_KEYS, required=("baseline", "canary", "steps"))
    if not spec or not all(k in spec for k in ("baseline", "canary", "steps")):
        return None
    baseline = known_version(p, join(path, "baseline"), spec["baseline"], versions)
    canary = known_version(p, join(path, "canary"), spec["canary"], versions)
    if baseline and canary and baseline == canary:
        p.error(path, "baseline and canary must be different versions")
    steps_raw = p.sequence(join(path, "steps"), spec["steps"]) or []
    steps = [p.number(join(join(path, "steps"), i), v, low=0, high=100, positive=True)
             for i, v in enumerate(steps_raw)]
    if not steps_raw:
        p.error(join(path, "steps"), "list at least one canary percent")
    if any(s is None for s in steps):
        return None
    if any(b <= a for a, b in itertools.pairwise(steps)):  # type: ignore[operator]
        p.error(join(path, "steps"), f"steps must increase, got {steps}")
    # Keys left out take Rollout's defaults.
    given: dict[str, Any] = {}
    if "step_min_s" in spec:
        given["step_min_s"] = p.number(join(path, "step_min_s"), spec["step_min_s"], low=0)
    if "step_min_requests" in spec:
        given["step_min_requests"] = p.number(join(path, "step_min_requests"),
                                              spec["step_min_requests"], low=0, integer=True)
    if "max_wait_s" in spec:
        given["max_wait_s"] = p.number(join(path, "max_wait_s"), spec["max_wait_s"],
                                       positive=True)
    if "on_failure" in spec:
        given["on_failure"] = p.string(join(path, "on_failure"), spec["on_failure"],
                                       ("rollback", "pause"))
    if "checks" in spec:
        given["checks"] = _checks(p, join(path, "checks"), spec["checks"])
    if not (baseline and canary) or None in given.values():
        return None
    key = hashlib.sha256(orjson.dumps(spec, option=orjson.OPT_SORT_KEYS)).hexdigest()[:12]
    return Rollout(baseline=baseline, canary=canary, steps=tuple(steps),  # type: ignore[arg-type]
                   key=key, **given)


def _checks(p: Problems, path: str, raw: Any) -> Checks:
    c = p.mapping(path, raw, ("error_rate", "latency_p99", "shadow_agreement", "outcome")) or {}
    values: dict[str, Any] = {}
    for key, inner, field_name, kw in (
            ("error_rate", "max_increase", "error_rate_max_increase", {"low": 0, "high": 1}),
            ("latency_p99", "max_ratio", "latency_p99_max_ratio", {"positive": True}),
            ("shadow_agreement", "min", "shadow_agreement_min", {"low": 0, "high": 1}),
            ("outcome", "max_drop", "outcome_max_drop", {"low": 0, "high": 1})):
        if key not in c:
            continue
        allowed = (inner, "name") if key == "outcome" else (inner,)
        block = p.mapping(join(path, key), c[key], allowed, required=allowed) or {}
        if inner in block:
            values[field_name] = p.number(join(join(path, key), inner), block[inner], **kw)
        if key == "outcome" and "name" in block:
            values["outcome_name"] = p.name(join(path, "outcome.name"), block["name"])
    return Checks(**values)
