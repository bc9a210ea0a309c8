"""The gRPC V2 front end against tritonclient's gRPC client and loopback grpc.aio models:
routing as the HTTP request a call stands for, records, metrics, status codes, hostile
input, reloads and a SIGTERM drain of a real ``serve`` process."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tg
import tritonclient.grpc.aio as tga
from helpers import (
    Clock,
    free_port,
    rewrite,
    rollout_route,
    route,
    serve_logged,
    wait_for,
    write_config,
)
from tritonclient.grpc import service_pb2 as pb
from tritonclient.utils import InferenceServerException
from v2kit import V2Grpc, V2Http

from router.analysis.audit import iter_records

INFER = "/inference.GRPCInferenceService/ModelInfer"
X = np.arange(8, dtype=np.float32).reshape(2, 4)      # two rows: scores 6 and 22


def _x(array: np.ndarray = X, name: str = "x") -> list[tg.InferInput]:
    tensor = tg.InferInput(name, list(array.shape), "FP32")
    tensor.set_data_from_numpy(array)
    return [tensor]


def _grpc_route(versions: dict[str, tuple[str, str | None]], **changes: Any) -> dict[str, Any]:
    """The "fraud" route: version -> (http base, grpc address or None)."""
    cfg = route({n: base for n, (base, _) in versions.items()}, **changes)
    for name, (_, address) in versions.items():
        if address is not None:
            cfg["versions"][name]["grpc"] = address
    return cfg


@pytest.fixture
async def models():
    started: list[V2Grpc] = []

    async def start(**kwargs: Any) -> V2Grpc:
        model = await V2Grpc(**kwargs).start()
        started.append(model)
        return model

    yield start
    for model in started:
        await model.stop()


async def _router(tmp_path: Path, start_router, routes: list[dict[str, Any]], **top: Any):
    app = await start_router(write_config(tmp_path, routes, grpc={"host": "127.0.0.1",
                                                                  "port": 0}, **top))
    return app, tga.InferenceServerClient(f"127.0.0.1:{app.grpc_port}")


async def _records(app, tmp_path: Path, request_id: str) -> list[dict[str, Any]]:
    await app.predlog.flush()
    return [r for r in iter_records(tmp_path / "logs") if r["request_id"] == request_id]


async def test_infer_through_the_router_equals_direct(tmp_path: Path, start_router,
                                                      models) -> None:
    model = await models(version="1.0.0")
    cfg = _grpc_route({"v1": ("http://127.0.0.1:9/v2/models/fraud-upstream", model.address)})
    app, routed = await _router(tmp_path, start_router, [cfg])
    direct = tga.InferenceServerClient(model.address)
    try:
        want = await direct.infer("fraud-upstream", _x())
        got = await routed.infer("fraud", _x(), request_id="grpc-req-1")
        assert await routed.is_server_live() and await routed.is_server_ready()
        meta = await routed.get_server_metadata()
        assert meta.name == "model-router"
        model_meta = await routed.get_model_metadata("fraud")
        assert model_meta.name == "fraud-upstream" and model_meta.platform == "test"
        assert await routed.is_model_ready("fraud")
    finally:
        await direct.close()
        await routed.close()
    assert got.as_numpy("score").tolist() == want.as_numpy("score").tolist() == [6.0, 22.0]
    request, metadata = model.seen[-1]
    assert request.model_name == "fraud-upstream" and request.model_version == ""
    assert request.id == "grpc-req-1" and metadata["x-request-id"] == "grpc-req-1"
    assert metadata["x-forwarded-for"] == "127.0.0.1"
    (record,) = await _records(app, tmp_path, "grpc-req-1")
    assert record["status"] == 200 and record["version"] == "v1"
    assert record["upstream"] == f"grpc://{model.address}"
    assert record["served_model_version"] == "1.0.0"
    assert record["input"] == {"id": "grpc-req-1", "inputs": [
        {"name": "x", "datatype": "FP32", "shape": [2, 4], "data": X.flatten().tolist()}]}
    assert record["output"]["outputs"] == [{"name": "score", "datatype": "FP32",
                                            "shape": [2], "data": [6.0, 22.0]}]
    metrics = app.metrics.render().decode()
    assert 'model_router_grpc_requests_total{code="OK",role="primary",route="fraud",' \
           'version="v1"} 3.0' in metrics   # ModelInfer, ModelMetadata, ModelReady
    assert 'model_router_requests_total{code="200",role="primary",route="fraud",' \
           'version="v1"} 1.0' in metrics   # the inference, as the HTTP request it stands for


async def test_initial_metadata_marks_the_answer(tmp_path: Path, start_router,
                                                 models) -> None:
    model = await models()
    cfg = _grpc_route({"v1": ("http://127.0.0.1:9/v2/models/m", model.address)})
    app, routed = await _router(tmp_path, start_router, [cfg])
    await routed.close()
    request = pb.ModelInferRequest(model_name="fraud", id="raw-1")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 2])
    request.raw_input_contents.append(np.array([1, 2], "<f4").tobytes())
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as channel:
        call = channel.unary_unary(INFER)(request.SerializeToString())
        answer = pb.ModelInferResponse.FromString(await call)
        initial = dict(await call.initial_metadata())
    assert answer.id == "raw-1" and np.frombuffer(answer.raw_output_contents[0], "<f4") == 3
    assert initial["x-request-id"] == "raw-1"
    assert initial["x-model-version"] == "v1" and initial["x-model-route"] == "fraud"


async def test_split_sticky_metadata_pins_and_overrides(tmp_path: Path, start_router,
                                                        models) -> None:
    a, b = await models(version="1"), await models(version="2")
    cfg = _grpc_route({"v1": ("http://127.0.0.1:9/v2/models/m", a.address),
                       "v2": ("http://127.0.0.1:9/v2/models/m", b.address),
                       "v3": ("http://127.0.0.1:9/v2/models/m", None)},
                      split={"v1": 50, "v2": 50, "v3": 0},
                      sticky={"header": "x-user-id"},
                      override={"header": "x-model-override", "allow": ["v1", "v2", "v3"]})
    app, routed = await _router(tmp_path, start_router, [cfg])
    try:
        served = {}
        for user in range(40):
            for _ in range(2):
                result = await routed.infer("fraud", _x(), headers={"x-user-id": f"u{user}"})
                served.setdefault(user, set()).add(result.get_response().model_version)
        assert all(len(versions) == 1 for versions in served.values())   # sticky
        assert {v for versions in served.values() for v in versions} == {"1", "2"}
        pinned = await routed.infer("fraud", _x(), model_version="v2")
        assert pinned.get_response().model_version == "2"
        override = await routed.infer("fraud", _x(), headers={"x-model-override": "v1"})
        assert override.get_response().model_version == "1"
        with pytest.raises(InferenceServerException) as caught:
            await routed.infer("fraud", _x(), model_version="v3")
        assert caught.value.status() == "StatusCode.NOT_FOUND"
        assert "version v3 of route fraud has no grpc address" in caught.value.message()
        with pytest.raises(InferenceServerException) as caught:
            await routed.infer("fraud", _x(), model_version="v9")
        assert caught.value.status() == "StatusCode.NOT_FOUND"
    finally:
        await routed.close()


async def test_router_errors_become_grpc_status_codes(tmp_path: Path, start_router,
                                                      models) -> None:
    refusing = await models(fail=grpc.StatusCode.FAILED_PRECONDITION)
    slow = await models(delay=2.0)
    validated = _grpc_route({"v1": ("http://127.0.0.1:9/v2/models/m", refusing.address)},
                            input_schema="fraud-features@1", validation="enforce")
    down = _grpc_route({"v1": ("http://127.0.0.1:9/v2/models/m", f"127.0.0.1:{free_port()}")},
                       name="down", match={"path_prefix": "/v2/models/down"})
    late = _grpc_route({"v1": ("http://127.0.0.1:9/v2/models/m", slow.address)},
                       name="late", match={"path_prefix": "/v2/models/late"}, timeout_s=0.3)
    http_only = route({"v1": "http://127.0.0.1:9/m"}, name="web",
                      match={"path_prefix": "/v2/models/web"})
    refused = _grpc_route({"v1": ("http://127.0.0.1:9/v2/models/m", refusing.address)},
                          name="plain", match={"path_prefix": "/v2/models/plain"})
    app, routed = await _router(tmp_path, start_router,
                                [validated, down, late, http_only, refused])

    async def code_of(model: str, inputs: list[tg.InferInput], **kwargs: Any) -> str:
        with pytest.raises(InferenceServerException) as caught:
            await routed.infer(model, inputs, **kwargs)
        return f"{caught.value.status()} {caught.value.message()}"

    amount = tg.InferInput("amount", [1], "FP64")
    amount.set_data_from_numpy(np.array([-1.0]))
    try:
        assert (await code_of("nothing", _x())).startswith(
            "StatusCode.NOT_FOUND no route matches /v2/models/nothing/infer")
        assert (await code_of("web", _x())).startswith(
            "StatusCode.NOT_FOUND route web is not served over gRPC")
        got = await code_of("fraud", [amount], request_id="violating")
        assert got.startswith("StatusCode.INVALID_ARGUMENT")
        assert "violation(s) of schema fraud-features@1" in got
        assert (await code_of("down", _x(), request_id="to-down")).startswith(
            "StatusCode.UNAVAILABLE version v1 over gRPC")
        assert (await code_of("late", _x(), request_id="too-late")).startswith(
            "StatusCode.DEADLINE_EXCEEDED")
        # The caller's deadline bounds the upstream call when it is shorter than timeout_s;
        # either way the upstream is told how long it has.
        assert (await code_of("late", _x(), client_timeout=0.1)).startswith(
            "StatusCode.DEADLINE_EXCEEDED")
        first, second = slow.deadlines
        # (gRPC sends a deadline rounded up to its unit: a few ms either way)
        assert first is not None and 0.2 < first <= 0.31
        assert second is not None and second < 0.15
        # The upstream's own status passes through unchanged.
        assert await code_of("plain", _x(), request_id="refused") == \
            "StatusCode.FAILED_PRECONDITION the model refused"
    finally:
        await routed.close()
    statuses = {rid: (await _records(app, tmp_path, rid))[0]["status"]
                for rid in ("violating", "to-down", "too-late", "refused")}
    assert statuses == {"violating": 422, "to-down": 502, "too-late": 504, "refused": 400}
    metrics = app.metrics.render().decode()
    for line in ('code="NOT_FOUND",role="primary",route="_unmatched",version="none"} 2.0',
                 'code="INVALID_ARGUMENT",role="primary",route="fraud",version="none"} 1.0',
                 'code="UNAVAILABLE",role="primary",route="down",version="v1"} 1.0',
                 'code="DEADLINE_EXCEEDED",role="primary",route="late",version="v1"} 1.0',
                 'code="FAILED_PRECONDITION",role="primary",route="plain",version="v1"} 1.0'):
        assert "model_router_grpc_requests_total{" + line in metrics, line


async def test_hostile_calls_get_a_status_and_the_router_lives(tmp_path: Path, start_router,
                                                               models) -> None:
    model = await models()
    cfg = _grpc_route({"v1": ("http://127.0.0.1:9/v2/models/m", model.address)})
    app, routed = await _router(tmp_path, start_router, [cfg], limits={"max_body_mb": 1})
    await routed.close()
    target = f"127.0.0.1:{app.grpc_port}"
    async with grpc.aio.insecure_channel(target, options=[
            ("grpc.max_send_message_length", 8 << 20)]) as channel:
        for body, code in ((b"\xff\xff\xff\xff garbage", grpc.StatusCode.INVALID_ARGUMENT),
                           (b"\x0a\x05fraud" + b"\x3a\x84\x80\x80\x01" + b"\0" * (2 << 20),
                            grpc.StatusCode.RESOURCE_EXHAUSTED)):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await channel.unary_unary(INFER)(body)
            assert caught.value.code() == code
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await channel.unary_unary("/inference.GRPCInferenceService/ModelStreamInfer")(b"")
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await channel.unary_unary("/other.Service/Call")(b"")
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
        # A tensor whose raw contents do not match its shape: INVALID_ARGUMENT naming it.
        request = pb.ModelInferRequest(model_name="fraud")
        request.inputs.add(name="amount", datatype="FP32", shape=[4])
        request.raw_input_contents.append(b"\0" * 3)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await channel.unary_unary(INFER)(request.SerializeToString())
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "'amount': 3 bytes, but shape [4] of FP32 needs 16" in caught.value.details()
        # A model name that would be another path is refused, never matched or forwarded.
        request = pb.ModelInferRequest(model_name="fraud/../admin")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await channel.unary_unary(INFER)(request.SerializeToString())
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert model.seen == []
    routed = tga.InferenceServerClient(target)
    try:
        assert (await routed.infer("fraud", _x())).as_numpy("score").tolist() == [6.0, 22.0]
    finally:
        await routed.close()


async def test_typed_answers_pass_through_and_are_read_for_the_log(tmp_path: Path,
                                                                   start_router, models) -> None:
    model = await models(typed=True)      # answers like KServe: typed fp32_contents
    cfg = _grpc_route({"v1": ("http://127.0.0.1:9/v2/models/m", model.address)})
    app, routed = await _router(tmp_path, start_router, [cfg])
    request = pb.ModelInferRequest(model_name="fraud", id="typed-1")
    tensor = request.inputs.add(name="x", datatype="FP32", shape=[1, 3])
    tensor.contents.fp32_contents.extend([1.0, 2.0, 3.5])   # typed contents in, too
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as channel:
            answer = pb.ModelInferResponse.FromString(
                await channel.unary_unary(INFER)(request.SerializeToString()))
    finally:
        await routed.close()
    assert list(answer.outputs[0].contents.fp32_contents) == [6.5]
    assert not answer.raw_output_contents
    (record,) = await _records(app, tmp_path, "typed-1")
    assert record["input"]["inputs"][0]["data"] == [1.0, 2.0, 3.5]
    assert record["output"]["outputs"][0]["data"] == [6.5]


async def test_grpc_calls_are_shadowed_over_http_and_compared(tmp_path: Path, upstreams,
                                                              start_router, models) -> None:
    model = await models(version="1.0.0")
    shadow = V2Http("3.0.0")
    shadow_base = await upstreams.start(shadow.app())
    cfg = _grpc_route({"v1": ("http://127.0.0.1:9/v2/models/fraud", model.address),
                       "v3": (shadow_base + "/v2/models/fraud", None)},
                      shadow=[{"version": "v3", "percent": 100}])
    app, routed = await _router(tmp_path, start_router, [cfg])
    try:
        await routed.infer("fraud", _x(), request_id="mirrored", headers={"x-team": "risk"})
    finally:
        await routed.close()
    await wait_for(lambda: len(shadow.seen) == 1 and not app.shadows.tasks)
    sent = shadow.seen[0]
    assert sent["head"]["inputs"][0]["data"] == X.flatten().tolist()
    assert sent["headers"]["x-team"] == "risk" and sent["headers"]["x-shadow"] == "true"
    records = {r["role"]: r for r in await _records(app, tmp_path, "mirrored")}
    assert records["shadow"]["compare"]["match"] is True


async def test_a_reload_moves_grpc_traffic(tmp_path: Path, start_router, models) -> None:
    a, b = await models(version="1"), await models(version="2")
    cfg = _grpc_route({"v1": ("http://127.0.0.1:9/v2/models/m", a.address),
                       "v2": ("http://127.0.0.1:9/v2/models/m", b.address)})
    app, routed = await _router(tmp_path, start_router, [cfg])
    try:
        assert (await routed.infer("fraud", _x())).get_response().model_version == "1"
        revision = app.live.snapshot.revision
        rewrite(app.config_path, lambda doc: doc["routes"][0].update(split={"v1": 0,
                                                                            "v2": 100}))
        await wait_for(lambda: app.live.snapshot.revision != revision)
        assert (await routed.infer("fraud", _x())).get_response().model_version == "2"
    finally:
        await routed.close()


async def test_a_rollout_judges_grpc_traffic(tmp_path: Path, start_router, models) -> None:
    good, failing = await models(version="1"), await models(fail=grpc.StatusCode.INTERNAL)
    cfg = rollout_route("http://127.0.0.1:9", "http://127.0.0.1:9", step_min_requests=30,
                        checks={"error_rate": {"max_increase": 0.01}})
    cfg["versions"]["v1"]["grpc"], cfg["versions"]["v2"]["grpc"] = good.address, failing.address
    clock = Clock()
    app = await start_router(write_config(tmp_path, [cfg], grpc={"host": "127.0.0.1",
                                                                 "port": 0}),
                             rollout_clock=clock, run_rollouts=False)
    routed = tga.InferenceServerClient(f"127.0.0.1:{app.grpc_port}")

    async def one() -> None:
        try:
            await routed.infer("fraud", _x())
        except InferenceServerException:
            pass   # the canary's INTERNAL errors: what the rollout must see

    try:
        for _ in range(6):
            for _ in range(10):
                await asyncio.gather(*(one() for _ in range(30)))
            clock.now += 61
            await app.rollouts.tick()
            if app.rollouts.states["fraud"].status != "running":
                break
    finally:
        await routed.close()
    assert app.rollouts.states["fraud"].status == "rolled_back"
    assert len(failing.seen) > 0


@pytest.mark.slow
async def test_sigterm_drains_grpc_calls(tmp_path: Path, client, models) -> None:
    slow = await models(delay=1.0)
    port, admin, grpc_port = free_port(), free_port(), free_port()
    cfg = _grpc_route({"v1": ("http://127.0.0.1:9/v2/models/m", slow.address)})
    path = write_config(tmp_path, [cfg], listen={"host": "127.0.0.1", "port": port},
                        admin={"host": "127.0.0.1", "port": admin},
                        limits={"shutdown_grace_s": 5, "drain_delay_s": 0})
    served = await serve_logged(path, port, admin, client, "--grpc-port", str(grpc_port))
    routed = tga.InferenceServerClient(f"127.0.0.1:{grpc_port}")
    try:
        call = asyncio.ensure_future(routed.infer("fraud", _x(), request_id="in-flight"))
        await wait_for(lambda: len(slow.seen) == 1)
        served.proc.send_signal(signal.SIGTERM)
        result = await call      # answered while the router drains
        assert result.as_numpy("score").tolist() == [6.0, 22.0]
        assert await asyncio.wait_for(served.proc.wait(), 10) == 0
    finally:
        await routed.close()
        if served.proc.returncode is None:
            served.proc.kill()
    records = [r for r in iter_records(tmp_path / "logs") if r["request_id"] == "in-flight"]
    assert [r["status"] for r in records] == [200]


@pytest.mark.slow
async def test_workers_share_the_grpc_port(tmp_path: Path, client, models) -> None:
    model = await models()
    port, admin, grpc_port = free_port(), free_port(), free_port()
    cfg = _grpc_route({"v1": ("http://127.0.0.1:9/v2/models/m", model.address)})
    path = write_config(tmp_path, [cfg], listen={"host": "127.0.0.1", "port": port},
                        admin={"host": "127.0.0.1", "port": admin},
                        grpc={"host": "127.0.0.1", "port": grpc_port})
    served = await serve_logged(path, port, admin, client, "--workers", "2")
    try:
        for i in range(30):   # a fresh connection each: the kernel spreads them (SO_REUSEPORT)
            routed = tga.InferenceServerClient(f"127.0.0.1:{grpc_port}")
            try:
                result = await routed.infer("fraud", _x(), request_id=f"w-{i}")
            finally:
                await routed.close()
            assert result.as_numpy("score").tolist() == [6.0, 22.0]
        async with client.get(served.admin_url("/metrics")) as resp:
            text = await resp.text()
        assert 'model_router_grpc_requests_total{code="OK",role="primary",route="fraud",' \
               'version="v1"} 30.0' in text
        served.proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(served.proc.wait(), 20) == 0
    finally:
        if served.proc.returncode is None:
            served.proc.kill()
    ids = {r["request_id"] for r in iter_records(tmp_path / "logs") if r["role"] == "primary"}
    assert ids == {f"w-{i}" for i in range(30)}



# -- what an independent red-team pass found, each kept fixed by a test -----------------------

async def test_error_answers_carry_the_marks(tmp_path: Path, start_router, models) -> None:
    refusing = await models(fail=grpc.StatusCode.FAILED_PRECONDITION)
    cfg = _grpc_route({"v1": ("http://127.0.0.1:9/v2/models/m", refusing.address)})
    app, routed = await _router(tmp_path, start_router, [cfg])
    await routed.close()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as channel:
        for model, want in (("fraud", ("marked-1", "v1", "fraud")),
                            ("nothing", ("marked-2", "", "_unmatched"))):
            request = pb.ModelInferRequest(model_name=model, id=want[0])
            request.inputs.add(name="x", datatype="FP32", shape=[1])
            request.raw_input_contents.append(b"\0" * 4)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await channel.unary_unary(INFER)(request.SerializeToString())
            marks = dict(caught.value.trailing_metadata() or ())
            assert (marks["x-request-id"], marks["x-model-version"],
                    marks["x-model-route"]) == want


async def test_failed_calls_release_their_tensors(tmp_path: Path, start_router,
                                                  models) -> None:
    """A refused call's frames (its message and tensors) are freed when it ends, not kept
    alive by a traceback until the garbage collector runs."""
    import gc

    from router.records import Exchange

    refusing = await models(fail=grpc.StatusCode.INVALID_ARGUMENT)
    cfg = _grpc_route({"v1": ("http://127.0.0.1:9/v2/models/m", refusing.address)})
    app, routed = await _router(tmp_path, start_router, [cfg])
    gc.collect()
    gc.disable()
    try:
        for i in range(3):
            with pytest.raises(InferenceServerException):
                await routed.infer("fraud", _x(np.ones((64, 4), np.float32)),
                                   request_id=f"refused-{i}")
        await app.predlog.flush()
        await asyncio.sleep(0.05)
        alive = [o for o in gc.get_objects() if isinstance(o, Exchange)]
    finally:
        gc.enable()
        await routed.close()
    assert alive == []


async def test_client_metadata_never_overrides_the_versions_headers(tmp_path: Path,
                                                                    start_router,
                                                                    models) -> None:
    model = await models()
    cfg = _grpc_route({"v1": ("http://127.0.0.1:9/v2/models/m", model.address)})
    cfg["versions"]["v1"]["headers"] = {"authorization": "Bearer router-secret"}
    app, routed = await _router(tmp_path, start_router, [cfg])
    try:
        await routed.infer("fraud", _x(), headers={"authorization": "Bearer forged",
                                                   "host": "evil.example", "x-team": "a"})
    finally:
        await routed.close()
    sent = model.call_metadata[-1]
    assert [v for k, v in sent if k == "authorization"] == ["Bearer router-secret"]
    assert "host" not in {k for k, _ in sent} and ("x-team", "a") in sent


async def test_metadata_calls_share_the_inflight_limit(tmp_path: Path, start_router,
                                                       models) -> None:
    slow = await models(delay=0.5)
    cfg = _grpc_route({"v1": ("http://127.0.0.1:9/v2/models/m", slow.address)})
    app, routed = await _router(tmp_path, start_router, [cfg], limits={"max_concurrency": 2})
    try:
        busy = [asyncio.ensure_future(routed.infer("fraud", _x())) for _ in range(2)]
        await wait_for(lambda: len(slow.seen) == 2)
        with pytest.raises(InferenceServerException) as caught:
            await routed.get_model_metadata("fraud")
        assert caught.value.status() == "StatusCode.UNAVAILABLE"
        await asyncio.gather(*busy)
        app.proxy.draining = True
        with pytest.raises(InferenceServerException) as caught:
            await routed.is_model_ready("fraud")
        assert caught.value.status() == "StatusCode.UNAVAILABLE"
        app.proxy.draining = False
    finally:
        await routed.close()


async def test_an_answer_for_another_id_never_reaches_the_caller(tmp_path: Path, start_router,
                                                                 models) -> None:
    crossed = await models(answer_id="someone-else")
    cfg = _grpc_route({"v1": ("http://127.0.0.1:9/v2/models/m", crossed.address)})
    app, routed = await _router(tmp_path, start_router, [cfg])
    try:
        with pytest.raises(InferenceServerException) as caught:
            await routed.infer("fraud", _x(), request_id="mine")
    finally:
        await routed.close()
    assert caught.value.status() == "StatusCode.UNAVAILABLE"
    assert "answered id 'someone-else' to request 'mine'" in caught.value.message()
    (record,) = await _records(app, tmp_path, "mine")
    assert record["status"] == 502


async def test_tensors_past_what_the_router_reads(tmp_path: Path, start_router,
                                                  models) -> None:
    """More elements than the router turns into values: refused where the route must
    validate them, forwarded unread (a marker in the log, no shadow copy) elsewhere."""
    from router.tensors import MAX_ELEMENTS

    model = await models()
    wide = np.ones((1, MAX_ELEMENTS + 4), np.float32)
    validated = _grpc_route({"v1": ("http://127.0.0.1:9/v2/models/m", model.address)},
                            input_schema="fraud-features@1", validation="enforce")
    plain = _grpc_route({"v1": ("http://127.0.0.1:9/v2/models/m", model.address)},
                        name="plain", match={"path_prefix": "/v2/models/plain"})
    app, routed = await _router(tmp_path, start_router, [validated, plain],
                                limits={"max_body_mb": 32})
    try:
        with pytest.raises(InferenceServerException) as caught:
            await routed.infer("fraud", _x(wide, "amount"), request_id="too-wide")
        assert caught.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
        result = await routed.infer("plain", _x(wide), request_id="wide")
        assert result.as_numpy("score").tolist() == [float(MAX_ELEMENTS + 4)]
    finally:
        await routed.close()
    assert len(model.seen) == 1
    (record,) = await _records(app, tmp_path, "wide")
    assert record["input"]["_unread"] is True
    assert record["input"]["elements"] == MAX_ELEMENTS + 4
    assert record["output"]["outputs"][0]["data"] == [float(MAX_ELEMENTS + 4)]


def test_an_empty_model_version_names_none() -> None:
    """proto3 sends an unset model_version as "": not a version to compare with the
    registry's (a KServe model without one counted as a version mismatch)."""
    from router.observers.encode import served_model_version

    assert served_model_version({"model_version": ""}) is None
    assert served_model_version({"model_version": "1"}) == "1"
