"""Metrics as scraped, dashboards and alert rules: every query names a real metric (or one
proposed to the router below), every alert has a promtool unit test that makes it fire, and
the dashboard's route, version and instance variables filter every panel."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import admin_url, echo_versions, route, url, write_config
from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.parser import text_string_to_metric_families

from router.metrics import Metrics

ROOT = Path(__file__).resolve().parents[1]
PROMETHEUS = ROOT / "config" / "prometheus"
DASHBOARD = ROOT / "config" / "grafana" / "model-router.json"
NAME = re.compile(r"\bmodel_router_[a-z0-9_]+")
SELECTOR = re.compile(r"\b(model_router_[a-z0-9_]+)(?:\{([^}]*)\})?")
JOB = "model-router"  # the scrape job of config/k8s/prometheus.yaml
needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="promtool not installed (Debian package prometheus; make test installs it when "
           "apt-get can)")

# Metrics the rules and the dashboard read that the router does not export yet: name -> labels.
# README "Monitoring" describes each (type, meaning, when set); once router/metrics.py exports
# one, its entry goes.
PROPOSED: dict[str, tuple[str, ...]] = {}


def exported_labels() -> dict[str, tuple[str, ...]]:
    """Sample name -> label names, for every metric a fresh registry can export."""
    labels: dict[str, tuple[str, ...]] = {}
    for metric in vars(Metrics()).values():
        names = tuple(getattr(metric, "_labelnames", ()))
        if isinstance(metric, Counter):
            labels[metric._name + "_total"] = names
        elif isinstance(metric, Histogram):
            labels |= {metric._name + "_bucket": names + ("le",), metric._name + "_sum": names,
                       metric._name + "_count": names}
        elif isinstance(metric, Gauge):
            labels[metric._name] = names
    return labels


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


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panel_targets() -> list[tuple[str, dict[str, Any]]]:
    return [(p["title"], t) for p in dashboard()["panels"] for t in p["targets"]]


def variable_queries() -> dict[str, str]:
    return {v["name"]: v["query"]["query"] for v in dashboard()["templating"]["list"]
            if v["type"] == "query"}


def rules() -> list[dict[str, Any]]:
    return [r for g in yaml.safe_load((PROMETHEUS / "alerts.yaml").read_text())["groups"]
            for r in g["rules"]]


def monitoring_section() -> str:
    text = (ROOT / "README.md").read_text()
    return text[text.index("\n## Monitoring\n"):].split("\n## ", 2)[1]


def test_dashboard_and_rules_query_only_exported_metrics() -> None:
    exprs = [t["expr"] for _, t in panel_targets()] + list(variable_queries().values())
    exprs += [r["expr"] for r in rules()]
    used = {m for e in exprs for m in NAME.findall(e)}
    known = exported_names() | set(PROPOSED)
    assert exported_labels().keys() == exported_names()
    assert used, "no metric found in the queries"
    assert used <= known, f"queried but neither exported nor proposed: {sorted(used - known)}"
    assert set(PROPOSED) <= used, f"proposed but used nowhere: {set(PROPOSED) - used}"
    titles = " ".join(p["title"] for p in dashboard()["panels"]).lower()
    for topic in ("traffic share", "requests per second", "error rate", "p99", "shadow",
                  "drift", "reload", "prediction log", "rollout", "4xx", "5xx", "shipping",
                  "fleet"):
        assert topic in titles


def test_proposed_metrics_are_described_in_the_readme() -> None:
    section = monitoring_section()
    for name, labels in PROPOSED.items():
        short = name.removeprefix("model_router_")
        assert f"`{short}" in section, f"{name} not described in README Monitoring"
        for label in labels:
            assert label in section


def test_dashboard_variables_filter_every_panel() -> None:
    """instance on every selector, route wherever the metric has one, version wherever a
    series is drawn per version; each variable used, each defined before it is used."""
    variables = variable_queries()
    assert list(variables) == ["instance", "route", "version"]
    assert "$instance" in variables["route"] and "$route" in variables["version"]
    labels = exported_labels() | PROPOSED
    used: set[str] = set()
    for title, target in panel_targets():
        expr = target["expr"]
        used |= set(re.findall(r"\$(\w+)", expr))
        for name, matchers in SELECTOR.findall(expr):
            where = f"{title}: {name}{{{matchers}}}"
            assert 'instance=~"$instance"' in matchers, where
            if "route" in labels[name]:
                assert 'route=~"$route"' in matchers or 'route="_unmatched"' in matchers, where
        if "{{version}}" in target["legendFormat"]:
            assert 'version=~"$version"' in expr, f"{title}: {expr}"
    assert used == set(variables), f"variables no panel uses: {set(variables) - used}"
    datasources = {p["datasource"]["uid"] for p in dashboard()["panels"]}
    datasources |= {v["datasource"]["uid"] for v in dashboard()["templating"]["list"]
                    if v["type"] == "query"}
    assert datasources == {"${datasource}"}


def test_rollout_panel_shows_step_and_weights() -> None:
    panel = next(p for p in dashboard()["panels"] if p["title"].lower().startswith("rollout:"))
    exprs = " ".join(t["expr"] for t in panel["targets"])
    assert "model_router_rollout_step" in exprs and "model_router_traffic_weight" in exprs


def test_every_contract_metric_is_exported() -> None:
    contract = {"requests_total", "request_duration_seconds_bucket", "upstream_errors_total",
                "shadow_dropped_total", "shadow_comparisons_total", "traffic_weight",
                "config_reloads_total", "config_info", "schema_violations_total",
                "feature_drift_psi", "prediction_drift_psi", "version_mismatch_total",
                "requests_rejected_total", "predlog_records_total", "predlog_dropped_total",
                "predlog_pending", "rollout_step", "predlog_shipped_total",
                "predlog_ship_errors_total", "predlog_unshipped_bytes", "outcomes_total",
                "fleet_leader", "fleet_store_errors_total", "evidence_errors_total"}
    missing = {m for m in contract if f"model_router_{m}" not in exported_names()}
    assert not missing


def test_alerts_are_labelled_and_select_the_scrape_job() -> None:
    alerts = [r for r in rules() if "alert" in r]
    for alert in alerts:
        assert alert["labels"]["severity"] in ("page", "warn"), alert["alert"]
        assert alert["annotations"]["summary"], alert["alert"]
    jobs = {j for r in rules() for j in re.findall(r'job="([^"]+)"', r["expr"])}
    assert jobs == {JOB}
    configmap = next(d for d in yaml.safe_load_all((ROOT / "config" / "k8s" /
                                                    "prometheus.yaml").read_text())
                     if d and d.get("kind") == "ConfigMap")
    scrape = yaml.safe_load(configmap["data"]["prometheus.yml"])["scrape_configs"]
    assert JOB in {s["job_name"] for s in scrape}
    section = monitoring_section()
    unnamed = {a["alert"] for a in alerts} - set(re.findall(r"`(ModelRouter\w+)`", section))
    assert not unnamed, f"alerts README Monitoring does not name: {unnamed}"


@needs_promtool
def test_promtool_rule_unit_tests() -> None:
    check = subprocess.run(["promtool", "check", "rules", "alerts.yaml"], cwd=PROMETHEUS,
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    done = subprocess.run(["promtool", "test", "rules", "alerts_test.yaml"], cwd=PROMETHEUS,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    alerts = {r["alert"] for r in rules() if "alert" in r}
    cases = [c for t in yaml.safe_load((PROMETHEUS / "alerts_test.yaml").read_text())["tests"]
             for c in t.get("alert_rule_test", [])]
    fired = {c["alertname"] for c in cases if c.get("exp_alerts")}
    quiet = {c["alertname"] for c in cases if not c.get("exp_alerts")}
    assert alerts <= fired, f"alerts no unit test makes fire: {alerts - fired}"
    assert alerts <= quiet, f"alerts no unit test keeps quiet: {alerts - quiet}"


@needs_promtool
def test_dashboard_queries_parse(tmp_path: Path) -> None:
    """Every panel query, variables put in, is valid PromQL (checked as recording rules)."""
    exprs = [re.sub(r"\$\w+", ".*", t["expr"]) for _, t in panel_targets()]
    rules_file = tmp_path / "dashboard.yaml"
    rules_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query{i}", "expr": e} for i, e in enumerate(exprs)]}]}))
    check = subprocess.run(["promtool", "check", "rules", str(rules_file)],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


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
