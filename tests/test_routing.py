"""The pure routing decision: tables, the sticky formula bit for bit, cross-process agreement."""

from __future__ import annotations

import subprocess
import sys
from hashlib import blake2b
from pathlib import Path
from typing import Any

import pytest
from helpers import base_route, write_config

from router.config import Route, load_snapshot
from router.dataplane import routing
from router.errors import BadOverride, VersionNotFound

ROOT = Path(__file__).resolve().parents[1]


def compile_route(tmp_path: Path, **changes: Any) -> Route:
    return load_snapshot(write_config(tmp_path, [base_route(**changes)])).routes[0]


def contract_bucket(salt: str, key: str) -> int:
    """DESIGN.md's formula, written out independently of the router's code."""
    return int.from_bytes(blake2b(f"{salt}:{key}".encode(), digest_size=8).digest(),
                          "big") % 10000


def contract_version(weights: list[tuple[str, float]], bucket: int) -> str:
    acc = 0.0
    for name, w in weights:
        low, high = round(100 * acc), round(100 * (acc + w))
        if low <= bucket < high:
            return name
        acc += w
    raise AssertionError("no owner")


DECISIONS = [
    # (route changes, rest, override, sticky key, rand, expected version, reason, rest out)
    ("split_low_rand", {}, "/infer", None, None, 0.0, "v1", "split", "/infer"),
    ("split_high_rand", {}, "/infer", None, None, 0.999, "v2", "split", "/infer"),
    ("split_boundary", {}, "/infer", None, None, 0.95, "v2", "split", "/infer"),
    ("weight_zero_first", {"split": {"v1": 0, "v2": 100}}, "", None, None, 0.0, "v2", "split",
     ""),
    ("weight_hundred", {"split": {"v1": 100, "v2": 0}}, "", None, None, 0.9999, "v1", "split",
     ""),
    ("pinned_name", {}, "/versions/v2/infer", None, None, 0.0, "v2", "pinned", "/infer"),
    ("pinned_model_version", {}, "/versions/2.0.0/infer", None, None, 0.0, "v2", "pinned",
     "/infer"),
    ("pinned_beats_override", {"override": {"header": "x-o", "allow": ["v2"]}},
     "/versions/v1/infer", "v2", None, 0.0, "v1", "pinned", "/infer"),
    ("override_weight_zero", {"split": {"v1": 100, "v2": 0},
                              "override": {"header": "x-o", "allow": ["v2"]}},
     "/infer", "v2", None, 0.0, "v2", "override", "/infer"),
    ("override_beats_blue_green", {"split": None, "override": {"header": "x-o",
                                                               "allow": ["v3"]},
                                   "blue_green": {"blue": "v1", "green": "v2",
                                                  "active": "green"}},
     "/infer", "v3", None, 0.0, "v3", "override", "/infer"),
    ("blue_green_active", {"split": None, "blue_green": {"blue": "v1", "green": "v2",
                                                         "active": "green"}},
     "/infer", None, "user-1", 0.0, "v2", "blue_green", "/infer"),
    ("override_without_config_ignored", {}, "/infer", "v2", None, 0.0, "v1", "split",
     "/infer"),
]


@pytest.mark.parametrize("changes,rest,override,key,rand,version,reason,rest_out",
                         [d[1:] for d in DECISIONS], ids=[d[0] for d in DECISIONS])
def test_decide_table(tmp_path: Path, changes: dict, rest: str, override: str | None,
                      key: str | None, rand: float, version: str, reason: str,
                      rest_out: str) -> None:
    route = compile_route(tmp_path, **changes)
    decision = routing.decide(route, rest, override=override, sticky_key=key, rand=rand)
    assert (decision.version, decision.reason, decision.rest) == (version, reason, rest_out)


def test_unknown_pinned_version_is_404(tmp_path: Path) -> None:
    route = compile_route(tmp_path)
    with pytest.raises(VersionNotFound):
        routing.decide(route, "/versions/v9/infer", override=None, sticky_key=None, rand=0)


def test_override_outside_allow_list_is_400(tmp_path: Path) -> None:
    route = compile_route(tmp_path, override={"header": "x-o", "allow": ["v2"]})
    with pytest.raises(BadOverride):
        routing.decide(route, "", override="v3", sticky_key=None, rand=0)


def test_sticky_matches_contract_formula(tmp_path: Path) -> None:
    route = compile_route(tmp_path, split={"v1": 33.3, "v2": 66.7},
                          sticky={"header": "x-user-id", "salt": "pepper"})
    weights = [("v1", 33.3), ("v2", 66.7)]
    for i in range(10_000):
        key = f"user-{i}"
        bucket = contract_bucket("pepper", key)
        assert routing.sticky_bucket("pepper", key) == bucket
        decision = routing.decide(route, "", override=None, sticky_key=key, rand=0.5)
        assert decision.version == contract_version(weights, bucket)
        assert decision.reason == "sticky"


def test_salt_defaults_to_route_name(tmp_path: Path) -> None:
    route = compile_route(tmp_path, sticky={"cookie": "uid"})
    assert route.sticky is not None and route.sticky.salt == "fraud"


def test_growing_canary_only_moves_users_onto_it(tmp_path: Path) -> None:
    keys = [f"k{i}" for i in range(5000)]
    previous: set[str] = set()
    for canary in (1, 5, 25, 50, 100):
        route = compile_route(tmp_path / str(canary), split={"v1": 100 - canary, "v2": canary},
                              sticky={"header": "x-user-id"})
        now = {k for k in keys if routing.decide(route, "", override=None, sticky_key=k,
                                                 rand=0).version == "v2"}
        assert previous <= now, "a canary user left the canary as it grew"
        assert abs(len(now) / len(keys) - canary / 100) < 0.03
        previous = now


def test_keyless_split_follows_weights(tmp_path: Path) -> None:
    import random
    route = compile_route(tmp_path, split={"v1": 80, "v2": 20})
    rng = random.Random(7)
    picks = [routing.decide(route, "", override=None, sticky_key=None, rand=rng.random()).version
             for _ in range(20_000)]
    assert abs(picks.count("v2") / len(picks) - 0.20) < 0.015


MATCHES = [
    ("exact", "/v2/models/fraud", "fraud", ""),
    ("sub_path", "/v2/models/fraud/infer", "fraud", "/infer"),
    ("no_segment_boundary", "/v2/models/fraudster/infer", None, None),
    ("longest_wins", "/v2/models/fraud/special/infer", "special", "/infer"),
    ("unrelated", "/other", None, None),
]


@pytest.mark.parametrize("path,name,rest", [m[1:] for m in MATCHES], ids=[m[0] for m in MATCHES])
def test_match_table(tmp_path: Path, path: str, name: str | None, rest: str | None) -> None:
    special = base_route(name="special", match={"path_prefix": "/v2/models/fraud/special"})
    snapshot = load_snapshot(write_config(tmp_path, [base_route(), special]))
    found = routing.match(snapshot.routes, path)
    if name is None:
        assert found is None
    else:
        assert found is not None and (found[0].name, found[1]) == (name, rest)


SCRIPT = """
import sys
from router.dataplane.routing import sticky_bucket
print(",".join(str(sticky_bucket("fraud", f"user-{i}")) for i in range(10000)))
"""


def test_two_processes_assign_identically() -> None:
    outputs = []
    for seed in ("1", "2"):  # different hash seeds: the assignment must not use hash()
        env = {"PYTHONHASHSEED": seed, "PATH": "/usr/bin:/bin"}
        done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                              cwd=ROOT, env=env, check=True)
        outputs.append(done.stdout.strip())
    assert outputs[0] == outputs[1]
    expected = ",".join(str(contract_bucket("fraud", f"user-{i}")) for i in range(10000))
    assert outputs[0] == expected
