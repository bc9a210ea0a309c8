"""What the proxy checks on a request and its answer before trusting them: paths an upstream
could decode elsewhere, request ids and trace context fit for the log, and a V2 answer that
names another request's id. Pure functions, no I/O."""

from __future__ import annotations

import re
import zlib
from typing import Any

import orjson

MAX_REQUEST_ID = 200
_TRACEPARENT = re.compile(r"[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}")
# Spellings of "/", "\\", NUL and "." that some server or framework decodes on the way in.
_ENCODED_SEPARATORS = ("%2f", "%5c", "%00", "%252f", "%255c", "%2500", "%c0%ae", "%c0%af")


def inflated(data: bytes, encoding: str, limit: int) -> bytes | None:
    """A body sent with ``Content-Encoding`` gzip or deflate, decompressed to at most ``limit``
    bytes (None: larger, so a small body cannot expand without bound); ValueError for any
    other encoding or a corrupt stream."""
    kind = encoding.strip().lower()
    if kind in ("gzip", "x-gzip"):
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    elif kind == "deflate":   # zlib-wrapped, as HTTP means it (raw deflate tried below)
        inflater = zlib.decompressobj(zlib.MAX_WBITS if data[:1] == b"\x78" else -zlib.MAX_WBITS)
    else:
        raise ValueError(f"content-encoding {encoding[:32]!r} is not gzip or deflate")
    try:
        out = inflater.decompress(data, limit + 1)
    except zlib.error as exc:
        raise ValueError(f"the {kind} body is corrupt: {exc}") from None
    if len(out) > limit:
        return None
    if not inflater.eof:
        raise ValueError(f"the {kind} body is cut off")
    return out


def trace_id(traceparent: str | None) -> str | None:
    """The trace id of a well-formed W3C ``traceparent`` (version-traceid-parentid-flags)."""
    if not traceparent:
        return None
    found = _TRACEPARENT.fullmatch(traceparent)
    return found.group(1) if found is not None and found.group(1) != "0" * 32 else None


def valid_request_id(value: str) -> bool:
    """1-200 visible ASCII characters: safe in a header, a log line and an audit query."""
    return 0 < len(value) <= MAX_REQUEST_ID and value.isascii() and value.isprintable() \
        and " " not in value


def unsafe_path(raw_path: str) -> str | None:
    """Why a request path must not be forwarded, or None.

    A path that some upstream could decode into another resource never leaves the router:
    percent-encoded ``/`` or ``\\`` (also double-encoded), a backslash, NUL, and dot
    segments in any spelling (``..``, ``%2e%2e``, ``.%2E``, ``..;param``).
    """
    if "%" not in raw_path and "\\" not in raw_path and "." not in raw_path \
            and "\x00" not in raw_path and "#" not in raw_path:
        return None  # the common case: nothing to decode
    if "#" in raw_path:  # a fragment is never sent; some servers cut the path there
        return "a fragment (#) in the request target"
    lowered = raw_path.lower()
    if "\\" in raw_path or "\x00" in raw_path or any(s in lowered for s in _ENCODED_SEPARATORS):
        return "an encoded separator, backslash or NUL in the path"
    decoded = lowered.replace("%25", "%").replace("%2e", ".")
    for segment in decoded.split("/"):
        if segment.partition(";")[0] in (".", ".."):
            return "a dot segment in the path"
    return None


def parsed(body: bytes) -> Any:
    """A JSON body as Python values, or None when it is not JSON."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None


def id_mismatch(request: Any, answer: Any) -> str | None:
    """For V2: the request's ``id`` and the answer's differ (an answer meant for another
    request), as "want != got"; None when they agree or either has none."""
    want = request.get("id") if isinstance(request, dict) else None
    got = answer.get("id") if isinstance(answer, dict) else None
    if not isinstance(want, str) or got is None or got == want:
        return None
    return f"{want[:64]!r} != {str(got)[:64]!r}"
