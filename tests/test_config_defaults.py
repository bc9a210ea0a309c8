"""Defaults are written once, as the field defaults of the snapshot types: the loader, the
offline commands' raw reads and the rollout client all answer with them. The configs are
given as bytes (``load_snapshot(files=...)``): nothing is read from disk."""

from __future__ import annotations

from pathlib import Path

import pytest

from router.config import (
    Admin,
    Drift,
    Limits,
    Listen,
    Outlier,
    PredictionLogSettings,
    Rollout,
    Route,
    Shadow,
    load_snapshot,
)
from router.config.raw import admin_of, config_paths
from router.config.snapshot import default

MINIMAL = b"""
routes:
  - name: r
    match: {path_prefix: /r}
    versions: {a: {url: "http://127.0.0.1:9001"}, b: {url: "http://127.0.0.1:9002"}}
    split: {a: 90, b: 10}
    shadow: [{version: b, percent: 5}]
"""

ROLLOUT = b"""
routes:
  - name: r
    match: {path_prefix: /r}
    timeout_s: 2.5
    versions: {a: {url: "http://127.0.0.1:9001"}, b: {url: "http://127.0.0.1:9002"}}
    rollout: {baseline: a, canary: b, steps: [5, 50]}
    shadow: [{version: b, percent: 5}]
"""


def _load(text: bytes, where: Path = Path("/nowhere/router.yaml")):
    return load_snapshot(where, env={}, files={where.name: text})


def test_a_silent_file_compiles_to_the_field_defaults() -> None:
    snapshot = _load(MINIMAL)
    assert snapshot.listen == Listen()
    assert snapshot.admin == Admin()
    assert snapshot.limits == Limits()
    assert snapshot.prediction_log == PredictionLogSettings(dir=Path("/nowhere/logs"))
    assert snapshot.state_dir == Path("/nowhere/state")
    route = snapshot.routes[0]
    for name in ("protocol", "validation", "timeout_s", "outlier", "drift", "blue_green",
                 "sticky", "override", "fallback", "rollout"):
        assert getattr(route, name) == default(Route, name), name
    assert route.outlier == Outlier() and route.drift == Drift()
    (shadow,) = route.shadows
    assert shadow == Shadow(version="b", percent=5, timeout_s=default(Route, "timeout_s"))


def test_a_silent_rollout_and_shadow_take_their_defaults() -> None:
    route = _load(ROLLOUT).routes[0]
    assert route.rollout is not None
    for name in ("step_min_s", "step_min_requests", "checks", "on_failure"):
        assert getattr(route.rollout, name) == default(Rollout, name), name
    (shadow,) = route.shadows
    assert shadow.timeout_s == 2.5  # a shadow inherits its route's timeout
    assert (shadow.max_inflight, shadow.atol, shadow.rtol) == (
        default(Shadow, "max_inflight"), default(Shadow, "atol"), default(Shadow, "rtol"))


@pytest.mark.parametrize("text", [MINIMAL, MINIMAL + b"state_dir: s\nprediction_log: {dir: l}\n"],
                         ids=["silent", "named"])
def test_offline_commands_find_the_folders_the_router_uses(tmp_path: Path,
                                                           text: bytes) -> None:
    path = tmp_path / "router.yaml"
    path.write_bytes(text)
    snapshot = load_snapshot(path, env={})
    assert config_paths(path) == (snapshot.state_dir, snapshot.prediction_log.dir)


@pytest.mark.parametrize(("text", "url"), [
    (MINIMAL, f"http://{Admin().host}:{Admin().port}"),
    (MINIMAL + b"admin: {port: 9999}\n", f"http://{Admin().host}:9999"),
], ids=["silent", "port"])
def test_the_rollout_client_asks_the_admin_port_the_router_binds(tmp_path: Path, text: bytes,
                                                                  url: str) -> None:
    path = tmp_path / "router.yaml"
    path.write_bytes(text)
    admin = load_snapshot(path, env={}).admin
    assert admin_of(path) == (f"http://{admin.host}:{admin.port}", None) == (url, None)


def test_default_names_a_field_without_one() -> None:
    with pytest.raises(LookupError):
        default(Route, "name")
