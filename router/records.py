"""What the data plane hands its observers, what a prediction record is made of, and whose
figures a route's others are compared with.

A leaf both sides import: the proxy builds an ``Exchange`` per matched request and hands it,
finished, to every observer (docs/architecture.md "Observers"); shadow copies and feedback
become ``Entry`` values; the log's writer reads either through ``Record`` and writes the
fields of ``RECORD_FIELDS`` (the one record schema: the writer, the audit's columns and
README's example follow it); ``control_version`` is the route's control for drift and reports.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from .config import PredictionLogSettings, Route, Snapshot

# -- the record schema ------------------------------------------------------------------------

# Every field of a prediction record, in the order written: name -> (DuckDB type, meaning).
# ``observers.encode.build_record`` writes them (``outcome`` on feedback records only),
# ``analysis.audit`` reads them with these types; tests/test_contracts.py holds both, and
# README's record example, to this list.
RECORD_FIELDS: dict[str, tuple[str, str]] = {
    "ts": ("VARCHAR", "when the request headers arrived, UTC ISO 8601 with milliseconds"),
    "request_id": ("VARCHAR", "x-request-id, the V2 request id, or a generated one"),
    "route": ("VARCHAR", "the route's name"),
    "model": ("VARCHAR", "the route's registry model"),
    "version": ("VARCHAR", "the version that answered; null when refused before choosing"),
    "role": ("VARCHAR", "primary | shadow | feedback"),
    "reason": ("VARCHAR",
               "split | sticky | override | pinned | blue_green | rollout | fallback | shadow"),
    "upstream": ("VARCHAR", "scheme://host:port the request went to"),
    "status": ("INTEGER", "the answer's status"),
    "latency_ms": ("DOUBLE", "from the request headers to the last byte sent"),
    "config_revision": ("VARCHAR", "12 hex digits of sha256 over router.yaml + registry.yaml"),
    "schema": ("VARCHAR", "the route's input_schema"),
    "sticky_key": ("VARCHAR", "keyed blake2b of the sticky key, never the raw key"),
    "input": ("JSON", "the request body under the payload policy"),
    "output": ("JSON", "the answer body under the payload policy"),
    "violations": ("JSON", "schema violations found by validation"),
    "served_model_version": ("VARCHAR", "the model version the V2 answer names"),
    "fallback_from": ("VARCHAR", "the version that failed before the fallback answered"),
    "compare": ("JSON", "shadow records: against, match, max_abs_diff, agreement"),
    "error": ("VARCHAR", "what went wrong, when something did"),
    "trace_id": ("VARCHAR", "the W3C trace id from traceparent"),
    "outcome": ("JSON", "feedback records: the business outcome"),
}
FEEDBACK_ONLY = frozenset({"outcome"})     # absent from primary and shadow records


# -- the control version ------------------------------------------------------------------------

def control(blue: str | None, baseline: str | None, listed: Iterable[str]) -> str | None:
    """The control version of a route: the blue colour, the rollout baseline, or the
    first-listed split version (README "Monitoring"); None when there is none."""
    if blue is not None:
        return blue
    if baseline is not None:
        return baseline
    return next(iter(listed), None)


def control_version(route: Route) -> str:
    """The control version of a compiled route (a route always has one of split, blue_green or
    rollout; its first version otherwise)."""
    found = control(route.blue_green.blue if route.blue_green is not None else None,
                    route.rollout.baseline if route.rollout is not None else None,
                    (name for name, _ in route.split))
    return found if found is not None else next(iter(route.versions))


def control_in_config(item: Mapping[str, Any]) -> str | None:
    """The control version of a route as router.yaml spells it (one item of ``routes``), for
    readers of a stored revision that do not compile it."""
    blue_green, rollout, split = item.get("blue_green"), item.get("rollout"), item.get("split")
    return control(blue_green.get("blue") if isinstance(blue_green, dict) else None,
                   rollout.get("baseline") if isinstance(rollout, dict) else None,
                   (str(name) for name in split) if isinstance(split, dict) else ())


# -- what observers receive ---------------------------------------------------------------------


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
    # The JSON equivalent of a body that travelled in another form (V2 binary tensors, gRPC):
    # what validation, drift, comparison and the log read; the body itself went as it came.
    request_json: bytes | None = None
    response_json: bytes | None = None
    answer_header: int | None = None   # a binary answer's JSON header size (decoded later)
    mirror: bool = True            # shadows may copy it (False: no form of it to send)

    # What the prediction log reads besides the fields above: an Exchange is its own entry
    # (no copy on the hot path); it is never changed after it is handed over.
    role: ClassVar[str] = "primary"
    compare: ClassVar[dict[str, Any] | None] = None
    outcome: ClassVar[dict[str, Any] | None] = None

    @property
    def revision(self) -> str:
        return self.snapshot.revision

    @property
    def latency_ms(self) -> float:
        return self.latency_s * 1000


Observer = Callable[[Exchange], None]


class Record(Protocol):
    """What a log entry offers the writer: an ``Entry``, or the proxy's ``Exchange``."""

    @property
    def ts(self) -> float: ...

    @property
    def request_id(self) -> str: ...

    @property
    def route(self) -> Route | None: ...

    @property
    def role(self) -> str: ...

    @property
    def version(self) -> str | None: ...

    @property
    def reason(self) -> str | None: ...

    @property
    def upstream(self) -> str | None: ...

    @property
    def status(self) -> int: ...

    @property
    def sticky_key(self) -> str | None: ...

    @property
    def request_body(self) -> bytes | None: ...

    @property
    def response_body(self) -> bytes | None: ...

    @property
    def response_truncated(self) -> bool: ...

    @property
    def response_total(self) -> int | None: ...

    @property
    def fallback_from(self) -> str | None: ...

    @property
    def compare(self) -> dict[str, Any] | None: ...

    @property
    def error(self) -> str | None: ...

    @property
    def violations(self) -> list[dict[str, Any]] | None: ...

    @property
    def trace_id(self) -> str | None: ...

    @property
    def outcome(self) -> dict[str, Any] | None: ...

    # the request body is known to be JSON
    @property
    def valid_json(self) -> bool: ...

    # the answer parsed as JSON, when already parsed (or None)
    @property
    def answer(self) -> Any: ...

    # the JSON equivalents of bodies that travelled as binary tensors or gRPC (or None)
    @property
    def request_json(self) -> bytes | None: ...

    @property
    def response_json(self) -> bytes | None: ...


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
    request_json: bytes | None = None
    response_json: bytes | None = None


class RecordSink(Protocol):
    """The prediction log as the proxy uses it: a slot reserved before forwarding (``on_full:
    block``), the record added after the answer. ``observers.predlog.PredictionLog``."""

    settings: PredictionLogSettings

    def try_reserve(self) -> bool: ...

    async def reserve(self) -> bool: ...

    def release(self) -> None: ...

    def add(self, entry: Record, reserved: bool) -> bool: ...


# -- feedback attribution ------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Served:
    """Which route, version and config revision answered a request: what the outcomes posted
    to ``/-/feedback`` for it are attributed to."""

    route: str
    version: str
    revision: str


# Called once per accepted feedback: (request id, outcome, who served it or None).
FeedbackObserver = Callable[[str, Mapping[str, Any], "Served | None"], None]


class Attributor(Protocol):
    """Finds who served a request id (``observers.attribution.Attribution``): this process's
    recent answers, and in a fleet every replica's."""

    async def find(self, request_id: str) -> Served | None: ...
