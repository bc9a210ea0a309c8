"""One flat exception hierarchy, translated to HTTP at the proxy's edge.

Router errors answer in the Open Inference Protocol's error shape, which V2 and V1
clients already understand: ``{"error", "code", "request_id", "details"}``.
"""

from __future__ import annotations

from typing import Any


class RouterError(Exception):
    """An error the router answers itself; ``status`` and ``code`` are the contract."""

    status = 500
    code = "internal"
    headers: dict[str, str] = {}

    def __init__(self, message: str, details: list[Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or []

    def body(self, request_id: str) -> dict[str, Any]:
        return {"error": self.message, "code": self.code, "request_id": request_id,
                "details": self.details}

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.status} {self.code}: {self.message}>"


class NoRoute(RouterError):
    status, code = 404, "no_route"


class VersionNotFound(RouterError):
    status, code = 404, "version_not_found"


class BadOverride(RouterError):
    status, code = 400, "bad_override"


class BadRequest(RouterError):
    status, code = 400, "bad_request"


class BodyTooLarge(RouterError):
    status, code = 413, "body_too_large"


class SchemaViolation(RouterError):
    status, code = 422, "schema_violation"


class UpstreamUnavailable(RouterError):
    """Connect error, reset, or an unusable answer; ``kind`` feeds upstream_errors_total."""

    status, code = 502, "upstream_unavailable"

    def __init__(self, message: str, kind: str = "connect") -> None:
        super().__init__(message)
        self.kind = kind


class UpstreamTimeout(RouterError):
    status, code = 504, "upstream_timeout"
    kind = "timeout"


class Draining(RouterError):
    status, code = 503, "draining"
    headers = {"Retry-After": "1", "Connection": "close"}


class Overloaded(RouterError):
    status, code = 503, "overloaded"
    headers = {"Retry-After": "1"}


class PredictionLogUnavailable(RouterError):
    status, code = 503, "prediction_log_unavailable"
    headers = {"Retry-After": "1"}


class ConfigError(Exception):
    """A config that cannot be applied; ``errors`` holds every problem, one line each."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors

    def __repr__(self) -> str:
        return f"<ConfigError {len(self.errors)} error(s): {self.errors[:3]}>"


# -- the upstream client's errors (dataplane/connection.py), translated to the two above by
# -- dataplane/upstream.translate --------------------------------------------------------------

class UpstreamError(Exception):
    kind = "protocol"


class ConnectFailed(UpstreamError):
    kind = "connect"


class ConnectionReset(UpstreamError):
    kind = "reset"


class BadResponse(UpstreamError):
    kind = "protocol"


class ResponseTimeout(UpstreamError, TimeoutError):
    kind = "timeout"
