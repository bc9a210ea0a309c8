"""What the data plane hands its observers, and what a prediction record is made from.

A leaf both sides import: the proxy builds an ``Exchange`` per matched request and hands it,
finished, to every observer (docs/architecture.md "Observers"); shadow copies and feedback
become ``Entry`` values; the log's writer reads either through ``Record``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from .config import PredictionLogSettings, Route, Snapshot


@dataclass(slots=True)
class Exchange:
    """One finished request on a route, handed to observers after the last byte went out."""

    ts: float                      # wall clock when the request headers arrived
    request_id: str
    snapshot: Snapshot
    route: Route
    method: str
    version: str | None
    reason: str | None
    upstream: str | None
    status: int
    latency_s: float
    request_body: bytes
    response_body: bytes | None
    response_truncated: bool
    fallback_from: str | None
    error: str | None
    sticky_key: str | None
    trace_id: str | None
    headers: Any                   # the client's headers (immutable), for shadow copies
    peer: str | None
    suffix: str = ""               # forwarded path remainder + query
    response_total: int | None = None
    violations: list[dict[str, Any]] | None = None
    doc: Any = None                # the parsed request body, when something parsed it
    inference: bool = False        # a request with a body (or a POST): recorded, observed
    valid_json: bool = False       # the request body parsed as JSON
    answer: Any = None             # the parsed answer, when the proxy parsed it

    # What the prediction log reads besides the fields above: an Exchange is its own entry
    # (no copy on the hot path); it is never changed after it is handed over.
    role = "primary"
    compare = None
    outcome = None

    @property
    def revision(self) -> str:
        return self.snapshot.revision

    @property
    def latency_ms(self) -> float:
        return self.latency_s * 1000


Observer = Callable[[Exchange], None]


class Record(Protocol):
    """What a log entry offers the writer: an ``Entry``, or the proxy's ``Exchange``."""

    ts: float
    request_id: str
    route: Route | None
    role: str
    version: str | None
    reason: str | None
    upstream: str | None
    status: int
    sticky_key: str | None
    request_body: bytes | None
    response_body: bytes | None
    response_truncated: bool
    response_total: int | None
    fallback_from: str | None
    compare: dict[str, Any] | None
    error: str | None
    violations: list[dict[str, Any]] | None
    trace_id: str | None
    outcome: dict[str, Any] | None
    valid_json: bool               # the request body is known to be JSON
    answer: Any                    # the answer parsed as JSON, when already parsed (or None)

    @property
    def revision(self) -> str: ...

    @property
    def latency_ms(self) -> float: ...


@dataclass(slots=True)
class Entry:
    """A shadow or feedback record (the proxy's primary records are its Exchanges)."""

    ts: float
    request_id: str
    route: Route | None
    revision: str
    role: str
    version: str | None
    reason: str | None
    upstream: str | None
    status: int
    latency_ms: float
    sticky_key: str | None
    request_body: bytes | None
    response_body: bytes | None
    response_truncated: bool = False
    response_total: int | None = None
    fallback_from: str | None = None
    compare: dict[str, Any] | None = None
    error: str | None = None
    violations: list[dict[str, Any]] | None = None
    trace_id: str | None = None
    outcome: dict[str, Any] | None = None
    valid_json: bool = False
    answer: Any = None


class RecordSink(Protocol):
    """The prediction log as the proxy uses it: a slot reserved before forwarding (``on_full:
    block``), the record added after the answer. ``observers.predlog.PredictionLog``."""

    settings: PredictionLogSettings

    def try_reserve(self) -> bool: ...

    async def reserve(self) -> bool: ...

    def release(self) -> None: ...

    def add(self, entry: Record, reserved: bool) -> bool: ...
