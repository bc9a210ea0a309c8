"""Reading the prediction log: DuckDB over the shipped store's Parquet objects and the local
JSONL files not shipped yet, plus Parquet twins for closed local files.

``model-router audit`` answers "which model made this prediction?": every record of a request
(primary, shadows, feedback), the served version's registry entry and the routes as they were
in the config revision that served it, read from ``<state_dir>/revisions/<rev>/`` or, for a
replica that is gone, the store's ``revisions/<rev>/``. With a store (``prediction_log.ship``,
layout ``router.logstore``), a request is found whichever replica served it; a window
(``since``/``until``) lists and reads only the store's date/hour partitions that can hold it.

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
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson

from ..logstore import marker, segment_sequence
from ..records import RECORD_FIELDS
from ..timefmt import iso
from .shipped import Shipped, safe_name

log = logging.getLogger("model_router.audit")

COLUMNS = {name: kind for name, (kind, _) in RECORD_FIELDS.items()}  # one per record field
_JSON_COLUMNS = {k for k, v in COLUMNS.items() if v == "JSON"}
_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_STATUS_CLASS = re.compile(r"^([1-5])xx$")


def parse_time(text: str, now: float | None = None) -> datetime:
    """ISO 8601 (naive = UTC) or relative like ``2h``/``30m``/``7d`` (before now).

    Raises ValueError whose message is the whole sentence to show a person, naming both
    forms: ``bad time '1x': use ISO 8601 (2026-11-28T10:00:00Z) or 30m, 2h, 7d``."""
    match = _RELATIVE.match(text.strip())
    if match:
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
        base = datetime.fromtimestamp(now if now is not None else time.time(), timezone.utc)
        return base - timedelta(seconds=seconds)
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"bad time {text!r}: use ISO 8601 (2026-11-28T10:00:00Z) "
                         "or 30m, 2h, 7d") from None
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
    """A DuckDB view ``records`` over the whole log: the shipped store's Parquet objects and
    the local segments not yet shipped (Parquet twins for closed files, JSONL else).

    ``store`` is a ``prediction_log.ship.to`` URL (``storage_options`` go to its filesystem);
    with ``since``/``until`` only the store's date/hour partitions that can hold that window
    are listed and read (``objects`` names them); rows are not filtered by the window here,
    the queries do that. A local segment with a ``.shipped`` marker is read from the store
    only, so no record is counted twice. Raises ``StoreError`` when the store cannot be read.
    """

    def __init__(self, log_dir: Path, *, store: str | None = None,
                 storage_options: Mapping[str, Any] | None = None,
                 since: datetime | None = None, until: datetime | None = None,
                 compact: bool = True, open_grace_s: float = 60.0) -> None:
        import duckdb

        self.log_dir = log_dir
        # Nothing is ever downloaded at run time: the store is read through fsspec.
        self.db = duckdb.connect(config={"autoinstall_known_extensions": False,
                                         "autoload_known_extensions": False})
        self.store = Shipped(store, storage_options) if store else None
        files, self.objects = self._sources(since, until)
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
        self.local_files = len(files)
        # The typed empty select first: every column exists, with its type, in schema order,
        # whichever sources there are.
        select = ", ".join(f"CAST(NULL AS {t}) AS \"{c}\"" for c, t in COLUMNS.items())
        parts = [f"SELECT {select} WHERE false"]
        if self.objects:
            assert self.store is not None
            self.store.register(self.db)
            # Every shipped object has the same columns (logstore.COLUMNS): no union_by_name,
            # which read every footer once more to bind the view (2-3x on 10M records).
            self.db.execute("SET parquet_metadata_cache = true")
            # The partition columns come from the path; a record keeps its fields only.
            parts.append(f"SELECT * EXCLUDE (date, hour) FROM read_parquet("
                         f"{_list(self.objects)}, hive_partitioning=true)")
        if parquet:
            parts.append(f"SELECT * FROM read_parquet({_list(parquet)})")
        if jsonl:
            parts.append(f"SELECT * FROM {self._json_source(jsonl)}")
        self.db.execute("CREATE VIEW records AS " + " UNION ALL BY NAME ".join(parts))

    def _sources(self, since: datetime | None, until: datetime | None,
                 ) -> tuple[list[Path], list[str]]:
        """(local segments not shipped, store objects of the window), consistent with each
        other. Markers are read before the store is listed, so a segment marked then has its
        objects in the listing; one marked while listing may be in both, so then markers
        and listing are taken again."""
        for _ in range(3):
            local = [p for p in log_files(self.log_dir) if not marker(p).exists()]
            objects = self.store.objects(since, until) if self.store else []
            if not any(marker(p).exists() for p in local):
                break
        # A segment shipped but not marked (a crash between the upload and the marker) has
        # objects named after it: read it once, from the local file, which is whole.
        unmarked = {f"-{seq[0]}-{seq[1]}.parquet" for p in local
                    if (seq := segment_sequence(p)) is not None}
        objects = [o for o in objects
                   if not any(o.endswith(suffix) for suffix in unmarked)]
        return local, objects

    def __repr__(self) -> str:
        store = f" + {self.store.url} ({len(self.objects)} objects)" if self.store else ""
        return f"<LogQuery {self.log_dir} ({self.local_files} local files){store}>"

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
               role: str | None = None, status: int | str | None = None,
               since: datetime | None = None, until: datetime | None = None,
               limit: int = 100) -> list[dict[str, Any]]:
        """Records in time order, at most ``limit``. ``status``: an exact code (404) or a
        class (``"4xx"``, ``"5xx"``: 400-499, 500-599); ValueError for anything else."""
        where: list[str] = []
        params: list[Any] = []
        for column, value in (("route", route), ("version", version), ("role", role)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if isinstance(status, str):
            match = _STATUS_CLASS.match(status.strip().lower())
            if match is None:
                raise ValueError(f"status {status!r}: a code (404) or a class (4xx, 5xx)")
            where.append("status >= ? AND status < ?")
            params += [int(match.group(1)) * 100, int(match.group(1)) * 100 + 100]
        elif status is not None:
            where.append("status = ?")
            params.append(status)
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


def revision_files(state_dir: Path, revision: str | None, store: Shipped | None = None,
                   ) -> tuple[str, dict[str, bytes]] | None:
    """(where, files by name) of an applied revision: ``<state_dir>/revisions/<rev>/``, else
    the shipped store's ``revisions/<rev>/`` (a replica that is gone kept its there); None
    when neither has its router.yaml."""
    if not revision or not safe_name(revision):  # a record's text, never a path elsewhere
        return None
    folder = state_dir / "revisions" / revision
    if (folder / "router.yaml").is_file():
        return str(folder), {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    files = store.revision(revision) if store is not None else None
    if files is None or "router.yaml" not in files:
        return None
    assert store is not None
    return store.revision_dir(revision), files


def revision_context(state_dir: Path, revision: str | None, route: str | None,
                     model: str | None, version: str | None, *,
                     store: Shipped | None = None) -> dict[str, Any]:
    """The registry entry and route of a record, as written in the revision that served it.

    Read as plain YAML from ``<state_dir>/revisions/<rev>/``, else from the shipped store's
    ``revisions/<rev>/`` (not compiled: an old revision must stay readable even when its TLS
    files or environment are gone). Raises ``StoreError`` when the store cannot be read.
    """
    from ..config import yaml12

    out: dict[str, Any] = {"revision": revision, "registry_entry": None, "route": None,
                           "problem": None}
    found = revision_files(state_dir, revision, store)
    if found is None:
        where = f"{state_dir / 'revisions'}" + (
            f" nor in {store.url}/revisions" if store is not None else "")
        out["problem"] = f"revision {revision} is not in {where}"
        return out
    out["config_dir"], files = found
    router_doc = yaml12.loads(files["router.yaml"]) or {}
    for item in router_doc.get("routes") or []:
        if isinstance(item, dict) and item.get("name") == route:
            out["route"] = item
    registry_name = Path(str(router_doc.get("registry", "registry.yaml"))).name
    if registry_name in files and model and version:
        registry_doc = yaml12.loads(files[registry_name]) or {}
        entry = (((registry_doc.get("models") or {}).get(model) or {}).get("versions")
                 or {}).get(version)
        out["registry_entry"] = entry
    return out
