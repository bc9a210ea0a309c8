"""`model-router report`: outcome KPIs with intervals on synthetic data of known truth."""

from __future__ import annotations

import random
import shutil
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from router.analysis.report import build_report

ROOT = Path(__file__).resolve().parents[1]


def synthetic(tmp_path: Path, rates: dict[str, float], n: int, seed: int = 7) -> Path:
    """n primary records per version, each with a feedback {converted, basket}."""
    rng = random.Random(seed)
    logs = tmp_path / "logs"
    logs.mkdir(parents=True)
    revision = "abcdef123456"
    folder = tmp_path / "state" / "revisions" / revision
    folder.mkdir(parents=True)
    (folder / "router.yaml").write_text(
        "routes:\n  - name: fraud\n    split: {v1: 50, v2: 50}\n")
    lines = []
    for version, rate in rates.items():
        for i in range(n):
            rid = f"{version}-{i}"
            status = 500 if rng.random() < (0.01 if version == "v2" else 0.002) else 200
            lines.append({"ts": f"2026-11-26T12:{i % 60:02d}:00.000Z", "request_id": rid,
                          "route": "fraud", "version": version, "role": "primary",
                          "status": status, "latency_ms": rng.lognormvariate(1, 0.5),
                          "config_revision": revision})
            lines.append({"ts": f"2026-11-26T13:{i % 60:02d}:00.000Z", "request_id": rid,
                          "role": "feedback", "status": 202,
                          "outcome": {"converted": rng.random() < rate,
                                      "basket": rng.gauss(50 + (5 if version == "v2" else 0)
                                                          * (rate != rates["v1"]), 20)}})
    (logs / "predictions-20261126T120000-1.jsonl").write_bytes(
        b"".join(orjson.dumps(r) + b"\n" for r in lines))
    return logs


def test_known_truth_ten_vs_twelve_percent(tmp_path: Path) -> None:
    logs = synthetic(tmp_path, {"v1": 0.10, "v2": 0.12}, 20_000)
    report = build_report(logs, tmp_path / "state")
    route = report["routes"]["fraud"]
    assert route["control"] == "v1"
    v1 = route["versions"]["v1"]["outcomes"]["converted"]
    v2 = route["versions"]["v2"]["outcomes"]["converted"]
    assert v1["n"] == v2["n"] == 20_000
    assert v1["ci95"][0] <= 0.10 <= v1["ci95"][1]
    assert v2["ci95"][0] <= 0.12 <= v2["ci95"][1]
    assert v2["diff_ci95"][0] <= 0.02 <= v2["diff_ci95"][1]
    assert v2["diff_ci95"][0] > 0 and v2["p_value"] < 0.001
    assert "diff_vs_control" not in v1
    basket = route["versions"]["v2"]["outcomes"]["basket"]
    assert basket["diff_ci95"][0] <= 5 <= basket["diff_ci95"][1] and basket["p_value"] < 0.001
    errors = route["versions"]["v2"]
    assert errors["requests"] == 20_000 and 0.005 < errors["error_rate"] < 0.015
    assert errors["latency_ms"]["p50"] < errors["latency_ms"]["p99"]


def test_known_truth_no_difference(tmp_path: Path) -> None:
    logs = synthetic(tmp_path, {"v1": 0.10, "v2": 0.10}, 20_000, seed=11)
    v2 = build_report(logs, tmp_path / "state")["routes"]["fraud"]["versions"]["v2"]
    converted = v2["outcomes"]["converted"]
    assert converted["p_value"] > 0.05
    assert converted["diff_ci95"][0] < 0 < converted["diff_ci95"][1]


@pytest.mark.slow
def test_report_cli_json_table_and_html(tmp_path: Path) -> None:
    synthetic(tmp_path, {"v1": 0.10, "v2": 0.12}, 2_000)
    config = tmp_path / "router.yaml"
    config.write_text("state_dir: state\nprediction_log: {dir: logs}\nroutes: []\n")
    run = [sys.executable, "-m", "router.cli", "report", "-c", str(config)]
    as_json = subprocess.run([*run, "--json"], capture_output=True, text=True, cwd=ROOT)
    assert as_json.returncode == 0, as_json.stderr
    shape = orjson.loads(as_json.stdout)["routes"]["fraud"]["versions"]["v2"]
    assert {"requests", "errors", "error_rate", "latency_ms", "shadow", "outcomes"} <= set(shape)
    page = tmp_path / "report.html"
    table = subprocess.run([*run, "--html", str(page)], capture_output=True, text=True, cwd=ROOT)
    assert table.returncode == 0
    assert "route fraud (control: v1)" in table.stdout and "converted" in table.stdout
    text = page.read_text()
    assert text.count("<svg") == 2 and "<polyline" in text


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed")
def test_html_renders_in_headless_chromium(tmp_path: Path) -> None:
    from router.analysis.report import render_html
    logs = synthetic(tmp_path, {"v1": 0.1, "v2": 0.1}, 500)
    page = tmp_path / "r.html"
    page.write_text(render_html(build_report(logs, tmp_path / "state"), logs))
    shot = tmp_path / "r.png"
    subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu",
                    "--disable-background-networking", "--disable-component-update",
                    "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
                    f"--screenshot={shot}", "--window-size=800,1200", page.as_uri()],
                   capture_output=True, timeout=60)
    assert shot.exists() and shot.stat().st_size > 5000
