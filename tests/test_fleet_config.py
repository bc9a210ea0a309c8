"""Fleet pieces without a store: the ``fleet:`` block, port overrides, the fleet's history
answer, and how rollout states are read and adopted. Pure and in-process: files in tmp_path,
no sockets."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from helpers import base_route, rollout_route, write_config

from router.config import load_snapshot
from router.config.snapshot import Fleet
from router.control.evidence import LocalEvidence
from router.control.history import History, fleet_in_force
from router.control.reload import with_ports
from router.control.rollout import Controller, Following, RolloutState
from router.errors import ConfigError
from router.metrics import Metrics

STORE = "redis://127.0.0.1:6379/0"
PROMETHEUS = "http://127.0.0.1:9090"
UPSTREAM_V1, UPSTREAM_V2 = "http://127.0.0.1:9001", "http://127.0.0.1:9002"


def load_fleet(tmp_path: Path, fleet: Any, routes: list[dict[str, Any]] | None = None,
               ) -> Fleet | None:
    return load_snapshot(write_config(tmp_path, routes or [base_route()], fleet=fleet)).fleet


def fleet_errors(tmp_path: Path, fleet: Any, routes: list[dict[str, Any]] | None = None,
                 ) -> list[str]:
    path = write_config(tmp_path, routes or [base_route()], fleet=fleet)
    with pytest.raises(ConfigError) as info:
        load_snapshot(path)
    return info.value.errors


# -- the fleet: block ---------------------------------------------------------------------------

def test_fleet_block_defaults(tmp_path: Path) -> None:
    fleet = load_fleet(tmp_path, {"name": "fraud-prod", "store": STORE})
    assert fleet == Fleet(name="fraud-prod", store=STORE, prometheus=None, lease_s=10.0,
                          feedback_ttl_s=86400.0)


def test_fleet_block_every_key(tmp_path: Path) -> None:
    fleet = load_fleet(tmp_path, {"name": "f.1_a", "store": "rediss://r:6380/2",
                                  "prometheus": PROMETHEUS + "/", "lease_s": 3,
                                  "feedback_ttl_s": 600})
    # the Prometheus base URL loses its trailing slash (queries append /api/v1/...)
    assert fleet == Fleet(name="f.1_a", store="rediss://r:6380/2", prometheus=PROMETHEUS,
                          lease_s=3.0, feedback_ttl_s=600.0)


def test_no_fleet_block_is_a_router_of_its_own(tmp_path: Path) -> None:
    assert load_snapshot(write_config(tmp_path, [base_route()])).fleet is None


BAD_FLEETS = [
    ("not_a_mapping", "fraud-prod", "router.yaml: fleet: expected a mapping"),
    ("unknown_key", {"name": "f", "store": STORE, "leese_s": 5},
     "router.yaml: fleet.leese_s: unknown key (did you mean 'lease_s'?)"),
    ("missing_store", {"name": "f"}, "router.yaml: fleet: missing required key 'store'"),
    ("missing_name", {"store": STORE}, "router.yaml: fleet: missing required key 'name'"),
    ("name_with_space", {"name": "fraud prod", "store": STORE}, "router.yaml: fleet.name: "),
    ("name_with_colon", {"name": "fraud:prod", "store": STORE}, "router.yaml: fleet.name: "),
    ("name_leading_dash", {"name": "-fraud", "store": STORE}, "router.yaml: fleet.name: "),
    ("name_too_long", {"name": "f" * 64, "store": STORE}, "router.yaml: fleet.name: "),
    ("name_number", {"name": 7, "store": STORE}, "router.yaml: fleet.name: expected a string"),
    ("http_store", {"name": "f", "store": "http://redis:6379"},
     "router.yaml: fleet.store: 'http://redis:6379' is not a redis:// "),
    ("bare_host_store", {"name": "f", "store": "redis:6379"},
     "router.yaml: fleet.store: 'redis:6379' is not a redis:// "),
    ("prometheus_no_scheme", {"name": "f", "store": STORE, "prometheus": "prometheus:9090"},
     "router.yaml: fleet.prometheus: 'prometheus:9090' is not an http(s):// URL"),
    ("prometheus_redis", {"name": "f", "store": STORE, "prometheus": STORE},
     "router.yaml: fleet.prometheus: "),
    ("lease_below_1", {"name": "f", "store": STORE, "lease_s": 0.5},
     "router.yaml: fleet.lease_s: 0.5 is below 1 s"),
    ("lease_zero", {"name": "f", "store": STORE, "lease_s": 0},
     "router.yaml: fleet.lease_s: must be greater than 0"),
    ("lease_string", {"name": "f", "store": STORE, "lease_s": "10"},
     "router.yaml: fleet.lease_s: expected a number"),
    ("ttl_negative", {"name": "f", "store": STORE, "feedback_ttl_s": -1},
     "router.yaml: fleet.feedback_ttl_s: must be greater than 0"),
]


@pytest.mark.parametrize("fleet, expected", [(f, e) for _, f, e in BAD_FLEETS],
                         ids=[i for i, _, _ in BAD_FLEETS])
def test_bad_fleet_block_is_an_error_naming_it(tmp_path: Path, fleet: Any, expected: str,
                                               ) -> None:
    errors = fleet_errors(tmp_path, fleet)
    assert any(e.startswith(expected) for e in errors), errors


@pytest.mark.parametrize("name", ["a", "fraud-prod", "f.1_x", "A" * 63], ids=len)
def test_good_fleet_names(tmp_path: Path, name: str) -> None:
    fleet = load_fleet(tmp_path, {"name": name, "store": STORE})
    assert fleet is not None and fleet.name == name


@pytest.mark.parametrize("fleet", [{"name": "", "store": STORE}, {"name": "f", "store": ""}],
                         ids=["empty_name", "empty_store"])
def test_empty_name_or_store_is_an_error(tmp_path: Path, fleet: dict[str, Any]) -> None:
    errors = fleet_errors(tmp_path, fleet)
    assert any(e.startswith("router.yaml: fleet.") for e in errors), errors


def fleet_rollout(prometheus: str | None) -> dict[str, Any]:
    block = {"name": "f", "store": STORE}
    if prometheus is not None:
        block["prometheus"] = prometheus
    return block


def test_rollout_in_a_fleet_needs_prometheus(tmp_path: Path) -> None:
    errors = fleet_errors(tmp_path, fleet_rollout(None),
                          [rollout_route(UPSTREAM_V1, UPSTREAM_V2)])
    assert errors == [("router.yaml: fleet.prometheus: route fraud has a rollout: a fleet "
                       "judges it on Prometheus's sums over every replica; set "
                       "fleet.prometheus")]


def test_rollout_in_a_fleet_with_prometheus_loads(tmp_path: Path) -> None:
    fleet = load_fleet(tmp_path, fleet_rollout(PROMETHEUS),
                       [rollout_route(UPSTREAM_V1, UPSTREAM_V2)])
    assert fleet is not None and fleet.prometheus == PROMETHEUS


def test_fleet_without_prometheus_and_without_rollouts_loads(tmp_path: Path) -> None:
    fleet = load_fleet(tmp_path, fleet_rollout(None))
    assert fleet is not None and fleet.prometheus is None


def test_empty_prometheus_is_an_error(tmp_path: Path) -> None:
    errors = fleet_errors(tmp_path, fleet_rollout(""), [rollout_route(UPSTREAM_V1, UPSTREAM_V2)])
    assert any(e.startswith("router.yaml: fleet.prometheus: ") for e in errors), errors


# -- serve --port/--admin-port -----------------------------------------------------------------

@pytest.mark.parametrize("port, admin_port", [(18080, 19090), (18080, None), (None, 19090)],
                         ids=["both", "port_only", "admin_only"])
def test_with_ports_replaces_ports_and_keeps_the_revision(tmp_path: Path, port: int | None,
                                                          admin_port: int | None) -> None:
    snapshot = load_snapshot(write_config(tmp_path, [base_route()],
                                          listen={"host": "127.0.0.1", "port": 8000},
                                          admin={"host": "127.0.0.1", "port": 9000}))
    changed = with_ports(port, admin_port)(snapshot)
    assert (changed.listen.port, changed.admin.port) == (port or 8000, admin_port or 9000)
    assert (changed.listen.host, changed.admin.host) == ("127.0.0.1", "127.0.0.1")
    assert changed.revision == snapshot.revision and changed.files == snapshot.files
    assert changed.routes == snapshot.routes
    assert (snapshot.listen.port, snapshot.admin.port) == (8000, 9000)  # never edited in place


def test_with_no_ports_is_the_same_snapshot(tmp_path: Path) -> None:
    snapshot = load_snapshot(write_config(tmp_path, [base_route()]))
    assert with_ports()(snapshot) is snapshot


# -- history --at in a fleet --------------------------------------------------------------------

def ts(second: int) -> str:
    return f"2026-05-01T10:00:{second:02d}.000Z"


def applied(second: int, replica: str, revision: str, v1: float, v2: float,
            rollout: str | None = "k1") -> dict[str, Any]:
    """An apply; ``rollout``: the key of the route's rollout block (None: a plain split)."""
    state: dict[str, Any] = {"weights": {"v1": v1, "v2": v2}}
    if rollout is not None:
        state["rollout"] = rollout
    return {"ts": ts(second), "event": "applied", "revision": revision, "source": "file",
            "routes": {"fraud": state}, "errors": [], "replica": replica}


def rollout_event(second: int, kind: str, step: int, v2: float, revision: str,
                  replica: str = "r1") -> dict[str, Any]:
    """An event of the leader ``replica``, which runs ``revision``."""
    return {"ts": ts(second), "event": kind, "revision": revision, "source": "rollout",
            "routes": {"fraud": {"weights": {"v1": 100 - v2, "v2": v2}, "step": step,
                                 "steps": 3, "status": "running", "generation": step + 1,
                                 "rollout": "k1"}},
            "errors": [], "evidence": {}, "replica": replica}


# Both revisions carry the same rollout block (revB changes something else), so a rollout
# event sets the weights of whichever revision a replica runs. r1 leads, then r2.
FLEET_HISTORY = [
    applied(1, "r1", "revA", 90, 10),
    applied(2, "r2", "revA", 90, 10),
    {"ts": ts(3), "event": "rejected", "revision": None, "source": "file", "routes": {},
     "errors": ["router.yaml: bad"], "replica": "r2"},
    rollout_event(4, "rollout_step", 1, 50, "revA"),
    applied(5, "r1", "revB", 50, 50),
    rollout_event(7, "paused", 1, 50, "revB"),
    applied(8, "r2", "revB", 50, 50),
    rollout_event(9, "rolled_back", 1, 0, "revB", replica="r2"),
]

Served = dict[str, tuple[str, dict[str, float], str]]

IN_FORCE: list[tuple[str, int, Served | None]] = [
    ("before_any_apply", 0, None),
    ("one_replica_applied", 1, {"r1": ("revA", {"v1": 90, "v2": 10}, "applied")}),
    ("both_on_revA", 2, {"r1": ("revA", {"v1": 90, "v2": 10}, "applied"),
                         "r2": ("revA", {"v1": 90, "v2": 10}, "applied")}),
    ("a_rejection_changes_nothing", 3, {"r1": ("revA", {"v1": 90, "v2": 10}, "applied"),
                                        "r2": ("revA", {"v1": 90, "v2": 10}, "applied")}),
    ("a_step_reaches_every_replica", 4,
     {"r1": ("revA", {"v1": 50, "v2": 50}, "rollout_step"),
      "r2": ("revA", {"v1": 50, "v2": 50}, "rollout_step")}),
    ("mixed_revisions", 5, {"r1": ("revB", {"v1": 50, "v2": 50}, "applied"),
                            "r2": ("revA", {"v1": 50, "v2": 50}, "rollout_step")}),
    ("between_events", 6, {"r1": ("revB", {"v1": 50, "v2": 50}, "applied"),
                           "r2": ("revA", {"v1": 50, "v2": 50}, "rollout_step")}),
    ("pause_after_an_apply", 7, {"r1": ("revB", {"v1": 50, "v2": 50}, "paused"),
                                 "r2": ("revA", {"v1": 50, "v2": 50}, "paused")}),
    ("late_apply_wins_over_older_event", 8,
     {"r1": ("revB", {"v1": 50, "v2": 50}, "paused"),
      "r2": ("revB", {"v1": 50, "v2": 50}, "applied")}),
    ("any_leader_s_event_counts", 9, {"r1": ("revB", {"v1": 100, "v2": 0}, "rolled_back"),
                                      "r2": ("revB", {"v1": 100, "v2": 0}, "rolled_back")}),
]


def served(answer: dict[str, Any] | None) -> Served | None:
    if answer is None:
        return None
    return {replica: (state["revision"], state["routes"]["fraud"]["weights"],
                      state["routes"]["fraud"]["set_by"]["event"])
            for replica, state in answer["replicas"].items()}


@pytest.mark.parametrize("second, expected", [(s, e) for _, s, e in IN_FORCE],
                         ids=[i for i, _, _ in IN_FORCE])
def test_fleet_in_force(second: int, expected: Served | None) -> None:
    answer = fleet_in_force(FLEET_HISTORY, ts(second))
    assert served(answer) == expected
    if answer is not None:
        assert answer["at"] == ts(second)


@pytest.mark.parametrize("second", [s for _, s, _ in IN_FORCE], ids=[i for i, _, _ in IN_FORCE])
def test_fleet_in_force_follows_time_not_stream_order(second: int) -> None:
    """Replicas append to the stream when they reach the store, not in time order."""
    shuffled = FLEET_HISTORY[:]
    random.Random(second).shuffle(shuffled)
    assert shuffled != FLEET_HISTORY
    assert fleet_in_force(shuffled, ts(second)) == fleet_in_force(FLEET_HISTORY, ts(second))


def test_fleet_in_force_rollout_step_reports_its_step() -> None:
    answer = fleet_in_force(FLEET_HISTORY, ts(4))
    assert answer is not None
    set_by = answer["replicas"]["r2"]["routes"]["fraud"]["set_by"]
    assert (set_by["step"], set_by["steps"], set_by["status"], set_by["revision"]) == \
        (1, 3, "running", "revA")


def test_fleet_in_force_rollout_weights_only_where_the_revision_has_the_rollout() -> None:
    # revA's fraud route is a plain split; revB starts a rollout on it. r2 stays on revA and
    # serves v1 100 whatever the leader (on revB) steps: the controller only sets the weights
    # of routes with a rollout block. The events name their revision.
    events = [applied(1, "r1", "revA", 100, 0, None), applied(2, "r2", "revA", 100, 0, None),
              applied(3, "r1", "revB", 90, 10),
              rollout_event(4, "rollout_step", 1, 50, "revB")]
    answer = fleet_in_force(events, ts(5))
    assert answer is not None
    assert answer["replicas"]["r1"]["routes"]["fraud"]["weights"] == {"v1": 50, "v2": 50}
    assert answer["replicas"]["r2"]["routes"]["fraud"]["weights"] == {"v1": 100, "v2": 0}


def test_fleet_in_force_equal_times_keep_stream_order() -> None:
    # the leader steps the old block, then r2 applies a revision that restarts the rollout,
    # both within the same millisecond: what r2 applied last is what it serves
    events = [applied(1, "r2", "revA", 90, 10), rollout_event(2, "rollout_step", 1, 50, "revA"),
              applied(2, "r2", "revB", 90, 10)]
    answer = fleet_in_force(events, ts(3))
    assert answer is not None
    assert answer["replicas"]["r2"]["routes"]["fraud"]["set_by"]["event"] == "applied"


# -- rollout states: reading and adopting -------------------------------------------------------

def state(generation: int, weight: float = 10.0, status: str = "running") -> RolloutState:
    return RolloutState(route="fraud", key="k1", step=0, weight=weight, status=status,
                        step_started=1.0, updated=2.0, generation=generation)


def test_rollout_state_of_round_trips_public() -> None:
    original = RolloutState(route="fraud", key="k1", step=2, weight=50.0, status="paused",
                            step_started=1.0, updated=2.0, generation=7, window_start=1.5,
                            reason="who asked")
    assert RolloutState.of(original.public()) == original


def test_rollout_state_of_ignores_unknown_keys() -> None:
    raw = {**state(3).public(), "written_by": "a newer replica", "canary_share": 0.1}
    assert RolloutState.of(raw) == state(3)


def controller(tmp_path: Path) -> Controller:
    return Controller(Following(), History(tmp_path / "state"), LocalEvidence(), Metrics())


ADOPT = [
    ("none_held", None, 1, True),
    ("newer", 2, 3, True),
    ("much_newer", 2, 9, True),
    ("same_generation", 2, 2, False),
    ("older", 3, 2, False),
]


@pytest.mark.parametrize("ours, theirs, taken", [(o, t, a) for _, o, t, a in ADOPT],
                         ids=[i for i, _, _, _ in ADOPT])
def test_adopt_takes_only_newer_generations(tmp_path: Path, ours: int | None, theirs: int,
                                            taken: bool) -> None:
    c = controller(tmp_path)
    if ours is not None:
        c.states["fraud"] = state(ours, weight=10.0)
    stored = {"fraud": state(theirs, weight=50.0).public()}
    assert c.adopt(stored) is taken
    expected = state(theirs, weight=50.0) if taken else state(ours or 0, weight=10.0)
    assert c.states["fraud"] == expected


def test_adopt_leaves_routes_not_in_the_store(tmp_path: Path) -> None:
    c = controller(tmp_path)
    c.states["other"] = RolloutState(route="other", key="k2", step=1, weight=50.0,
                                     status="running", step_started=1.0, updated=2.0,
                                     generation=4)
    assert c.adopt({"fraud": state(1).public()}) is True
    assert sorted(c.states) == ["fraud", "other"] and c.states["other"].generation == 4
    assert c.adopt({}) is False


@pytest.mark.parametrize("field, value", [
    ("generation", "7"), ("generation", True), ("step", 1.5), ("weight", "50"),
    ("status", None), ("key", 3), ("window_start", "soon"), ("reference", [1, 2])],
    ids=lambda v: repr(v))
def test_adopt_skips_a_stored_state_of_the_wrong_types(tmp_path: Path, field: str,
                                                       value: Any) -> None:
    c = controller(tmp_path)
    c.states["fraud"] = state(3, weight=10.0)
    stored = {"fraud": {**state(9, weight=50.0).public(), field: value}}
    with pytest.raises(TypeError):
        RolloutState.of(stored["fraud"])
    assert c.adopt(stored) is False
    assert c.states["fraud"] == state(3, weight=10.0)  # a corrupt entry never wedges ours
