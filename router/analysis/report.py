"""``model-router report``: per route and version, traffic, errors (5xx; 4xx counted apart),
latency, shadow agreement and business outcomes with 95% confidence intervals, versus the
control version; as text, JSON or one self-contained HTML page with charts.

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
from datetime import datetime, timezone
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
                 until: datetime | None = None) -> dict[str, Any]:
    """The report of the records ``query`` sees (default: the local files of ``log_dir``)
    from ``since`` on and before ``until``."""
    query = query if query is not None else LogQuery(log_dir, since=since, until=until)
    where, params = ["role = 'primary'"], []
    if route:
        where.append("route = ?")
        params.append(route)
    if since:
        where.append("ts >= ?")
        params.append(iso(since.timestamp()))
    if until:
        where.append("ts < ?")
        params.append(iso(until.timestamp()))
    clause = " AND ".join(where)
    rows = query.rows(f"""
        SELECT route, version, count(*) AS requests,
               count(*) FILTER (WHERE status >= 500) AS errors,
               count(*) FILTER (WHERE status BETWEEN 400 AND 499) AS client_errors,
               quantile_cont(latency_ms, 0.5) AS p50, quantile_cont(latency_ms, 0.95) AS p95,
               quantile_cont(latency_ms, 0.99) AS p99, max(ts) AS last_ts,
               arg_max(config_revision, ts) AS revision
        FROM records WHERE {clause} AND version IS NOT NULL
        GROUP BY route, version ORDER BY route, version""", params)
    # Requests refused before a version was chosen (validation 422, 413, 503 when the log
    # is full): the route's own refusals, in no version's row.
    refused: dict[str, dict[str, int]] = defaultdict(dict)
    for r in query.rows(f"""
        SELECT route, status, count(*) AS n FROM records
        WHERE {clause} AND version IS NULL AND route IS NOT NULL
        GROUP BY route, status ORDER BY route, status""", params):
        refused[r["route"]][str(r["status"])] = r["n"]
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
               .replace('ts >=', 'p.ts >=').replace('ts < ?', 'p.ts < ?')}
              AND p.version IS NOT NULL""", params):
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
            "client_errors": r["client_errors"],
            "client_error_rate": r["client_errors"] / r["requests"] if r["requests"] else None,
            "latency_ms": {"p50": r["p50"], "p95": r["p95"], "p99": r["p99"]},
            "shadow": {"compared": shadow["compared"] if shadow else 0,
                       "agreement": shadow["agreement"] if shadow else None},
            "outcomes": {}}
    for name, by_status in refused.items():
        entry = report["routes"].setdefault(name, {
            "control": control_of(state_dir, latest[name][1], name, query.store)
            if name in latest else None, "versions": {}})
        entry["refused"] = {"requests": sum(by_status.values()), "by_status": by_status}
    for (name, version), shadow in shadows.items():  # versions that only ran as shadows
        entry = report["routes"].get(name)
        if entry is not None and version not in entry["versions"]:
            entry["versions"][version] = {
                "requests": 0, "errors": 0, "error_rate": None,
                "client_errors": 0, "client_error_rate": None,
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
        lines.append(f"  {'version':<8} {'requests':>9} {'5xx':>7} {'5xx%':>6} {'4xx':>7} "
                     f"{'4xx%':>6} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} "
                     f"{'shadow agree':>13}")
        for version, d in entry["versions"].items():
            agree = d["shadow"]["agreement"]
            lat = d["latency_ms"]
            ms = [f"{lat[q]:>8.2f}" if lat[q] is not None else f"{'-':>8}"
                  for q in ("p50", "p95", "p99")]
            lines.append(f"  {version:<8} {d['requests']:>9} {d['errors']:>7} "
                         f"{100 * (d['error_rate'] or 0):>5.2f}% {d['client_errors']:>7} "
                         f"{100 * (d['client_error_rate'] or 0):>5.2f}% {' '.join(ms)} "
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
        if entry.get("refused"):
            lines.append(f"  refused before a version was chosen: {_refused(entry['refused'])}")
    if lines:
        lines.append("(5xx are errors, in the error rate; 4xx, requests the model server "
                     "refused as invalid, are counted apart; the router's own refusals, "
                     "before a version was chosen, are listed under the route)")
    return "\n".join(lines) if lines else "no primary records"


# -- HTML --------------------------------------------------------------------------------------
#
# One self-contained page (inline CSS and SVG, nothing fetched): per route the version table
# (5xx apart from 4xx), the outcomes with their intervals and p-values, and two charts with
# labelled axes, whose legends sit in a margin of their own, clear of the data.

COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"]
LATENCY_BINS = 40
SHARE_COLUMNS = 60                                  # at most, per chart
STEPS = [(60, "1 min"), (300, "5 min"), (900, "15 min"), (3600, "1 h"), (3 * 3600, "3 h"),
         (6 * 3600, "6 h"), (86400, "1 day"), (7 * 86400, "1 week")]
STYLE = ("body{font-family:sans-serif;margin:2em;color:#222}table{border-collapse:collapse;"
         "margin:.5em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
         "td{white-space:nowrap}th{background:#f4f4f4}td.name{text-align:left}"
         "p.note{color:#555;font-size:90%;max-width:60em}svg text{font-family:sans-serif}")


class _Plot:
    """The pixel frame of one chart: a plot area with room left and below for the axes and
    right for the legend; positions are given as fractions of the plot area."""

    def __init__(self, width: int = 760, height: int = 260) -> None:
        self.width, self.height = width, height
        self.left, self.right, self.top, self.bottom = 70, width - 160, 12, height - 50

    def x(self, fraction: float) -> float:
        return self.left + fraction * (self.right - self.left)

    def y(self, fraction: float) -> float:
        return self.bottom - fraction * (self.bottom - self.top)

    def svg(self, kind: str, body: str, *, x_label: str, y_label: str,
            x_ticks: list[tuple[float, str]], y_ticks: list[tuple[float, str]],
            legend: list[str]) -> str:
        """The chart: grid lines and tick labels, both axis labels, ``body`` and a legend
        (one swatch per series, in ``COLOURS`` order)."""
        grid = []
        for f, label in y_ticks:
            y = self.y(f)
            grid.append(f'<line x1="{self.left}" x2="{self.right}" y1="{y:.1f}" y2="{y:.1f}" '
                        f'stroke="#e5e5e5"/><text class="tick" x="{self.left - 6}" '
                        f'y="{y + 4:.1f}" font-size="11" text-anchor="end">{label}</text>')
        for f, label in x_ticks:
            x = self.x(f)
            grid.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{self.bottom}" '
                        f'y2="{self.bottom + 5}" stroke="#888"/><text class="tick" '
                        f'x="{x:.1f}" y="{self.bottom + 18}" font-size="11" '
                        f'text-anchor="middle">{label}</text>')
        axes = (f'<line x1="{self.left}" x2="{self.right}" y1="{self.bottom}" '
                f'y2="{self.bottom}" stroke="#888"/><line x1="{self.left}" x2="{self.left}" '
                f'y1="{self.top}" y2="{self.bottom}" stroke="#888"/>')
        middle = (self.top + self.bottom) / 2
        labels = (f'<text class="axis-label x" x="{(self.left + self.right) / 2:.0f}" '
                  f'y="{self.height - 8}" font-size="12" text-anchor="middle">'
                  f'{html.escape(x_label)}</text><text class="axis-label y" x="16" '
                  f'y="{middle:.0f}" font-size="12" text-anchor="middle" '
                  f'transform="rotate(-90 16 {middle:.0f})">{html.escape(y_label)}</text>')
        keys = "".join(
            f'<g class="legend-item"><rect x="{self.right + 16}" y="{self.top + 18 * i}" '
            f'width="12" height="12" fill="{COLOURS[i % len(COLOURS)]}"/><text '
            f'x="{self.right + 34}" y="{self.top + 18 * i + 11}" font-size="12">'
            f'{html.escape(name[:18])}<title>{html.escape(name)}</title></text></g>'
            for i, name in enumerate(legend))
        return (f'<svg class="{kind}" xmlns="http://www.w3.org/2000/svg" width="{self.width}" '
                f'height="{self.height}" role="img"><rect width="100%" height="100%" '
                f'fill="white"/>{"".join(grid)}{body}{axes}{labels}'
                f'<g class="legend">{keys}</g></svg>')


def _ms(value: float) -> str:
    """A latency tick label: 0.05, 0.5, 2, 50, 1,000, 20,000."""
    return f"{value:,.0f}" if value >= 1 else f"{value:.3g}"


def log_ticks(low: float, high: float) -> list[float]:
    """Round values (1-2-5 or 1-9 per decade, or decades) between ``low`` and ``high`` for
    a log axis: the densest set of at most 10; both ends when none is round."""
    first, last = math.floor(math.log10(low)), math.ceil(math.log10(high))
    ticks: list[float] = []
    for multipliers in ((1, 2, 3, 4, 5, 6, 7, 8, 9), (1, 2, 5), (1,)):
        ticks = [m * 10.0 ** e for e in range(first, last + 1) for m in multipliers
                 if low <= m * 10.0 ** e <= high]
        if len(ticks) <= 10:
            break
    if len(ticks) > 10:  # decades over more than ten decades: every other one
        ticks = ticks[::2]
    return ticks if len(ticks) >= 2 else [low, high]


def _where(window: str) -> str:
    return (f"FROM records WHERE role = 'primary' AND route = ? AND version IS NOT NULL "
            f"{window}")


def _latency_svg(query: LogQuery, route: str, window: str, params: list[Any],
                 versions: list[str]) -> str:
    """The latency distribution per version: the share of its requests in each of
    ``LATENCY_BINS`` log-spaced bins, as one line per version (binned in DuckDB)."""
    where = _where(window) + " AND latency_ms IS NOT NULL"
    span = query.rows(f"SELECT min(latency_ms) FILTER (WHERE latency_ms > 0) AS low, "
                      f"max(latency_ms) AS high {where}", [route, *params])
    low, high = (span[0]["low"], span[0]["high"]) if span else (None, None)
    if low is None or high is None or not (math.isfinite(low) and math.isfinite(high)):
        return "<p>no latencies</p>"
    if high <= low * 1.05:  # (nearly) one value: a decade around it
        low, high = low / 3, high * 3
    ratio = (high / low) ** (1 / LATENCY_BINS)
    counts: dict[str, list[int]] = {v: [0] * LATENCY_BINS for v in versions}
    for r in query.rows(f"""
            SELECT version, least(greatest(CAST(floor(ln(greatest(latency_ms, ?) / ?) / ?)
                   AS INTEGER), 0), ?) AS bin, count(*) AS n {where}
            GROUP BY version, bin""", [low, low, math.log(ratio), LATENCY_BINS - 1,
                                       route, *params]):
        counts.setdefault(r["version"], [0] * LATENCY_BINS)[r["bin"]] += r["n"]
    shares = {v: [c / (sum(cs) or 1) for c in cs] for v, cs in counts.items()}
    peak = max((s for ss in shares.values() for s in ss), default=0) or 1
    top = min(1.0, math.ceil(peak * 10) / 10)  # the y scale: the next 10% above the peak
    plot = _Plot()
    span_log = math.log(high / low)
    lines = []
    for i, (version, share) in enumerate(shares.items()):
        # each bin's share drawn at its geometric centre
        points = " ".join(f"{plot.x((j + 0.5) / LATENCY_BINS):.1f},{plot.y(s / top):.1f}"
                          for j, s in enumerate(share))
        lines.append(f'<polyline class="mark" fill="none" stroke="{COLOURS[i % len(COLOURS)]}" '
                     f'stroke-width="2" points="{points}"><title>{html.escape(version)}'
                     f'</title></polyline>')
    x_ticks = [(math.log(t / low) / span_log, _ms(t)) for t in log_ticks(low, high)]
    y_ticks = [(k / 4, f"{100 * top * k / 4:.3g}%") for k in range(5)]
    return plot.svg("latency", "".join(lines), x_label="latency (ms, log scale)",
                    y_label="share of requests (%)", x_ticks=x_ticks, y_ticks=y_ticks,
                    legend=list(shares))


def _share_svg(query: LogQuery, route: str, window: str, params: list[Any],
               versions: list[str]) -> str:
    """Each version's share of the route's requests over time: stacked columns, one per time
    step (1 min up to 1 week, so at most ``SHARE_COLUMNS`` columns; counted in DuckDB)."""
    stamped = (f"(SELECT version, epoch(TRY_CAST(replace(ts, 'Z', '') AS TIMESTAMP)) AS t "
               f"{_where(window)}) WHERE t IS NOT NULL")
    span = query.rows(f"SELECT min(t) AS first, max(t) AS last FROM {stamped}",
                      [route, *params])
    first, last = (span[0]["first"], span[0]["last"]) if span else (None, None)
    if first is None or last is None:
        return "<p>no traffic</p>"
    step, step_name = next(((s, n) for s, n in STEPS if (last - first) / s < SHARE_COLUMNS),
                           STEPS[-1])
    start = math.floor(first / step) * step
    columns = int((last - start) // step) + 1
    buckets: dict[int, dict[str, int]] = defaultdict(dict)
    for r in query.rows(f"SELECT CAST(floor((t - ?) / ?) AS INTEGER) AS i, version, "
                        f"count(*) AS n FROM {stamped} GROUP BY i, version",
                        [start, step, route, *params]):
        buckets[r["i"]][r["version"]] = r["n"]
    names = [v for v in versions if any(v in b for b in buckets.values())]
    plot = _Plot()
    width = 1 / columns
    rects = []
    for i, counts in sorted(buckets.items()):
        total = sum(counts.values()) or 1
        when = datetime.fromtimestamp(start + i * step, timezone.utc).strftime(
            "%Y-%m-%d %H:%M")
        below = 0.0
        for j, version in enumerate(names):
            share = counts.get(version, 0) / total
            if not share:
                continue
            y_top, y_bottom = plot.y(below + share), plot.y(below)
            below += share
            rects.append(
                f'<rect class="mark" x="{plot.x(i * width):.1f}" y="{y_top:.1f}" '
                f'width="{max(plot.x(width) - plot.x(0) - 1, 1):.1f}" '
                f'height="{y_bottom - y_top:.1f}" fill="{COLOURS[j % len(COLOURS)]}">'
                f'<title>{when} UTC {html.escape(version)}: {counts[version]} of {total} '
                f'({100 * share:.1f}%)</title></rect>')
    fmt = "%Y-%m-%d" if step >= 86400 else "%H:%M"
    every = max(1, math.ceil(columns / 6))
    x_ticks = [((i + 0.5) * width, datetime.fromtimestamp(start + i * step, timezone.utc)
                .strftime(fmt)) for i in range(0, columns, every)]
    day = datetime.fromtimestamp(start, timezone.utc).strftime("%Y-%m-%d")
    y_ticks = [(k / 4, f"{25 * k}%") for k in range(5)]
    return plot.svg("share", "".join(rects),
                    x_label=f"time (UTC, from {day}; one column per {step_name})",
                    y_label="share of requests (%)", x_ticks=x_ticks, y_ticks=y_ticks,
                    legend=names)


def _num(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.4g}" if signed else f"{value:.4g}"


def _interval(ci: list[float] | None, signed: bool = False) -> str:
    return f"[{_num(ci[0], signed)}, {_num(ci[1], signed)}]" if ci else "-"


def _outcomes_html(entry: dict[str, Any]) -> str:
    """The outcomes of a route's versions: n, rate or mean with its 95% CI, and versus the
    control the difference, its 95% CI and the p-value."""
    control = entry["control"]
    rows = []
    for version, d in entry["versions"].items():
        for outcome, o in d["outcomes"].items():
            kind = "rate" if "rate" in o else "mean"
            if version == control:
                versus = '<td class="name" colspan="3">control</td>'
            elif o.get("diff_vs_control") is None and "diff_vs_control" not in (
                    o.get("undefined") or {}):
                versus = '<td class="name" colspan="3">no comparison (fewer than 2 values ' \
                         'here or in the control)</td>'
            else:
                versus = (f"<td>{_num(o.get('diff_vs_control'), True)}</td>"
                          f"<td>{_interval(o.get('diff_ci95'), True)}</td>"
                          f"<td>{_num(o.get('p_value'))}</td>")
            notes = "; ".join(f"{k} undefined ({v})" for k, v in (o.get("undefined") or {})
                              .items())
            rows.append(f'<tr><td class="name">{html.escape(version)}</td>'
                        f'<td class="name">{html.escape(outcome)}</td><td>{o["n"]}</td>'
                        f"<td>{kind} {_num(o.get(kind))}</td><td>{_interval(o['ci95'])}</td>"
                        f'{versus}<td class="name">{html.escape(notes)}</td></tr>')
    if not rows:
        body = "<p>no feedback outcomes joined to this route's requests</p>"
    else:
        body = ("<table><tr><th>version</th><th>outcome</th><th>n</th><th>rate / mean</th>"
                "<th>95% CI</th><th>vs control</th><th>95% CI of the difference</th>"
                "<th>p-value</th><th>notes</th></tr>" + "".join(rows) + "</table>"
                '<p class="note">A true/false outcome is a rate with a Wilson interval; a '
                "number a mean with a t interval. Versus the control "
                f"({html.escape(str(control))}): the difference (this version minus the "
                "control), its 95% interval and the p-value of a two-proportion z-test "
                "(rates) or Welch's t-test (means). An interval that excludes 0 and a small "
                "p-value mean the difference is unlikely to be chance.</p>")
    return f'<section class="outcomes"><h3>outcomes</h3>{body}</section>'


def _versions_html(entry: dict[str, Any]) -> str:
    rows = []
    for version, d in entry["versions"].items():
        agree = d["shadow"]["agreement"]
        ms = "".join(f"<td>{d['latency_ms'][q]:.2f}</td>" if d["latency_ms"][q] is not None
                     else "<td>-</td>" for q in ("p50", "p95", "p99"))
        rows.append(f'<tr><td class="name">{html.escape(version)}</td><td>{d["requests"]}'
                    f"</td><td>{d['errors']}</td><td>{_percent(d['error_rate'])}</td>"
                    f"<td>{d['client_errors']}</td><td>{_percent(d['client_error_rate'])}"
                    f"</td>{ms}<td>{'-' if agree is None else f'{agree:.3f}'}</td></tr>")
    return ('<table class="versions"><tr><th>version</th><th>requests</th><th>5xx</th>'
            "<th>5xx rate</th><th>4xx</th><th>4xx rate</th><th>p50 ms</th><th>p95 ms</th>"
            "<th>p99 ms</th><th>shadow agreement</th></tr>" + "".join(rows) + "</table>"
            '<p class="note">5xx are the errors (the error rate is 5xx / requests); 4xx are '
            "requests refused as invalid by the model server, counted apart.</p>"
            + (f'<p class="refused">refused before a version was chosen (validation, body '
               f"size, a full log): {html.escape(_refused(entry['refused']))}</p>"
               if entry.get("refused") else ""))


def _refused(refused: dict[str, Any]) -> str:
    codes = ", ".join(f"{code}: {n}" for code, n in refused["by_status"].items())
    return f"{refused['requests']} ({codes})"


def _percent(rate: float | None) -> str:
    return "-" if rate is None else f"{100 * rate:.2f}%"


def render_html(report: dict[str, Any], log_dir: Path, *, since: datetime | None = None,
                query: LogQuery | None = None, until: datetime | None = None) -> str:
    """The report as one self-contained HTML page, with charts of the records ``query`` sees
    (default: the local files of ``log_dir``) from ``since`` on and before ``until``."""
    query = query if query is not None else LogQuery(log_dir, since=since, until=until)
    window, params = ("AND ts >= ?", [iso(since.timestamp())]) if since else ("", [])
    if until:
        window, params = f"{window} AND ts < ?", [*params, iso(until.timestamp())]
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>model-router report"
             f"</title><style>{STYLE}</style></head><body><h1>model-router report</h1>"]
    if since or until:
        start = iso(since.timestamp()) if since else "the start"
        end = f" to {iso(until.timestamp())} (exclusive)" if until else " on"
        parts.append(f"<p>from {html.escape(start)}{html.escape(end)}</p>")
    if not report["routes"]:
        parts.append("<p>no primary records</p>")
    for name, entry in report["routes"].items():
        versions = list(entry["versions"])
        parts.append(f'<section class="route"><h2>route {html.escape(name)} (control '
                     f"{html.escape(str(entry['control']))})</h2>{_versions_html(entry)}"
                     f"{_outcomes_html(entry)}<h3>latency distribution</h3>"
                     f"{_latency_svg(query, name, window, params, versions)}"
                     "<h3>traffic share over time</h3>"
                     f"{_share_svg(query, name, window, params, versions)}</section>")
    parts.append("</body></html>")
    return "".join(parts)
