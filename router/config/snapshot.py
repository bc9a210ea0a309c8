"""The compiled config: frozen values every plane reads, and the one place their defaults live.

A ``Snapshot`` is one applied config; ``Live`` holds the snapshot in force. Field defaults
here are the config's defaults: the loader (``load``, ``routes``) and the command line read
them (``default``), never repeat them. ``bucket_bounds`` is the sticky-bucket contract
(README.md "Routing rules") that both a ``split`` and a rollout's weights compile through.
"""

from __future__ import annotations

import dataclasses
import ssl
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..validation import Validator
from .registry import Registry

Protocol = Literal["v2", "json", "raw"]
Validation = Literal["enforce", "log", "off"]
PayloadPolicy = Literal["full", "hash", "none"]

BUCKETS = 10_000
# Folders named relative to router.yaml's own when the file does not name them.
STATE_DIR = "state"
LOG_DIR = "logs"


def bucket_bounds(weights: Iterable[float]) -> tuple[int, ...]:
    """The exclusive upper bucket of each weight (percent), in the order given.

    Version i owns buckets ``[round(100*sum(w[:i])), round(100*sum(w[:i+1])))`` of
    ``BUCKETS``: appending weight to the last entry only moves buckets onto it.
    """
    bounds, acc = [], 0.0
    for w in weights:
        acc += w
        bounds.append(round(100 * acc))
    return tuple(bounds)


def default(cls: type, name: str) -> Any:
    """The default of dataclass ``cls``'s field ``name``: what the config means when silent."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                return f.default
            if f.default_factory is not dataclasses.MISSING:
                return f.default_factory()
            break
    raise LookupError(f"{cls.__name__}.{name} has no default")


@dataclass(frozen=True, slots=True)
class Version:
    name: str
    urls: tuple[str, ...]                 # base URLs without a trailing slash
    headers: tuple[tuple[str, str], ...]  # extra upstream headers, names lower-cased
    host: str | None
    tls: ssl.SSLContext | None
    model_version: str | None             # what the model server reports itself as
    grpc: str | None = None               # host:port of its gRPC V2 service; None: HTTP only
    grpc_tls: GrpcTls | None = None       # TLS to that service (the version's ``tls`` files)
    # The model name (and version) its gRPC service serves: the url's path, /v2/models/NAME
    # [/versions/V]; ModelInfer's model_name and model_version are rewritten to these.
    grpc_model: tuple[str, str] = ("", "")


@dataclass(frozen=True, slots=True)
class GrpcTls:
    """PEM bytes for a gRPC channel's TLS (grpc takes bytes, not an SSLContext)."""

    ca: bytes | None
    cert: bytes | None
    key: bytes | None


@dataclass(frozen=True, slots=True)
class Shadow:
    version: str
    percent: float
    timeout_s: float                      # the route's timeout_s unless given
    max_inflight: int = 64
    atol: float = 1e-6
    rtol: float = 1e-4


@dataclass(frozen=True, slots=True)
class Sticky:
    kind: Literal["header", "cookie", "json_field"]
    key: str           # header names are lower-cased
    salt: str


@dataclass(frozen=True, slots=True)
class Override:
    header: str        # lower-cased
    allow: frozenset[str]


@dataclass(frozen=True, slots=True)
class BlueGreen:
    blue: str
    green: str
    active: Literal["blue", "green"]

    @property
    def active_version(self) -> str:
        return self.blue if self.active == "blue" else self.green


@dataclass(frozen=True, slots=True)
class Outlier:
    consecutive_failures: int = 5
    ejection_s: float = 30.0


@dataclass(frozen=True, slots=True)
class Drift:
    window_rows: int = 10_000
    sample: float = 1.0
    psi_warn: float = 0.2


@dataclass(frozen=True, slots=True)
class Checks:
    error_rate_max_increase: float | None = None
    latency_p99_max_ratio: float | None = None
    shadow_agreement_min: float | None = None
    outcome_name: str | None = None
    outcome_max_drop: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Rollout:
    baseline: str
    canary: str
    steps: tuple[float, ...]
    key: str                              # hash of the block: editing it restarts the rollout
    step_min_s: float = 60.0
    step_min_requests: int = 500
    max_wait_s: float | None = None       # without enough evidence by then: pause, no_evidence
    checks: Checks = Checks()
    on_failure: Literal["rollback", "pause"] = "rollback"

    @property
    def wait_limit_s(self) -> float:
        """``max_wait_s``, by default 10 x ``step_min_s`` (at least a minute)."""
        if self.max_wait_s is not None:
            return self.max_wait_s
        return max(10 * self.step_min_s, 60.0)

    def split(self, canary_percent: float) -> tuple[tuple[tuple[str, float], ...],
                                                    tuple[int, ...]]:
        """Baseline listed first, canary last: growing the canary only adds users to it."""
        entries = ((self.baseline, 100.0 - canary_percent), (self.canary, canary_percent))
        return entries, bucket_bounds(w for _, w in entries)


@dataclass(frozen=True, slots=True, kw_only=True)
class Route:
    name: str
    prefix: str                           # "" for the root prefix "/"
    protocol: Protocol = "json"
    model: str | None = None
    input_schema: str | None = None
    validation: Validation = "enforce"
    versions: Mapping[str, Version]
    split: tuple[tuple[str, float], ...]  # listed order; empty when blue_green is used
    bounds: tuple[int, ...]               # bucket upper bound of each split entry
    blue_green: BlueGreen | None = None
    sticky: Sticky | None = None
    override: Override | None = None
    shadows: tuple[Shadow, ...] = ()
    fallback: str | None = None
    timeout_s: float = 30.0               # per attempt; shadows inherit it
    outlier: Outlier = Outlier()
    drift: Drift = Drift()
    pinned: Mapping[str, str]             # version name or model_version -> version name
    validator: Validator | None = None    # compiled from input_schema unless off or raw
    rollout: Rollout | None = None        # owns split when set (weights from its state)

    def weights(self) -> dict[str, float]:
        """Effective traffic percent per version (blue/green: 100 on the active colour)."""
        if self.blue_green is not None:
            active = self.blue_green.active_version
            return {v: (100.0 if v == active else 0.0) for v in self.versions}
        listed = dict(self.split)
        return {v: listed.get(v, 0.0) for v in self.versions}

    def describe(self) -> dict[str, Any]:
        """What ``/-/config`` and the history show of this route (no secrets)."""
        out: dict[str, Any] = {"name": self.name, "prefix": self.prefix or "/",
                               "protocol": self.protocol, "model": self.model,
                               "input_schema": self.input_schema,
                               "versions": sorted(self.versions), "weights": self.weights()}
        if self.blue_green is not None:
            out["blue_green"] = {"blue": self.blue_green.blue, "green": self.blue_green.green,
                                 "active": self.blue_green.active}
        if self.rollout is not None:
            out["rollout"] = {"baseline": self.rollout.baseline, "canary": self.rollout.canary,
                              "steps": list(self.rollout.steps), "key": self.rollout.key}
        if self.shadows:
            out["shadow"] = [{"version": s.version, "percent": s.percent} for s in self.shadows]
        return out


@dataclass(frozen=True, slots=True)
class Limits:
    max_body_mb: float = 16
    max_concurrency: int = 1024
    client_timeout_s: float = 60
    shutdown_grace_s: float = 30
    drain_delay_s: float = 0

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)


@dataclass(frozen=True, slots=True)
class Listen:
    host: str = "127.0.0.1"
    port: int = 8080


@dataclass(frozen=True, slots=True)
class Admin:
    host: str = "127.0.0.1"
    port: int = 9090
    token_env: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Fleet:
    """The ``fleet:`` block: replicas with the same name and store form one router."""

    name: str
    store: str                            # redis://host:port/db
    prometheus: str | None = None         # http://host:port; without it no fleet evidence
    lease_s: float = 10.0
    feedback_ttl_s: float = 86400.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Ship:
    """``prediction_log.ship``: closed segments to object storage (``logstore`` layout)."""

    to: str                               # an fsspec URL: s3://..., gs://..., file:///...
    storage_options: Mapping[str, Any] = field(default_factory=dict)  # to the filesystem
    every_s: float = 60.0                 # the open segment is closed at least this often
    keep_local_hours: float = 24.0        # shipped segments stay on local disk this long


@dataclass(frozen=True, slots=True)
class PredictionLogSettings:
    dir: Path                 # LOG_DIR beside router.yaml unless given
    enabled: bool = True      # an extension: false turns the log off (benchmarks only)
    payloads: PayloadPolicy = "full"
    redact: frozenset[str] = frozenset()
    max_payload_kb: float = 64
    rotate_mb: float = 256
    retain_days: float | None = 30
    retain_max_total_gb: float | None = 50
    flush_ms: float = 200
    on_full: Literal["block", "drop"] = "block"
    block_ms: float = 1000
    ship: Ship | None = None


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One applied config: immutable, swapped whole on reload."""

    revision: str
    loaded_at: float
    source: str
    path: Path
    files: Mapping[str, bytes]            # name -> bytes as applied (router.yaml, registry.yaml)
    listen: Listen
    limits: Limits
    admin: Admin
    state_dir: Path
    prediction_log: PredictionLogSettings
    routes: tuple[Route, ...]             # longest prefix first
    registry: Registry
    fleet: Fleet | None = None
    grpc: Listen | None = None            # the gRPC V2 port; None: no gRPC listener
    warnings: tuple[str, ...] = field(default=())
    # Drift baselines named by the registry, read and checked with the config (off the loop)
    baselines: Mapping[Path, Mapping[str, Any]] = field(default_factory=dict)

    def route(self, name: str) -> Route | None:
        for r in self.routes:
            if r.name == name:
                return r
        return None

    def describe(self) -> dict[str, Any]:
        return {"revision": self.revision, "loaded_at": self.loaded_at, "source": self.source,
                "routes": [r.describe() for r in self.routes]}


class Live:
    """The one mutable reference to the applied snapshot; swapped whole, never edited."""

    __slots__ = ("snapshot",)

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def __repr__(self) -> str:
        return f"<Live revision={self.snapshot.revision}>"
