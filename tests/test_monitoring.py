"""Metrics as scraped, dashboards and alert rules: every query names a real metric."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from helpers import admin_url, echo_versions, route, url, write_config
from prometheus_client.parser import text_string_to_metric_families

from router.metrics import Metrics

ROOT = Path(__file__).resolve().parents[1]
NAME = re.compile(r"\bmodel_router_[a-z0-9_]+")


def exported_names() -> set[str]:
    """Sample names the router can export, from the TYPE lines of a fresh registry."""
    names = set()
    for line in Metrics().render().decode().splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            if kind == "counter":
                names.add(name if name.endswith("_total") else name + "_total")
            elif kind == "histogram":
                names |= {name + "_bucket", name + "_sum", name + "_count"}
            else:
                names.add(name)
    return names


def test_dashboard_and_rules_query_only_exported_metrics() -> None:
    dashboard = json.loads((ROOT / "config" / "grafana" / "model-router.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    rules = yaml.safe_load((ROOT / "config" / "prometheus" / "alerts.yaml").read_text())
    exprs += [r["expr"] for g in rules["groups"] for r in g["rules"]]
    used = {m for e in exprs for m in NAME.findall(e)}
    exported = exported_names()
    assert used, "no metric found in the queries"
    assert used <= exported, f"queried but not exported: {sorted(used - exported)}"
    titles = " ".join(p["title"] for p in dashboard["panels"]).lower()
    for topic in ("traffic share", "requests per second", "error rate", "p99", "shadow",
                  "drift", "reload", "prediction log"):
        assert topic in titles


def test_every_contract_metric_is_exported() -> None:
    contract = {"requests_total", "request_duration_seconds_bucket", "upstream_errors_total",
                "shadow_dropped_total", "shadow_comparisons_total", "traffic_weight",
                "config_reloads_total", "config_info", "schema_violations_total",
                "feature_drift_psi", "prediction_drift_psi", "version_mismatch_total",
                "requests_rejected_total", "predlog_records_total", "predlog_dropped_total",
                "predlog_pending"}
    missing = {m for m in contract if f"model_router_{m}" not in exported_names()}
    assert not missing


@pytest.mark.skipif(shutil.which("promtool") is None,
                    reason="promtool not installed (Debian package prometheus; make test "
                           "installs it when apt-get can)")
def test_promtool_rule_unit_tests() -> None:
    folder = ROOT / "config" / "prometheus"
    check = subprocess.run(["promtool", "check", "rules", "alerts.yaml"], cwd=folder,
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    done = subprocess.run(["promtool", "test", "rules", "alerts_test.yaml"], cwd=folder,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    alerts = {r["alert"] for g in yaml.safe_load((folder / "alerts.yaml").read_text())["groups"]
              for r in g["rules"] if "alert" in r}
    tested = set(re.findall(r"alertname: (\w+)", (folder / "alerts_test.yaml").read_text()))
    assert alerts <= tested, f"alerts without a unit test: {alerts - tested}"


async def test_scraped_counts_match_traffic(tmp_path: Path, upstreams, start_router,
                                            client) -> None:
    urls = await echo_versions(upstreams, "v1", "v2")
    app = await start_router(write_config(tmp_path, [route(urls, split={"v1": 50, "v2": 50},
                                                         sticky={"header": "x-user-id"})]))
    sent: dict[tuple[str, str], int] = {}
    for i in range(60):
        async with client.post(url(app, "/v2/models/fraud/infer"), data=b"{}",
                               headers={"x-user-id": f"user-{i}"}) as resp:
            key = (resp.headers["x-model-version"], str(resp.status))
            sent[key] = sent.get(key, 0) + 1
    for path in ("/nope", "/v2/models/fraudster"):
        async with client.post(url(app, path), data=b"{}") as resp:
            assert resp.status == 404
    async with client.get(admin_url(app, "/metrics")) as resp:
        text = await resp.text()
    scraped: dict[tuple[str, str], float] = {}
    unmatched = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name != "model_router_requests_total":
                continue
            if s.labels["route"] == "_unmatched":
                unmatched += s.value
            else:
                assert s.labels["route"] == "fraud" and s.labels["role"] == "primary"
                scraped[(s.labels["version"], s.labels["code"])] = s.value
    assert scraped == {k: float(v) for k, v in sent.items()}
    assert unmatched == 2
    labels = {lbl for f in text_string_to_metric_families(text) for s in f.samples
              for lbl in s.labels.values()}
    assert not any("user-" in v or v.startswith("/") for v in labels), "unbounded label value"
