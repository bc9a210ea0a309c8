"""The shipped prediction log as the offline commands read it (layout: ``router.logstore``).

A ``Shipped`` store opens the fsspec filesystem of a ``prediction_log.ship.to`` URL (any
fsspec URL: ``file://``, ``s3://``, ``gs://``...) and answers three questions: which Parquet
objects can hold records of a time window (pruned by the ``date=``/``hour=`` partitions:
only the directories of the window are listed, nothing else is opened), what the replicas'
shipped deployment histories say, and which files a config revision had. DuckDB reads the
objects itself: local paths natively, other protocols through this filesystem registered with
the connection (``register``), never through DuckDB's httpfs extension (it would download
itself at run time).

Every failure to read the store is a ``StoreError`` naming the store; a store that does not
exist yet (nothing shipped) is empty, not an error.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from ..logstore import partition
from ..timefmt import iso

log = logging.getLogger("model_router.audit")

_DATE = re.compile(r"^date=(\d{4}-\d{2}-\d{2})$")
_HOUR = re.compile(r"^hour=(\d{2})$")
_NAME = re.compile(r"^[0-9A-Za-z][0-9A-Za-z_.-]*$")   # a revision as a path segment
LOCAL = frozenset({"file", "local"})


def safe_name(name: str) -> bool:
    """Whether ``name`` (a revision read from a record) is one plain path segment."""
    return bool(_NAME.match(name)) and ".." not in name


class StoreError(Exception):
    """The store could not be listed or read (unreachable, refused, malformed)."""


def hour_bounds(since: datetime | None, until: datetime | None,
                ) -> tuple[str | None, str | None]:
    """The first and last ``YYYY-MM-DDTHH`` partition keys that can hold a record with
    ``since <= ts < until`` (each None when that side is open)."""
    low = high = None
    if since is not None:
        date, hour = partition(iso(since.timestamp()))
        low = f"{date}T{hour}"
    if until is not None:
        date, hour = partition(iso(until.timestamp() - 0.001))  # ts < until: its last ms
        high = f"{date}T{hour}"
    return low, high


def in_window(key: str, low: str | None, high: str | None) -> bool:
    """Whether a partition key (``YYYY-MM-DDTHH``, or a date alone for a whole day) can hold
    records of the window ``hour_bounds`` gave."""
    if len(key) == 10:  # a date: any of its hours
        return (low is None or key >= low[:10]) and (high is None or key <= high[:10])
    return (low is None or key >= low) and (high is None or key <= high)


class Shipped:
    """One shipped store, opened once per command; never writes."""

    def __init__(self, url: str, storage_options: Mapping[str, Any] | None = None) -> None:
        import fsspec

        self.url = url.rstrip("/")
        try:
            # A fresh instance: fsspec caches filesystems (and their listings) per arguments.
            fs, root = fsspec.core.url_to_fs(self.url, skip_instance_cache=True,
                                             **dict(storage_options or {}))
        except (ImportError, ValueError, TypeError) as exc:
            raise StoreError(f"cannot open the log store {self.url}: {exc}") from exc
        self.fs = fs
        self.root = str(root).rstrip("/")
        protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
        self.local = bool(LOCAL & set(protocols))

    def __repr__(self) -> str:
        return f"<Shipped {self.url}>"

    def register(self, db: Any) -> None:
        """Let a DuckDB connection read this store's URLs (a no-op for local files)."""
        if not self.local:
            db.register_filesystem(self.fs)

    def readable(self, path: str) -> str:
        """A listed path as DuckDB reads it: local paths as they are, else the full URL."""
        return path if self.local else self.fs.unstrip_protocol(path)

    def objects(self, since: datetime | None = None, until: datetime | None = None,
                ) -> list[str]:
        """The Parquet objects (DuckDB-readable, sorted) of the partitions that can hold
        records of ``since <= ts < until``; every object when both are None."""
        low, high = hour_bounds(since, until)
        found: list[str] = []
        for day in self._children(self.root, _DATE):
            if not in_window(day.rsplit("=", 1)[1], low, high):
                continue
            for hour in self._children(day, _HOUR):
                key = f"{day.rsplit('=', 1)[1]}T{hour.rsplit('=', 1)[1]}"
                if in_window(key, low, high):
                    found.extend(p for p in self._list(hour) if p.endswith(".parquet"))
        return sorted(self.readable(p) for p in found)

    def history_lines(self) -> list[bytes]:
        """Every line of every replica's shipped ``history/<replica>.jsonl``."""
        lines: list[bytes] = []
        for path in sorted(self._list(f"{self.root}/history")):
            if path.endswith(".jsonl"):
                lines.extend(self._cat(path).splitlines())
        return lines

    def revision(self, revision: str) -> dict[str, bytes] | None:
        """The files of ``<to>/revisions/<rev>/`` by name; None when the store lacks it."""
        if not safe_name(revision):
            return None
        folder = f"{self.root}/revisions/{revision}"
        files = {path.rsplit("/", 1)[-1]: self._cat(path) for path in self._list(folder)}
        return files or None

    def revision_dir(self, revision: str) -> str:
        return f"{self.url}/revisions/{revision}"

    def _children(self, path: str, pattern: re.Pattern[str]) -> list[str]:
        return [p for p in self._list(path) if pattern.match(p.rstrip("/").rsplit("/", 1)[-1])]

    def _list(self, path: str) -> list[str]:
        """Full paths of the entries of one directory; [] when it does not exist."""
        try:
            return [str(p).rstrip("/") for p in self.fs.ls(path, detail=False)]
        except FileNotFoundError:
            return []
        except Exception as exc:  # noqa: BLE001 - fsspec backends raise their own types
            raise StoreError(f"cannot list {self.fs.unstrip_protocol(path)}: {exc}") from exc

    def _cat(self, path: str) -> bytes:
        try:
            return bytes(self.fs.cat_file(path))
        except Exception as exc:  # noqa: BLE001 - fsspec backends raise their own types
            raise StoreError(f"cannot read {self.fs.unstrip_protocol(path)}: {exc}") from exc
