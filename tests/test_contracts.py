"""Contracts written once (STYLE.md 13): one reader of body shapes, one record schema, one
control version. Pure tier: config files on disk at most, no sockets."""

from __future__ import annotations

import copy
import random
import re
from pathlib import Path
from typing import Any

import orjson
import pytest
from helpers import REGISTRY, base_route, rollout_route, write_config

from router.analysis.audit import COLUMNS
from router.bodies import input_columns
from router.config import PredictionLogSettings, load_snapshot
from router.config.registry import Field, Schema
from router.metrics import Metrics
from router.observers.drift import DriftMonitor
from router.observers.encode import KeyedHash, build_record
from router.records import (
    FEEDBACK_ONLY,
    RECORD_FIELDS,
    Entry,
    control_in_config,
    control_version,
)
from router.validation import Validator

ROOT = Path(__file__).resolve().parents[1]
FIELDS = ("amount", "country", "is_new_user")
SCHEMA = Schema("c@1", (Field("amount", "float", min=0), Field("country", "string"),
                        Field("is_new_user", "bool")))
COLUMNS_OF_TWO_ROWS = {"amount": [1.5, 2.5], "country": ["US", "DE"],
                       "is_new_user": [True, False]}

# -- one reader of body shapes -----------------------------------------------------------------

# id, protocol, a valid body carrying COLUMNS_OF_TWO_ROWS
SHAPES = [
    ("v2_named_inputs", "v2", {"inputs": [
        {"name": "amount", "datatype": "FP64", "shape": [2], "data": [1.5, 2.5]},
        {"name": "country", "datatype": "BYTES", "shape": [2], "data": ["US", "DE"]},
        {"name": "is_new_user", "datatype": "BOOL", "shape": [2, 1], "data": [[True], [False]]},
    ]}),
    ("v2_one_2d_tensor", "v2", {"inputs": [
        {"name": "input-0", "datatype": "BYTES", "shape": [2, 3],
         "data": [[1.5, "US", True], [2.5, "DE", False]]}]}),
    ("v2_one_2d_tensor_flat_data", "v2", {"inputs": [
        {"name": "input-0", "datatype": "BYTES", "shape": [2, 3],
         "data": [1.5, "US", True, 2.5, "DE", False]}]}),
    ("json_instances_objects", "json", {"instances": [
        {"amount": 1.5, "country": "US", "is_new_user": True},
        {"amount": 2.5, "country": "DE", "is_new_user": False}]}),
    ("json_instances_lists", "json", {"instances": [[1.5, "US", True], [2.5, "DE", False]]}),
    ("json_inputs_rows", "json", {"inputs": [
        {"amount": 1.5, "country": "US", "is_new_user": True}, [2.5, "DE", False]]}),
    ("json_inputs_columns", "json", {"inputs": COLUMNS_OF_TWO_ROWS}),
    ("json_bare_rows", "json", [[1.5, "US", True], [2.5, "DE", False]]),
]


@pytest.mark.parametrize("protocol,doc", [s[1:] for s in SHAPES], ids=[s[0] for s in SHAPES])
def test_what_validation_accepts_drift_reads_column_by_column(protocol: str, doc: Any) -> None:
    assert Validator(SCHEMA, protocol).validate(doc) == []
    assert input_columns(doc, protocol, FIELDS) == COLUMNS_OF_TWO_ROWS


def test_one_object_of_features_is_one_row() -> None:
    doc = {"amount": 1.5, "country": "US", "is_new_user": True}
    assert Validator(SCHEMA, "json").validate(doc) == []
    assert input_columns(doc, "json", FIELDS) == {k: [v] for k, v in doc.items()}


# id, protocol, a body validation refuses for its shape, and what drift reads of it
MISSHAPEN = [
    ("v2_2d_tensor_wrong_width", "v2", {"inputs": [
        {"name": "x", "datatype": "FP64", "shape": [1, 2], "data": [[1.5, 2.5]]}]}, {}),
    ("json_list_row_wrong_width", "json", {"instances": [[1.5, "US"]]}, {}),
    ("json_instances_not_a_list", "json", {"instances": 5}, {}),
]


@pytest.mark.parametrize("protocol,doc,columns", [s[1:] for s in MISSHAPEN],
                         ids=[s[0] for s in MISSHAPEN])
def test_what_validation_refuses_for_its_shape_drift_does_not_read(
        protocol: str, doc: Any, columns: dict[str, Any]) -> None:
    kinds = {v["kind"] for v in Validator(SCHEMA, protocol).validate(doc)}
    assert kinds & {"shape", "format"}
    assert input_columns(doc, protocol, FIELDS) == columns


def drift_config(tmp_path: Path, **route: Any) -> Path:
    """The "fraud" route with a drift baseline on v1 whose amount all sits in the first bin."""
    (tmp_path / "baselines").mkdir(parents=True)
    (tmp_path / "baselines" / "in.json").write_bytes(orjson.dumps({
        "schema": "fraud-features@1", "rows": 1000, "features": {
            "amount": {"kind": "numeric", "edges": [0, 10, 20, 30, 40],
                       "fractions": [0.97, 0.01, 0.01, 0.01]},
            "country": {"kind": "categorical", "fractions": {"US": 0.6, "DE": 0.3,
                                                             "FR": 0.1}}}}))
    registry = copy.deepcopy(REGISTRY)
    registry["models"]["fraud"]["versions"]["v1"]["baseline"] = "baselines/in.json"
    return write_config(tmp_path, [base_route(**route)], registry=registry)


# the "fraud-features@1" order: amount, avg_purchase_last_7_days, country, is_new_user
def two_d_tensor(rows: list[list[Any]]) -> dict[str, Any]:
    return {"inputs": [{"name": "input-0", "datatype": "BYTES", "shape": [len(rows), 4],
                        "data": rows}]}


@pytest.mark.parametrize("protocol,body", [
    ("v2", two_d_tensor),
    ("json", lambda rows: {"instances": rows}),
], ids=["v2_one_2d_tensor", "json_list_rows"])
def test_drift_psi_from_positional_traffic(tmp_path: Path, protocol: str, body: Any) -> None:
    """The standard MLServer scikit-learn request (one 2-D tensor) feeds input drift."""
    snapshot = load_snapshot(drift_config(tmp_path, protocol=protocol))
    route = snapshot.routes[0]
    drift = DriftMonitor(Metrics(), rand=lambda: 0.0)
    drift.configure(snapshot)
    rng = random.Random(5)
    for _ in range(50):
        rows = [[rng.uniform(30, 40), 10.0, rng.choices(["US", "DE", "FR"], [6, 3, 1])[0],
                 False] for _ in range(4)]
        doc = body(rows)
        assert route.validator is not None and route.validator.validate(doc) == []
        drift.observe(route, "v1", doc, None)
    results = drift.compute(snapshot)
    assert results["fraud/amount"] > 2         # every live value in the last bin
    assert results["fraud/country"] < 0.1      # the baseline's mix


# -- one record schema -------------------------------------------------------------------------

def record_of(**changes: Any) -> dict[str, Any]:
    entry = Entry(ts=1764000000.0, request_id="r1", route=None, revision="a1b2c3d4e5f6",
                  role="primary", version="v1", reason="split", upstream="http://h:1/m",
                  status=200, latency_ms=1.0, sticky_key=None, request_body=b"{}",
                  response_body=b"{}")
    for key, value in changes.items():
        setattr(entry, key, value)
    record, _ = build_record(entry, PredictionLogSettings(dir=Path("logs")),
                             KeyedHash(b"k" * 32))
    return record


def test_the_writer_writes_the_record_schema_in_order() -> None:
    assert list(record_of()) == [f for f in RECORD_FIELDS if f not in FEEDBACK_ONLY]
    shadow = record_of(role="shadow", compare={"against": "v1", "match": True,
                                                "max_abs_diff": 0.0, "agreement": 1.0})
    assert list(shadow) == [f for f in RECORD_FIELDS if f not in FEEDBACK_ONLY]
    feedback = record_of(role="feedback", outcome={"converted": True})
    assert list(feedback) == list(RECORD_FIELDS)


def test_the_audit_reads_every_record_field_with_its_type() -> None:
    assert COLUMNS == {name: kind for name, (kind, _) in RECORD_FIELDS.items()}


def test_readme_shows_exactly_the_record_fields() -> None:
    text = (ROOT / "README.md").read_text()
    section = text.split("## The prediction log", 1)[1].split("\n## ", 1)[0]
    example = re.search(r"```json\n(.*?)```", section, re.DOTALL)
    assert example is not None, "README's prediction log section shows a record"
    assert list(orjson.loads(example.group(1))) == \
        [f for f in RECORD_FIELDS if f not in FEEDBACK_ONLY]
    assert "outcome" in section  # feedback records' extra field is described there


# -- one control version -----------------------------------------------------------------------

CONTROLS = [
    ("split", {"split": {"v2": 60, "v1": 40}}, "v2"),
    ("blue_green", {"split": None, "blue_green": {"blue": "v3", "green": "v1",
                                                  "active": "green"}}, "v3"),
]


@pytest.mark.parametrize("changes,expected", [c[1:] for c in CONTROLS],
                         ids=[c[0] for c in CONTROLS])
def test_the_control_version_is_the_same_compiled_and_as_written(
        tmp_path: Path, changes: dict[str, Any], expected: str) -> None:
    item = base_route(**changes)
    snapshot = load_snapshot(write_config(tmp_path, [item]))
    assert control_version(snapshot.routes[0]) == expected
    assert control_in_config(item) == expected


def test_the_control_version_of_a_rollout_is_its_baseline(tmp_path: Path) -> None:
    item = rollout_route("http://127.0.0.1:9001", "http://127.0.0.1:9002",
                         baseline="v2", canary="v1")
    snapshot = load_snapshot(write_config(tmp_path, [item]))
    assert control_version(snapshot.routes[0]) == "v2"
    assert control_in_config(item) == "v2"
