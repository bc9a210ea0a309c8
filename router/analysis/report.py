"""``model-router report``: per route and version, traffic, errors, latency, shadow agreement
and business outcomes with 95% confidence intervals, versus the control version.

Outcomes come from feedback records joined to primary records by request id (the latest
feedback of a request wins). A boolean outcome is a rate with a Wilson interval; a numeric
one a mean with a t interval. The difference versus the control version (blue, rollout
baseline, or the first-listed split version of the latest revision seen for the route) has
a 95% interval and a p-value: two-proportion z-test for rates, Welch's t-test for means.
"""

from __future__ import annotations

import html
import math
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

from scipy import stats

from ..config import yaml12
from ..records import control_in_config
from ..stats import wilson
from ..timefmt import iso
from .audit import LogQuery, revision_files
from .shipped import Shipped

# -- statistics (SciPy underneath) -------------------------------------------------------------

OVERFLOW = "overflow: the values exceed the range of a 64-bit float"
VERSUS = ("diff_vs_control", "diff_ci95", "p_value")


def finite(*values: float) -> None:
    """Raise OverflowError unless every value is a finite number (inf and nan come from
    sums or squares that overflowed)."""
    if not all(math.isfinite(v) for v in values):
        raise OverflowError(OVERFLOW)


def defined(result: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    """``result`` with each statistic in ``names`` that is not finite set to None and listed,
    with the reason, under ``undefined``: a report never crashes on extreme numbers."""
    undefined = {}
    for name in names:
        value = result.get(name)
        values: list[Any] = value if isinstance(value, list) else [value]
        if value is not None and not all(math.isfinite(v) for v in values):
            result[name] = None
            undefined[name] = OVERFLOW
    if undefined:
        result["undefined"] = undefined
    return result


def mean_ci(n: int, mean: float, var: float) -> tuple[float, float] | None:
    """t interval of a mean; OverflowError when the mean or variance overflowed."""
    if n < 2:
        return None
    finite(mean, var)
    sem = math.sqrt(var / n)
    if sem == 0:
        return (mean, mean)
    low, high = stats.t.interval(0.95, n - 1, loc=mean, scale=sem)
    return (float(low), float(high))


def two_proportions(k1: int, n1: int, k0: int, n0: int) -> dict[str, Any]:
    """Treatment (1) minus control (0): difference, 95% CI (unpooled), z-test p (pooled)."""
    p1, p0 = k1 / n1, k0 / n0
    diff = p1 - p0
    se = math.sqrt(p1 * (1 - p1) / n1 + p0 * (1 - p0) / n0)
    z95 = float(stats.norm.ppf(0.975))
    pooled = (k1 + k0) / (n1 + n0)
    se0 = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n0))
    p_value = float(2 * stats.norm.sf(abs(diff) / se0)) if se0 > 0 else 1.0
    return {"diff_vs_control": diff, "diff_ci95": [diff - z95 * se, diff + z95 * se],
            "p_value": p_value}


def welch(n1: int, m1: float, v1: float, n0: int, m0: float, v0: float) -> dict[str, Any]:
    """Treatment (1) minus control (0) means: difference, 95% CI (Welch), p-value.

    OverflowError when the inputs overflowed or the degrees of freedom do."""
    finite(m1, v1, m0, v0)
    diff = m1 - m0
    a, b = v1 / n1, v0 / n0
    se = math.sqrt(a + b)
    if se == 0:
        return {"diff_vs_control": diff, "diff_ci95": [diff, diff], "p_value": 1.0}
    df = (a + b) ** 2 / (a ** 2 / (n1 - 1) + b ** 2 / (n0 - 1))  # before SciPy meets it
    result = stats.ttest_ind_from_stats(m1, math.sqrt(v1), n1, m0, math.sqrt(v0), n0,
                                        equal_var=False)
    t = float(stats.t.ppf(0.975, df))
    return {"diff_vs_control": diff, "diff_ci95": [diff - t * se, diff + t * se],
            "p_value": float(result.pvalue)}


class _Acc:
    """Running sums for one outcome of one version: booleans or numbers."""

    __slots__ = ("n", "k", "total", "squares", "kind")

    def __init__(self) -> None:
        self.n = self.k = 0
        self.total = self.squares = 0.0
        self.kind = "bool"

    def add(self, value: Any) -> None:
        if isinstance(value, bool):
            self.n += 1
            self.k += value
            self.total += value
            self.squares += value
        elif isinstance(value, (int, float)):
            self.kind = "number"
            self.n += 1
            self.total += value
            self.squares += value * value

    @property
    def mean(self) -> float:
        return self.total / self.n if self.n else float("nan")

    @property
    def var(self) -> float:
        """Sample variance; inf or nan (never an exception) once the sums overflowed."""
        if self.n < 2:
            return 0.0
        var = (self.squares - self.total * self.total / self.n) / (self.n - 1)
        return 0.0 if var < 0 else var  # rounding can dip below 0; nan stays nan

    def summary(self) -> dict[str, Any]:
        if self.kind == "bool":
            ci = wilson(self.k, self.n)
            return {"n": self.n, "rate": self.mean if self.n else None,
                    "ci95": list(ci) if ci else None}
        try:
            ci = mean_ci(self.n, self.mean, self.var)
        except OverflowError:
            ci = (math.nan, math.nan)  # overflowed: defined() names it undefined
        return defined({"n": self.n, "mean": self.mean if self.n else None,
                        "ci95": list(ci) if ci else None}, ("mean", "ci95"))

    def versus(self, control: _Acc) -> dict[str, Any]:
        if self.n < 2 or control.n < 2:
            return dict.fromkeys(VERSUS)
        if self.kind == "bool" and control.kind == "bool":
            return two_proportions(self.k, self.n, control.k, control.n)
        try:
            result = welch(self.n, self.mean, self.var, control.n, control.mean, control.var)
        except OverflowError:  # overflowed: defined() names what is undefined
            result = {**dict.fromkeys(VERSUS, math.nan),
                      "diff_vs_control": self.mean - control.mean}
        return defined(result, VERSUS)


# -- the report --------------------------------------------------------------------------------

def control_of(state_dir: Path, revision: str | None, route: str,
               store: Shipped | None = None) -> str | None:
    """The control version named by a revision's router.yaml (blue, baseline, first split),
    read from the state_dir or the shipped store (``audit.revision_files``)."""
    found = revision_files(state_dir, revision, store)
    if found is None:
        return None
    for item in (yaml12.loads(found[1]["router.yaml"]) or {}).get("routes") or []:
        if isinstance(item, dict) and item.get("name") == route:
            return control_in_config(item)
    return None


def build_report(log_dir: Path, state_dir: Path, *, route: str | None = None,
                 since: datetime | None = None, query: LogQuery | None = None,
                 ) -> dict[str, Any]:
    """The report of the records ``query`` sees (default: the local files of ``log_dir``)
    from ``since`` on."""
    query = query if query is not None else LogQuery(log_dir, since=since)
    where, params = ["role = 'primary'"], []
    if route:
        where.append("route = ?")
        params.append(route)
    if since:
        where.append("ts >= ?")
        params.append(iso(since.timestamp()))
    clause = " AND ".join(where)
    rows = query.rows(f"""
        SELECT route, version, count(*) AS requests,
               count(*) FILTER (WHERE status >= 500) AS errors,
               quantile_cont(latency_ms, 0.5) AS p50, quantile_cont(latency_ms, 0.95) AS p95,
               quantile_cont(latency_ms, 0.99) AS p99, max(ts) AS last_ts,
               arg_max(config_revision, ts) AS revision
        FROM records WHERE {clause} AND version IS NOT NULL
        GROUP BY route, version ORDER BY route, version""", params)
    shadow_where = clause.replace("role = 'primary'", "role = 'shadow'")
    shadows = {(r["route"], r["version"]): r for r in query.rows(f"""
        SELECT route, version, count(*) FILTER (WHERE compare IS NOT NULL) AS compared,
               avg(TRY_CAST(json_extract(compare, '$.agreement') AS DOUBLE)) AS agreement
        FROM records WHERE {shadow_where} GROUP BY route, version""", params)}
    outcomes: dict[tuple[str, str], dict[str, _Acc]] = defaultdict(lambda: defaultdict(_Acc))
    for r in query.rows(f"""
        WITH fb AS (SELECT request_id, outcome FROM records WHERE role = 'feedback'
                    QUALIFY row_number() OVER (PARTITION BY request_id ORDER BY ts DESC) = 1)
        SELECT p.route, p.version, fb.outcome FROM records p JOIN fb USING (request_id)
        WHERE {clause.replace('role', 'p.role').replace('route =', 'p.route =')
               .replace('ts >=', 'p.ts >=')} AND p.version IS NOT NULL""", params):
        if isinstance(r["outcome"], dict):
            accs = outcomes[(r["route"], r["version"])]
            for name, value in r["outcome"].items():
                accs[name].add(value)

    latest: dict[str, tuple[str, str]] = {}
    for r in rows:
        if r["route"] not in latest or r["last_ts"] > latest[r["route"]][0]:
            latest[r["route"]] = (r["last_ts"], r["revision"])
    report: dict[str, Any] = {"routes": {}}
    for r in rows:
        name, version = r["route"], r["version"]
        entry = report["routes"].setdefault(name, {
            "control": control_of(state_dir, latest[name][1], name, query.store),
            "versions": {}})
        shadow = shadows.get((name, version))
        entry["versions"][version] = {
            "requests": r["requests"], "errors": r["errors"],
            "error_rate": r["errors"] / r["requests"] if r["requests"] else None,
            "latency_ms": {"p50": r["p50"], "p95": r["p95"], "p99": r["p99"]},
            "shadow": {"compared": shadow["compared"] if shadow else 0,
                       "agreement": shadow["agreement"] if shadow else None},
            "outcomes": {}}
    for (name, version), shadow in shadows.items():  # versions that only ran as shadows
        entry = report["routes"].get(name)
        if entry is not None and version not in entry["versions"]:
            entry["versions"][version] = {
                "requests": 0, "errors": 0, "error_rate": None,
                "latency_ms": {"p50": None, "p95": None, "p99": None},
                "shadow": {"compared": shadow["compared"], "agreement": shadow["agreement"]},
                "outcomes": {}}
    for name, entry in report["routes"].items():
        control = entry["control"]
        for version, data in entry["versions"].items():
            for outcome, acc in outcomes.get((name, version), {}).items():
                summary = acc.summary()
                base = outcomes.get((name, control or ""), {}).get(outcome)
                if version != control and base is not None:
                    versus = acc.versus(base)
                    undefined = {**summary.get("undefined", {}), **versus.pop("undefined", {})}
                    summary.update(versus, **({"undefined": undefined} if undefined else {}))
                data["outcomes"][outcome] = summary
    return report


def render_table(report: dict[str, Any]) -> str:
    lines = []
    for name, entry in report["routes"].items():
        lines.append(f"route {name} (control: {entry['control']})")
        lines.append(f"  {'version':<8} {'requests':>9} {'errors':>7} {'err%':>6} "
                     f"{'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'shadow agree':>13}")
        for version, d in entry["versions"].items():
            agree = d["shadow"]["agreement"]
            lat = d["latency_ms"]
            ms = [f"{lat[q]:>8.2f}" if lat[q] is not None else f"{'-':>8}"
                  for q in ("p50", "p95", "p99")]
            lines.append(f"  {version:<8} {d['requests']:>9} {d['errors']:>7} "
                         f"{100 * (d['error_rate'] or 0):>5.2f}% {' '.join(ms)} "
                         f"{'-' if agree is None else f'{agree:.3f}':>13}")
            for outcome, o in d["outcomes"].items():
                value = o.get("rate", o.get("mean"))
                ci = o["ci95"]
                text = f"    {outcome}: n={o['n']} {'rate' if 'rate' in o else 'mean'}="
                text += f"{value:.4f}" if value is not None else "-"
                if ci:
                    text += f" [{ci[0]:.4f}, {ci[1]:.4f}]"
                if o.get("diff_vs_control") is not None:
                    dci, p = o["diff_ci95"], o["p_value"]
                    text += f"  vs control {o['diff_vs_control']:+.4f}"
                    text += f" [{dci[0]:+.4f}, {dci[1]:+.4f}]" if dci else ""
                    text += f" p={p:.4g}" if p is not None else ""
                for stat, reason in (o.get("undefined") or {}).items():
                    text += f"  {stat} undefined ({reason})"
                lines.append(text)
    return "\n".join(lines) if lines else "no primary records"


# -- HTML --------------------------------------------------------------------------------------

COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"]


def _latency_svg(series: dict[str, list[float]]) -> str:
    """Histograms of latency (log-spaced bins) per version as polylines."""
    edges = [0.1 * 1.5 ** i for i in range(30)]
    width, height = 640, 240
    paths = []
    peak = 1e-9
    shares: dict[str, list[float]] = {}
    for version, values in series.items():
        counts = [0] * (len(edges) - 1)
        for v in values:
            for i in range(len(edges) - 1):
                if v < edges[i + 1] or i == len(edges) - 2:
                    counts[i] += 1
                    break
        total = max(1, len(values))
        shares[version] = [c / total for c in counts]
        peak = max(peak, *shares[version])
    for i, (version, share) in enumerate(shares.items()):
        points = " ".join(f"{40 + j * (width - 50) / (len(share) - 1):.1f},"
                          f"{height - 30 - s / peak * (height - 50):.1f}"
                          for j, s in enumerate(share))
        colour = COLOURS[i % len(COLOURS)]
        paths.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" '
                     f'points="{points}"><title>{html.escape(version)}</title></polyline>'
                     f'<text x="{width - 120}" y="{20 + 16 * i}" fill="{colour}">'
                     f'{html.escape(version)}</text>')
    ticks = "".join(f'<text x="{40 + j * (width - 50) / (len(edges) - 2):.0f}" '
                    f'y="{height - 10}" font-size="10">{edges[j]:.3g}</text>'
                    for j in range(0, len(edges) - 1, 5))
    return (f'<svg class="latency" xmlns="http://www.w3.org/2000/svg" width="{width}" '
            f'height="{height}"><rect width="100%" height="100%" fill="white"/>'
            f'{"".join(paths)}{ticks}<text x="5" y="15" font-size="11">share</text>'
            f'<text x="{width / 2 - 40}" y="{height}" font-size="11">latency ms</text></svg>')


def _share_svg(buckets: dict[str, dict[str, int]]) -> str:
    """Traffic share per version over time (stacked columns per minute)."""
    width, height = 640, 200
    times = sorted(buckets)
    versions = sorted({v for b in buckets.values() for v in b})
    if not times:
        return "<p>no traffic</p>"
    bar = (width - 50) / len(times)
    rects = []
    for i, t in enumerate(times):
        total = sum(buckets[t].values()) or 1
        y = height - 20.0
        for j, v in enumerate(versions):
            h = buckets[t].get(v, 0) / total * (height - 40)
            y -= h
            rects.append(f'<rect x="{40 + i * bar:.1f}" y="{y:.1f}" width="{max(bar - 1, 1):.1f}"'
                         f' height="{h:.1f}" fill="{COLOURS[j % len(COLOURS)]}">'
                         f'<title>{html.escape(t)} {html.escape(v)}</title></rect>')
    legend = "".join(f'<text x="{width - 100}" y="{15 + 14 * j}" '
                     f'fill="{COLOURS[j % len(COLOURS)]}">{html.escape(v)}</text>'
                     for j, v in enumerate(versions))
    return (f'<svg class="share" xmlns="http://www.w3.org/2000/svg" width="{width}" '
            f'height="{height}"><rect width="100%" height="100%" fill="white"/>'
            f'{"".join(rects)}{legend}<text x="40" y="{height - 4}" font-size="10">'
            f'{html.escape(times[0])}</text></svg>')


def render_html(report: dict[str, Any], log_dir: Path, *, since: datetime | None = None,
                query: LogQuery | None = None) -> str:
    """The report as one HTML page, with charts of the records ``query`` sees (default: the
    local files of ``log_dir``) from ``since`` on."""
    query = query if query is not None else LogQuery(log_dir, since=since)
    window, params = ("AND ts >= ?", [iso(since.timestamp())]) if since else ("", [])
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>model-router report"
             "</title><style>body{font-family:sans-serif;margin:2em}table{border-collapse:"
             "collapse}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
             "</style></head><body><h1>model-router report</h1>"]
    for name, entry in report["routes"].items():
        parts.append(f"<h2>route {html.escape(name)} (control "
                     f"{html.escape(str(entry['control']))})</h2><table><tr><th>version</th>"
                     "<th>requests</th><th>errors</th><th>p50 ms</th><th>p95 ms</th>"
                     "<th>p99 ms</th><th>shadow agreement</th></tr>")
        for version, d in entry["versions"].items():
            agree = d["shadow"]["agreement"]
            ms = "".join(f"<td>{d['latency_ms'][q]:.2f}</td>" if d["latency_ms"][q] is not None
                         else "<td>-</td>" for q in ("p50", "p95", "p99"))
            parts.append(f"<tr><td>{html.escape(version)}</td><td>{d['requests']}</td>"
                         f"<td>{d['errors']}</td>{ms}"
                         f"<td>{'-' if agree is None else f'{agree:.3f}'}</td></tr>")
        parts.append("</table>")
        latencies: dict[str, list[float]] = defaultdict(list)
        buckets: dict[str, dict[str, int]] = defaultdict(dict)
        for r in query.rows("SELECT version, latency_ms, substr(ts, 1, 16) AS minute FROM "
                            "records WHERE role = 'primary' AND route = ? AND version IS "
                            f"NOT NULL {window}", [name, *params]):
            latencies[r["version"]].append(r["latency_ms"])
            b = buckets[r["minute"]]
            b[r["version"]] = b.get(r["version"], 0) + 1
        parts.append("<h3>latency distribution</h3>" + _latency_svg(dict(latencies)))
        parts.append("<h3>traffic share over time</h3>" + _share_svg(dict(buckets)))
    parts.append("</body></html>")
    return "".join(parts)
