"""How an entry becomes a prediction-log line: the payload policy (full, hash, none; size
caps; redaction), the keyed sticky-key hash, the served model version, and the safe path
for what orjson refuses (``_unencodable`` payloads), so no answered request loses its
record. The fields are ``records.RECORD_FIELDS``; ``predlog`` buffers and writes the lines.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import os
import secrets
from pathlib import Path
from typing import Any

import orjson

from ..config import PredictionLogSettings
from ..records import Record
from ..timefmt import iso

REDACTED = "***"
FIELD_DEPTH = 32           # a field the encoder refused is rewritten down to this depth


def keyed_hash(secret: bytes, value: str) -> str:
    """The sticky key as stored: keyed blake2b, so a guessed id cannot be confirmed.

    Header values arrive decoded with surrogate escapes: the key's bytes are hashed as sent.
    """
    return hashlib.blake2b(value.encode("utf-8", "surrogateescape"), key=secret,
                           digest_size=16).hexdigest()


class KeyedHash:
    """``keyed_hash`` with the key block compressed once: each value hashes a copy."""

    __slots__ = ("_keyed",)

    def __init__(self, secret: bytes) -> None:
        self._keyed = hashlib.blake2b(key=secret, digest_size=16)

    def __repr__(self) -> str:
        return "<KeyedHash>"

    def __call__(self, value: str) -> str:
        h = self._keyed.copy()
        try:
            h.update(value.encode())
        except UnicodeEncodeError:  # a header's invalid bytes: hashed as sent
            h.update(value.encode("utf-8", "surrogateescape"))
        return h.hexdigest()


def load_log_key(state_dir: Path, env: dict[str, str] | None = None) -> bytes:
    """MODEL_ROUTER_LOG_KEY, or a random key created once in ``<state_dir>/log.key``."""
    env = env if env is not None else dict(os.environ)
    if env.get("MODEL_ROUTER_LOG_KEY"):
        return hashlib.blake2b(env["MODEL_ROUTER_LOG_KEY"].encode(), digest_size=32).digest()
    path = state_dir / "log.key"
    if not path.exists():
        state_dir.mkdir(mode=0o750, parents=True, exist_ok=True)
        tmp = path.with_name(f"log.key.tmp{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(32))
        try:
            os.link(tmp, path)  # first writer wins, even across processes
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    return path.read_bytes()


def redact(doc: Any, names: frozenset[str], protocol: str) -> Any:
    """v2: blank the data of inputs named in ``names``; json: the named keys at any depth.

    Changes ``doc`` (a freshly parsed body) in place and returns it. The walk keeps its own
    stack: no nesting the parser accepts can exhaust Python's.
    """
    if not names:
        return doc
    if protocol == "v2":
        if isinstance(doc, dict) and isinstance(doc.get("inputs"), list):
            for item in doc["inputs"]:
                if isinstance(item, dict) and item.get("name") in names:
                    item["data"] = REDACTED
        return doc
    stack = [doc]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for key, value in node.items():
                if key in names:
                    node[key] = REDACTED
                elif isinstance(value, (dict, list)):
                    stack.append(value)
        elif isinstance(node, list):
            stack.extend(v for v in node if isinstance(v, (dict, list)))
    return doc


def unencodable(data: bytes) -> dict[str, Any]:
    """A payload the encoder cannot write (nesting beyond its depth, invalid text)."""
    return {"_unencodable": True, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def valid_text(text: str) -> str:
    """``text`` as the log can store it: bytes that were not UTF-8 (header values are decoded
    with surrogate escapes) as ``\\xNN``, any other lone surrogate as ``\\udNNN``."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _embeddable(data: bytes) -> bool:
    """Known-valid JSON that can go into a JSONL line as it is: no raw line breaks, and not
    so deep that the record around it (two levels) passes the readers' depth limit of 1024.
    """
    if b"\n" in data or b"\r" in data:
        return False
    if len(data) < 2 * _DEEP or data.count(b"[") + data.count(b"{") < _DEEP:
        return True  # too short, or too few brackets (in strings too), to nest that deep
    try:
        orjson.loads(b"[[" + data + b"]]")
    except orjson.JSONDecodeError:
        return False
    return True


_DEEP = 1000  # fewer brackets than this cannot nest past the readers' limit


def payload(data: bytes | None, settings: PredictionLogSettings, protocol: str,
            truncated: bool = False, total: int | None = None, valid_json: bool = False) -> Any:
    """A request or response body as stored, per ``payloads`` and ``max_payload_kb``.

    ``valid_json``: the body is known to parse (validation or the writer parsed it); without
    redaction it is embedded as the original bytes (orjson.Fragment), saving a parse and a
    serialization.
    """
    if data is None or settings.payloads == "none":
        return None
    size = total if total is not None else len(data)
    if truncated or size > settings.max_payload_kb * 1024:
        return {"_truncated": True, "bytes": size,
                "sha256": hashlib.sha256(data).hexdigest() if not truncated else None}
    if settings.payloads == "hash":
        return {"sha256": hashlib.sha256(data).hexdigest(), "bytes": size}
    if not data:
        return None
    if valid_json and not settings.redact and _embeddable(data):
        return orjson.Fragment(data)
    if protocol != "raw":
        try:
            return redact(orjson.loads(data), settings.redact, protocol)
        except orjson.JSONDecodeError:
            pass
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return {"_base64": base64.b64encode(data).decode()}


def served_model_version(output: Any) -> str | None:
    """The version a V2 answer names itself (``model_version``), if any (an empty one, as
    proto3 sends "not set" over gRPC, is none)."""
    if isinstance(output, dict):
        value = output.get("model_version")
        if isinstance(value, (str, int, float)) and not isinstance(value, bool) \
                and value != "":
            return str(value)
    return None


def _redacted(violations: list[dict[str, Any]] | None, names: frozenset[str],
              ) -> list[dict[str, Any]]:
    """Violations as logged: the offending value of a redacted field is not kept."""
    if not violations:
        return []
    return [{**v, "got": REDACTED} if v.get("field") in names else v for v in violations]


@functools.lru_cache(maxsize=1024)  # upstream URLs come from the config: a small set
def origin(url: str | None) -> str | None:
    """``http://host:port`` of an upstream URL: where the request went, without the path."""
    if not url:
        return None
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.split('/', 1)[0]}"


def build_record(entry: Record, settings: PredictionLogSettings, sticky_hash: KeyedHash,
                 ) -> tuple[dict[str, Any], str | None]:
    """The JSON record of README.md "The prediction log"; also the served model version.

    Its keys are ``records.RECORD_FIELDS`` (``outcome`` on feedback only), written as a literal
    for speed; tests/test_contracts.py holds the two together."""
    route = entry.route
    protocol = route.protocol if route else "json"
    # A body that travelled as binary tensors or gRPC is stored as its JSON equivalent.
    request, request_is_json = entry.request_body, entry.valid_json
    if entry.request_json is not None:
        request, request_is_json = entry.request_json, True
    response = entry.response_body if entry.response_json is None else entry.response_json
    answer = entry.answer  # already parsed by the proxy (the V2 id check), or parse here
    if answer is None and response and protocol != "raw" and not entry.response_truncated:
        try:  # parsed once: the served version is recorded whatever the payload policy
            answer = orjson.loads(response)
        except orjson.JSONDecodeError:
            answer = None
    served = served_model_version(answer) if protocol == "v2" else None
    sticky, violations = entry.sticky_key, entry.violations
    record = {
        "ts": iso(entry.ts), "request_id": entry.request_id,
        "route": route.name if route else None, "model": route.model if route else None,
        "version": entry.version, "role": entry.role, "reason": entry.reason,
        "upstream": origin(entry.upstream), "status": entry.status,
        # latency is never negative: adding 0.5 and truncating rounds (round() is 2x slower)
        "latency_ms": int(entry.latency_ms * 1000 + 0.5) / 1000,
        "config_revision": entry.revision, "schema": route.input_schema if route else None,
        "sticky_key": sticky_hash(sticky) if sticky else None,
        "input": payload(request, settings, protocol, False, None, request_is_json),
        "output": payload(response, settings, protocol, entry.response_truncated,
                          entry.response_total, answer is not None),
        "violations": _redacted(violations, settings.redact) if violations else [],
        "served_model_version": served, "fallback_from": entry.fallback_from,
        "compare": entry.compare, "error": entry.error, "trace_id": entry.trace_id,
    }
    if entry.outcome is not None:
        record["outcome"] = entry.outcome
    return record, served


def safe_line(record: dict[str, Any], entry: Record) -> bytes:
    """The JSONL line of a record orjson refused (nesting beyond its depth, a lone surrogate
    from a header, an integer past 64 bits); never raises, so the record is never lost.

    Each field is checked on its own: a refused ``input`` or ``output`` is stored as
    ``unencodable(body)``, any other refused field is rewritten by ``_writable``. Only
    this slow path pays for the checks: ``add`` tries the plain ``orjson.dumps`` first.
    """
    bodies = {"input": entry.request_json or entry.request_body,
              "output": entry.response_json or entry.response_body}
    safe = {}
    for key, value in record.items():
        try:
            orjson.dumps([value])  # one level down, as in the record
        except orjson.JSONEncodeError:
            body = bodies.get(key)
            value = unencodable(body) if body else _writable(value, FIELD_DEPTH)
        safe[key] = value
    return orjson.dumps(safe, option=orjson.OPT_APPEND_NEWLINE)


def _writable(value: Any, room: int) -> Any:
    """``value`` as orjson can write it: text through ``valid_text``, other scalars it
    refuses as text, and each nested container deeper than ``room`` levels replaced whole
    by ``{"_unencodable": true}`` (what can be written is kept beside it)."""
    if isinstance(value, str):
        return valid_text(value)
    if isinstance(value, dict):
        return {valid_text(str(k)): _within(v, room - 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_within(v, room - 1) for v in value]
    try:
        orjson.dumps(value)
    except orjson.JSONEncodeError:
        return valid_text(str(value))
    return value


def _within(value: Any, room: int) -> Any:
    return {"_unencodable": True} if _deeper_than(value, room) else _writable(value, room)


def _deeper_than(value: Any, limit: int) -> bool:
    """Nesting of ``value`` (a scalar is 0, ``[]`` is 1) over ``limit``, walked iteratively."""
    stack = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, (dict, list, tuple)):
            if depth + 1 > limit:
                return True
            stack.extend((child, depth + 1)
                         for child in (node.values() if isinstance(node, dict) else node))
    return False
