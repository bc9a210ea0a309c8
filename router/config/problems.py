"""Strict, error-collecting readers for config trees.

Every reader checks one value, records a problem prefixed with the file and the path inside it
(``router.yaml: routes[fraud].split: weights sum to 105, expected 100``) and returns ``None``
instead of raising, so one pass over a file reports every error at once.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable
from typing import Any


def join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def describe(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, (int, float)):
        return f"number {value}"
    if isinstance(value, str):
        return f"string {value!r}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def nearest(word: str, candidates: Iterable[str]) -> str | None:
    found = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return found[0] if found else None


class Problems:
    """The errors and warnings of one file."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.errors: list[str] = []
        self.warnings: list[str] = []

    def __repr__(self) -> str:
        return f"<Problems {self.file}: {len(self.errors)} errors, {len(self.warnings)} warnings>"

    def _line(self, path: str, message: str) -> str:
        return f"{self.file}: {path}: {message}" if path else f"{self.file}: {message}"

    def error(self, path: str, message: str) -> None:
        self.errors.append(self._line(path, message))

    def warn(self, path: str, message: str) -> None:
        self.warnings.append(self._line(path, message))

    # -- readers ---------------------------------------------------------------------------

    def mapping(self, path: str, value: Any, allowed: Iterable[str] | None = None,
                required: Iterable[str] = ()) -> dict[str, Any] | None:
        """A mapping with string keys; unknown and missing keys are errors."""
        if not isinstance(value, dict):
            self.error(path, f"expected a mapping, got {describe(value)}")
            return None
        allowed_set = set(allowed) if allowed is not None else None
        for key in value:
            if not isinstance(key, str):
                self.error(path, f"key {key!r} must be a string; quote it (\"{key}\")")
            elif allowed_set is not None and key not in allowed_set:
                hint = nearest(key, allowed_set)
                extra = f" (did you mean '{hint}'?)" if hint else ""
                self.error(join(path, key), f"unknown key{extra}; allowed: "
                           + ", ".join(sorted(allowed_set)))
        for key in required:
            if key not in value:
                self.error(path, f"missing required key '{key}'")
        return value

    def string(self, path: str, value: Any, choices: Iterable[str] | None = None,
               ) -> str | None:
        if isinstance(value, bool) or not isinstance(value, str):
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.error(path, f"expected a string, got {describe(value)}; "
                           f"quote it (\"{value}\")")
            else:
                self.error(path, f"expected a string, got {describe(value)}")
            return None
        if choices is not None:
            options = list(choices)
            if value not in options:
                self.error(path, f"expected one of {', '.join(options)}, got {value!r}")
                return None
        return value

    def name(self, path: str, value: Any) -> str | None:
        """A version, route or model name: a non-empty string, never a bare number."""
        text = self.string(path, value)
        if text is not None and not text.strip():
            self.error(path, "must not be empty")
            return None
        return text

    def number(self, path: str, value: Any, *, low: float | None = None,
               high: float | None = None, positive: bool = False,
               integer: bool = False) -> float | None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (
                isinstance(value, float) and not math.isfinite(value)):
            self.error(path, f"expected a number, got {describe(value)}")
            return None
        if integer and not (isinstance(value, int) or float(value).is_integer()):
            self.error(path, f"expected a whole number, got {value}")
            return None
        if positive and value <= 0:
            self.error(path, f"must be greater than 0, got {value}")
            return None
        if low is not None and value < low:
            self.error(path, f"must be at least {low:g}, got {value}")
            return None
        if high is not None and value > high:
            self.error(path, f"must be at most {high:g}, got {value}")
            return None
        return int(value) if integer else float(value)

    def boolean(self, path: str, value: Any) -> bool | None:
        if not isinstance(value, bool):
            self.error(path, f"expected true or false, got {describe(value)}")
            return None
        return value

    def sequence(self, path: str, value: Any) -> list[Any] | None:
        if not isinstance(value, list):
            self.error(path, f"expected a list, got {describe(value)}")
            return None
        return value
