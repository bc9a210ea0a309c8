"""The log shipper: its own process, so the conversion never touches the serving loop or GIL.

``run`` is the process entry (``ship.ShipProcess`` spawns it). Once a second, and at once when
asked, it ships every closed local segment (one it can lock exclusively: its writer closed it
or is gone) that has no ``.shipped`` marker: DuckDB reads the JSONL (a torn last line is
skipped) and writes one zstd Parquet file per hour the segment spans; fsspec uploads each to
its ``logstore`` path (on a local filesystem through a temporary name and a rename, so no
reader sees half an object; an object store's PUT is whole already); once every object is
confirmed (its size read back) the marker is written. Revisions' files and the history go to
``revisions/`` and ``history/``. A failure is counted and retried with backoff (1 s doubling
to 60 s); nothing is deleted here (``predlog.LogFiles.prune`` deletes marked segments).

It reports ``("status", {...})`` to its owner after every round: records and files shipped,
errors, unshipped bytes, the last error. ``("final", seconds)`` ships what it can within the
time and exits; so does a closed pipe.
"""

from __future__ import annotations

import fcntl
import logging
import multiprocessing.connection
import os
import shutil
import time
from pathlib import Path
from typing import Any

import orjson

from ..logstore import (
    COLUMNS,
    JSON_COLUMNS,
    SEGMENT_GLOB,
    history_path,
    marker,
    object_name,
    object_path,
    segment_sequence,
    writer_file,
)

log = logging.getLogger("model_router.shipper")

ROUND_S = 1.0
BACKOFF_MAX_S = 60.0


class Shipper:
    def __init__(self, log_dir: Path, to: str, storage_options: dict[str, Any], replica: str,
                 state_dir: Path | None = None) -> None:
        import fsspec

        self.log_dir = log_dir
        self.to = to.rstrip("/")
        self.replica = replica
        self.state_dir = state_dir
        protocol = to.split("://", 1)[0] if "://" in to else "file"
        self.fs = fsspec.filesystem(protocol, **storage_options)
        self.local = protocol in ("file", "local")
        self.shipped_records = 0
        self.shipped_files = 0
        self.errors = 0
        self.last_error: str | None = None
        self._db: Any = None
        self._sent: dict[str, tuple[int, int]] = {}  # side file -> (size, mtime) uploaded

    def __repr__(self) -> str:
        return f"<Shipper {self.log_dir} -> {self.to} shipped={self.shipped_files}>"

    # -- what waits --------------------------------------------------------------------------

    def unshipped(self) -> list[Path]:
        return [p for p in sorted(self.log_dir.glob(SEGMENT_GLOB)) if not marker(p).exists()]

    def unshipped_bytes(self) -> int:
        total = 0
        for path in self.unshipped():
            try:
                total += path.stat().st_size
            except OSError:
                pass
        return total

    # -- one round -------------------------------------------------------------------------------

    def ship_all(self, deadline: float | None = None) -> bool:
        """Ship every closed, unshipped segment (and the side files); False on a failure."""
        ok = True
        for path in self.unshipped():
            if deadline is not None and time.monotonic() > deadline:
                return False
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError:
                continue  # pruned or renamed meanwhile
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # open: its writer holds it
                if marker(path).exists():
                    continue  # another shipper took it first
                self.ship_segment(path)
            except Exception as exc:  # noqa: BLE001 - counted, retried next round
                ok = False
                self._failed(f"{path.name}: {type(exc).__name__}: {exc}")
            finally:
                os.close(fd)  # releases the lock
        try:
            self.ship_side_files()
        except Exception as exc:  # noqa: BLE001
            ok = False
            self._failed(f"side files: {type(exc).__name__}: {exc}")
        return ok

    def _failed(self, message: str) -> None:
        self.errors += 1
        if self.last_error is None:
            log.warning("log shipping failed (will retry): %s", message)
        self.last_error = message

    def ship_segment(self, path: Path) -> None:
        """Convert, upload and confirm one segment's objects, then mark it shipped."""
        parsed = segment_sequence(path)
        if parsed is None:
            return
        start, sequence = parsed
        try:  # named after the replica that wrote it, whoever ships it
            writer = writer_file(path).read_text().strip() or self.replica
        except OSError:
            writer = self.replica
        name = object_name(writer, start, sequence)
        tmp_dir = self.log_dir / ".ship-tmp"
        tmp_dir.mkdir(mode=0o750, exist_ok=True)
        db = self._duckdb()
        source = _json_source(path)
        hours = [row[0] for row in db.execute(
            f"SELECT DISTINCT substr(ts, 1, 13) FROM {source} WHERE ts IS NOT NULL "
            "ORDER BY 1").fetchall()]
        objects, records = [], 0
        for hour in hours:
            date, hh = hour[:10], hour[11:13]
            local = tmp_dir / f"{date}-{hh}-{name}"
            db.execute(f"COPY (SELECT {_select()} FROM {source} WHERE substr(ts, 1, 13) = ?) "
                       f"TO '{_quote(str(local))}' (FORMAT parquet, COMPRESSION zstd)", [hour])
            count = db.execute(f"SELECT count(*) FROM read_parquet('{_quote(str(local))}')"
                               ).fetchone()[0]
            remote = object_path(self.to, date, hh, name)
            self._upload(local, remote)
            local.unlink(missing_ok=True)
            objects.append(remote)
            records += count
        done = {"objects": objects, "records": records, "shipped_at": time.time(),
                "replica": self.replica}
        tmp = marker(path).with_name(marker(path).name + ".tmp")
        tmp.write_bytes(orjson.dumps(done))
        os.replace(tmp, marker(path))
        self.shipped_records += records
        self.shipped_files += 1
        self.last_error = None

    def _upload(self, local: Path, remote: str) -> None:
        """Put ``local`` at ``remote`` whole, and read its size back."""
        path = _strip(remote) if self.local else remote
        parent = path.rsplit("/", 1)[0]
        if self.local:
            self.fs.makedirs(parent, exist_ok=True)
            staged = f"{parent}/.{path.rsplit('/', 1)[1]}.{os.getpid()}.tmp"
            self.fs.put_file(str(local), staged)
            self.fs.mv(staged, path)
        else:
            self.fs.put_file(str(local), path)
        size = self.fs.info(path)["size"]
        if size != local.stat().st_size:
            raise OSError(f"{remote}: {size} bytes in the store, {local.stat().st_size} sent")

    def ship_side_files(self) -> None:
        """Each applied revision's files once, and the history when it changed."""
        if self.state_dir is None:
            return
        files = []
        revisions = self.state_dir / "revisions"
        if revisions.is_dir():
            for folder in revisions.iterdir():
                if folder.is_dir() and ".tmp" not in folder.name:
                    files += [(f, f"revisions/{folder.name}/{f.name}") for f in folder.iterdir()
                              if f.is_file()]
        history = self.state_dir / "history.jsonl"
        if history.exists():
            files.append((history, history_path("", self.replica).lstrip("/")))
        for local, relative in files:
            st = local.stat()
            if self._sent.get(relative) == (st.st_size, st.st_mtime_ns):
                continue
            copy = self.log_dir / ".ship-tmp" / relative.replace("/", "_")
            copy.parent.mkdir(mode=0o750, exist_ok=True)
            shutil.copyfile(local, copy)  # a stable copy of a file that may grow meanwhile
            self._upload(copy, f"{self.to}/{relative}")
            copy.unlink(missing_ok=True)
            self._sent[relative] = (st.st_size, st.st_mtime_ns)

    def _duckdb(self) -> Any:
        if self._db is None:
            import duckdb
            self._db = duckdb.connect()
            self._db.execute("SET threads TO 1")  # one core: the router keeps the other
        return self._db

    def status(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "shipped_records": self.shipped_records,
                "shipped_files": self.shipped_files,
                "errors": self.errors, "unshipped_bytes": self.unshipped_bytes(),
                "last_error": self.last_error}


def _strip(url: str) -> str:
    return url[len("file://"):] if url.startswith("file://") else url


def _quote(text: str) -> str:
    return text.replace("'", "''")


def _json_source(path: Path) -> str:
    columns = "{" + ", ".join(f"'{c}': '{'JSON' if c in JSON_COLUMNS else t}'"
                              for c, t in COLUMNS.items()) + "}"
    return (f"read_json('{_quote(str(path))}', format='newline_delimited', "
            f"ignore_errors=true, columns={columns})")


def _select() -> str:
    return ", ".join(f"CAST(\"{c}\" AS VARCHAR) AS \"{c}\"" if c in JSON_COLUMNS else f"\"{c}\""
                     for c in COLUMNS)


# -- the process -------------------------------------------------------------------------------

def run(conn: multiprocessing.connection.Connection, log_dir: str, to: str,
        storage_options: dict[str, Any], replica: str, state_dir: str | None,
        log_level: int) -> None:
    """Process entry: ship until told to finish (or the owner is gone)."""
    logging.basicConfig(level=log_level,
                        format=f"%(asctime)s %(levelname)s shipper-{os.getpid()} %(name)s: "
                               "%(message)s")
    try:  # a background job: the router's requests come first when the CPU is short
        os.nice(10)
    except OSError:
        pass
    shipper = Shipper(Path(log_dir), to, storage_options, replica,
                      Path(state_dir) if state_dir else None)
    pause = ROUND_S
    while True:
        message: Any = None
        try:
            if conn.poll(pause):
                message = conn.recv()
        except (EOFError, OSError):
            message = ("final", 0.0)
        deadline = None
        if message and message[0] == "final":
            deadline = time.monotonic() + float(message[1])
        try:  # what waits, before a round that may take long (the owner's disk verdict)
            conn.send(("status", shipper.status()))
        except (BrokenPipeError, OSError):
            return
        ok = shipper.ship_all(deadline)
        pause = ROUND_S if ok else min(pause * 2, BACKOFF_MAX_S)
        try:
            conn.send(("status", shipper.status()))
        except (BrokenPipeError, OSError):
            return
        if deadline is not None:
            return
