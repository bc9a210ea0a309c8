"""The shipped prediction log's layout: one contract for the shipper that writes it and the
readers (``audit``, ``report``) that query it. A leaf: no I/O here.

``<to>/date=YYYY-MM-DD/hour=HH/<replica>-<segment start>-<seq>.parquet``: one zstd Parquet
file per closed local segment and hour it spans (hive layout: DuckDB, Spark, Trino, pandas
and BigQuery read the partitions as columns ``date`` and ``hour``). The name is fixed by the
segment (its start and its sequence: the writer's pid and rotation number), so a segment
shipped again after a crash replaces its own objects. Columns are ``records.RECORD_FIELDS``
in order, JSON fields as text. Beside them: ``<to>/revisions/<rev>/<file>`` (each applied
revision's config files) and ``<to>/history/<replica>.jsonl`` (its deployment history).

Locally, a segment whose objects are confirmed gets a marker ``<segment>.shipped`` (JSON:
the object paths and when); readers of the store skip marked segments, and retention may
delete a segment only once it is marked and ``keep_local_hours`` old. ``<segment>.replica``
names the replica that wrote it.
"""

from __future__ import annotations

import re
from pathlib import Path

from .records import RECORD_FIELDS

SHIPPED = ".shipped"          # marker suffix beside a shipped local segment
SEGMENT_GLOB = "predictions-*.jsonl"
_SEGMENT = re.compile(r"^predictions-(\d{8}T\d{6})-(\d+)(?:-(\d+))?\.jsonl$")

# Column -> Parquet/DuckDB type as stored (JSON as text).
COLUMNS: dict[str, str] = {name: "VARCHAR" if kind == "JSON" else kind
                           for name, (kind, _) in RECORD_FIELDS.items()}
JSON_COLUMNS = frozenset(name for name, (kind, _) in RECORD_FIELDS.items() if kind == "JSON")


def segment_sequence(path: Path) -> tuple[str, str] | None:
    """(segment start ``yyyymmddThhmmss``, sequence ``<pid>-<n>``) of a local segment name,
    or None when it is not one."""
    match = _SEGMENT.match(path.name)
    if match is None:
        return None
    start, pid, n = match.groups()
    return start, f"{pid}-{n or 0}"


def path_safe(replica: str) -> str:
    """A replica id as it appears in object names."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", replica) or "replica"


def object_name(replica: str, start: str, sequence: str) -> str:
    """``<replica>-<segment start>-<seq>.parquet``."""
    return f"{path_safe(replica)}-{start}-{sequence}.parquet"


def history_path(to: str, replica: str) -> str:
    return f"{to.rstrip('/')}/history/{path_safe(replica)}.jsonl"


def partition(ts: str) -> tuple[str, str]:
    """(``YYYY-MM-DD``, ``HH``) of a record's ``ts`` (``2026-11-26T15:30:00.123Z``)."""
    return ts[:10], ts[11:13]


def object_path(to: str, date: str, hour: str, name: str) -> str:
    return f"{to.rstrip('/')}/date={date}/hour={hour}/{name}"


def marker(segment: Path) -> Path:
    return segment.with_name(segment.name + SHIPPED)


def writer_file(segment: Path) -> Path:
    """``<segment>.replica``: the id of the replica that wrote the segment, written before
    the segment exists, so whoever ships it names its objects after the writer (a restart
    under another id, or another process on the same directory, then replaces them)."""
    return segment.with_name(segment.name + ".replica")
