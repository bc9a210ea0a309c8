"""`model-router report`: outcome KPIs with intervals on synthetic data of known truth; 4xx
apart from 5xx in every form; the HTML page as a person sees it in headless Chromium."""

from __future__ import annotations

import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import orjson
import pytest

from router.analysis.report import build_report, log_ticks, render_html, render_table
from router.records import FEEDBACK_ONLY, RECORD_FIELDS

ROOT = Path(__file__).resolve().parents[1]


def record(**fields: Any) -> dict[str, Any]:
    """A prediction record as the router writes it: every field of ``RECORD_FIELDS`` in
    order (``outcome`` on feedback records only), null where not given."""
    assert fields.keys() <= RECORD_FIELDS.keys(), fields.keys() - RECORD_FIELDS.keys()
    names = [n for n in RECORD_FIELDS
             if fields.get("role") == "feedback" or n not in FEEDBACK_ONLY]
    return {name: fields.get(name) for name in names}


def synthetic(tmp_path: Path, rates: dict[str, float], n: int, seed: int = 7, *,
              client_errors: float = 0.0) -> Path:
    """n primary records per version, each with a feedback {converted, basket}; with
    ``client_errors``, that share of each version's answers are 422s."""
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
            if client_errors and status == 200 and rng.random() < client_errors:
                status = 422
            lines.append(record(ts=f"2026-11-26T12:{i % 60:02d}:00.000Z", request_id=rid,
                                route="fraud", model="fraud", version=version,
                                role="primary", reason="split", status=status,
                                latency_ms=rng.lognormvariate(1, 0.5),
                                config_revision=revision))
            lines.append(record(ts=f"2026-11-26T13:{i % 60:02d}:00.000Z", request_id=rid,
                                role="feedback", status=202,
                                outcome={"converted": rng.random() < rate,
                                         "basket": rng.gauss(50 + (5 if version == "v2" else 0)
                                                             * (rate != rates["v1"]), 20)}))
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


def primary_statuses(logs: Path) -> dict[str, list[int]]:
    statuses: dict[str, list[int]] = {}
    for line in next(logs.glob("*.jsonl")).read_bytes().splitlines():
        r = orjson.loads(line)
        if r["role"] == "primary":
            statuses.setdefault(r["version"], []).append(r["status"])
    return statuses


def test_client_errors_are_counted_apart_from_errors(tmp_path: Path) -> None:
    logs = synthetic(tmp_path, {"v1": 0.10, "v2": 0.10}, 2_000, client_errors=0.05)
    report = build_report(logs, tmp_path / "state")
    for version, statuses in primary_statuses(logs).items():
        d = report["routes"]["fraud"]["versions"][version]
        fours, fives = statuses.count(422), statuses.count(500)
        assert fours > 50 and fives > 0  # both kinds present, so mixing them would show
        assert (d["client_errors"], d["errors"]) == (fours, fives)
        assert d["client_error_rate"] == fours / 2_000 and d["error_rate"] == fives / 2_000
    lines = render_table(report).splitlines()
    assert lines[1].split()[:6] == ["version", "requests", "5xx", "5xx%", "4xx", "4xx%"]
    v2 = report["routes"]["fraud"]["versions"]["v2"]
    row = next(line.split() for line in lines if line.split()[:1] == ["v2"])
    assert row[:6] == ["v2", "2000", str(v2["errors"]), f"{100 * v2['error_rate']:.2f}%",
                       str(v2["client_errors"]), f"{100 * v2['client_error_rate']:.2f}%"]


@pytest.mark.parametrize("low,high,expected", [
    (0.1, 2530, [0.1, 1, 10, 100, 1000]),
    (0.5, 12, [0.5, 1, 2, 5, 10]),
    (2.1, 9.5, [3, 4, 5, 6, 7, 8, 9]),
    (2.1, 2.3, [2.1, 2.3]),
], ids=["four-decades", "one-decade", "within-a-decade", "narrow"])
def test_latency_ticks_are_round_numbers(low: float, high: float,
                                         expected: list[float]) -> None:
    assert log_ticks(low, high) == pytest.approx(expected)


@pytest.mark.slow
def test_report_cli_json_table_and_html(tmp_path: Path) -> None:
    synthetic(tmp_path, {"v1": 0.10, "v2": 0.12}, 2_000, client_errors=0.02)
    config = tmp_path / "router.yaml"
    config.write_text("state_dir: state\nprediction_log: {dir: logs}\nroutes: []\n")
    run = [sys.executable, "-m", "router.cli", "report", "-c", str(config)]
    as_json = subprocess.run([*run, "--json"], capture_output=True, text=True, cwd=ROOT)
    assert as_json.returncode == 0, as_json.stderr
    shape = orjson.loads(as_json.stdout)["routes"]["fraud"]["versions"]["v2"]
    assert {"requests", "errors", "error_rate", "client_errors", "client_error_rate",
            "latency_ms", "shadow", "outcomes"} <= set(shape)
    assert shape["client_errors"] > 0
    page = tmp_path / "report.html"
    table = subprocess.run([*run, "--html", str(page)], capture_output=True, text=True, cwd=ROOT)
    assert table.returncode == 0
    assert "route fraud (control: v1)" in table.stdout and "converted" in table.stdout
    text = page.read_text()
    assert text.count("<svg") == 2 and "<polyline" in text
    assert "<th>4xx</th>" in text and f"<td>{shape['client_errors']}</td>" in text
    assert '<section class="outcomes">' in text and "p-value" in text
    # self-contained: nothing to fetch, nothing to run
    assert "http://" not in text.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in text and "<script" not in text and "<link" not in text


# -- the page in a browser -------------------------------------------------------------------------

CHROMIUM_TIMEOUT_S = 90
WINDOW = (1000, 1800)
# Appended to a copy of the page: measures, as laid out, what a person would look at and
# writes it into the DOM that --dump-dom prints.
LAYOUT_PROBE = """<script>
const box = e => { const b = e.getBoundingClientRect();
                   return [b.left, b.top, b.right, b.bottom]; };
const label = e => e.querySelector('text').firstChild.textContent;
const charts = [...document.querySelectorAll('svg')].map(svg => ({
  kind: svg.getAttribute('class'),
  axes: [...svg.querySelectorAll('.axis-label')].map(e => e.textContent),
  ticks: [...svg.querySelectorAll('.tick')].map(e => ({text: e.textContent, box: box(e)})),
  legend: [...svg.querySelectorAll('.legend-item')].map(e => ({text: label(e), box: box(e)})),
  marks: [...svg.querySelectorAll('.mark')].map(box)}));
const pre = document.createElement('pre');
pre.id = 'layout';
pre.textContent = JSON.stringify(charts);
document.body.appendChild(pre);
</script>"""


def chromium(tmp_path: Path, *args: str) -> str:
    """Run headless Chromium (its own process group, killed by its id when it overruns
    CHROMIUM_TIMEOUT_S or leaves children behind); its stdout."""
    binary = shutil.which("chromium")
    assert binary is not None
    proc = subprocess.Popen(
        [binary, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", "--force-device-scale-factor=1",
         f"--user-data-dir={tmp_path / 'profile'}", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
        env={**os.environ, "HOME": str(tmp_path)})
    try:
        out, err = proc.communicate(timeout=CHROMIUM_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"chromium took more than {CHROMIUM_TIMEOUT_S} s: {args}")
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # helpers it may have left
        except ProcessLookupError:
            pass
    assert proc.returncode == 0, err.decode(errors="replace")[-2000:]
    return out.decode()


def png_pixels(path: Path) -> tuple[int, int, list[bytes]]:
    """(width, height, rows of RGB bytes) of an 8-bit RGB or RGBA PNG, decoded with zlib:
    enough to look at a screenshot without an imaging library."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", b""
    while pos < len(data):
        (size,), kind = struct.unpack(">I", data[pos:pos + 4]), data[pos + 4:pos + 8]
        if kind == b"IHDR":
            header = data[pos + 8:pos + 8 + size]
        elif kind == b"IDAT":
            idat += data[pos + 8:pos + 8 + size]
        pos += 12 + size
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8 and colour in (2, 6) and interlace == 0, header
    channels = 3 if colour == 2 else 4
    stride = width * channels
    raw = zlib.decompress(idat)
    rows: list[bytes] = []
    previous = bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1:start + 1 + stride])
        for x in range(stride) if kind else ():
            a = line[x - channels] if x >= channels else 0
            b = previous[x]
            if kind == 1:
                line[x] = (line[x] + a) & 255
            elif kind == 2:
                line[x] = (line[x] + b) & 255
            elif kind == 3:
                line[x] = (line[x] + (a + b) // 2) & 255
            else:
                c = previous[x - channels] if x >= channels else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[x] = (line[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        previous = line
        rows.append(bytes(line) if channels == 3 else bytes(
            v for i, v in enumerate(line) if i % 4 != 3))
    return width, height, rows


def overlaps(a: list[float], b: list[float]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromium") is None,
                    reason="chromium is not installed (Debian package chromium: `make engines` "
                           "installs it when run as root with apt-get)")
def test_html_report_as_seen_in_headless_chromium(tmp_path: Path) -> None:
    from collections import Counter
    from html import unescape

    logs = synthetic(tmp_path, {"v1": 0.10, "v2": 0.13}, 600, client_errors=0.03)
    report = build_report(logs, tmp_path / "state")
    page = tmp_path / "report.html"
    page.write_text(render_html(report, logs))
    probed = tmp_path / "probed.html"
    probed.write_text(page.read_text().replace("</body>", LAYOUT_PROBE + "</body>"))

    dom = chromium(tmp_path, "--dump-dom", probed.as_uri())
    # the table: 5xx and 4xx apart, one row per version
    versions = dom[dom.index('<table class="versions">'):]
    versions = versions[:versions.index("</table>")]
    assert "<th>5xx</th>" in versions and "<th>4xx</th>" in versions
    for version in ("v1", "v2"):
        d = report["routes"]["fraud"]["versions"][version]
        assert (f'<td class="name">{version}</td><td>600</td><td>{d["errors"]}</td>'
                in versions)
        assert f"<td>{d['client_errors']}</td>" in versions
    # the outcomes: both, with intervals and p-values
    outcomes = dom[dom.index('<section class="outcomes">'):]
    outcomes = outcomes[:outcomes.index("</section>")]
    assert "95% CI" in outcomes and "p-value" in outcomes
    converted = report["routes"]["fraud"]["versions"]["v2"]["outcomes"]["converted"]
    assert f"<td>{converted['p_value']:.4g}</td>" in outcomes and "basket" in outcomes
    # the charts, as laid out
    layout = orjson.loads(unescape(dom[dom.index('<pre id="layout">') + 17:
                                       dom.index("</pre>", dom.index('<pre id="layout">'))]))
    charts = {chart["kind"]: chart for chart in layout}
    assert charts.keys() == {"latency", "share"}
    assert charts["latency"]["axes"] == ["latency (ms, log scale)", "share of requests (%)"]
    assert charts["share"]["axes"][0].startswith("time (UTC, from 2026-11-26")
    assert charts["share"]["axes"][1] == "share of requests (%)"
    latency_x = [t["text"] for t in charts["latency"]["ticks"] if not t["text"].endswith("%")]
    values = [float(t.replace(",", "")) for t in latency_x]
    assert values and all(v == float(f"{v:.1g}") for v in values), latency_x  # 0.5, 1, 2, 5
    assert [t["text"] for t in charts["share"]["ticks"] if t["text"].endswith("%")] == [
        "0%", "25%", "50%", "75%", "100%"]
    for chart in charts.values():
        assert [item["text"] for item in chart["legend"]] == ["v1", "v2"]
        assert chart["marks"], chart["kind"]
        for item in chart["legend"]:
            assert not any(overlaps(item["box"], mark) for mark in chart["marks"]), item
        ticks = [t["box"] for t in chart["ticks"]]
        assert not any(overlaps(a, b) for i, a in enumerate(ticks) for b in ticks[i + 1:])

    shot = tmp_path / "report.png"
    chromium(tmp_path, f"--screenshot={shot}", f"--window-size={WINDOW[0]},{WINDOW[1]}",
             page.as_uri())
    assert shot.stat().st_size > 20_000
    width, height, rows = png_pixels(shot)
    assert (width, height) == WINDOW
    colours: Counter[tuple[int, int, int]] = Counter()
    for row in rows:
        colours.update(zip(row[0::3], row[1::3], row[2::3]))
    assert colours[(255, 255, 255)] < 0.97 * width * height  # not blank
    # the two versions' colours fill the bars and lines: the charts were drawn
    assert colours[(0x1F, 0x77, 0xB4)] > 2_000 and colours[(0xFF, 0x7F, 0x0E)] > 2_000


def test_the_routers_own_refusals_are_reported_under_the_route(tmp_path: Path) -> None:
    logs = synthetic(tmp_path, {"v1": 0.1, "v2": 0.1}, 50)
    refused = [record(ts="2026-11-26T12:30:00.000Z", request_id=f"bad-{i}", route="fraud",
                      model="fraud", version=None, role="primary", status=status,
                      latency_ms=0.1, config_revision="abcdef123456")
               for i, status in enumerate([422] * 7 + [413] * 2)]
    (logs / "predictions-20261126T123000-1.jsonl").write_bytes(
        b"".join(orjson.dumps(r) + b"\n" for r in refused))
    report = build_report(logs, tmp_path / "state")
    entry = report["routes"]["fraud"]
    assert entry["refused"] == {"requests": 9, "by_status": {"413": 2, "422": 7}}
    assert sum(v["requests"] for v in entry["versions"].values()) == 100  # not in a version
    assert "refused before a version was chosen: 9 (413: 2, 422: 7)" in render_table(report)
    assert "refused before a version was chosen" in render_html(report, logs)


def test_report_until_leaves_out_what_came_after(tmp_path: Path, capsys) -> None:
    from router.cli import main
    logs = synthetic(tmp_path, {"v1": 0.1, "v2": 0.1}, 120)  # minutes 12:00 .. 12:59
    config = tmp_path / "router.yaml"
    config.write_text(f"prediction_log: {{dir: {logs}}}\nstate_dir: {tmp_path / 'state'}\n"
                      "routes: []\n")
    assert main(["report", "-c", str(config), "--json", "--since", "2026-11-26T12:00:00",
                 "--until", "2026-11-26T12:30:00"]) == 0
    half = orjson.loads(capsys.readouterr().out)["routes"]["fraud"]["versions"]
    assert main(["report", "-c", str(config), "--json"]) == 0
    whole = orjson.loads(capsys.readouterr().out)["routes"]["fraud"]["versions"]
    for version in ("v1", "v2"):
        assert whole[version]["requests"] == 120
        assert half[version]["requests"] == 60  # minutes 0-29 of each hour's 60, twice
