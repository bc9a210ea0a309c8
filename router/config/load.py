"""Load router.yaml and registry.yaml, validate them strictly, compile a frozen Snapshot.

``load_snapshot(path)`` is the only entry point: it reads both files, expands ``${ENV}``
references, collects every problem (file, path, reason) and either raises ``ConfigError`` with
all of them or returns a ``Snapshot`` whose routes hold everything the hot path needs already
computed: bucket bounds, lower-cased header names, parsed URLs, TLS contexts. This module
reads the files and the top-level sections; ``routes`` compiles the routes, ``snapshot``
holds the types and their defaults.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, get_args

import yaml

from ..errors import ConfigError
from . import yaml12
from .problems import Problems, join
from .registry import EMPTY, load_baselines, parse_registry
from .routes import compile_routes
from .snapshot import (
    LOG_DIR,
    STATE_DIR,
    Admin,
    Fleet,
    Limits,
    Listen,
    PayloadPolicy,
    PredictionLogSettings,
    Ship,
    Snapshot,
)

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


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
    grpc = _listen(rp, top["grpc"], "grpc", GRPC_PORT) if "grpc" in top else None
    limits = _limits(rp, top.get("limits", {}))
    admin = _admin(rp, top.get("admin", {}), env)
    state_dir = base / (rp.string("state_dir", top["state_dir"]) or STATE_DIR) \
        if "state_dir" in top else base / STATE_DIR
    predlog = _prediction_log(rp, top.get("prediction_log", {}), base)
    routes = compile_routes(rp, top.get("routes"), registry, base)
    fleet = _fleet(rp, top["fleet"]) if "fleet" in top else None
    if fleet is not None and fleet.prometheus is None:
        for route in routes:
            if route.rollout is not None:
                rp.error("fleet.prometheus", f"route {route.name} has a rollout: a fleet judges "
                         "it on Prometheus's sums over every replica; set fleet.prometheus")
    if listen.port == admin.port and listen.port and listen.host == admin.host:
        rp.error("admin.port", f"the admin port {admin.port} is the listen port")
    if grpc is not None and grpc.port:
        for name, other in (("listen", listen), ("admin", admin)):
            if other.port == grpc.port and other.host == grpc.host:
                rp.error("grpc.port", f"the gRPC port {grpc.port} is the {name} port")
        if not any(v.grpc for r in routes for v in r.versions.values()):
            rp.warn("grpc", "no version names a grpc address: every gRPC inference call "
                       "will be answered NOT_FOUND")

    errors = rp.errors + registry_problems
    if errors:
        raise ConfigError(errors)
    return Snapshot(revision=revision_of(files), loaded_at=time.time(), source=source,
                    path=path, files=files, listen=listen, limits=limits, admin=admin,
                    state_dir=state_dir, prediction_log=predlog,
                    routes=tuple(sorted(routes, key=lambda r: len(r.prefix), reverse=True)),
                    registry=registry, fleet=fleet, grpc=grpc,
                    warnings=tuple(rp.warnings + registry_warnings),
                    baselines=baselines)


# -- sections ----------------------------------------------------------------------------------

_TOP_KEYS = ("listen", "grpc", "limits", "admin", "registry", "state_dir", "prediction_log",
             "fleet", "routes")
GRPC_PORT = 8081          # the gRPC port when the ``grpc`` block does not name one


def _port(p: Problems, path: str, value: Any) -> int | None:
    return p.number(path, value, low=0, high=65535, integer=True)  # type: ignore[return-value]


def _listen(p: Problems, raw: Any, key: str = "listen", default_port: int | None = None,
            ) -> Listen:
    """``listen`` (HTTP) or ``grpc``: a host and a port."""
    spec = p.mapping(key, raw, ("host", "port")) or {}
    host = p.string(f"{key}.host", spec["host"]) if "host" in spec else None
    port = _port(p, f"{key}.port", spec["port"]) if "port" in spec else default_port
    given: dict[str, Any] = {"host": host or None, "port": port}  # "" means the default
    return Listen(**{k: v for k, v in given.items() if v is not None})


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
    given: dict[str, Any] = {"host": host or None, "port": port, "token_env": token_env}
    return Admin(**{k: v for k, v in given.items() if v is not None})


_FLEET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")


def _fleet(p: Problems, raw: Any) -> Fleet | None:
    """The ``fleet:`` block: a name (part of every Redis key), a redis:// store, optionally
    a Prometheus base URL for rollout evidence, the lease and the feedback TTL."""
    keys = ("name", "store", "prometheus", "lease_s", "feedback_ttl_s")
    spec = p.mapping("fleet", raw, keys, required=("name", "store"))
    if not spec or "name" not in spec or "store" not in spec:
        return None
    name = p.name("fleet.name", spec["name"])
    if name and not _FLEET_NAME.fullmatch(name):
        p.error("fleet.name", f"{name!r}: use letters, digits, '.', '_' or '-' (1-63)")
    store = p.name("fleet.store", spec["store"])
    if store and not store.startswith(("redis://", "rediss://", "unix://")):
        p.error("fleet.store", f"{store!r} is not a redis:// (or rediss://, unix://) URL")
    given: dict[str, Any] = {}
    if "prometheus" in spec:
        url = p.name("fleet.prometheus", spec["prometheus"])
        if url and not url.startswith(("http://", "https://")):
            p.error("fleet.prometheus", f"{url!r} is not an http(s):// URL")
        given["prometheus"] = url.rstrip("/") if url else url
    for key in ("lease_s", "feedback_ttl_s"):
        if key in spec:
            given[key] = p.number(join("fleet", key), spec[key], positive=True)
    for key, why in (("lease_s", "renewed every lease_s/3"),
                     ("feedback_ttl_s", "Redis keeps keys for whole seconds")):
        if given.get(key) is not None and given[key] < 1:
            p.error(f"fleet.{key}", f"{given[key]} is below 1 s ({why})")
    if not name or not store or None in given.values():
        return None
    return Fleet(name=name, store=store, **given)


def _prediction_log(p: Problems, raw: Any, base: Path) -> PredictionLogSettings:
    keys = ("dir", "enabled", "payloads", "redact", "max_payload_kb", "rotate_mb", "retain",
            "flush_ms", "on_full", "block_ms", "ship")
    spec = p.mapping("prediction_log", raw, keys) or {}
    out: dict[str, Any] = {"dir": base / LOG_DIR}
    if "dir" in spec and (d := p.string("prediction_log.dir", spec["dir"])):
        out["dir"] = base / d
    # A key left out, or in error (the file is rejected then), keeps the settings' default.
    if "payloads" in spec and (policy := p.string("prediction_log.payloads",
                                                  spec["payloads"], get_args(PayloadPolicy))):
        out["payloads"] = policy
    if "enabled" in spec:
        out["enabled"] = p.boolean("prediction_log.enabled", spec["enabled"]) is not False
    if "on_full" in spec and (when_full := p.string("prediction_log.on_full",
                                                    spec["on_full"], ("block", "drop"))):
        out["on_full"] = when_full
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
    if "ship" in spec:
        out["ship"] = _ship(p, spec["ship"], base)
    return PredictionLogSettings(**out)


_SHIP_SCHEMES = ("file://", "s3://", "s3a://", "gs://", "gcs://", "az://", "abfs://",
                 "memory://")


def _ship(p: Problems, raw: Any, base: Path) -> Ship | None:
    """``prediction_log.ship``: an fsspec URL (a relative ``file://`` path is relative to
    router.yaml), options handed to the filesystem as they are, and two durations."""
    path = "prediction_log.ship"
    spec = p.mapping(path, raw, ("to", "storage_options", "every_s", "keep_local_hours"),
                     required=("to",))
    if not spec or "to" not in spec:
        return None
    to = p.name(join(path, "to"), spec["to"])
    if to and not to.startswith(_SHIP_SCHEMES):
        p.error(join(path, "to"), f"{to!r}: give a URL ({', '.join(_SHIP_SCHEMES)})")
    elif to and to.startswith("file://") and not to.startswith("file:///"):
        to = "file://" + str((base / to[len("file://"):]).resolve())
    given: dict[str, Any] = {}
    if "storage_options" in spec:
        options = p.mapping(join(path, "storage_options"), spec["storage_options"], None)
        given["storage_options"] = dict(options or {})
    for key in ("every_s", "keep_local_hours"):
        if key in spec:
            given[key] = p.number(join(path, key), spec[key], positive=key == "every_s",
                                  low=0)
    if not to or None in given.values():
        return None
    return Ship(to=to.rstrip("/"), **given)
