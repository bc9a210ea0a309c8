"""dataplane/upstream.py, pure: header hygiene, the balancer on a fake clock, error translation.

No sockets, no files, no event loop: the functions are synchronous bookkeeping by design.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from helpers import Clock

from router.config import Outlier, Version
from router.dataplane.upstream import (
    Balancer,
    request_headers,
    response_headers,
    translate,
)
from router.errors import (
    BadResponse,
    ConnectFailed,
    ConnectionReset,
    ResponseTimeout,
    UpstreamTimeout,
    UpstreamUnavailable,
)

V1 = Version(name="v1", urls=("http://10.0.0.1:8080/m",), headers=(), host=None, tls=None,
             model_version=None)

# -- request headers -------------------------------------------------------------------------

REQUEST_HEADERS: list[tuple[str, list[tuple[str, str]], dict[str, Any], str | None,
                            dict[str, str]]] = [
    ("plain_headers_pass_lower_cased",
     [("Content-Type", "application/json"), ("X-User-Note", "héllo")], {}, None,
     {"content-type": "application/json", "x-user-note": "héllo", "x-request-id": "rid"}),
    ("hop_by_hop_dropped",
     [("Connection", "keep-alive"), ("Keep-Alive", "timeout=5"), ("TE", "trailers"),
      ("Trailer", "x-sum"), ("Transfer-Encoding", "chunked"), ("Upgrade", "h2c"),
      ("Proxy-Connection", "keep-alive"), ("Proxy-Authorization", "Basic eA=="),
      ("Proxy-Authenticate", "Basic"), ("Trailers", "x")], {}, None,
     {"x-request-id": "rid"}),
    ("router_owned_dropped",
     [("Host", "router.example"), ("Content-Length", "12"), ("Expect", "100-continue")], {},
     None, {"x-request-id": "rid"}),
    ("headers_named_by_connection_dropped",
     [("Connection", "close, X-Secret-Hop"), ("connection", "x-other"),
      ("x-secret-hop", "a"), ("X-Other", "b"), ("x-kept", "c")], {}, None,
     {"x-kept": "c", "x-request-id": "rid"}),
    ("repeated_header_joined",
     [("Accept", "a/b"), ("accept", "c/d")], {}, None,
     {"accept": "a/b, c/d", "x-request-id": "rid"}),
    ("peer_appended_to_forwarded_for",
     [("X-Forwarded-For", "10.1.1.1")], {}, "127.0.0.1",
     {"x-forwarded-for": "10.1.1.1, 127.0.0.1", "x-request-id": "rid"}),
    ("forwarded_for_lines_joined_then_peer",
     [("X-Forwarded-For", "1.1.1.1"), ("x-forwarded-for", "2.2.2.2")], {}, "3.3.3.3",
     {"x-forwarded-for": "1.1.1.1, 2.2.2.2, 3.3.3.3", "x-request-id": "rid"}),
    ("peer_alone_starts_forwarded_for", [], {}, "192.0.2.7",
     {"x-forwarded-for": "192.0.2.7", "x-request-id": "rid"}),
    ("forwarded_for_kept_without_peer", [("X-Forwarded-For", "10.1.1.1")], {}, None,
     {"x-forwarded-for": "10.1.1.1", "x-request-id": "rid"}),
    ("request_id_is_the_routers",
     [("X-Request-Id", "client-chosen")], {}, None, {"x-request-id": "rid"}),
    ("version_headers_win_over_the_clients",
     [("Authorization", "Bearer client"), ("x-team", "a")],
     {"headers": (("authorization", "Bearer model"),)}, None,
     {"authorization": "Bearer model", "x-team": "a", "x-request-id": "rid"}),
    ("version_host_set", [("Host", "router.example")], {"host": "model.internal"}, None,
     {"x-request-id": "rid", "host": "model.internal"}),
]


@pytest.mark.parametrize("items,version,peer,expected", [c[1:] for c in REQUEST_HEADERS],
                         ids=[c[0] for c in REQUEST_HEADERS])
def test_request_headers(items: list[tuple[str, str]], version: dict[str, Any],
                         peer: str | None, expected: dict[str, str]) -> None:
    got = request_headers(items, dataclasses.replace(V1, **version), "rid", peer)
    assert got == expected


# -- response headers ------------------------------------------------------------------------

RESPONSE_HEADERS = [
    ("plain_headers_kept_as_sent",
     [("Content-Type", "application/json"), ("X-Upstream", "v1")],
     [("Content-Type", "application/json"), ("X-Upstream", "v1")]),
    ("hop_by_hop_dropped",
     [("Connection", "keep-alive"), ("Keep-Alive", "timeout=5"),
      ("Transfer-Encoding", "chunked"), ("Upgrade", "h2c"), ("Trailer", "x"), ("x-a", "1")],
     [("x-a", "1")]),
    ("router_owned_dropped_any_case",
     [("content-length", "3"), ("X-Request-ID", "theirs"), ("x-model-version", "v9"),
      ("X-Model-Route", "other"), ("x-b", "2")],
     [("x-b", "2")]),
    ("repeated_headers_kept_in_order",
     [("Set-Cookie", "a=1"), ("x-c", "3"), ("Set-Cookie", "b=2")],
     [("Set-Cookie", "a=1"), ("x-c", "3"), ("Set-Cookie", "b=2")]),
]


@pytest.mark.parametrize("upstream,expected", [c[1:] for c in RESPONSE_HEADERS],
                         ids=[c[0] for c in RESPONSE_HEADERS])
def test_response_headers(upstream: list[tuple[str, str]],
                          expected: list[tuple[str, str]]) -> None:
    assert response_headers(upstream) == expected


# -- error translation -----------------------------------------------------------------------

TRANSLATIONS = [
    ("timeout", TimeoutError(), UpstreamTimeout, "timeout", "did not answer in time"),
    ("response_timeout", ResponseTimeout("read"), UpstreamTimeout, "timeout",
     "did not answer in time"),
    ("connect_failed", ConnectFailed("refused"), UpstreamUnavailable, "connect",
     "cannot connect to version v1: refused"),
    ("reset_by_client", ConnectionReset("eof"), UpstreamUnavailable, "reset",
     "closed the connection"),
    ("reset_by_os", ConnectionResetError(104, "reset"), UpstreamUnavailable, "reset",
     "closed the connection"),
    ("broken_pipe", BrokenPipeError(), UpstreamUnavailable, "reset", "closed the connection"),
    ("bad_response", BadResponse("status 600"), UpstreamUnavailable, "protocol",
     "invalid answer: status 600"),
    ("anything_else", ValueError("odd"), UpstreamUnavailable, "protocol",
     "invalid answer: odd"),
]


@pytest.mark.parametrize("exc,kind_of_error,kind,message",
                         [c[1:] for c in TRANSLATIONS], ids=[c[0] for c in TRANSLATIONS])
def test_translate(exc: BaseException, kind_of_error: type, kind: str, message: str) -> None:
    error = translate(exc, "v1")
    assert type(error) is kind_of_error
    assert error.kind == kind
    assert message in error.message and "v1" in error.message
    assert error.status == (504 if kind == "timeout" else 502)


# -- balancer --------------------------------------------------------------------------------

A, B, C = "http://a:1/m", "http://b:1/m", "http://c:1/m"
OUTLIER = Outlier(consecutive_failures=3, ejection_s=30.0)


def replicas(*urls: str) -> Version:
    return dataclasses.replace(V1, urls=urls)


def answer(balancer: Balancer, url: str, *outcomes: bool) -> None:
    """Send requests to ``url`` (state is per URL, so a one-URL version reaches it) and
    record each outcome."""
    for ok in outcomes:
        assert balancer.acquire(replicas(url)) == url
        balancer.release(url, ok=ok, outlier=OUTLIER)


FAIL = (False,) * OUTLIER.consecutive_failures


def test_single_url_is_always_chosen_and_never_ejected() -> None:
    balancer = Balancer(Clock())
    for _ in range(10):
        assert balancer.acquire(replicas(A)) == A
        balancer.release(A, ok=False, outlier=None)  # no outlier: nothing to eject to
    assert not balancer.ejected(A)


def test_least_outstanding_wins() -> None:
    balancer = Balancer(Clock())
    version = replicas(A, B, C)
    busy = [balancer.acquire(version) for _ in range(3)]
    assert sorted(busy) == [A, B, C]  # a busy replica is avoided while one is idle
    balancer.release(busy[1], ok=True, outlier=OUTLIER)
    assert balancer.acquire(version) == busy[1]  # the only one with nothing outstanding


def test_idle_replicas_share_ties_round_robin() -> None:
    balancer = Balancer(Clock())
    version = replicas(A, B, C)
    chosen = []
    for _ in range(6):
        url = balancer.acquire(version)
        balancer.release(url, ok=True, outlier=OUTLIER)
        chosen.append(url)
    assert sorted(chosen) == sorted([A, B, C] * 2)
    assert all(x != y for x, y in zip(chosen, chosen[1:]))


def test_consecutive_failures_eject_until_the_clock_passes() -> None:
    clock = Clock()
    balancer = Balancer(clock)
    version = replicas(A, B)
    answer(balancer, A, *FAIL[:-1])
    assert not balancer.ejected(A)
    answer(balancer, A, False)
    assert balancer.ejected(A) and not balancer.all_ejected(version)
    assert [balancer.acquire(version) for _ in range(4)] == [B] * 4
    clock.now += OUTLIER.ejection_s - 0.001
    assert balancer.ejected(A)
    clock.now += 0.002
    assert not balancer.ejected(A)
    assert balancer.acquire(version) == A  # back, and the least busy


def test_a_success_resets_the_failure_count() -> None:
    balancer = Balancer(Clock())
    answer(balancer, A, False, False, True, False, False, True, False, False)  # never 3 in a row
    assert not balancer.ejected(A)
    answer(balancer, A, False)
    assert balancer.ejected(A)


def test_all_ejected_uses_the_one_due_back_first() -> None:
    clock = Clock()
    balancer = Balancer(clock)
    version = replicas(A, B)
    answer(balancer, B, *FAIL)  # B ejected first, so B is due back first
    clock.now += 1
    answer(balancer, A, *FAIL)
    assert balancer.all_ejected(version)
    assert balancer.acquire(version) == B  # panic mode: serve rather than fail


def test_state_is_keyed_by_url_across_reloads() -> None:
    balancer = Balancer(Clock())
    answer(balancer, A, *FAIL)
    reloaded = dataclasses.replace(V1, name="v1", urls=(B, A))  # a new snapshot's Version
    assert balancer.ejected(A)
    assert [balancer.acquire(reloaded) for _ in range(2)] == [B, B]
