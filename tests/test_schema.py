"""Registry, the deploy-time schema gate, and request-time validation."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from helpers import (
    REGISTRY,
    admin_url,
    base_route,
    echo_versions,
    rewrite,
    route,
    url,
    wait_for,
    write_config,
)

from router.config import load_snapshot
from router.config.registry import Field, Schema
from router.errors import ConfigError
from router.validation import Validator

ROOT = Path(__file__).resolve().parents[1]
TRAFFIC_10D = {"fields": {
    "amount": {"type": "float", "min": 0},
    "avg_purchase_last_10_days": {"type": "float", "min": 0},
    "country": {"type": "string", "enum": ["US", "DE", "FR"]},
}}


def registry_with(v2_schema: dict[str, Any], traffic: dict[str, Any] | None = None) -> dict:
    registry = copy.deepcopy(REGISTRY)
    registry["schemas"]["fraud-features@2"] = v2_schema
    if traffic is not None:
        registry["schemas"]["fraud-features@1"] = traffic
    registry["models"]["fraud"]["versions"]["v2"]["schema"] = "fraud-features@2"
    return registry


def load_errors(tmp_path: Path, registry: dict, **route_changes: Any) -> ConfigError:
    path = write_config(tmp_path, [base_route(**route_changes)], registry=registry)
    with pytest.raises(ConfigError) as info:
        load_snapshot(path)
    return info.value


def test_concept_example_check_exits_1_with_both_names(tmp_path: Path) -> None:
    registry = registry_with(copy.deepcopy(REGISTRY["schemas"]["fraud-features@1"]),
                             traffic=TRAFFIC_10D)
    path = write_config(tmp_path, [base_route()], registry=registry)
    done = subprocess.run([sys.executable, "-m", "router.cli", "check", "-c", str(path)],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 1
    assert "v2 requires avg_purchase_last_7_days; traffic carries avg_purchase_last_10_days" \
        in done.stderr
    assert "routes[fraud]" in done.stderr and "fraud-features@1" in done.stderr


async def test_live_reload_refuses_the_incompatible_schema(tmp_path: Path, upstreams,
                                                           start_router, client) -> None:
    urls = await echo_versions(upstreams, "v1", "v2")
    path = write_config(tmp_path, [route(urls, input_schema="fraud-features@1",
                                         validation="off")])
    app = await start_router(path)
    good = app.live.snapshot.revision
    (tmp_path / "registry.yaml").write_text(yaml.safe_dump(registry_with(
        copy.deepcopy(REGISTRY["schemas"]["fraud-features@1"]), traffic=TRAFFIC_10D)))
    rewrite(path, lambda doc: doc)
    await wait_for(lambda: app.reloader.last_error is not None, timeout=2)
    assert app.live.snapshot.revision == good
    async with client.get(admin_url(app, "/-/config")) as resp:
        errors = (await resp.json())["last_error"]["errors"]
    assert any("avg_purchase_last_7_days" in e and "avg_purchase_last_10_days" in e
               for e in errors)
    history = (tmp_path / "state" / "history.jsonl").read_text().splitlines()
    assert orjson.loads(history[-1])["event"] == "rejected"
    async with client.post(url(app, "/v2/models/fraud/infer"), data=b"{}") as resp:
        assert resp.status == 200  # the old config keeps serving


GATE = [
    ("float_traffic_string_model", {"amount": {"type": "string"}},
     "field amount is float in traffic but v2 was trained on string"),
    ("float_traffic_int_model", {"amount": {"type": "int"}},
     "field amount is float in traffic but v2 was trained on int"),
]


@pytest.mark.parametrize("v2_fields,expected", [g[1:] for g in GATE], ids=[g[0] for g in GATE])
def test_incompatible_types(tmp_path: Path, v2_fields: dict, expected: str) -> None:
    fields = copy.deepcopy(REGISTRY["schemas"]["fraud-features@1"]["fields"])
    fields.update(v2_fields)
    error = load_errors(tmp_path, registry_with({"fields": fields}))
    assert any(expected in e for e in error.errors), error.errors


def test_int_widens_to_float_and_optional_fields_may_be_absent(tmp_path: Path) -> None:
    traffic = copy.deepcopy(REGISTRY["schemas"]["fraud-features@1"])
    traffic["fields"]["amount"] = {"type": "int", "min": 0}
    v2 = copy.deepcopy(REGISTRY["schemas"]["fraud-features@1"])
    v2["fields"]["extra_optional"] = {"type": "float", "required": False}
    path = write_config(tmp_path, [base_route()], registry=registry_with(v2, traffic=traffic))
    snapshot = load_snapshot(path)
    assert snapshot.routes[0].input_schema == "fraud-features@1"


def test_field_order_matters_for_positional_inputs(tmp_path: Path) -> None:
    fields = copy.deepcopy(REGISTRY["schemas"]["fraud-features@1"]["fields"])
    reordered = {"country": fields["country"], **{k: v for k, v in fields.items()
                                                  if k != "country"}}
    error = load_errors(tmp_path, registry_with({"fields": reordered}))
    assert any("fields in another order" in e for e in error.errors)


def test_wider_traffic_range_and_enum_warn(tmp_path: Path) -> None:
    v2 = copy.deepcopy(REGISTRY["schemas"]["fraud-features@1"])
    v2["fields"]["amount"]["max"] = 10_000
    v2["fields"]["country"]["enum"] = ["US", "DE"]
    snapshot = load_snapshot(write_config(tmp_path, [base_route()], registry=registry_with(v2)))
    joined = "\n".join(snapshot.warnings)
    assert "amount may go above v2's max 10000" in joined
    assert "country may carry FR, unseen by v2" in joined


def test_registry_errors_name_file_and_path(tmp_path: Path) -> None:
    registry = copy.deepcopy(REGISTRY)
    registry["schemas"]["fraud-features@1"]["fields"]["amount"] = {"type": "double",
                                                                   "min": 5, "max": 1}
    registry["models"]["fraud"]["versions"]["v3"]["schema"] = "nope@1"
    error = load_errors(tmp_path, registry)
    joined = "\n".join(error.errors)
    assert "registry.yaml: schemas.fraud-features@1.fields.amount.type: expected one of" in joined
    assert "registry.yaml: models.fraud.versions.v3.schema: unknown schema 'nope@1'" in joined


SCHEMA = Schema("s@1", (
    Field("amount", "float", min=0),
    Field("count", "int", max=10),
    Field("country", "string", enum=("US", "DE")),
    Field("flag", "bool", required=False),
    Field("note", "string", required=False, nullable=True),
))

VALIDATIONS = [
    ("json_object_ok", "json", {"amount": 1.5, "count": 3, "country": "US"}, []),
    ("json_int_for_float_ok", "json", {"amount": 2, "count": 3, "country": "US"}, []),
    ("json_missing", "json", {"amount": 1.0, "country": "US"}, [("count", "missing", 0)]),
    ("json_type", "json", {"amount": "1", "count": 3, "country": "US"}, [("amount", "type", 0)]),
    ("json_bool_is_not_number", "json", {"amount": True, "count": 3, "country": "US"},
     [("amount", "type", 0)]),
    ("json_range", "json", {"amount": -1, "count": 11, "country": "US"},
     [("amount", "min", 0), ("count", "max", 0)]),
    ("json_enum", "json", {"amount": 1, "count": 1, "country": "FR"}, [("country", "enum", 0)]),
    ("json_null", "json", {"amount": None, "count": 1, "country": "US", "note": None},
     [("amount", "null", 0)]),
    ("json_instances_batch", "json", {"instances": [
        {"amount": 1, "count": 1, "country": "US"}, {"amount": 1, "count": 1.5, "country": "US"},
        {"amount": 1, "country": "DE"}]}, [("count", "type", 1), ("count", "missing", 2)]),
    ("json_positional_rows", "json", {"instances": [[1.0, 2, "US", True, None],
                                                    [1.0, 2, "XX", False, "n"]]},
     [("country", "enum", 1)]),
    ("json_row_wrong_width", "json", [[1.0, 2]], [(None, "shape", 0)]),
    ("json_columns", "json", {"inputs": {"amount": [1, -2], "count": [1, 2],
                                         "country": ["US", "DE"]}}, [("amount", "min", 1)]),
    ("v2_named_ok", "v2", {"inputs": [
        {"name": "amount", "datatype": "FP32", "shape": [2], "data": [1.0, 2.0]},
        {"name": "count", "datatype": "INT64", "shape": [2, 1], "data": [[1], [2]]},
        {"name": "country", "datatype": "BYTES", "shape": [2], "data": ["US", "DE"]}]}, []),
    ("v2_datatype", "v2", {"inputs": [
        {"name": "amount", "datatype": "BYTES", "shape": [1], "data": ["1"]},
        {"name": "count", "datatype": "INT64", "shape": [1], "data": [1]},
        {"name": "country", "datatype": "BYTES", "shape": [1], "data": ["US"]}]},
     [("amount", "datatype", None)]),
    ("v2_shape", "v2", {"inputs": [
        {"name": "amount", "datatype": "FP64", "shape": [3], "data": [1.0]},
        {"name": "count", "datatype": "INT64", "shape": [1], "data": [1]},
        {"name": "country", "datatype": "BYTES", "shape": [1], "data": ["US"]}]},
     [("amount", "shape", None)]),
    ("v2_values_per_row", "v2", {"inputs": [
        {"name": "amount", "datatype": "FP64", "shape": [2], "data": [1.0, -1.0]},
        {"name": "count", "datatype": "INT64", "shape": [2], "data": [1, 2]},
        {"name": "country", "datatype": "BYTES", "shape": [2], "data": ["US", "US"]}]},
     [("amount", "min", 1)]),
    ("v2_matrix", "v2", {"inputs": [{"name": "features", "datatype": "BYTES", "shape": [2, 5],
                                     "data": [1.0, 1, "US", True, None,
                                              2.0, 99, "DE", False, "x"]}]},
     [("count", "max", 1)]),
    ("v2_matrix_wrong_width", "v2", {"inputs": [{"name": "x", "datatype": "FP32",
                                                 "shape": [1, 3], "data": [1, 2, 3]}]},
     [(None, "shape", None)]),
    ("v2_not_v2", "v2", {"instances": []}, [(None, "format", None)]),
]


@pytest.mark.parametrize("protocol,doc,expected", [v[1:] for v in VALIDATIONS],
                         ids=[v[0] for v in VALIDATIONS])
def test_validator_table(protocol: str, doc: Any, expected: list[tuple]) -> None:
    got = Validator(SCHEMA, protocol).validate(doc)
    assert [(v["field"], v["kind"], v["row"]) for v in got] == expected
    for v in got:
        assert {"field", "kind", "expected", "got", "row"} <= v.keys()


def v2_body(amount: float, country: str = "US") -> bytes:
    return orjson.dumps({"inputs": [
        {"name": "amount", "datatype": "FP64", "shape": [1], "data": [amount]},
        {"name": "avg_purchase_last_7_days", "datatype": "FP64", "shape": [1], "data": [3.0]},
        {"name": "country", "datatype": "BYTES", "shape": [1], "data": [country]}]})


async def test_enforce_log_and_off_through_the_proxy(tmp_path: Path, upstreams, start_router,
                                                     client) -> None:
    urls = await echo_versions(upstreams, "v1")
    routes = [route(urls, name=mode, match={"path_prefix": f"/{mode}"},
                    input_schema="fraud-features@1", validation=mode)
              for mode in ("enforce", "log", "off")]
    app = await start_router(write_config(tmp_path, routes))
    bad = v2_body(-5, "XX")
    async with client.post(url(app, "/enforce/infer"), data=bad) as resp:
        body = await resp.json()
        assert resp.status == 422, body
    assert body["code"] == "schema_violation"
    assert {(d["field"], d["kind"]) for d in body["details"]} == {("amount", "min"),
                                                                  ("country", "enum")}
    async with client.post(url(app, "/enforce/infer"), data=v2_body(5)) as resp:
        assert resp.status == 200
    async with client.post(url(app, "/enforce/infer"), data=b"{nope") as resp:
        assert resp.status == 400
    for mode in ("log", "off"):
        async with client.post(url(app, f"/{mode}/infer"), data=bad) as resp:
            assert resp.status == 200, mode
    text = app.metrics.render().decode()
    assert 'model_router_schema_violations_total{field="amount",kind="min",route="log"} 1.0' \
        in text
    assert 'route="off"' not in "".join(line for line in text.splitlines()
                                        if "schema_violations_total{" in line)
    await app.predlog.flush()
    from router.analysis.audit import iter_records
    all_records = iter_records(tmp_path / "logs")
    assert [r["status"] for r in all_records if r["route"] == "enforce"] == [422, 200, 400]
    records = {r["route"]: r for r in all_records}
    assert next(r for r in all_records if r["status"] == 422)["violations"]
    assert records["log"]["violations"] and records["log"]["schema"] == "fraud-features@1"
    assert records["off"]["violations"] == []


@pytest.mark.slow
def test_baseline_from_csv_and_inferred_schema(tmp_path: Path) -> None:
    lines = ["amount,avg_purchase_last_7_days,country,is_new_user"]
    for i in range(1000):
        lines.append(f"{i},{i % 50},{'US' if i % 4 else 'DE'},{i % 5 == 0}")
    data = tmp_path / "train.csv"
    data.write_text("\n".join(lines) + "\n")
    config = write_config(tmp_path, [base_route()])
    out = tmp_path / "b.json"
    done = subprocess.run([sys.executable, "-m", "router.cli", "baseline", "-c", str(config),
                           "--from", str(data), "--schema", "fraud-features@1", "--out",
                           str(out)], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    baseline = orjson.loads(out.read_bytes())
    assert baseline["schema"] == "fraud-features@1" and baseline["rows"] == 1000
    amount = baseline["features"]["amount"]
    assert amount["kind"] == "numeric" and len(amount["edges"]) == 11
    assert amount["fractions"] == pytest.approx([0.1] * 10, abs=0.002)
    assert baseline["features"]["country"]["fractions"] == {"US": 0.75, "DE": 0.25}
    assert baseline["features"]["is_new_user"]["fractions"] == {"false": 0.8, "true": 0.2}

    inferred = subprocess.run([sys.executable, "-m", "router.cli", "baseline", "--from",
                               str(data), "--schema", "new@1", "--infer", "--out",
                               str(tmp_path / "n.json")],
                              capture_output=True, text=True, cwd=ROOT)
    assert inferred.returncode == 0, inferred.stderr
    fields = yaml.safe_load(inferred.stdout)["schemas"]["new@1"]["fields"]
    assert fields["amount"] == {"type": "int", "min": 0, "max": 999}
    assert fields["country"] == {"type": "string", "enum": ["DE", "US"]}
    assert fields["is_new_user"] == {"type": "bool"}
