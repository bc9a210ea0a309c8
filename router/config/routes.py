"""Compile ``routes:``: each route block into a ``Route`` that holds what the hot path needs.

``compile_routes`` reads the list (duplicate names and prefixes are errors); ``_route`` reads
one block in the order its problems are reported: what it is (name, prefix, protocol, model,
schema), its versions (``versions``) and their schema gate, who owns its weights
(``weights``), then its options. Every problem is collected in ``Problems``; a route with
errors compiles to None.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

from ..validation import Validator
from .problems import Problems, join
from .registry import Registry, gate
from .snapshot import (
    Drift,
    Outlier,
    Override,
    Protocol,
    Route,
    Shadow,
    Sticky,
    Validation,
    Version,
    default,
)
from .versions import compile_versions
from .weights import compile_weights, known_version

_ROUTE_KEYS = ("name", "match", "protocol", "model", "input_schema", "validation", "versions",
               "split", "blue_green", "rollout", "sticky", "override", "shadow", "outlier",
               "drift", "fallback", "timeout_s")


def compile_routes(p: Problems, raw: Any, registry: Registry, base: Path) -> list[Route]:
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


@dataclass(frozen=True, slots=True)
class _Head:
    """What a route is, before its versions: None where the block has an error."""

    name: str | None
    prefix: str | None
    protocol: str | None
    validation: str | None
    model: str | None
    input_schema: str | None


def _route(p: Problems, path: str, raw: Any, registry: Registry, base: Path,
           ) -> Route | None:
    """One route block: what it is, its versions and their gate, who owns its weights, its
    options; None when any of them has an error (reported in ``p``)."""
    spec = p.mapping(path, raw, _ROUTE_KEYS, required=("name", "match", "versions"))
    if spec is None:
        return None
    head = _head(p, path, spec, registry)
    versions: dict[str, Version] = {}
    vspec: dict[str, Any] | None = None
    if "versions" in spec:
        versions, vspec = compile_versions(p, join(path, "versions"), spec["versions"],
                                           registry, head.model, base)
    if head.input_schema in registry.schemas and head.model in registry.models:
        _gate(p, path, registry, head.model, head.input_schema, versions)
    # Every name listed: one that failed to compile has been reported, not again as unknown.
    listed = {k: None for k in (vspec or {}) if isinstance(k, str)}
    weights = compile_weights(p, path, spec, listed)

    sticky = _sticky(p, join(path, "sticky"), spec["sticky"], head.name or "") \
        if "sticky" in spec else None
    override = _override(p, join(path, "override"), spec["override"], listed) \
        if "override" in spec else None
    timeout_s = p.number(join(path, "timeout_s"), spec["timeout_s"], positive=True) \
        if "timeout_s" in spec else default(Route, "timeout_s")
    shadows = _shadows(p, join(path, "shadow"), spec["shadow"], listed,
                       timeout_s or default(Route, "timeout_s")) if "shadow" in spec else ()
    fallback = known_version(p, join(path, "fallback"), spec["fallback"], listed) \
        if "fallback" in spec else None
    outlier = _outlier(p, join(path, "outlier"), spec["outlier"]) \
        if "outlier" in spec else Outlier()
    drift = _drift(p, join(path, "drift"), spec["drift"]) if "drift" in spec else Drift()

    if None in (head.name, head.prefix, head.protocol, head.validation, vspec, timeout_s) \
            or len(versions) != len(vspec or ()):
        return None
    return Route(name=head.name, prefix=head.prefix,  # type: ignore[arg-type]
                 protocol=head.protocol, model=head.model,  # type: ignore[arg-type]
                 input_schema=head.input_schema,
                 validation=head.validation,  # type: ignore[arg-type]
                 versions=versions, split=weights.split, bounds=weights.bounds,
                 blue_green=weights.blue_green, rollout=weights.rollout,
                 sticky=sticky, override=override, shadows=shadows, fallback=fallback,
                 timeout_s=timeout_s, outlier=outlier, drift=drift,  # type: ignore[arg-type]
                 pinned=_pinned(versions), validator=_validator(registry, head))


def _head(p: Problems, path: str, spec: Mapping[str, Any], registry: Registry) -> _Head:
    """Name, prefix, protocol, validation, model and input schema, with their warnings."""
    name = p.name(join(path, "name"), spec["name"]) if "name" in spec else None
    prefix = _prefix(p, join(path, "match"), spec["match"]) if "match" in spec else None
    protocol = p.string(join(path, "protocol"), spec["protocol"], get_args(Protocol)) \
        if "protocol" in spec else default(Route, "protocol")
    validation = p.string(join(path, "validation"), spec["validation"], get_args(Validation)) \
        if "validation" in spec else default(Route, "validation")
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
    return _Head(name=name, prefix=prefix, protocol=protocol, validation=validation,
                 model=model, input_schema=input_schema)


def _pinned(versions: Mapping[str, Version]) -> dict[str, str]:
    """Version name, or its registry model_version, -> version name (a name wins a clash)."""
    pinned: dict[str, str] = {}
    for v in versions.values():
        if v.model_version:
            pinned.setdefault(v.model_version, v.name)
    pinned.update({v: v for v in versions})
    return pinned


def _validator(registry: Registry, head: _Head) -> Validator | None:
    """The request validator of ``input_schema``; none on raw routes or validation off."""
    if head.input_schema in registry.schemas and head.protocol != "raw" \
            and head.validation != "off":
        return Validator(registry.schemas[head.input_schema],
                         head.protocol)  # type: ignore[arg-type]
    return None


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
    return Sticky(kind=kinds[0], key=key.lower() if kinds[0] == "header" else key,
                  salt=salt)


def _override(p: Problems, path: str, raw: Any, versions: Mapping[str, Any],
              ) -> Override | None:
    spec = p.mapping(path, raw, ("header", "allow"), required=("header", "allow"))
    if not spec or "header" not in spec or "allow" not in spec:
        return None
    header = p.name(join(path, "header"), spec["header"])
    items = p.sequence(join(path, "allow"), spec["allow"]) or []
    allow = [known_version(p, join(join(path, "allow"), i), v, versions)
             for i, v in enumerate(items)]
    if isinstance(spec["allow"], list) and not items:
        p.error(join(path, "allow"), "list the versions an override may pick")
    if header is None or None in allow:
        return None
    return Override(header=header.lower(), allow=frozenset(a for a in allow if a))


def _shadows(p: Problems, path: str, raw: Any, versions: Mapping[str, Any],
             route_timeout: float) -> tuple[Shadow, ...]:
    """Shadow entries; a key left out takes ``Shadow``'s default (timeout_s: the route's)."""
    items = p.sequence(path, raw) or []
    out = []
    for i, item in enumerate(items):
        spath = join(path, i)
        spec = p.mapping(spath, item, ("version", "percent", "timeout_s", "max_inflight",
                                       "tolerance"), required=("version", "percent"))
        if not spec or "version" not in spec or "percent" not in spec:
            continue
        version = known_version(p, join(spath, "version"), spec["version"], versions)
        percent = p.number(join(spath, "percent"), spec["percent"], low=0, high=100)
        timeout = p.number(join(spath, "timeout_s"), spec["timeout_s"], positive=True) \
            if "timeout_s" in spec else route_timeout
        given: dict[str, Any] = {}
        if "max_inflight" in spec:
            given["max_inflight"] = p.number(join(spath, "max_inflight"), spec["max_inflight"],
                                             positive=True, integer=True)
        if "tolerance" in spec:
            tol = p.mapping(join(spath, "tolerance"), spec["tolerance"], ("atol", "rtol")) or {}
            for key in ("atol", "rtol"):
                if key in tol:
                    given[key] = p.number(join(spath, f"tolerance.{key}"), tol[key],
                                          low=0) or 0.0
        if version and percent is not None and timeout and given.get("max_inflight", 1):
            out.append(Shadow(version=version, percent=percent, timeout_s=timeout, **given))
    return tuple(out)


def _outlier(p: Problems, path: str, raw: Any) -> Outlier:
    """Keys left out (or in error: the file is rejected then) take ``Outlier``'s defaults."""
    spec = p.mapping(path, raw, ("consecutive_failures", "ejection_s")) or {}
    given: dict[str, Any] = {}
    if "consecutive_failures" in spec:
        given["consecutive_failures"] = p.number(join(path, "consecutive_failures"),
                                                 spec["consecutive_failures"], positive=True,
                                                 integer=True)
    if "ejection_s" in spec:
        given["ejection_s"] = p.number(join(path, "ejection_s"), spec["ejection_s"],
                                       positive=True)
    return Outlier(**{k: v for k, v in given.items() if v is not None})


def _drift(p: Problems, path: str, raw: Any) -> Drift:
    """Keys left out (or in error: the file is rejected then) take ``Drift``'s defaults."""
    spec = p.mapping(path, raw, ("window_rows", "sample", "psi_warn")) or {}
    given: dict[str, Any] = {}
    if "window_rows" in spec:
        given["window_rows"] = p.number(join(path, "window_rows"), spec["window_rows"],
                                        positive=True, integer=True)
    if "sample" in spec:
        given["sample"] = p.number(join(path, "sample"), spec["sample"], positive=True, high=1)
    if "psi_warn" in spec:
        given["psi_warn"] = p.number(join(path, "psi_warn"), spec["psi_warn"], positive=True)
    return Drift(**{k: v for k, v in given.items() if v is not None})
