"""Shadow mirroring against real loopback upstreams; the comparison as a pure table."""

from __future__ import annotations

import asyncio
import itertools
import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers import free_port, route, scorer, url, v2_answer, wait_for, write_config

from router.analysis.audit import iter_records
from router.observers.shadow import Shadows, compare

COMPARES = [
    ("identical", v2_answer([0.1, 0.9]), v2_answer([0.1, 0.9]), True, 0.0, 1.0),
    ("within_tolerance", v2_answer([0.1]), v2_answer([0.1 + 1e-9]), True, None, 1.0),
    ("label_flip", v2_answer([0.4, 0.9]), v2_answer([0.6, 0.95]), False, 0.2, 0.5),
    ("argmax_rows", {"predictions": [[0.1, 0.9], [0.8, 0.2]]},
     {"predictions": [[0.2, 0.8], [0.3, 0.7]]}, False, 0.5, 0.5),
    ("string_labels", {"predictions": ["cat", "dog"]}, {"predictions": ["cat", "cow"]}, False,
     None, 0.5),
    ("shape_differs", v2_answer([0.1, 0.2]), v2_answer([0.1]), False, None, None),
]


@pytest.mark.parametrize("primary,shadow,match,max_diff,agreement",
                         [c[1:] for c in COMPARES], ids=[c[0] for c in COMPARES])
def test_compare_table(primary: Any, shadow: Any, match: bool, max_diff: float | None,
                       agreement: float | None) -> None:
    result = compare(primary, shadow, "v1", atol=1e-6, rtol=1e-4)
    assert result["against"] == "v1"
    assert result["match"] is match
    if max_diff is not None:
        assert result["max_abs_diff"] == pytest.approx(max_diff)
    assert result["agreement"] == agreement


async def primary_latencies(client, app, n: int) -> list[float]:
    out = []
    for i in range(n):
        started = time.perf_counter()
        async with client.post(url(app, "/v2/models/fraud/infer"), data=b'{"inputs": []}',
                               headers={"x-request-id": f"lat-{i}"}) as resp:
            await resp.read()
            assert resp.status == 200
        out.append(time.perf_counter() - started)
    return out


async def test_slow_shadow_never_delays_primary(tmp_path: Path, upstreams, start_router,
                                                client) -> None:
    primary = await upstreams.start(scorer(0.2))
    slow = await upstreams.start(scorer(0.2, delay=0.4))
    routes = [route({"v1": primary + "/m", "v3": slow + "/m"}, name="plain",
                    match={"path_prefix": "/plain"}),
              route({"v1": primary + "/m", "v3": slow + "/m"},
                    shadow=[{"version": "v3", "percent": 100, "max_inflight": 1000}])]
    app = await start_router(write_config(tmp_path, routes))
    with_shadow = await primary_latencies(client, app, 40)
    without = []
    for _ in range(40):
        started = time.perf_counter()
        async with client.post(url(app, "/plain/infer"), data=b'{"inputs": []}') as resp:
            await resp.read()
        without.append(time.perf_counter() - started)
    # A 400 ms shadow that delayed the primary would add 400 ms; allow a generous 50 ms.
    assert statistics.median(with_shadow) < statistics.median(without) + 0.05
    assert max(with_shadow) < 0.4
    await wait_for(lambda: not app.shadows.tasks, timeout=5)
    text = app.metrics.render().decode()
    assert 'model_router_shadow_comparisons_total{result="match",route="fraud",version="v3"} 40.0' \
        in text


async def test_shadow_headers_records_and_compare(tmp_path: Path, upstreams, start_router,
                                                  client) -> None:
    seen: list[dict] = []
    primary = await upstreams.start(scorer(0.3))
    shadow = await upstreams.start(scorer(0.7, model_version="3.0.0", seen=seen))
    cfg = route({"v1": primary + "/m", "v3": shadow + "/m"},
                shadow=[{"version": "v3", "percent": 100}])
    app = await start_router(write_config(tmp_path, [cfg]))
    async with client.post(url(app, "/v2/models/fraud/infer"), data=b'{"inputs": []}',
                           headers={"x-request-id": "req-shadow-1"}) as resp:
        assert (await resp.json())["outputs"][0]["data"] == [0.3]
    await wait_for(lambda: len(seen) == 1 and not app.shadows.tasks)
    headers = {k.lower(): v for k, v in seen[0].items()}
    assert headers["x-shadow"] == "true"
    assert headers["x-request-id"] == "req-shadow-1"
    await app.predlog.flush()
    records = [r for r in iter_records(tmp_path / "logs") if r["request_id"] == "req-shadow-1"]
    assert sorted(r["role"] for r in records) == ["primary", "shadow"]
    shadow_record = next(r for r in records if r["role"] == "shadow")
    assert shadow_record["reason"] == "shadow" and shadow_record["version"] == "v3"
    assert shadow_record["compare"] == {"against": "v1", "match": False,
                                        "max_abs_diff": pytest.approx(0.4), "agreement": 0.0}
    assert shadow_record["served_model_version"] == "3.0.0"


def spread_draws() -> Callable[[], float]:
    """A deterministic ``rand``: each run of 100 draws is 0.00 .. 0.99 once, shuffled."""
    counter = itertools.count()
    return lambda: next(counter) * 37 % 100 / 100


async def test_sampling_percent(tmp_path: Path, upstreams, start_router, client,
                                monkeypatch) -> None:
    # Shadows draws its sample from an injected ``rand`` (random.random by default): give the
    # app's Shadows evenly spread draws, so exactly 20 of every 100 requests are copied.
    monkeypatch.setitem(Shadows.__init__.__kwdefaults__, "rand", spread_draws())
    seen: list[dict] = []
    primary = await upstreams.start(scorer(0.3))
    shadow = await upstreams.start(scorer(0.3, seen=seen))
    cfg = route({"v1": primary + "/m", "v3": shadow + "/m"},
                shadow=[{"version": "v3", "percent": 20}])
    app = await start_router(write_config(tmp_path, [cfg]))
    await primary_latencies(client, app, 400)
    await wait_for(lambda: not app.shadows.tasks)
    assert len(seen) == 80


async def test_hanging_and_refusing_shadows_are_counted_and_logged(
        tmp_path: Path, upstreams, start_router, client) -> None:
    primary = await upstreams.start(scorer(0.3))
    hang = await upstreams.start(scorer(0.3, delay=30))
    dead = f"http://127.0.0.1:{free_port()}"
    cfg = route({"v1": primary + "/m", "v2": hang + "/m", "v3": dead + "/m"},
                shadow=[{"version": "v2", "percent": 100, "timeout_s": 0.2, "max_inflight": 3},
                        {"version": "v3", "percent": 100}])
    app = await start_router(write_config(tmp_path, [cfg]))
    answers = await asyncio.gather(*[client.post(url(app, "/v2/models/fraud/infer"),
                                                 data=b'{"inputs": []}') for _ in range(10)])
    assert [a.status for a in answers] == [200] * 10
    for a in answers:
        a.release()
    assert app.shadows.inflight[("fraud", "v2")] <= 3
    await wait_for(lambda: not app.shadows.tasks, timeout=5)
    text = app.metrics.render().decode()

    def count(reason: str, version: str) -> float:
        prefix = (f'model_router_shadow_dropped_total{{reason="{reason}",route="fraud",'
                  f'version="{version}"}} ')
        return sum(float(line[len(prefix):]) for line in text.splitlines()
                   if line.startswith(prefix))

    assert count("cap", "v2") + count("timeout", "v2") == 10
    assert count("timeout", "v2") >= 3
    assert count("error", "v3") == 10
    await app.predlog.flush()
    shadows = [r for r in iter_records(tmp_path / "logs") if r["role"] == "shadow"]
    assert len([r for r in shadows if r["version"] == "v3"]) == 10
    assert all(r["error"] and r["compare"] is None for r in shadows)
    assert {r["status"] for r in shadows if r["version"] == "v2"} == {504}


@pytest.mark.slow
async def test_memory_stays_flat_with_a_dead_shadow(tmp_path: Path, upstreams, start_router,
                                                    client) -> None:
    primary = await upstreams.start(scorer(0.3))
    hang = await upstreams.start(scorer(0.3, delay=30))
    cfg = route({"v1": primary + "/m", "v3": hang + "/m"},
                shadow=[{"version": "v3", "percent": 100, "timeout_s": 5, "max_inflight": 16}])
    app = await start_router(write_config(tmp_path, [cfg]),)

    async def burst(n: int) -> None:
        sem = asyncio.Semaphore(16)

        async def one() -> None:
            async with sem:
                async with client.post(url(app, "/v2/models/fraud/infer"),
                                       data=b'{"inputs": []}') as resp:
                    await resp.read()
        await asyncio.gather(*[one() for _ in range(n)])

    await burst(500)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak_tasks = 0
    for _ in range(6):
        await burst(500)
        peak_tasks = max(peak_tasks, len(app.shadows.tasks))
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert peak_tasks <= 16
    assert rss_after - rss_before < 40_000  # KiB: 3,000 more requests must not grow memory


async def test_a_failing_shadow_record_is_logged_at_one_boundary(tmp_path: Path, upstreams,
                                                                 start_router, client,
                                                                 caplog) -> None:
    seen: list[dict] = []
    primary = await upstreams.start(scorer(0.3))
    shadow = await upstreams.start(scorer(0.7, seen=seen))
    cfg = route({"v1": primary + "/m", "v3": shadow + "/m"},
                shadow=[{"version": "v3", "percent": 100}])
    app = await start_router(write_config(tmp_path, [cfg]))
    add = app.predlog.add
    copies: list[asyncio.Task] = []

    def failing_add(entry, reserved):
        if entry.role == "shadow":
            copies.append(asyncio.current_task())
            raise OSError("disk gone")
        return add(entry, reserved)

    app.predlog.add = failing_add
    async with client.post(url(app, "/v2/models/fraud/infer"), data=b'{"inputs": []}') as resp:
        assert resp.status == 200
    await wait_for(lambda: len(copies) == 1 and copies[0].done())
    assert copies[0].exception() is None  # not a "Task exception was never retrieved"
    assert "recording the shadow copy" in caplog.text and "disk gone" in caplog.text


async def test_a_shadow_of_the_version_that_served_is_skipped(tmp_path: Path, upstreams,
                                                              start_router, client) -> None:
    """v2 serves half the users and shadows every request: a request v2 answered is never
    copied to v2 (it would be compared with itself), and the skip is counted."""
    seen_v2: list[dict] = []
    v1 = await upstreams.start(scorer(0.3))
    v2 = await upstreams.start(scorer(0.3, seen=seen_v2))
    cfg = route({"v1": v1 + "/m", "v2": v2 + "/m"}, split={"v1": 50, "v2": 50},
                shadow=[{"version": "v2", "percent": 100}])
    app = await start_router(write_config(tmp_path, [cfg]))
    served: dict[str, int] = {}
    for _ in range(100):
        async with client.post(url(app, "/v2/models/fraud/infer"), data=b"{}") as resp:
            await resp.read()
            version = resp.headers["x-model-version"]
            served[version] = served.get(version, 0) + 1
    await wait_for(lambda: not app.shadows.tasks)
    copies = [h for h in seen_v2 if h.get("x-shadow") == "true"]
    assert served["v1"] > 0 and served["v2"] > 0
    assert len(copies) == served["v1"]  # only what v1 answered is mirrored to v2
    text = app.metrics.render().decode()
    line = ('model_router_shadow_dropped_total{reason="same_version",route="fraud",'
            'version="v2"}')
    assert f"{line} {float(served['v2'])}" in text
    await app.predlog.flush()
    shadows = [r for r in iter_records(tmp_path / "logs") if r["role"] == "shadow"]
    assert all(r["compare"]["against"] == "v1" for r in shadows)
