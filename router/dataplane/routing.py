"""The routing decision: a pure function of (compiled route, request facts) -> Decision.

No aiohttp types and no await: the proxy extracts the facts (path remainder, override header,
sticky key, a random number) and this module decides. Order, per the contract:
version pinned in a V2 path > override header > blue/green active colour > split.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from hashlib import blake2b
from typing import Literal

from ..config import BUCKETS, Route
from ..errors import BadOverride, VersionNotFound

Reason = Literal["split", "sticky", "override", "pinned", "blue_green", "rollout", "fallback",
                 "shadow"]


@dataclass(frozen=True, slots=True)
class Decision:
    version: str
    reason: Reason
    rest: str              # the path remainder to forward (a pinned /versions/V dropped)


def match(routes: Sequence[Route], path: str) -> tuple[Route, str] | None:
    """The longest prefix matching at a segment boundary, and the path remainder."""
    for route in routes:  # sorted longest prefix first
        prefix = route.prefix
        if path.startswith(prefix) and (len(path) == len(prefix) or path[len(prefix)] == "/"):
            return route, path[len(prefix):]
    return None


def sticky_bucket(salt: str, key: str) -> int:
    """The contract's bucket: blake2b-64 of ``salt:key``, big-endian, mod 10000.

    Header values arrive decoded with surrogate escapes: a key that is not UTF-8 hashes as
    the bytes that were sent (valid UTF-8 keys hash exactly as the contract's formula).
    """
    digest = blake2b(f"{salt}:{key}".encode("utf-8", "surrogateescape"),
                     digest_size=8).digest()
    return int.from_bytes(digest, "big") % BUCKETS


def by_bucket(route: Route, bucket: int) -> str:
    """Version i owns buckets [bounds[i-1], bounds[i]) in the order ``split`` lists them."""
    index = bisect.bisect_right(route.bounds, bucket)
    return route.split[min(index, len(route.split) - 1)][0]


def pinned_version(route: Route, rest: str) -> tuple[str, str] | None:
    """``/versions/{V}/...`` of a V2 route -> (version, remainder without the segment)."""
    if route.protocol != "v2" or not rest.startswith("/versions/"):
        return None
    name, _, tail = rest[len("/versions/"):].partition("/")
    version = route.pinned.get(name)
    if version is None:
        raise VersionNotFound(f"route '{route.name}' has no version '{name}'")
    return version, ("/" + tail) if tail else ""


def decide(route: Route, rest: str, *, override: str | None, sticky_key: str | None,
           rand: float) -> Decision:
    """Pick the version for one request; ``rand`` is uniform in [0, 1) for keyless splits.

    Raises VersionNotFound (unknown pinned version) or BadOverride (override not allowed).
    """
    pinned = pinned_version(route, rest)
    if pinned is not None:
        return Decision(pinned[0], "pinned", pinned[1])
    if override and route.override is not None:
        if override not in route.override.allow:
            allowed = ", ".join(sorted(route.override.allow))
            # repr: a client's invalid bytes or control characters are quoted, not echoed
            raise BadOverride(f"override {override[:64]!r} is not allowed on route "
                              f"'{route.name}'; allowed: {allowed}")
        return Decision(override, "override", rest)
    if route.blue_green is not None:
        return Decision(route.blue_green.active_version, "blue_green", rest)
    if sticky_key is not None and route.sticky is not None:
        bucket = sticky_bucket(route.sticky.salt, sticky_key)
        reason: Reason = "sticky"
    else:
        bucket = int(rand * BUCKETS)
        reason = "split"
    # A rollout owns the weights; the reason says so (stickiness still picks the bucket).
    return Decision(by_bucket(route, bucket), "rollout" if route.rollout else reason, rest)
