"""The model registry: feature schemas and model versions, one source of truth.

``parse_registry`` reads registry.yaml into frozen values; every problem is collected with
file and path. ``load_baselines`` reads and checks the drift baselines it names (called by
the config loader, which runs off the event loop). The route-level checks that use it live
in ``routes`` (``_gate``).
"""

from __future__ import annotations

import math
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import orjson

from .problems import Problems, describe, join

FieldType = Literal["float", "int", "string", "bool"]
FIELD_TYPES = ("float", "int", "string", "bool")


@dataclass(frozen=True, slots=True)
class Field:
    name: str
    type: FieldType
    required: bool = True
    nullable: bool = False
    min: float | None = None
    max: float | None = None
    enum: tuple[Any, ...] | None = None


@dataclass(frozen=True, slots=True)
class Schema:
    id: str
    fields: tuple[Field, ...]

    def field(self, name: str) -> Field | None:
        for f in self.fields:
            if f.name == name:
                return f
        return None


@dataclass(frozen=True, slots=True)
class ModelVersion:
    model: str
    name: str
    schema: str | None
    training_data: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    baseline: Path | None = None
    output_baseline: Path | None = None
    created: str | None = None
    model_version: str | None = None
    tags: dict[str, Any] = field(default_factory=dict)

    def entry(self) -> dict[str, Any]:
        """The registry entry as an auditor reads it."""
        return {"model": self.model, "version": self.name, "schema": self.schema,
                "training_data": self.training_data, "metrics": self.metrics,
                "created": self.created, "model_version": self.model_version,
                "baseline": str(self.baseline) if self.baseline else None,
                "output_baseline": str(self.output_baseline) if self.output_baseline else None,
                "tags": self.tags}


@dataclass(frozen=True, slots=True)
class Registry:
    schemas: dict[str, Schema]
    models: dict[str, dict[str, ModelVersion]]

    def version(self, model: str, version: str) -> ModelVersion | None:
        return self.models.get(model, {}).get(version)


EMPTY = Registry(schemas={}, models={})

_FIELD_KEYS = ("type", "required", "nullable", "min", "max", "enum")
_VERSION_KEYS = ("schema", "training_data", "metrics", "baseline", "output_baseline",
                 "created", "model_version", "tags")


def _parse_field(p: Problems, path: str, name: str, raw: Any) -> Field | None:
    spec = p.mapping(path, raw, _FIELD_KEYS, required=("type",))
    if spec is None:
        return None
    ftype = p.string(join(path, "type"), spec.get("type"), FIELD_TYPES) if "type" in spec else None
    required = p.boolean(join(path, "required"), spec["required"]) if "required" in spec else True
    nullable = p.boolean(join(path, "nullable"), spec["nullable"]) if "nullable" in spec else False
    low = p.number(join(path, "min"), spec["min"]) if "min" in spec else None
    high = p.number(join(path, "max"), spec["max"]) if "max" in spec else None
    enum = None
    if "enum" in spec:
        items = p.sequence(join(path, "enum"), spec["enum"])
        enum = tuple(items) if items else None
        if items is not None and not items:
            p.error(join(path, "enum"), "must list at least one value")
    if ftype is None:
        return None
    if (low is not None or high is not None) and ftype not in ("float", "int"):
        p.error(path, f"min/max apply to numbers, not {ftype}")
    if low is not None and high is not None and low > high:
        p.error(path, f"min {low:g} is above max {high:g}")
    return Field(name=name, type=cast(FieldType, ftype), required=bool(required),
                 nullable=bool(nullable),
                 min=low, max=high, enum=enum)


def parse_schema(p: Problems, path: str, schema_id: str, raw: Any) -> Schema | None:
    spec = p.mapping(path, raw, ("fields", "description"), required=("fields",))
    if spec is None or "fields" not in spec:
        return None
    fields_raw = p.mapping(join(path, "fields"), spec["fields"])
    if fields_raw is None:
        return None
    if not fields_raw:
        p.error(join(path, "fields"), "a schema needs at least one field")
    fields = []
    for fname, fraw in fields_raw.items():
        if isinstance(fname, str):
            parsed = _parse_field(p, join(join(path, "fields"), fname), fname, fraw)
            if parsed is not None:
                fields.append(parsed)
    return Schema(id=schema_id, fields=tuple(fields))


def _parse_version(p: Problems, path: str, model: str, name: str, raw: Any, base: Path,
                   schemas: dict[str, Schema]) -> ModelVersion | None:
    spec = p.mapping(path, raw, _VERSION_KEYS)
    if spec is None:
        return None
    schema = None
    if "schema" in spec:
        schema = p.name(join(path, "schema"), spec["schema"])
        if schema is not None and schema not in schemas:
            p.error(join(path, "schema"), f"unknown schema '{schema}'; defined: "
                    + (", ".join(sorted(schemas)) or "none"))
    texts: dict[str, str | None] = {}
    for key in ("training_data", "created", "model_version"):
        texts[key] = p.string(join(path, key), spec[key]) if key in spec else None
    paths: dict[str, Path | None] = {}
    for key in ("baseline", "output_baseline"):
        rel = p.string(join(path, key), spec[key]) if key in spec else None
        paths[key] = (base / rel) if rel else None
    metrics = p.mapping(join(path, "metrics"), spec["metrics"]) if "metrics" in spec else {}
    tags = p.mapping(join(path, "tags"), spec["tags"]) if "tags" in spec else {}
    return ModelVersion(model=model, name=name, schema=schema,
                        training_data=texts["training_data"], metrics=dict(metrics or {}),
                        baseline=paths["baseline"], output_baseline=paths["output_baseline"],
                        created=texts["created"], model_version=texts["model_version"],
                        tags=dict(tags or {}))


def parse_registry(p: Problems, tree: Any, base: Path) -> Registry:
    """Read a registry.yaml tree; problems go to ``p``; relative paths resolve from ``base``."""
    top = p.mapping("", tree if tree is not None else {}, ("schemas", "models"))
    if top is None:
        return EMPTY
    schemas: dict[str, Schema] = {}
    raw_schemas = p.mapping("schemas", top.get("schemas", {})) or {}
    for sid, sraw in raw_schemas.items():
        if isinstance(sid, str):
            parsed = parse_schema(p, join("schemas", sid), sid, sraw)
            if parsed is not None:
                schemas[sid] = parsed
    models: dict[str, dict[str, ModelVersion]] = {}
    raw_models = p.mapping("models", top.get("models", {})) or {}
    for mname, mraw in raw_models.items():
        if not isinstance(mname, str):
            continue
        mpath = join("models", mname)
        mspec = p.mapping(mpath, mraw, ("versions", "description"), required=("versions",))
        if mspec is None or "versions" not in mspec:
            continue
        vraw = p.mapping(join(mpath, "versions"), mspec["versions"]) or {}
        versions = {}
        for vname, vspec in vraw.items():
            if isinstance(vname, str):
                parsed_v = _parse_version(p, join(join(mpath, "versions"), vname), mname, vname,
                                          vspec, base, schemas)
                if parsed_v is not None:
                    versions[vname] = parsed_v
        models[mname] = versions
    return Registry(schemas=schemas, models=models)


# -- drift baselines ---------------------------------------------------------------------------

MAX_BASELINE_BYTES = 64 * 1024 * 1024
_BASELINE_KEYS = frozenset({"schema", "rows", "features"})
_FEATURE_KEYS = {"numeric": frozenset({"kind", "edges", "fractions"}),
                 "categorical": frozenset({"kind", "fractions"})}
_SHOWN_PROBLEMS = 5     # per file: a wrong file needs no thousand lines to be fixed


def _file_kind(mode: int) -> str:
    for test, kind in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return "not a regular file"


def read_baseline(path: Path, limit: int = MAX_BASELINE_BYTES) -> Any:
    """The parsed JSON of a baseline file; raises ``ValueError`` with the reason.

    Only a regular file of at most ``limit`` bytes is read: a FIFO would block the reader
    until something writes to it, a device (/dev/zero) never ends. The file is opened
    non-blocking and checked again through its descriptor, so one swapped in after the first
    check is refused too. Blocking I/O: call it off the event loop.
    """
    try:
        before = os.stat(path)
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(before.st_mode):
        raise ValueError(f"{path} is {_file_kind(before.st_mode)}, not a regular file")
    if before.st_size > limit:
        raise ValueError(f"{path} is {before.st_size} bytes, over the {limit} byte limit")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
    with open(fd, "rb") as f:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise ValueError(f"{path} is {_file_kind(mode)}, not a regular file")
        data = f.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"{path} is over the {limit} byte limit")
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"{path} is not JSON: {exc}") from None


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) \
        and math.isfinite(value)


def _fraction(value: Any) -> bool:
    return _finite(value) and 0 <= value <= 1


def baseline_problems(doc: Any) -> list[str]:
    """What keeps ``doc`` from being a drift baseline (README.md "Monitoring"; the shape
    drift relies on: it bins live values with these edges and compares these fractions)."""
    if not isinstance(doc, dict):
        return [f"expected a JSON object with features, got {describe(doc)}"]
    out = [f"{key}: unknown key; allowed: features, rows, schema"
           for key in doc if key not in _BASELINE_KEYS]
    if "schema" in doc and not isinstance(doc["schema"], str):
        out.append(f"schema: expected a string, got {describe(doc['schema'])}")
    if "rows" in doc and not (_finite(doc["rows"]) and doc["rows"] >= 0):
        out.append(f"rows: expected a count, got {describe(doc['rows'])}")
    features = doc.get("features")
    if not isinstance(features, dict):
        return out + [f"features: expected an object, got {describe(features)}"]
    for name, spec in features.items():
        where = f"features.{name}"
        kind = spec.get("kind") if isinstance(spec, dict) else None
        if kind not in _FEATURE_KEYS:
            out.append(f"{where}: expected an object with kind numeric or categorical")
            continue
        out += [f"{where}.{key}: unknown key; allowed: " + ", ".join(sorted(_FEATURE_KEYS[kind]))
                for key in spec if key not in _FEATURE_KEYS[kind]]
        fractions = spec.get("fractions")
        if kind == "categorical":
            if not isinstance(fractions, dict) or not fractions \
                    or not all(_fraction(v) for v in fractions.values()):
                out.append(f"{where}.fractions: expected an object of category -> fraction "
                           "(0 to 1), at least one")
            continue
        edges = spec.get("edges")
        if not isinstance(edges, list) or len(edges) < 2 or not all(map(_finite, edges)):
            out.append(f"{where}.edges: expected a list of at least 2 finite numbers")
        elif any(b <= a for a, b in zip(edges, edges[1:])):
            out.append(f"{where}.edges: must increase")
        elif not isinstance(fractions, list) or len(fractions) != len(edges) - 1 \
                or not all(map(_fraction, fractions)):
            out.append(f"{where}.fractions: expected {len(edges) - 1} fractions (0 to 1), "
                       f"one per bin between the {len(edges)} edges")
    return out


def load_baselines(p: Problems, registry: Registry) -> dict[Path, dict[str, Any]]:
    """Read and check every baseline and output_baseline the registry names (each file once).

    A missing, irregular, oversized, unreadable or misshapen file is an error of the version
    that names it, as with any config error. Blocking I/O: call it off the event loop.
    """
    loaded: dict[Path, dict[str, Any]] = {}
    failed: dict[Path, list[str]] = {}
    for model, versions in registry.models.items():
        for name, entry in versions.items():
            for key in ("baseline", "output_baseline"):
                path = getattr(entry, key)
                if path is None:
                    continue
                if path not in loaded and path not in failed:
                    try:
                        doc = read_baseline(path)
                        problems = [f"{path.name}: {reason}" for reason in baseline_problems(doc)]
                    except ValueError as exc:
                        problems = [str(exc)]
                    if problems:
                        failed[path] = problems
                    else:
                        loaded[path] = doc
                problems = failed.get(path, [])
                where = join(join(join(join("models", model), "versions"), name), key)
                for reason in problems[:_SHOWN_PROBLEMS]:
                    p.error(where, reason)
                if len(problems) > _SHOWN_PROBLEMS:
                    p.error(where, f"{len(problems) - _SHOWN_PROBLEMS} more problems")
    return loaded


# -- the deploy-time gate ----------------------------------------------------------------------

def _widens(traffic: str, version: str) -> bool:
    """int -> float widens; any other type change is incompatible."""
    return traffic == version or (traffic == "int" and version == "float")


def gate(traffic: Schema, version: str, version_schema: Schema) -> tuple[list[str], list[str]]:
    """Can ``version`` (trained on ``version_schema``) take traffic shaped as ``traffic``?

    Returns (errors, warnings). Errors: a required field missing from the traffic (with the
    nearest present name suggested), an incompatible type, or the shared fields in another
    order (positional encodings, a 2-D V2 tensor or list rows, would feed wrong columns).
    Warnings: traffic's declared range, enum or nullability wider than the version's.
    """
    from .problems import nearest

    errors: list[str] = []
    warnings: list[str] = []
    ids = f"version {version} (schema {version_schema.id}, traffic {traffic.id})"
    present = {f.name: f for f in traffic.fields}
    for need in version_schema.fields:
        got = present.get(need.name)
        if got is None:
            if need.required:
                hint = nearest(need.name, present)
                carried = f"; traffic carries {hint}" if hint else \
                    "; traffic has no such field"
                errors.append(f"{version} requires {need.name}{carried} "
                              f"({need.type}; {ids})")
            continue
        if not _widens(got.type, need.type):
            errors.append(f"{ids}: field {need.name} is {got.type} in traffic but "
                          f"{version} was trained on {need.type} (only int -> float widens)")
            continue
        if need.min is not None and (got.min is None or got.min < need.min):
            warnings.append(f"{ids}: {need.name} may go below {version}'s min {need.min:g} "
                            f"(traffic min {'none' if got.min is None else f'{got.min:g}'})")
        if need.max is not None and (got.max is None or got.max > need.max):
            warnings.append(f"{ids}: {need.name} may go above {version}'s max {need.max:g} "
                            f"(traffic max {'none' if got.max is None else f'{got.max:g}'})")
        if need.enum is not None:
            extra = [v for v in (got.enum or ()) if v not in need.enum]
            if got.enum is None or extra:
                shown = ", ".join(map(str, extra)) if extra else "any value"
                warnings.append(f"{ids}: {need.name} may carry {shown}, unseen by {version} "
                                f"(trained on {', '.join(map(str, need.enum))})")
        if got.nullable and not need.nullable:
            warnings.append(f"{ids}: {need.name} may be null in traffic; {version} "
                            "was not trained on nulls")
    shared = [f.name for f in traffic.fields if version_schema.field(f.name) is not None]
    trained = [f.name for f in version_schema.fields if f.name in present]
    if shared != trained:
        errors.append(f"{ids}: fields in another order ({', '.join(trained)} for {version}, "
                      f"{', '.join(shared)} in traffic): positional inputs would be misread")
    return errors, warnings
