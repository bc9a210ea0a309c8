"""Load router.yaml and registry.yaml, validate them strictly, compile a frozen Snapshot.

``load_snapshot(path)`` is the only entry point: it reads both files, expands ``${ENV}``
references, collects every problem (file, path, reason) and either raises ``ConfigError`` with
all of them or returns a ``Snapshot`` whose routes hold everything the hot path needs already
computed: bucket bounds, lower-cased header names, parsed URLs, TLS contexts.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import orjson
import yaml

from ..errors import ConfigError
from ..validation import Validator
from . import yaml12
from .problems import Problems, join, nearest
from .registry import EMPTY, Registry, gate, load_baselines, parse_registry

Protocol = Literal["v2", "json", "raw"]
Validation = Literal["enforce", "log", "off"]
PayloadPolicy = Literal["full", "hash", "none"]

BUCKETS = 10_000
DEFAULT_TIMEOUT_S = 30.0
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


# -- compiled values ---------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Version:
    name: str
    urls: tuple[str, ...]                 # base URLs without a trailing slash
    headers: tuple[tuple[str, str], ...]  # extra upstream headers, names lower-cased
    host: str | None
    tls: ssl.SSLContext | None
    model_version: str | None             # what the model server reports itself as


@dataclass(frozen=True, slots=True)
class Shadow:
    version: str
    percent: float
    timeout_s: float
    max_inflight: int
    atol: float
    rtol: float


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


@dataclass(frozen=True, slots=True)
class Rollout:
    baseline: str
    canary: str
    steps: tuple[float, ...]
    step_min_s: float
    step_min_requests: int
    checks: Checks
    on_failure: Literal["rollback", "pause"]
    key: str                              # hash of the block: editing it restarts the rollout

    def split(self, canary_percent: float) -> tuple[tuple[tuple[str, float], ...],
                                                    tuple[int, ...]]:
        """Baseline listed first, canary last: growing the canary only adds users to it."""
        entries = ((self.baseline, 100.0 - canary_percent), (self.canary, canary_percent))
        return entries, (round(100 * (100.0 - canary_percent)), BUCKETS)


@dataclass(frozen=True, slots=True)
class Route:
    name: str
    prefix: str                           # "" for the root prefix "/"
    protocol: Protocol
    model: str | None
    input_schema: str | None
    validation: Validation
    versions: Mapping[str, Version]
    split: tuple[tuple[str, float], ...]  # listed order; empty when blue_green is used
    bounds: tuple[int, ...]               # bucket upper bound of each split entry
    blue_green: BlueGreen | None
    sticky: Sticky | None
    override: Override | None
    shadows: tuple[Shadow, ...]
    fallback: str | None
    timeout_s: float
    outlier: Outlier
    drift: Drift
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


@dataclass(frozen=True, slots=True)
class PredictionLogSettings:
    dir: Path
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


# -- loading -----------------------------------------------------------------------------------

class Live:
    """The one mutable reference to the applied snapshot; swapped whole, never edited."""

    __slots__ = ("snapshot",)

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def __repr__(self) -> str:
        return f"<Live revision={self.snapshot.revision}>"


def revision_of(files: Mapping[str, bytes]) -> str:
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(files[name])
    return digest.hexdigest()[:12]


def _read_yaml(p: Problems, path: Path, given: Mapping[str, bytes] | None = None,
               ) -> tuple[bytes | None, Any]:
    try:
        raw = given[path.name] if given is not None and path.name in given \
            else path.read_bytes()
    except OSError as exc:
        p.error("", f"cannot read {path}: {exc.strerror or exc}")
        return None, None
    try:
        return raw, yaml12.loads(raw)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        p.error("", f"{where}invalid YAML: {problem}")
        return raw, None


def _expand_env(p: Problems, path: str, value: Any, env: Mapping[str, str],
                memo: dict[int, Any] | None = None) -> Any:
    """Replace ``${NAME}`` in every string; an unset variable is an error.

    A YAML alias is the same object as its anchor: it is expanded once and the result
    shared (``memo``), so aliases never multiply work or memory.
    """
    if memo is None:
        memo = {}
    if isinstance(value, str):
        if "${" not in value:
            return value
        done = memo.get(id(value))
        if done is None:
            def sub(match: re.Match[str]) -> str:
                name = match.group(1)
                if name not in env:
                    p.error(path, f"environment variable {name} is not set")
                    return ""
                return env[name]
            done = memo[id(value)] = _ENV_REF.sub(sub, value)
        return done
    if isinstance(value, (dict, list)):
        done = memo.get(id(value))
        if done is not None:
            return done
        if isinstance(value, dict):
            done = {k: _expand_env(p, join(path, k) if isinstance(k, str) else path, v, env,
                                   memo) for k, v in value.items()}
        else:
            done = [_expand_env(p, join(path, i), v, env, memo) for i, v in enumerate(value)]
        memo[id(value)] = done
        return done
    return value


def load_snapshot(path: str | Path, *, source: str = "file",
                  env: Mapping[str, str] | None = None,
                  files: Mapping[str, bytes] | None = None) -> Snapshot:
    """Read, validate and compile; raise ``ConfigError`` listing every problem.

    ``files`` (name -> bytes) replaces reading router.yaml/registry.yaml from disk: workers
    compile exactly the revision their supervisor validated, whatever the disk holds now.
    Reads files (the drift baselines too): blocking, so a serving process calls it in a
    thread.
    """
    env = os.environ if env is None else env
    path = Path(path)
    base = path.parent
    rp = Problems(path.name)
    router_raw, router_tree = _read_yaml(rp, path, files)
    if router_raw is None or router_tree is None and rp.errors:
        raise ConfigError(rp.errors)
    router_tree = _expand_env(rp, "", router_tree if router_tree is not None else {}, env)
    top = rp.mapping("", router_tree, _TOP_KEYS, required=("routes",))
    if top is None:
        raise ConfigError(rp.errors)

    files = {path.name: router_raw}
    registry = EMPTY
    baselines: dict[Path, dict[str, Any]] = {}
    registry_problems: list[str] = []
    registry_warnings: list[str] = []
    if "registry" in top:
        reg_name = rp.string("registry", top["registry"])
        if reg_name and not (base / reg_name).is_file():
            rp.error("registry", f"cannot read {base / reg_name}: no such file")
        elif reg_name:
            reg_path = base / reg_name
            gp = Problems(reg_path.name)
            reg_raw, reg_tree = _read_yaml(gp, reg_path, files)
            if reg_raw is not None:
                files[reg_path.name] = reg_raw
            if not gp.errors:
                reg_tree = _expand_env(gp, "", reg_tree, env)
                registry = parse_registry(gp, reg_tree, reg_path.parent)
            if not gp.errors:
                baselines = load_baselines(gp, registry)
            registry_problems, registry_warnings = gp.errors, gp.warnings

    listen = _listen(rp, top.get("listen", {}))
    limits = _limits(rp, top.get("limits", {}))
    admin = _admin(rp, top.get("admin", {}), env)
    state_dir = base / (rp.string("state_dir", top["state_dir"]) or "state") \
        if "state_dir" in top else base / "state"
    predlog = _prediction_log(rp, top.get("prediction_log", {}), base)
    routes = _routes(rp, top.get("routes"), registry, base)
    if listen.port == admin.port and listen.port and listen.host == admin.host:
        rp.error("admin.port", f"the admin port {admin.port} is the listen port")

    errors = rp.errors + registry_problems
    if errors:
        raise ConfigError(errors)
    return Snapshot(revision=revision_of(files), loaded_at=time.time(), source=source,
                    path=path, files=files, listen=listen, limits=limits, admin=admin,
                    state_dir=state_dir, prediction_log=predlog,
                    routes=tuple(sorted(routes, key=lambda r: len(r.prefix), reverse=True)),
                    registry=registry, warnings=tuple(rp.warnings + registry_warnings),
                    baselines=baselines)


# -- sections ----------------------------------------------------------------------------------

_TOP_KEYS = ("listen", "limits", "admin", "registry", "state_dir", "prediction_log", "routes")


def _port(p: Problems, path: str, value: Any) -> int | None:
    return p.number(path, value, low=0, high=65535, integer=True)  # type: ignore[return-value]


def _listen(p: Problems, raw: Any) -> Listen:
    spec = p.mapping("listen", raw, ("host", "port")) or {}
    host = p.string("listen.host", spec["host"]) if "host" in spec else None
    port = _port(p, "listen.port", spec["port"]) if "port" in spec else None
    return Listen(host=host or "127.0.0.1", port=8080 if port is None else port)


def _limits(p: Problems, raw: Any) -> Limits:
    keys = ("max_body_mb", "max_concurrency", "client_timeout_s", "shutdown_grace_s",
            "drain_delay_s")
    spec = p.mapping("limits", raw, keys) or {}
    values: dict[str, Any] = {}
    for key in keys:
        if key in spec:
            positive = key != "drain_delay_s"
            got = p.number(join("limits", key), spec[key], positive=positive, low=0,
                           integer=key == "max_concurrency")
            if got is not None:
                values[key] = got
    return Limits(**values)


def loopback(host: str) -> bool:
    """Whether binding ``host`` keeps a port on this machine (127.0.0.0/8, ::1, localhost)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve anywhere


def _admin(p: Problems, raw: Any, env: Mapping[str, str]) -> Admin:
    """Fail closed: a token_env that names no token, or an open admin port without one, is
    an error rather than an admin API anyone can POST to."""
    spec = p.mapping("admin", raw, ("host", "port", "token_env")) or {}
    host = p.string("admin.host", spec["host"]) if "host" in spec else None
    port = _port(p, "admin.port", spec["port"]) if "port" in spec else None
    token_env = p.string("admin.token_env", spec["token_env"]) if "token_env" in spec else None
    if token_env is not None and not env.get(token_env):
        state = "empty" if token_env in env else "not set"
        p.error("admin.token_env", f"environment variable {token_env} is {state}: admin POSTs "
                "would need no token; set it, or remove token_env (loopback admin only)")
    elif token_env is None and host and not loopback(host):
        p.error("admin.host", f"{host} is not a loopback address and the admin API has no "
                "token: set admin.token_env, or bind 127.0.0.1")
    return Admin(host=host or "127.0.0.1", port=9090 if port is None else port,
                 token_env=token_env)


def _prediction_log(p: Problems, raw: Any, base: Path) -> PredictionLogSettings:
    keys = ("dir", "enabled", "payloads", "redact", "max_payload_kb", "rotate_mb", "retain",
            "flush_ms", "on_full", "block_ms")
    spec = p.mapping("prediction_log", raw, keys) or {}
    out: dict[str, Any] = {"dir": base / "logs"}
    if "dir" in spec and (d := p.string("prediction_log.dir", spec["dir"])):
        out["dir"] = base / d
    if "payloads" in spec:
        out["payloads"] = p.string("prediction_log.payloads", spec["payloads"],
                                   ("full", "hash", "none")) or "full"
    if "enabled" in spec:
        out["enabled"] = p.boolean("prediction_log.enabled", spec["enabled"]) is not False
    if "on_full" in spec:
        out["on_full"] = p.string("prediction_log.on_full", spec["on_full"],
                                  ("block", "drop")) or "block"
    if "redact" in spec:
        items = p.sequence("prediction_log.redact", spec["redact"]) or []
        names = [p.string(join("prediction_log.redact", i), v) for i, v in enumerate(items)]
        out["redact"] = frozenset(n for n in names if n)
    for key in ("max_payload_kb", "rotate_mb", "flush_ms", "block_ms"):
        if key in spec:
            got = p.number(join("prediction_log", key), spec[key], positive=True)
            if got is not None:
                out[key] = got
    if "retain" in spec:
        retain = p.mapping("prediction_log.retain", spec["retain"], ("days", "max_total_gb"))
        for key in ("days", "max_total_gb"):
            if retain and key in retain:
                out[f"retain_{key}"] = p.number(join("prediction_log.retain", key),
                                                retain[key], positive=True)
    return PredictionLogSettings(**out)


# -- routes ------------------------------------------------------------------------------------

_ROUTE_KEYS = ("name", "match", "protocol", "model", "input_schema", "validation", "versions",
               "split", "blue_green", "rollout", "sticky", "override", "shadow", "outlier",
               "drift", "fallback", "timeout_s")


def _routes(p: Problems, raw: Any, registry: Registry, base: Path) -> list[Route]:
    items = p.sequence("routes", raw)
    if items is None:
        return []
    if not items:
        p.error("routes", "at least one route is needed")
    routes: list[Route] = []
    names: dict[str, int] = {}
    prefixes: dict[str, str] = {}
    for index, item in enumerate(items):
        label = item.get("name") if isinstance(item, dict) else None
        path = f"routes[{label}]" if isinstance(label, str) and label else f"routes[{index}]"
        route = _route(p, path, item, registry, base)
        if route is None:
            continue
        if route.name in names:
            p.error(path, f"duplicate route name '{route.name}'")
        names[route.name] = index
        if route.prefix in prefixes:
            p.error(join(path, "match.path_prefix"),
                    f"prefix {route.prefix or '/'} is already used by route "
                    f"'{prefixes[route.prefix]}'")
        prefixes.setdefault(route.prefix, route.name)
        routes.append(route)
    return routes


def _prefix(p: Problems, path: str, raw: Any) -> str | None:
    spec = p.mapping(path, raw, ("path_prefix",), required=("path_prefix",))
    if not spec or "path_prefix" not in spec:
        return None
    ppath = join(path, "path_prefix")
    prefix = p.string(ppath, spec["path_prefix"])
    if prefix is None:
        return None
    if not prefix.startswith("/"):
        p.error(ppath, f"must start with '/', got {prefix!r}")
        return None
    if any(c in prefix for c in "?#% ") or "//" in prefix or "/../" in prefix + "/":
        p.error(ppath, f"must be a plain path, got {prefix!r}")
        return None
    prefix = prefix.rstrip("/")
    if prefix == "/-" or prefix.startswith("/-/"):
        p.error(ppath, "prefixes under /-/ are reserved for the router")
        return None
    return prefix


_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")      # an HTTP header name (RFC 9110)
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")          # CR, LF, NUL...; tab is allowed


def _control(text: str) -> str | None:
    """The name of the first control character in ``text`` (it would end a header line or
    the request line sent upstream and start one of its own), or None."""
    found = _CONTROL.search(text)
    if found is None:
        return None
    char = found.group()
    return {"\r": "CR", "\n": "LF", "\x00": "NUL"}.get(char, f"control character {char!r}")


def _url(p: Problems, path: str, raw: Any) -> str | None:
    url = p.string(path, raw)
    if url is None:
        return None
    # urlsplit quietly drops CR, LF and tab; the URL sent upstream would still carry them.
    if (bad := _control(url)) is not None or any(c in url for c in " \t"):
        p.error(path, f"URL contains {bad or 'whitespace'}; it would inject into every "
                "upstream request")
        return None
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        p.error(path, f"invalid URL {url!r}: {exc}")
        return None
    if parts.scheme not in ("http", "https"):
        p.error(path, f"URL must be http or https, got {url!r}")
        return None
    if not parts.hostname:
        p.error(path, f"URL has no host: {url!r}")
        return None
    if port == 0:
        p.error(path, f"URL port must be 1-65535: {url!r}")
        return None
    if parts.query or parts.fragment:
        p.error(path, f"URL must not carry a query or fragment: {url!r}")
        return None
    return url.rstrip("/")


def _tls(p: Problems, path: str, raw: Any, base: Path) -> ssl.SSLContext | None:
    spec = p.mapping(path, raw, ("ca_file", "cert_file", "key_file"))
    if not spec:
        return None
    files = {k: p.string(join(path, k), v) for k, v in spec.items()}
    if bool(files.get("cert_file")) != bool(files.get("key_file")):
        p.error(path, "cert_file and key_file go together")
        return None
    try:
        ctx = ssl.create_default_context(
            cafile=str(base / files["ca_file"]) if files.get("ca_file") else None)
        if files.get("cert_file"):
            ctx.load_cert_chain(str(base / files["cert_file"]), str(base / files["key_file"]))
    except (OSError, ssl.SSLError) as exc:
        p.error(path, f"cannot load TLS files: {exc}")
        return None
    return ctx


def _version(p: Problems, path: str, name: str, raw: Any, registry: Registry,
             model: str | None, base: Path) -> Version | None:
    spec = p.mapping(path, raw, ("url", "urls", "headers", "host", "tls"))
    if spec is None:
        return None
    urls: list[str] = []
    if ("url" in spec) == ("urls" in spec):
        p.error(path, "give exactly one of url or urls")
    elif "url" in spec:
        if (u := _url(p, join(path, "url"), spec["url"])) is not None:
            urls.append(u)
    else:
        items = p.sequence(join(path, "urls"), spec["urls"]) or []
        if not items and "urls" in spec and isinstance(spec["urls"], list):
            p.error(join(path, "urls"), "must list at least one URL")
        for i, item in enumerate(items):
            if (u := _url(p, join(join(path, "urls"), i), item)) is not None:
                urls.append(u)
    headers: list[tuple[str, str]] = []
    if "headers" in spec:
        hspec = p.mapping(join(path, "headers"), spec["headers"]) or {}
        for hname, hvalue in hspec.items():
            name_ok = isinstance(hname, str) and _TOKEN.fullmatch(hname) is not None
            # A name that is no token is shown quoted: its CR or LF must not split the error.
            hpath = join(join(path, "headers"), hname if name_ok else repr(hname))
            value = p.string(hpath, hvalue)
            if not isinstance(hname, str) or value is None:
                continue
            if not name_ok:
                p.error(hpath, "header name must be a token (letters, digits, !#$%&'*+-.^_`|~)")
            elif (bad := _control(value)) is not None:
                # The value is not shown: it may hold an expanded ${SECRET}.
                p.error(hpath, f"header value contains {bad}; it would inject into every "
                        "upstream request")
            else:
                headers.append((hname.lower(), value))
    host = p.string(join(path, "host"), spec["host"]) if "host" in spec else None
    if host is not None and ((bad := _control(host)) is not None or not host.strip()
                             or any(c in host for c in " \t/?#@")):
        p.error(join(path, "host"), f"must be a host[:port], got {bad or repr(host)}; it is "
                "sent as the Host header of every upstream request")
        host = None
    tls = _tls(p, join(path, "tls"), spec["tls"], base) if "tls" in spec else None
    entry = registry.version(model, name) if model else None
    if not urls:
        return None
    return Version(name=name, urls=tuple(urls), headers=tuple(headers), host=host, tls=tls,
                   model_version=entry.model_version if entry else None)


def _known(p: Problems, path: str, value: Any, versions: Mapping[str, Any]) -> str | None:
    name = p.name(path, value)
    if name is None:
        return None
    if name not in versions:
        hint = nearest(name, versions)
        extra = f" (did you mean '{hint}'?)" if hint else ""
        p.error(path, f"unknown version '{name}'{extra}; this route has: "
                + ", ".join(versions))
        return None
    return name


def _split(p: Problems, path: str, raw: Any, versions: Mapping[str, Any],
           ) -> tuple[tuple[tuple[str, float], ...], tuple[int, ...]]:
    spec = p.mapping(path, raw)
    if not spec:
        if spec is not None:
            p.error(path, "must list at least one version")
        return (), ()
    entries: list[tuple[str, float]] = []
    for vname, weight in spec.items():
        vpath = join(path, str(vname))
        name = _known(p, vpath, vname, versions)
        w = p.number(vpath, weight, low=0, high=100)
        if name is not None and w is not None:
            entries.append((name, w))
    total = sum(w for _, w in entries)
    if len(entries) == len(spec) and abs(total - 100) > 1e-9:
        p.error(path, f"weights sum to {total:g}, expected 100")
    bounds, acc = [], 0.0
    for _, w in entries:
        acc += w
        bounds.append(round(100 * acc))
    return tuple(entries), tuple(bounds)


def _route(p: Problems, path: str, raw: Any, registry: Registry, base: Path,
           ) -> Route | None:
    spec = p.mapping(path, raw, _ROUTE_KEYS, required=("name", "match", "versions"))
    if spec is None:
        return None
    name = p.name(join(path, "name"), spec["name"]) if "name" in spec else None
    prefix = _prefix(p, join(path, "match"), spec["match"]) if "match" in spec else None
    protocol = p.string(join(path, "protocol"), spec.get("protocol", "json"),
                        ("v2", "json", "raw"))
    validation = p.string(join(path, "validation"), spec.get("validation", "enforce"),
                          ("enforce", "log", "off"))

    model = p.name(join(path, "model"), spec["model"]) if "model" in spec else None
    if model is not None and model not in registry.models:
        p.error(join(path, "model"), f"model '{model}' is not in the registry")
    input_schema = p.name(join(path, "input_schema"), spec["input_schema"]) \
        if "input_schema" in spec else None
    if input_schema is not None and input_schema not in registry.schemas:
        p.error(join(path, "input_schema"), f"schema '{input_schema}' is not in the registry")
    if model is None and input_schema is None:
        p.warn(path, "no model and no input_schema: no schema gate and no validation")
    if input_schema is not None and protocol == "raw":
        p.warn(join(path, "protocol"), "raw routes are not validated against input_schema")

    versions: dict[str, Version] = {}
    vspec = p.mapping(join(path, "versions"), spec["versions"]) if "versions" in spec else None
    if vspec is not None and not vspec:
        p.error(join(path, "versions"), "must list at least one version")
    for vname, vraw in (vspec or {}).items():
        vpath = join(join(path, "versions"), str(vname))
        if p.name(vpath, vname) is None:
            continue
        if model is not None and model in registry.models and \
                registry.version(model, vname) is None:
            p.error(vpath, f"version '{vname}' of model '{model}' is not in the registry")
        version = _version(p, vpath, vname, vraw, registry, model, base)
        if version is not None:
            versions[vname] = version
    if input_schema in registry.schemas and model in registry.models:
        _gate(p, path, registry, model, input_schema, versions)
    names_ok = vspec is not None and len(versions) == len(vspec)
    checked = {k: None for k in (vspec or {}) if isinstance(k, str)}

    split: tuple[tuple[str, float], ...] = ()
    bounds: tuple[int, ...] = ()
    blue_green = None
    rollout = None
    owners = [k for k in ("split", "blue_green", "rollout") if k in spec]
    if "rollout" in spec and len(owners) > 1:
        others = " and ".join(k for k in owners if k != "rollout")
        p.error(path, f"{others} beside rollout: the rollout (baseline "
                f"{(spec['rollout'] or {}).get('baseline') if isinstance(spec['rollout'], dict) else '?'}"
                f" -> canary {(spec['rollout'] or {}).get('canary') if isinstance(spec['rollout'], dict) else '?'}"
                ") owns this route's weights; remove " + others)
    elif len(owners) != 1:
        p.error(path, "give exactly one of split, blue_green or rollout")
    if "split" in spec:
        split, bounds = _split(p, join(path, "split"), spec["split"], checked)
    if "blue_green" in spec:
        blue_green = _blue_green(p, join(path, "blue_green"), spec["blue_green"], checked)
    if "rollout" in spec:
        rollout = _rollout(p, join(path, "rollout"), spec["rollout"], checked)
        if rollout is not None and not split:
            split, bounds = rollout.split(rollout.steps[0])

    sticky = _sticky(p, join(path, "sticky"), spec["sticky"], name or "") \
        if "sticky" in spec else None
    override = _override(p, join(path, "override"), spec["override"], checked) \
        if "override" in spec else None
    timeout_s = p.number(join(path, "timeout_s"), spec["timeout_s"], positive=True) \
        if "timeout_s" in spec else DEFAULT_TIMEOUT_S
    shadows = _shadows(p, join(path, "shadow"), spec["shadow"], checked,
                       timeout_s or DEFAULT_TIMEOUT_S) if "shadow" in spec else ()
    fallback = _known(p, join(path, "fallback"), spec["fallback"], checked) \
        if "fallback" in spec else None
    outlier = _outlier(p, join(path, "outlier"), spec["outlier"]) \
        if "outlier" in spec else Outlier()
    drift = _drift(p, join(path, "drift"), spec["drift"]) if "drift" in spec else Drift()

    if name is None or prefix is None or protocol is None or validation is None \
            or not names_ok or timeout_s is None:
        return None
    pinned: dict[str, str] = {}
    for v in versions.values():
        if v.model_version:
            pinned.setdefault(v.model_version, v.name)
    pinned.update({v: v for v in versions})
    validator = None
    if input_schema in registry.schemas and protocol != "raw" and validation != "off":
        validator = Validator(registry.schemas[input_schema], protocol)
    return Route(name=name, prefix=prefix, protocol=protocol,  # type: ignore[arg-type]
                 model=model, input_schema=input_schema,
                 validation=validation,  # type: ignore[arg-type]
                 versions=versions, split=split, bounds=bounds, blue_green=blue_green,
                 sticky=sticky, override=override, shadows=shadows, fallback=fallback,
                 timeout_s=timeout_s, outlier=outlier, drift=drift, pinned=pinned,
                 validator=validator, rollout=rollout)


def _gate(p: Problems, path: str, registry: Registry, model: str, input_schema: str,
          versions: Mapping[str, Version]) -> None:
    """The schema-compatibility gate over every version the route lists (all are reachable:
    split, colours, override, pinned paths, shadows, fallback)."""
    traffic = registry.schemas[input_schema]
    for name in versions:
        entry = registry.version(model, name)
        if entry is None:
            continue  # reported already: the version is not in the registry
        if entry.schema is None or entry.schema not in registry.schemas:
            p.warn(path, f"version {name} has no schema in the registry: not gated")
            continue
        errors, warnings = gate(traffic, name, registry.schemas[entry.schema])
        for message in errors:
            p.error(path, message)
        for message in warnings:
            p.warn(path, message)


def _blue_green(p: Problems, path: str, raw: Any, versions: Mapping[str, Any],
                ) -> BlueGreen | None:
    spec = p.mapping(path, raw, ("blue", "green", "active"), required=("blue", "green", "active"))
    if not spec or len(spec) < 3:
        return None
    blue = _known(p, join(path, "blue"), spec.get("blue"), versions)
    green = _known(p, join(path, "green"), spec.get("green"), versions)
    active = p.string(join(path, "active"), spec.get("active"), ("blue", "green"))
    if blue and green and blue == green:
        p.error(path, "blue and green must be different versions")
    if not (blue and green and active):
        return None
    return BlueGreen(blue=blue, green=green, active=active)  # type: ignore[arg-type]


def _rollout(p: Problems, path: str, raw: Any, versions: Mapping[str, Any]) -> Rollout | None:
    keys = ("baseline", "canary", "steps", "step_min_s", "step_min_requests", "checks",
            "on_failure")
    spec = p.mapping(path, raw, keys, required=("baseline", "canary", "steps"))
    if not spec or not all(k in spec for k in ("baseline", "canary", "steps")):
        return None
    baseline = _known(p, join(path, "baseline"), spec["baseline"], versions)
    canary = _known(p, join(path, "canary"), spec["canary"], versions)
    if baseline and canary and baseline == canary:
        p.error(path, "baseline and canary must be different versions")
    steps_raw = p.sequence(join(path, "steps"), spec["steps"]) or []
    steps = [p.number(join(join(path, "steps"), i), v, low=0, high=100, positive=True)
             for i, v in enumerate(steps_raw)]
    if not steps_raw:
        p.error(join(path, "steps"), "list at least one canary percent")
    if any(s is None for s in steps):
        return None
    if any(b <= a for a, b in zip(steps, steps[1:])):  # type: ignore[operator]
        p.error(join(path, "steps"), f"steps must increase, got {steps}")
    min_s = p.number(join(path, "step_min_s"), spec.get("step_min_s", 60), low=0)
    min_req = p.number(join(path, "step_min_requests"), spec.get("step_min_requests", 500),
                       low=0, integer=True)
    on_failure = p.string(join(path, "on_failure"), spec.get("on_failure", "rollback"),
                          ("rollback", "pause"))
    checks = Checks()
    if "checks" in spec:
        cpath = join(path, "checks")
        c = p.mapping(cpath, spec["checks"], ("error_rate", "latency_p99", "shadow_agreement",
                                               "outcome")) or {}
        values: dict[str, Any] = {}
        for key, inner, field_name, kw in (
                ("error_rate", "max_increase", "error_rate_max_increase", {"low": 0, "high": 1}),
                ("latency_p99", "max_ratio", "latency_p99_max_ratio", {"positive": True}),
                ("shadow_agreement", "min", "shadow_agreement_min", {"low": 0, "high": 1}),
                ("outcome", "max_drop", "outcome_max_drop", {"low": 0, "high": 1})):
            if key not in c:
                continue
            allowed = (inner, "name") if key == "outcome" else (inner,)
            block = p.mapping(join(cpath, key), c[key], allowed, required=allowed) or {}
            if inner in block:
                values[field_name] = p.number(join(join(cpath, key), inner), block[inner], **kw)
            if key == "outcome" and "name" in block:
                values["outcome_name"] = p.name(join(cpath, "outcome.name"), block["name"])
        checks = Checks(**values)
    if not (baseline and canary and min_s is not None and min_req is not None and on_failure):
        return None
    key = hashlib.sha256(orjson.dumps(spec, option=orjson.OPT_SORT_KEYS)).hexdigest()[:12]
    return Rollout(baseline=baseline, canary=canary, steps=tuple(steps),  # type: ignore[arg-type]
                   step_min_s=min_s, step_min_requests=int(min_req), checks=checks,
                   on_failure=on_failure, key=key)  # type: ignore[arg-type]


def _sticky(p: Problems, path: str, raw: Any, route_name: str) -> Sticky | None:
    spec = p.mapping(path, raw, ("header", "cookie", "json_field", "salt"))
    if spec is None:
        return None
    kinds = [k for k in ("header", "cookie", "json_field") if k in spec]
    if len(kinds) != 1:
        p.error(path, "give exactly one of header, cookie or json_field")
        return None
    key = p.name(join(path, kinds[0]), spec[kinds[0]])
    salt = p.string(join(path, "salt"), spec["salt"]) if "salt" in spec else route_name
    if key is None or salt is None:
        return None
    return Sticky(kind=kinds[0], key=key.lower() if kinds[0] == "header" else key,  # type: ignore[arg-type]
                  salt=salt)


def _override(p: Problems, path: str, raw: Any, versions: Mapping[str, Any],
              ) -> Override | None:
    spec = p.mapping(path, raw, ("header", "allow"), required=("header", "allow"))
    if not spec or "header" not in spec or "allow" not in spec:
        return None
    header = p.name(join(path, "header"), spec["header"])
    items = p.sequence(join(path, "allow"), spec["allow"]) or []
    allow = [_known(p, join(join(path, "allow"), i), v, versions) for i, v in enumerate(items)]
    if isinstance(spec["allow"], list) and not items:
        p.error(join(path, "allow"), "list the versions an override may pick")
    if header is None or None in allow:
        return None
    return Override(header=header.lower(), allow=frozenset(a for a in allow if a))


def _shadows(p: Problems, path: str, raw: Any, versions: Mapping[str, Any],
             route_timeout: float) -> tuple[Shadow, ...]:
    items = p.sequence(path, raw) or []
    out = []
    for i, item in enumerate(items):
        spath = join(path, i)
        spec = p.mapping(spath, item, ("version", "percent", "timeout_s", "max_inflight",
                                       "tolerance"), required=("version", "percent"))
        if not spec or "version" not in spec or "percent" not in spec:
            continue
        version = _known(p, join(spath, "version"), spec["version"], versions)
        percent = p.number(join(spath, "percent"), spec["percent"], low=0, high=100)
        timeout = p.number(join(spath, "timeout_s"), spec["timeout_s"], positive=True) \
            if "timeout_s" in spec else route_timeout
        inflight = p.number(join(spath, "max_inflight"), spec["max_inflight"], positive=True,
                            integer=True) if "max_inflight" in spec else 64
        atol, rtol = 1e-6, 1e-4
        if "tolerance" in spec:
            tol = p.mapping(join(spath, "tolerance"), spec["tolerance"], ("atol", "rtol")) or {}
            if "atol" in tol:
                atol = p.number(join(spath, "tolerance.atol"), tol["atol"], low=0) or 0.0
            if "rtol" in tol:
                rtol = p.number(join(spath, "tolerance.rtol"), tol["rtol"], low=0) or 0.0
        if version and percent is not None and timeout and inflight:
            out.append(Shadow(version=version, percent=percent, timeout_s=timeout,
                              max_inflight=int(inflight), atol=atol, rtol=rtol))
    return tuple(out)


def _outlier(p: Problems, path: str, raw: Any) -> Outlier:
    spec = p.mapping(path, raw, ("consecutive_failures", "ejection_s")) or {}
    failures = p.number(join(path, "consecutive_failures"), spec["consecutive_failures"],
                        positive=True, integer=True) if "consecutive_failures" in spec else 5
    ejection = p.number(join(path, "ejection_s"), spec["ejection_s"], positive=True) \
        if "ejection_s" in spec else 30.0
    return Outlier(consecutive_failures=int(failures or 5), ejection_s=ejection or 30.0)


def _drift(p: Problems, path: str, raw: Any) -> Drift:
    spec = p.mapping(path, raw, ("window_rows", "sample", "psi_warn")) or {}
    rows = p.number(join(path, "window_rows"), spec["window_rows"], positive=True,
                    integer=True) if "window_rows" in spec else 10_000
    sample = p.number(join(path, "sample"), spec["sample"], positive=True, high=1) \
        if "sample" in spec else 1.0
    warn = p.number(join(path, "psi_warn"), spec["psi_warn"], positive=True) \
        if "psi_warn" in spec else 0.2
    return Drift(window_rows=int(rows or 10_000), sample=sample or 1.0, psi_warn=warn or 0.2)
