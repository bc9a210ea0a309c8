"""Input and output drift: PSI against baselines, from live traffic through the router."""

from __future__ import annotations

import copy
import logging
import math
import random
from pathlib import Path

import orjson
import pytest
from helpers import REGISTRY, route, scorer, url, write_config

from router.observers.drift import feature_psi, psi

BASE_NUMERIC = {"kind": "numeric", "edges": [0, 10, 20, 30, 40],
                "fractions": [0.25, 0.25, 0.25, 0.25]}


def test_psi_formula() -> None:
    assert psi([0.25] * 4, [0.25] * 4) == 0.0
    expected = (0.5 - 0.25) * math.log(0.5 / 0.25) + (0.0001 - 0.25) * math.log(0.0001 / 0.25) \
        + 2 * (0.25 - 0.25) * 0
    assert psi([0.5, 0.0, 0.25, 0.25], [0.25] * 4) == pytest.approx(expected)


def test_numeric_bins_clip_to_the_outer_edges() -> None:
    same = [5, 15, 25, 35] * 100
    assert feature_psi(same, BASE_NUMERIC) == pytest.approx(0.0)
    shifted = [-100, 15, 25, 1000] * 100  # below the first / above the last edge: outer bins
    assert feature_psi(shifted, BASE_NUMERIC) == pytest.approx(0.0)
    skewed = [35] * 400
    assert feature_psi(skewed, BASE_NUMERIC) > 2


def test_categorical_unseen_values_count_as_other() -> None:
    spec = {"kind": "categorical", "fractions": {"US": 0.5, "DE": 0.5}}
    assert feature_psi(["US", "DE"] * 50, spec) == pytest.approx(0.0, abs=1e-3)
    assert feature_psi(["XX"] * 100, spec) > 5
    assert feature_psi([True, False], {"kind": "categorical",
                                       "fractions": {"true": 0.5, "false": 0.5}}) \
        == pytest.approx(0.0, abs=1e-3)


async def test_drift_from_traffic(tmp_path: Path, upstreams, start_router, client,
                                  caplog) -> None:
    (tmp_path / "baselines").mkdir(parents=True)
    (tmp_path / "baselines" / "in.json").write_bytes(orjson.dumps({
        "schema": "fraud-features@1", "rows": 1000, "features": {
            "amount": BASE_NUMERIC,
            "country": {"kind": "categorical", "fractions": {"US": 0.6, "DE": 0.3,
                                                             "FR": 0.1}}}}))
    (tmp_path / "baselines" / "out.json").write_bytes(orjson.dumps({
        "schema": "out", "rows": 1000, "features": {"score": {
            "kind": "numeric", "edges": [0, 0.5, 1], "fractions": [0.5, 0.5]}}}))
    registry = copy.deepcopy(REGISTRY)
    registry["models"]["fraud"]["versions"]["v1"]["baseline"] = "baselines/in.json"
    registry["models"]["fraud"]["versions"]["v1"]["output_baseline"] = "baselines/out.json"
    primary = await upstreams.start(scorer(0.9))
    app = await start_router(write_config(tmp_path, [route({"v1": primary + "/m"},
                                                         drift={"window_rows": 500})],
                                          registry=registry))
    rng = random.Random(5)
    for _ in range(120):
        body = {"inputs": [
            {"name": "amount", "datatype": "FP64", "shape": [1], "data": [rng.uniform(30, 40)]},
            {"name": "country", "datatype": "BYTES", "shape": [1],
             "data": rng.choices(["US", "DE", "FR"], [0.6, 0.3, 0.1])}]}
        async with client.post(url(app, "/v2/models/fraud/infer"),
                               data=orjson.dumps(body)) as resp:
            assert resp.status == 200
    with caplog.at_level(logging.WARNING, logger="model_router.drift"):
        results = app.drift.compute(app.live.snapshot)
        app.drift.compute(app.live.snapshot)
    assert results["fraud/amount"] > 2          # every value in the last bin
    assert results["fraud/country"] < 0.1      # same mix as the baseline
    assert results["fraud/v1/output"] > 2       # scores all 0.9: one bin of two
    warnings = [r for r in caplog.records if "input drift" in r.getMessage()]
    assert len(warnings) == 1, "one warning per crossing, not one per computation"
    text = app.metrics.render().decode()
    assert 'model_router_feature_drift_psi{feature="amount",route="fraud"}' in text
    assert 'model_router_prediction_drift_psi{route="fraud",version="v1"}' in text


def test_output_baseline_from_the_log(tmp_path: Path) -> None:
    import subprocess
    import sys
    logs = tmp_path / "logs"
    logs.mkdir()
    lines = [orjson.dumps({"ts": f"2026-11-26T12:00:{i % 60:02d}.000Z", "request_id": str(i),
                           "route": "fraud", "version": "v1", "role": "primary",
                           "status": 200, "output": {"outputs": [
                               {"name": "score", "datatype": "FP64", "shape": [1, 1],
                                "data": [i / 100]}]}}) for i in range(100)]
    (logs / "predictions-20261126T120000-1.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    out = tmp_path / "out.json"
    done = subprocess.run([sys.executable, "-m", "router.cli", "baseline", "--from-log",
                           str(logs), "--route", "fraud", "--version", "v1", "--out",
                           str(out)], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr
    baseline = orjson.loads(out.read_bytes())
    assert baseline["rows"] == 100
    score = baseline["features"]["score"]
    assert score["kind"] == "numeric" and sum(score["fractions"]) == pytest.approx(1.0)
    assert feature_psi([i / 100 for i in range(100)], score) == pytest.approx(0.0, abs=1e-6)
