"""Reading the prediction log: DuckDB over the JSONL files, plus Parquet for closed files.

``model-router audit`` answers "which model made this prediction?": every record of a request
(primary, shadows, feedback), the served version's registry entry and the routes as they were
in the config revision that served it, read from ``<state_dir>/revisions/<rev>/``.

Closed log files never change, so the first audit that meets one compacts it to a Parquet
twin under ``<log_dir>/.parquet/``; lookups then scan a few columns of Parquet instead of
parsing gigabytes of JSON. The open file (and any file without a twin) is read as JSONL.
A torn last line (a crash mid-write) is skipped with a warning.
"""

from __future__ import annotations

import logging
import os
import re
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson

from ..records import RECORD_FIELDS
from ..timefmt import iso

log = logging.getLogger("model_router.audit")

COLUMNS = {name: kind for name, (kind, _) in RECORD_FIELDS.items()}  # one per record field
_JSON_COLUMNS = {k for k, v in COLUMNS.items() if v == "JSON"}
_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_time(text: str, now: float | None = None) -> datetime:
    """ISO 8601 (naive = UTC) or relative like ``2h``/``30m``/``7d`` (before now)."""
    match = _RELATIVE.match(text.strip())
    if match:
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
        base = datetime.fromtimestamp(now if now is not None else time.time(), timezone.utc)
        return base - timedelta(seconds=seconds)
    value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def log_files(log_dir: Path) -> list[Path]:
    return sorted(log_dir.glob("predictions-*.jsonl"))


def torn_files(files: list[Path]) -> list[Path]:
    """Files whose last line has no newline (a crash mid-write): readers skip that line."""
    torn = []
    for path in files:
        try:
            with open(path, "rb") as f:
                f.seek(0, os.SEEK_END)
                if f.tell() == 0:
                    continue
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    torn.append(path)
        except OSError:
            continue
    return torn


def iter_records(log_dir: Path) -> list[dict[str, Any]]:
    """Every complete record, in file order; the plain reader tests and small tools use."""
    out = []
    for path in log_files(log_dir):
        data = path.read_bytes()
        lines = data.split(b"\n")
        if lines and lines[-1]:
            log.warning("%s: torn last line skipped (%d bytes)", path.name, len(lines[-1]))
        for line in lines[:-1]:
            if line:
                out.append(orjson.loads(line))
    return out


class LogQuery:
    """A DuckDB view ``records`` over the log: Parquet twins for closed files, JSONL else."""

    def __init__(self, log_dir: Path, *, compact: bool = True,
                 open_grace_s: float = 60.0) -> None:
        import duckdb

        self.log_dir = log_dir
        self.db = duckdb.connect()
        files = log_files(log_dir)
        for path in torn_files(files):
            log.warning("%s: torn last line skipped", path.name)
        parquet: list[str] = []
        jsonl: list[str] = []
        cutoff = time.time() - open_grace_s
        for path in files:
            twin = log_dir / ".parquet" / (path.stem + ".parquet")
            if twin.exists() and twin.stat().st_mtime >= path.stat().st_mtime:
                parquet.append(str(twin))
            elif compact and path.stat().st_mtime < cutoff and self._compact(path, twin):
                parquet.append(str(twin))
            else:
                jsonl.append(str(path))
        parts = []
        if parquet:
            parts.append(f"SELECT * FROM read_parquet({_list(parquet)})")
        if jsonl:
            parts.append(f"SELECT * FROM {self._json_source(jsonl)}")
        if not parts:
            select = ", ".join(f"CAST(NULL AS {t}) AS \"{c}\"" for c, t in COLUMNS.items())
            parts.append(f"SELECT {select} WHERE false")
        self.db.execute("CREATE VIEW records AS " + " UNION ALL BY NAME ".join(parts))

    def __repr__(self) -> str:
        return f"<LogQuery {self.log_dir}>"

    @staticmethod
    def _json_source(files: list[str]) -> str:
        columns = "{" + ", ".join(f"'{c}': '{t}'" for c, t in COLUMNS.items()) + "}"
        return (f"read_json({_list(files)}, format='newline_delimited', "
                f"ignore_errors=true, columns={columns})")

    def _compact(self, path: Path, twin: Path) -> bool:
        """Write a closed JSONL file's Parquet twin (atomically); False if it cannot."""
        twin.parent.mkdir(parents=True, exist_ok=True)
        tmp = twin.with_suffix(f".tmp{os.getpid()}")
        try:
            self.db.execute(f"COPY (SELECT * FROM {self._json_source([str(path)])}) "
                            f"TO '{_quote(str(tmp))}' (FORMAT parquet, COMPRESSION zstd)")
            os.replace(tmp, twin)
            return True
        except Exception as exc:  # noqa: BLE001 - fall back to reading the JSONL
            log.warning("cannot compact %s: %s", path.name, exc)
            tmp.unlink(missing_ok=True)
            return False

    def rows(self, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
        cursor = self.db.execute(sql, params or [])
        names = [d[0] for d in cursor.description]
        out = []
        for row in cursor.fetchall():
            record = dict(zip(names, row))
            for key in _JSON_COLUMNS & record.keys():
                if isinstance(record[key], str):
                    record[key] = orjson.loads(record[key])
            out.append(record)
        return out

    def by_request(self, request_id: str) -> list[dict[str, Any]]:
        return self.rows("SELECT * FROM records WHERE request_id = ? ORDER BY "
                         "CASE role WHEN 'primary' THEN 0 WHEN 'shadow' THEN 1 ELSE 2 END, ts",
                         [request_id])

    def filter(self, *, route: str | None = None, version: str | None = None,
               role: str | None = None, status: int | None = None,
               since: datetime | None = None, until: datetime | None = None,
               limit: int = 100) -> list[dict[str, Any]]:
        where, params = [], []
        for column, value in (("route", route), ("version", version), ("role", role),
                              ("status", status)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if since is not None:
            where.append("ts >= ?")
            params.append(iso(since.timestamp()))
        if until is not None:
            where.append("ts < ?")
            params.append(iso(until.timestamp()))
        clause = (" WHERE " + " AND ".join(where)) if where else ""
        return self.rows(f"SELECT * FROM records{clause} ORDER BY ts LIMIT {int(limit)}",
                         params)


def _quote(text: str) -> str:
    return text.replace("'", "''")


def _list(files: list[str]) -> str:
    return "[" + ", ".join(f"'{_quote(f)}'" for f in files) + "]"


def revision_context(state_dir: Path, revision: str | None, route: str | None,
                     model: str | None, version: str | None) -> dict[str, Any]:
    """The registry entry and route of a record, as written in the revision that served it.

    Read as plain YAML from ``<state_dir>/revisions/<rev>/`` (not compiled: an old revision
    must stay readable even when its TLS files or environment are gone).
    """
    from ..config import yaml12

    out: dict[str, Any] = {"revision": revision, "registry_entry": None, "route": None,
                           "problem": None}
    folder = state_dir / "revisions" / (revision or "")
    if not revision or not (folder / "router.yaml").exists():
        out["problem"] = f"revision {revision} is not in {state_dir / 'revisions'}"
        return out
    out["config_dir"] = str(folder)
    router_doc = yaml12.loads((folder / "router.yaml").read_bytes()) or {}
    for item in router_doc.get("routes") or []:
        if isinstance(item, dict) and item.get("name") == route:
            out["route"] = item
    registry_name = Path(str(router_doc.get("registry", "registry.yaml"))).name
    if (folder / registry_name).exists() and model and version:
        registry_doc = yaml12.loads((folder / registry_name).read_bytes()) or {}
        entry = (((registry_doc.get("models") or {}).get(model) or {}).get("versions")
                 or {}).get(version)
        out["registry_entry"] = entry
    return out
