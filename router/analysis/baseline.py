"""Drift baselines (per-feature histograms) and schemas inferred from training data.

``model-router baseline --from FILE --schema ID`` reads training rows (CSV or JSONL) and
writes the baseline format drift reads (README.md "Monitoring"):

    {"schema": ID, "rows": N, "features": {
       "amount": {"kind": "numeric", "edges": [...], "fractions": [...]},
       "country": {"kind": "categorical", "fractions": {"US": 0.6, ...}}}}

Numeric bins are deciles of the training data (k+1 edges make k bins; live values below the
first edge count in the first bin, above the last in the last); categorical features keep
each value's share.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from ..bodies import category, output_columns
from ..config.registry import Schema

BINS = 10
RANGES_NOTE = ("min/max are the extremes of these training rows, not the feature's limits: "
               "held-out traffic can fall outside them, and under validation: enforce (the "
               "default) such a request is refused with 422; widen or delete them before "
               "pasting, or rerun with --no-ranges")
ENUM_MAX = 20           # --infer: strings with at most this many values become an enum


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of a CSV (header line) or JSONL file; CSV cells stay strings until typed."""
    text = path.read_text()
    if path.suffix.lower() in (".jsonl", ".ndjson", ".json"):
        return [orjson.loads(line) for line in text.splitlines() if line.strip()]
    return list(csv.DictReader(io.StringIO(text)))


def _typed(value: Any, kind: str) -> Any:
    """A CSV cell (or JSON value) as the schema type; None when missing or unreadable."""
    if value is None or value == "":
        return None
    try:
        if kind == "float":
            return float(value)
        if kind == "int":
            return int(float(value))
        if kind == "bool":
            if isinstance(value, bool):
                return value
            return str(value).strip().lower() in ("1", "true", "yes", "t")
    except (TypeError, ValueError):
        return None
    return str(value)


def numeric_feature(values: Iterable[float]) -> dict[str, Any] | None:
    data = np.asarray([v for v in values if v is not None], dtype=float)
    if data.size == 0:
        return None
    edges = np.unique(np.quantile(data, np.linspace(0, 1, BINS + 1)))
    if edges.size < 2:  # a constant feature: one bin around it
        edges = np.array([edges[0], edges[0] + 1.0])
    counts, _ = np.histogram(np.clip(data, edges[0], edges[-1]), bins=edges)
    return {"kind": "numeric", "edges": [round(float(e), 6) for e in edges],
            "fractions": [round(float(c) / data.size, 6) for c in counts]}


def categorical_feature(values: Iterable[Any]) -> dict[str, Any] | None:
    counts = Counter(category(v) for v in values if v is not None)
    total = sum(counts.values())
    if not total:
        return None
    return {"kind": "categorical",
            "fractions": {k: round(n / total, 6) for k, n in counts.most_common()}}


def build_baseline(rows: list[dict[str, Any]], schema: Schema) -> dict[str, Any]:
    features: dict[str, Any] = {}
    for f in schema.fields:
        values = [_typed(r.get(f.name), f.type) for r in rows]
        feature = numeric_feature(values) if f.type in ("float", "int") \
            else categorical_feature(values)
        if feature is not None:
            features[f.name] = feature
    return {"schema": schema.id, "rows": len(rows), "features": features}


def infer_schema(rows: list[dict[str, Any]], *, ranges: bool = True) -> dict[str, Any]:
    """A registry ``fields`` block guessed from data: types, small enums and (``ranges``)
    each number's min and max. Those are the extremes of these rows, not limits of the
    feature: traffic beyond them is refused under ``validation: enforce`` (RANGES_NOTE)."""
    names: list[str] = []
    for r in rows:
        for k in r:
            if k not in names:
                names.append(k)
    fields: dict[str, Any] = {}
    for name in names:
        raw = [r.get(name) for r in rows]
        present = [v for v in raw if v is not None and v != ""]
        spec: dict[str, Any] = {"type": _guess(present)}
        if spec["type"] in ("float", "int") and ranges:
            numbers = [_typed(v, spec["type"]) for v in present]
            spec["min"], spec["max"] = min(numbers), max(numbers)
        elif spec["type"] == "string":
            distinct = sorted({str(v) for v in present})
            if len(distinct) <= ENUM_MAX:
                spec["enum"] = distinct
        if len(present) < len(raw):
            spec["required"] = False
        fields[name] = spec
    return {"fields": fields}


def _guess(values: list[Any]) -> str:
    if values and all(isinstance(v, bool) or str(v).lower() in ("true", "false")
                      for v in values):
        return "bool"
    try:
        numbers = [float(v) for v in values]
    except (TypeError, ValueError):
        return "string"
    if numbers and all(n.is_integer() and "." not in str(v) for n, v in zip(numbers, values)):
        return "int"
    return "float" if numbers else "string"


def output_baseline(outputs: Iterable[Any], schema_id: str = "outputs") -> dict[str, Any]:
    """A baseline of model outputs (V2 ``outputs`` or ``predictions``), e.g. from the log."""

    columns: dict[str, list[Any]] = {}
    rows = 0
    for doc in outputs:
        rows += 1
        for name, values in output_columns(doc).items():
            columns.setdefault(name, []).extend(values)
    features: dict[str, Any] = {}
    for name, values in columns.items():
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        feature = numeric_feature(values) if numeric else categorical_feature(values)
        if feature is not None:
            features[name] = feature
    return {"schema": schema_id, "rows": rows, "features": features}
