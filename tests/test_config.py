"""Config loading and validation: pure, table-driven, on real files in tmp_path."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import REGISTRY, base_route, write_config

from router.config import load_snapshot
from router.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def errors_of(tmp_path: Path, routes: list[dict[str, Any]], **top: Any) -> list[str]:
    path = write_config(tmp_path, routes, **top)
    with pytest.raises(ConfigError) as info:
        load_snapshot(path)
    return info.value.errors


def test_example_config_loads() -> None:
    snapshot = load_snapshot(ROOT / "config" / "router.yaml")
    route = snapshot.route("fraud")
    assert route is not None
    assert route.bounds == (9500, 10000)
    assert route.sticky is not None and route.sticky.key == "x-user-id"
    assert route.pinned["2.0.0"] == "v2"
    assert len(snapshot.revision) == 12


BAD_ROUTES = [
    ("weights", base_route(split={"v1": 100, "v2": 5}),
     "router.yaml: routes[fraud].split: weights sum to 105, expected 100"),
    ("typo", {**base_route(), "wieght": 3}, "routes[fraud].wieght: unknown key"),
    ("unknown_split_version", base_route(split={"v1": 95, "v9": 5}),
     "routes[fraud].split.v9: unknown version 'v9'"),
    ("split_and_blue_green",
     base_route(blue_green={"blue": "v1", "green": "v2", "active": "blue"}),
     "routes[fraud]: give exactly one of split, blue_green or rollout"),
    ("neither", base_route(split=None), "give exactly one of split, blue_green or rollout"),
    ("bad_colour", base_route(split=None, blue_green={"blue": "v1", "green": "v7",
                                                     "active": "blue"}),
     "routes[fraud].blue_green.green: unknown version 'v7'"),
    ("bad_active", base_route(split=None, blue_green={"blue": "v1", "green": "v2",
                                                     "active": "purple"}),
     "blue_green.active: expected one of blue, green"),
    ("shadow_unknown", base_route(shadow=[{"version": "v4", "percent": 10}]),
     "routes[fraud].shadow[0].version: unknown version 'v4'"),
    ("override_unknown", base_route(override={"header": "x-o", "allow": ["v5"]}),
     "routes[fraud].override.allow[0]: unknown version 'v5'"),
    ("fallback_unknown", base_route(fallback="v0"), "routes[fraud].fallback: unknown version"),
    ("bad_scheme", base_route(versions={"v1": {"url": "ftp://h/x"}, "v2": {"url": "http://h"}}),
     "routes[fraud].versions.v1.url: URL must be http or https"),
    ("bad_port", base_route(versions={"v1": {"url": "http://h:99999/x"},
                                      "v2": {"url": "http://h"}}),
     "routes[fraud].versions.v1.url: invalid URL"),
    ("no_url", base_route(versions={"v1": {}, "v2": {"url": "http://h"}}),
     "routes[fraud].versions.v1: give exactly one of url or urls"),
    ("reserved_prefix", base_route(match={"path_prefix": "/-/x"}), "reserved for the router"),
    ("relative_prefix", base_route(match={"path_prefix": "v2/x"}), "must start with '/'"),
    ("numeric_version", base_route(split={"v1": 95, 2: 5}), "quote it"),
    ("weight_range", base_route(split={"v1": 120, "v2": -20}), "must be at most 100"),
    ("model_unknown", base_route(model="spam"), "model 'spam' is not in the registry"),
    ("version_not_in_registry",
     base_route(versions={"v1": {"url": "http://h"}, "v7": {"url": "http://h"}},
                split={"v1": 100}),
     "version 'v7' of model 'fraud' is not in the registry"),
    ("bad_protocol", base_route(protocol="grpc"), "protocol: expected one of v2, json, raw"),
    ("sticky_two_keys", base_route(sticky={"header": "a", "cookie": "b"}),
     "give exactly one of header, cookie or json_field"),
    ("grpc_no_port", base_route(versions={"v1": {"url": "http://h/m", "grpc": "h"},
                                          "v2": {"url": "http://h"}}),
     "routes[fraud].versions.v1.grpc: must be host:port, got 'h'"),
    ("grpc_scheme", base_route(versions={"v1": {"url": "http://h/m",
                                                "grpc": "grpc://h:8081"},
                                         "v2": {"url": "http://h"}}),
     "routes[fraud].versions.v1.grpc: must be host:port"),
    ("grpc_port_range", base_route(versions={"v1": {"url": "http://h/m", "grpc": "h:70000"},
                                             "v2": {"url": "http://h"}}),
     "routes[fraud].versions.v1.grpc: must be host:port"),
    ("grpc_crlf", base_route(versions={"v1": {"url": "http://h/m", "grpc": "h:1\r\nx: y"},
                                       "v2": {"url": "http://h"}}),
     "routes[fraud].versions.v1.grpc: must be host:port, got CR"),
]


@pytest.mark.parametrize("route,expected", [(r, e) for _, r, e in BAD_ROUTES],
                         ids=[i for i, _, _ in BAD_ROUTES])
def test_bad_route_is_rejected_with_path(tmp_path: Path, route: dict, expected: str) -> None:
    errors = errors_of(tmp_path, [route])
    assert any(expected in e for e in errors), errors


def test_every_error_is_collected(tmp_path: Path) -> None:
    route = base_route(split={"v1": 90, "v2": 5}, fallback="v0", wieght=1)
    errors = errors_of(tmp_path, [route], limits={"max_body_mb": -1})
    joined = "\n".join(errors)
    assert "weights sum to 95" in joined
    assert "fallback: unknown version 'v0'" in joined
    assert "wieght: unknown key" in joined
    assert "limits.max_body_mb" in joined


def test_duplicate_names_and_identical_prefixes(tmp_path: Path) -> None:
    first = base_route()
    second = base_route(match={"path_prefix": "/v2/models/fraud/"})
    errors = errors_of(tmp_path, [first, second])
    assert any("duplicate route name 'fraud'" in e for e in errors)
    assert any("prefix /v2/models/fraud is already used by route 'fraud'" in e for e in errors)


def test_overlapping_prefixes_are_fine(tmp_path: Path) -> None:
    narrow = base_route(name="narrow", match={"path_prefix": "/v2/models/fraud/special"})
    snapshot = load_snapshot(write_config(tmp_path, [base_route(), narrow]))
    assert [r.name for r in snapshot.routes] == ["narrow", "fraud"]


def test_yaml_1_2_off_is_a_string(tmp_path: Path) -> None:
    path = write_config(tmp_path, [base_route()])
    text = path.read_text() + ""
    doc = yaml.safe_load(text)
    path.write_text(yaml.safe_dump(doc).replace("protocol: v2", "protocol: v2\n  validation: off"))
    snapshot = load_snapshot(path)
    assert snapshot.routes[0].validation == "off"


def test_unquoted_model_version_needs_quotes(tmp_path: Path) -> None:
    registry = copy.deepcopy(REGISTRY)
    registry["models"]["fraud"]["versions"]["v1"]["model_version"] = 1.0
    path = write_config(tmp_path, [base_route()], registry=registry)
    with pytest.raises(ConfigError) as info:
        load_snapshot(path)
    assert any("registry.yaml: models.fraud.versions.v1.model_version" in e and "quote it" in e
               for e in info.value.errors), info.value.errors


def test_env_expansion_and_unset_variable(tmp_path: Path) -> None:
    versions = {"v1": {"url": "http://127.0.0.1:9001/m",
                       "headers": {"Authorization": "Bearer ${V1_TOKEN}"}},
                "v2": {"url": "http://${V2_HOST}:9002/m"}}
    path = write_config(tmp_path, [base_route(versions=versions)])
    snapshot = load_snapshot(path, env={"V1_TOKEN": "s3cret", "V2_HOST": "127.0.0.2"})
    route = snapshot.routes[0]
    assert route.versions["v1"].headers == (("authorization", "Bearer s3cret"),)
    assert route.versions["v2"].urls == ("http://127.0.0.2:9002/m",)
    assert "s3cret" not in str(snapshot.describe())
    with pytest.raises(ConfigError) as info:
        load_snapshot(path, env={"V1_TOKEN": "x"})
    assert any("versions.v2.url: environment variable V2_HOST is not set" in e
               for e in info.value.errors)


def test_route_without_model_is_allowed_with_warning(tmp_path: Path) -> None:
    route = base_route(model=None, input_schema=None, protocol="json")
    snapshot = load_snapshot(write_config(tmp_path, [route]))
    assert snapshot.routes[0].model is None
    assert any("no model and no input_schema" in w for w in snapshot.warnings)


def test_invalid_yaml_names_line(tmp_path: Path) -> None:
    path = tmp_path / "router.yaml"
    path.write_text("routes:\n  - name: [unclosed\n")
    with pytest.raises(ConfigError) as info:
        load_snapshot(path)
    assert info.value.errors[0].startswith("router.yaml: line ")


def test_check_cli_exit_codes(tmp_path: Path) -> None:
    good = write_config(tmp_path / "good", [base_route()])
    bad = write_config(tmp_path / "bad", [base_route(split={"v1": 100, "v2": 5})])
    run = [sys.executable, "-m", "router.cli", "check", "-c"]
    ok = subprocess.run([*run, str(good)], capture_output=True, text=True, cwd=ROOT)
    assert ok.returncode == 0, ok.stderr
    assert "fraud" in ok.stdout and "s3://d/v1.parquet" in ok.stdout
    failed = subprocess.run([*run, str(bad)], capture_output=True, text=True, cwd=ROOT)
    assert failed.returncode == 1
    assert "routes[fraud].split: weights sum to 105, expected 100" in failed.stderr
    usage = subprocess.run([sys.executable, "-m", "router.cli", "nope"], capture_output=True,
                           text=True, cwd=ROOT)
    assert usage.returncode == 2


@pytest.mark.parametrize("name", ["v2-servers.yaml", "json-endpoint.yaml"])
def test_readme_example_configs_pass_check(name: str) -> None:
    snapshot = load_snapshot(ROOT / "config" / "examples" / name, env={"FRAUD_V2_TOKEN": "t"})
    assert snapshot.routes and not [w for w in snapshot.warnings if "no model" in w]


def test_grpc_listener_and_version_addresses(tmp_path: Path) -> None:
    versions = {"v1": {"url": "http://h:8080/v2/models/fraud-a", "grpc": "h:8081"},
                "v2": {"url": "http://h:8080/v2/models/fraud/versions/7", "grpc": "[::1]:81"},
                "v3": {"url": "http://h/m"}}
    path = write_config(tmp_path, [base_route(versions=versions)], grpc={"port": 8181})
    snapshot = load_snapshot(path)
    assert snapshot.grpc is not None and snapshot.grpc.port == 8181
    assert snapshot.grpc.host == "127.0.0.1"
    route = snapshot.route("fraud")
    assert route is not None
    assert route.versions["v1"].grpc == "h:8081"
    assert route.versions["v1"].grpc_model == ("fraud-a", "")
    assert route.versions["v2"].grpc_model == ("fraud", "7")   # the url pins a version
    assert route.versions["v3"].grpc is None
    assert load_snapshot(write_config(tmp_path, [base_route()])).grpc is None
    from router.config.check import summary   # what `model-router check` prints
    lines = summary(snapshot)
    assert lines[0] == "  gRPC V2 on 127.0.0.1:8181"
    assert lines[1].endswith("grpc=h:8081") and "grpc=" not in lines[3]


def test_grpc_port_conflicts_and_a_listener_nothing_can_reach(tmp_path: Path) -> None:
    errors = errors_of(tmp_path, [base_route()], listen={"host": "127.0.0.1", "port": 8080},
                       grpc={"host": "127.0.0.1", "port": 8080})
    assert any("grpc.port: the gRPC port 8080 is the listen port" in e for e in errors)
    snapshot = load_snapshot(write_config(tmp_path, [base_route()], grpc={"port": 8181}))
    assert any("no version names a grpc address" in w for w in snapshot.warnings)


def test_grpc_port_flag_overrides_or_opens_the_listener(tmp_path: Path) -> None:
    from router.control.reload import RESTART_ONLY, with_ports

    plain = load_snapshot(write_config(tmp_path, [base_route()],
                                       listen={"host": "127.0.0.2", "port": 8080}))
    opened = with_ports(grpc_port=9191)(plain)
    assert opened.grpc is not None and (opened.grpc.host, opened.grpc.port) == \
        ("127.0.0.2", 9191)
    assert opened.revision == plain.revision
    assert "grpc" in RESTART_ONLY

