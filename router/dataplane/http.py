"""The HTTP values the server and the proxy exchange: request headers, a request, a complete
answer, a refusal, and the router's JSON error answers (README.md "Errors")."""

from __future__ import annotations

from collections.abc import Iterable
from http.cookies import SimpleCookie
from typing import Any

import orjson

from ..errors import BodyTooLarge, RouterError

# A header block, either way (a client's request, an upstream's answer): at most this many
# bytes of names and values, this many lines; HEAD_FRAMING is the most the framing around
# them adds (line ends, colons, a status or request line), for counting raw bytes as they come.
MAX_HEADER_BYTES = 16 * 1024
MAX_HEADER_LINES = 100
HEAD_FRAMING = 4 * MAX_HEADER_LINES + 1024


class Headers:
    """Request headers: the raw pairs in order, and a case-insensitive lookup."""

    __slots__ = ("raw", "_map")

    def __init__(self, raw: list[tuple[str, str]]) -> None:
        self.raw = raw
        lookup: dict[str, str] = {}
        for name, value in raw:
            key = name.lower()
            if key in lookup:
                lookup[key] = f"{lookup[key]}{'; ' if key == 'cookie' else ', '}{value}"
            else:
                lookup[key] = value
        self._map = lookup

    def __repr__(self) -> str:
        return f"<Headers {len(self.raw)}>"

    def get(self, name: str, default: str | None = None) -> str | None:
        return self._map.get(name.lower(), default)

    def __getitem__(self, name: str) -> str:
        return self._map[name.lower()]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._map

    def items(self) -> list[tuple[str, str]]:
        return self.raw


class Request:
    """One complete request as the handler sees it."""

    __slots__ = ("method", "raw_path", "headers", "body", "remote", "too_large", "has_body",
                 "content_length", "keep_alive", "chunks_ok", "_cookies")

    def __init__(self, method: str, raw_path: str, headers: Headers, body: bytes,
                 remote: str | None, too_large: bool, has_body: bool,
                 content_length: int | None, keep_alive: bool = True,
                 chunks_ok: bool = True) -> None:
        self.method = method
        self.raw_path = raw_path
        self.headers = headers
        self.body = body
        self.remote = remote
        self.too_large = too_large
        self.has_body = has_body
        self.content_length = content_length
        self.keep_alive = keep_alive
        self.chunks_ok = chunks_ok  # HTTP/1.1: an answer of unknown length may be chunked
        self._cookies: dict[str, str] | None = None

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.raw_path[:80]}>"

    @property
    def cookies(self) -> dict[str, str]:
        if self._cookies is None:
            jar: SimpleCookie = SimpleCookie()
            try:
                jar.load(self.headers.get("cookie") or "")
            except Exception:  # noqa: BLE001 - a malformed cookie header is just no cookies
                pass
            self._cookies = {k: m.value for k, m in jar.items()}
        return self._cookies


class Response:
    """A complete answer. ``content_length`` overrides len(body) (answers to HEAD)."""

    __slots__ = ("status", "headers", "body", "close", "content_length")

    def __init__(self, status: int, body: bytes = b"",
                 headers: Iterable[tuple[str, str]] = (), *, close: bool = False,
                 content_length: int | None = None) -> None:
        self.status = status
        self.body = body
        self.headers = list(headers)
        self.close = close
        self.content_length = content_length

    def __repr__(self) -> str:
        return f"<Response {self.status} {len(self.body)} bytes>"


def json_response(status: int, data: Any, headers: Iterable[tuple[str, str]] = (),
                  close: bool = False) -> Response:
    try:
        body = orjson.dumps(data)
    except TypeError:  # a message quoting the client's invalid bytes (surrogate escapes)
        body = orjson.dumps(_printable(data))
    return Response(status, body, [("content-type", "application/json"), *headers],
                    close=close)


def _printable(data: Any) -> Any:
    """``data`` with every string made encodable (invalid bytes as backslash escapes)."""
    if isinstance(data, str):
        return data.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(data, dict):
        return {_printable(k): _printable(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_printable(v) for v in data]
    return data


class Refusal:
    """A request the server answers itself, in its turn, then closes: never forwarded."""

    __slots__ = ("status", "message")

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message

    def __repr__(self) -> str:
        return f"<Refusal {self.status} {self.message}>"




def error_response(err: RouterError, request_id: str, route: str | None = None,
                   version: str | None = None) -> Response:
    headers = [("x-request-id", request_id), *err.headers.items()]
    if route:
        headers.append(("x-model-route", route))
    if version:
        headers.append(("x-model-version", version))
    close = err.headers.get("Connection") == "close" or isinstance(err, BodyTooLarge)
    return json_response(err.status, err.body(request_id),
                         [h for h in headers if h[0] != "Connection"], close=close)
