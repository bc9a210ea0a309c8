"""Deployment history and applied revisions under ``state_dir``.

``history.jsonl`` gets one line per event (applied, rejected, and later rollout events);
``revisions/<rev>/`` keeps the exact files of every applied revision, so an audit years later
reads the config and registry that really served.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import orjson

from ..config import Snapshot
from ..console import print_json
from ..timefmt import iso

log = logging.getLogger("model_router.history")


def route_states(snapshot: Snapshot) -> dict[str, Any]:
    """Per route: effective weights, or the active colour of a blue/green route; its versions
    and validation mode (what ``history`` shows changing between revisions)."""
    out: dict[str, Any] = {}
    for route in snapshot.routes:
        if route.blue_green is not None:
            bg = route.blue_green
            state: dict[str, Any] = {"active": bg.active, "version": bg.active_version}
        else:
            state = {"weights": dict(route.split)}
            if route.rollout is not None:  # whose weights its rollout's events then set
                state["rollout"] = route.rollout.key
        state["versions"] = sorted(route.versions)
        state["validation"] = route.validation
        out[route.name] = state
    return out


def changes(before: Mapping[str, Any] | None, after: Mapping[str, Any]) -> list[str]:
    """What an applied event changed from the previous one, per route, in words: routes
    added or removed, weights, the active colour, versions added or removed, validation."""
    if before is None:
        return [f"{name}: {_served(state)}" for name, state in after.items()]
    out = []
    for name in sorted(set(before) | set(after)):
        old, new = before.get(name), after.get(name)
        if new is None:
            out.append(f"{name}: removed")
            continue
        if old is None:
            out.append(f"{name}: added ({_served(new)})")
            continue
        parts = []
        if _served(old) != _served(new):
            parts.append(f"{_served(old)} -> {_served(new)}")
        added = sorted(set(new.get("versions", ())) - set(old.get("versions", ())))
        gone = sorted(set(old.get("versions", ())) - set(new.get("versions", ())))
        if added:
            parts.append("versions + " + ", ".join(added))
        if gone:
            parts.append("versions - " + ", ".join(gone))
        if old.get("validation") != new.get("validation") and "validation" in new:
            parts.append(f"validation {old.get('validation')} -> {new.get('validation')}")
        if old.get("rollout") != new.get("rollout"):
            parts.append("rollout " + ("started" if old.get("rollout") is None else
                                       "removed" if new.get("rollout") is None else
                                       "block changed (it starts again)"))
        if parts:
            out.append(f"{name}: " + "; ".join(parts))
    return out


def _served(state: Mapping[str, Any]) -> str:
    if "weights" in state:
        return ", ".join(f"{v} {w:g}" for v, w in state["weights"].items())
    return f"active {state.get('active')} ({state.get('version')})"


# Events the rollout controller writes: each carries the route's weights it just set.
ROLLOUT_EVENTS = frozenset({"rollout_step", "promoted", "paused", "resumed", "rolled_back",
                            "aborted"})


def in_force(events: Iterable[Mapping[str, Any]], at: str) -> dict[str, Any] | None:
    """What served at ``at`` (an ``iso`` timestamp), from the history's events in file order.

    The revision is the last one applied at or before ``at``; each of its routes is in the
    state that apply recorded, unless a rollout event for that route came later (still at or
    before ``at``): then its weights are the rollout's. Events after ``at`` are ignored. None
    when no config had been applied by then. The shape is the applied event's (``ts``,
    ``revision``, ``source``, ``routes``) plus ``at``; every route's state gains ``set_by``:
    the event that set it (``event``, ``ts``, ``revision``, ``source``, and for a rollout event
    its ``step`` (0-based), ``steps`` (count, when recorded) and ``status``). Pure: no I/O.
    """
    applied: Mapping[str, Any] | None = None
    routes: dict[str, dict[str, Any]] = {}
    for event in events:
        ts, kind = event.get("ts"), event.get("event")
        if not isinstance(ts, str) or ts > at:
            continue
        if kind == "applied":
            applied = event
            routes = {name: _set_by(event, state)
                      for name, state in (event.get("routes") or {}).items()}
        elif kind in ROLLOUT_EVENTS:
            for name, state in (event.get("routes") or {}).items():
                # A route the applied config no longer has stays gone; one without this
                # rollout block (a split, another block) keeps what its apply set.
                if name in routes and routes[name].get("rollout") == state.get("rollout"):
                    routes[name] = _set_by(event, state)
    if applied is None:
        return None
    return {"at": at, "ts": applied["ts"], "event": "applied",
            "revision": applied.get("revision"), "source": applied.get("source"),
            "routes": routes}


def _set_by(event: Mapping[str, Any], state: Mapping[str, Any]) -> dict[str, Any]:
    """A route's state as ``in_force`` reports it: what it serves, and which event said so."""
    rollout = ("step", "steps", "status", "generation", "reason")
    origin = {"event": event.get("event"), "ts": event.get("ts"),
              "revision": event.get("revision"), "source": event.get("source")}
    origin.update({k: state[k] for k in rollout if k in state})
    return {**{k: v for k, v in state.items() if k not in rollout}, "set_by": origin}


def describe_state(state: Mapping[str, Any]) -> str:
    """One line for a route's state from ``in_force``, e.g.
    ``v1 50, v2 50 (rollout step 2/3 at 2026-11-26T15:30:00.000Z)``."""
    if "weights" in state:
        served = ", ".join(f"{v} {w:g}" for v, w in state["weights"].items())
    else:
        served = f"active {state.get('active')} ({state.get('version')})"
    origin = state.get("set_by") or {}
    kind, ts = origin.get("event"), origin.get("ts")
    if kind == "applied":
        return f"{served} (applied rev {origin.get('revision')} at {ts})"
    step = origin.get("step")
    where = "" if step is None else f"step {step + 1}" + (
        f"/{origin['steps']}" if origin.get("steps") else "")
    if kind == "rollout_step":
        return f"{served} (rollout {where or 'step'} at {ts})"
    return f"{served} (rollout {str(kind).replace('_', ' ')} at {ts}" + \
        (f", {where})" if where else ")")


def print_events(events: Iterable[Mapping[str, Any]], as_json: bool = False) -> None:
    """``model-router history``: aligned columns, one event per line (an apply shows what
    changed from the previous one, a rejection its errors, a rollout event its step, weights
    and reason); further detail lines are indented."""
    events = sorted(events, key=lambda e: str(e.get("ts")))  # stable: file order at a tie
    if as_json:
        print_json(events)
        return
    previous: Mapping[str, Any] | None = None
    print(f"{'time':<24}  {'event':<12} {'revision':<12} {'source':<8} {'replica':<12} what")
    for e in events:
        kind = str(e.get("event"))
        if kind == "applied":
            lines = changes(previous, e.get("routes") or {}) or ["(no change)"]
            previous = e.get("routes") or {}
        elif kind == "rejected":
            lines = [str(err) for err in e.get("errors") or []]
        else:
            lines = []
            for name, state in (e.get("routes") or {}).items():
                if previous is not None and name in previous and "weights" in state:
                    # what is live now: the next apply's change is told against it
                    previous = {**previous, name: {**previous[name],
                                                   "weights": state["weights"]}}
                step = state.get("step")
                where = f" step {step + 1}/{state.get('steps', '?')}" if step is not None \
                    else ""
                why = f"; {state['reason']}" if state.get("reason") else ""
                lines.append(f"{name}: {_served(state)}{where}{why}")
        head = (f"{e.get('ts')!s:<24}  {kind:<12} {e.get('revision') or '-'!s:<12} "
                f"{e.get('source')!s:<8} {e.get('replica') or '-':<12} ")
        print(head + (lines[0] if lines else ""))
        for line in lines[1:]:
            print(" " * len(head) + line)


def print_in_force(events: Iterable[Mapping[str, Any]], at: str, as_json: bool = False,
                   ) -> int:
    """``model-router history --at``: what served at ``at`` (``in_force``); 1 when no
    config had been applied by then (said on stderr)."""
    live = in_force(events, at)
    if live is None:
        print(f"no config was applied before {at}", file=sys.stderr)
        return 1
    if as_json:
        print_json(live)
        return 0
    print(f"at {at}: revision {live['revision']} (applied {live['ts']}, "
          f"source {live['source']})")
    for name, state in live["routes"].items():
        print(f"  {name}: {describe_state(state)}")
    return 0


def fleet_in_force(events: Iterable[Mapping[str, Any]], at: str) -> dict[str, Any] | None:
    """``in_force`` for every replica of a fleet's history stream: each replica's revision
    (its own applies) with the rollout weights any leader set by ``at``. None when no
    replica had applied a config by then. Pure."""
    events = list(events)
    replicas = sorted({str(e["replica"]) for e in events
                       if e.get("event") == "applied" and e.get("replica")})
    out = {}
    for replica in replicas:
        # Its own applies and every rollout event, in stream order (ts, then position).
        merged = [e for _, _, e in sorted(
            (str(e.get("ts")), i, e) for i, e in enumerate(events)
            if e.get("event") in ROLLOUT_EVENTS or
            (e.get("event") == "applied" and e.get("replica") == replica))]
        live = in_force(merged, at)
        if live is not None:
            out[replica] = live
    return {"at": at, "replicas": out} if out else None


def print_fleet_in_force(events: Iterable[Mapping[str, Any]], at: str,
                         as_json: bool = False) -> int:
    """``model-router history --at`` in a fleet: per replica, what served at ``at``."""
    live = fleet_in_force(events, at)
    if live is None:
        print(f"no replica had applied a config before {at}", file=sys.stderr)
        return 1
    if as_json:
        print_json(live)
        return 0
    print(f"at {at}:")
    for replica, state in live["replicas"].items():
        print(f"  {replica}: revision {state['revision']} (applied {state['ts']})")
        for name, route in state["routes"].items():
            print(f"    {name}: {describe_state(route)}")
    return 0


class History:
    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.path = state_dir / "history.jsonl"
        # Also handed every event (a fleet's history stream); each must not block or raise.
        self.mirrors: list[Callable[[dict[str, Any]], None]] = []

    def __repr__(self) -> str:
        return f"<History {self.path}>"

    def append(self, event: dict[str, Any]) -> None:
        """Append one event line; small and rare, so written synchronously and fsynced."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        line = orjson.dumps(event) + b"\n"
        with open(self.path, "ab") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        for mirror in self.mirrors:
            mirror(event)

    def applied(self, snapshot: Snapshot, ts: float) -> None:
        self.save_revision(snapshot)
        self.append({"ts": iso(ts), "event": "applied", "revision": snapshot.revision,
                     "source": snapshot.source, "routes": route_states(snapshot),
                     "errors": []})

    def rejected(self, source: str, errors: list[str], ts: float) -> None:
        self.append({"ts": iso(ts), "event": "rejected", "revision": None, "source": source,
                     "routes": {}, "errors": errors})

    def save_revision(self, snapshot: Snapshot) -> Path:
        folder = self.state_dir / "revisions" / snapshot.revision
        if not folder.is_dir():
            tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
            tmp.mkdir(parents=True, exist_ok=True)
            for name, data in snapshot.files.items():
                (tmp / name).write_bytes(data)
            try:
                tmp.rename(folder)
            except OSError:  # another process saved the same revision first
                for child in tmp.iterdir():
                    child.unlink()
                tmp.rmdir()
        return folder

    def read(self) -> list[dict[str, Any]]:
        """Every readable event in order; a torn line is skipped with a warning."""
        if not self.path.exists():
            return []
        events = []
        for number, line in enumerate(self.path.read_bytes().splitlines(), 1):
            if not line.strip():
                continue
            try:
                events.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                log.warning("%s line %d is not JSON; skipped", self.path, number)
        return events
