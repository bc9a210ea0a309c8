"""The time format of the prediction log, the history and every report: UTC ISO 8601 with
milliseconds and a Z (``2026-11-26T15:30:00.123Z``). A leaf every plane may import."""

from __future__ import annotations

from datetime import datetime, timezone

_second: tuple[int, str] = (-1, "")


def iso(ts: float) -> str:
    """UTC ISO 8601 with milliseconds and a Z, the log's timestamp format.

    The formatted second is cached: records arrive thousands per second.
    """
    global _second
    second = int(ts)
    cached = _second  # one read of one tuple: safe from the writer thread too
    if cached[0] != second:
        cached = _second = (second, datetime.fromtimestamp(second, timezone.utc).strftime(
            "%Y-%m-%dT%H:%M:%S"))
    return f"{cached[1]}.{int((ts - second) * 1000):03d}Z"
