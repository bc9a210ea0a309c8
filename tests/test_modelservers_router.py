"""tritonclient through model-router to real model servers (MLServer 1.7.1, KServe 0.21; see
tests/modelservers.py), over HTTP (JSON and binary tensors) and gRPC.

The invariant: whatever a server does with a request when called directly (answer, refuse,
answer in its own format), a client gets the same through the router, and every answered
inference has its record with the tensors read. What each server does on its own is pinned
in tests/test_modelservers_direct.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
import tritonclient.grpc as tg
import tritonclient.grpc.aio as tga
import tritonclient.http as th
from helpers import write_config
from modelservers import ModelServer, kserve_server, mlserver  # noqa: F401 - fixtures
from tritonclient.utils import InferenceServerException

from router.analysis.audit import iter_records

pytestmark = [pytest.mark.modelservers, pytest.mark.slow, pytest.mark.loopback]

REGISTRY = {
    "schemas": {"clf@1": {"fields": {f"f{i}": {"type": "float"} for i in range(4)}}},
    "models": {"clf": {"versions": {"v1": {"schema": "clf@1",
                                           "training_data": "make_classification(seed=0)"}}}},
}


@pytest.fixture(params=["mlserver", "kserve_server"])
def server(request: pytest.FixtureRequest) -> ModelServer:
    found: ModelServer = request.getfixturevalue(request.param)
    return found


async def _router(tmp_path: Path, start_router, server: ModelServer):
    route = {"name": "clf", "match": {"path_prefix": "/v2/models/clf"}, "protocol": "v2",
             "model": "clf", "input_schema": "clf@1", "validation": "enforce",
             "versions": {"v1": {"url": f"http://{server.http}/v2/models/{server.model}",
                                 "grpc": server.grpc}},
             "split": {"v1": 100}}
    return await start_router(write_config(tmp_path, [route], REGISTRY,
                                           grpc={"host": "127.0.0.1", "port": 0}))


def _rows(server: ModelServer) -> np.ndarray:
    return np.array(server.rows, dtype=np.float32)


async def _http(address: str, model: str, rows: np.ndarray, binary: bool,
                request_id: str) -> tuple[str, Any]:
    """tritonclient's own request bytes (its defaults: binary input and output when
    ``binary``), posted with aiohttp: the status and answer as the server gave them."""
    tensor = th.InferInput("input-0", list(rows.shape), "FP32")
    tensor.set_data_from_numpy(rows, binary_data=binary)
    outputs = [th.InferRequestedOutput("predict", binary_data=binary)]
    body, json_size = th.InferenceServerClient.generate_request_body(
        [tensor], outputs=outputs, request_id=request_id)
    headers = {} if json_size is None else {"Inference-Header-Content-Length": str(json_size)}
    # No Content-Type, as tritonclient's HTTP client sends it (aiohttp would add one).
    async with aiohttp.ClientSession(skip_auto_headers=("Content-Type",)) as session, \
            session.post(f"http://{address}/v2/models/{model}/infer", data=body,
                         headers=headers) as resp:
        answer = await resp.read()
        if resp.status != 200:
            return "error", str(resp.status)
        size = resp.headers.get("Inference-Header-Content-Length")
        result = th.InferenceServerClient.parse_response_body(
            answer, header_length=int(size) if size else None)
        return "ok", result.as_numpy("predict").flatten().tolist()


async def _grpc(address: str, model: str, rows: np.ndarray, request_id: str,
                ) -> tuple[str, Any]:
    tensor = tg.InferInput("input-0", list(rows.shape), "FP32")
    tensor.set_data_from_numpy(rows)
    client = tga.InferenceServerClient(address)
    try:
        result = await client.infer(model, [tensor], request_id=request_id)
        return "ok", result.as_numpy("predict").flatten().tolist()
    except InferenceServerException as exc:
        return "error", exc.status()
    finally:
        await client.close()


async def test_every_protocol_through_the_router_equals_direct(tmp_path: Path, start_router,
                                                               server: ModelServer) -> None:
    app = await _router(tmp_path, start_router, server)
    rows = _rows(server)
    routed_http, routed_grpc = f"127.0.0.1:{app.port}", f"127.0.0.1:{app.grpc_port}"
    seen = {}
    for binary in (False, True):
        kind = "binary" if binary else "json"
        direct = await _http(server.http, server.model, rows, binary, f"d-{kind}")
        routed = await _http(routed_http, "clf", rows, binary, f"{server.kind}-{kind}")
        assert routed == direct, kind
        seen[kind] = direct
    direct = await _grpc(server.grpc, server.model, rows, "d-grpc")
    routed = await _grpc(routed_grpc, "clf", rows, f"{server.kind}-grpc")
    assert routed == direct == ("ok", server.expected)
    seen["grpc"] = direct
    # What each server does with tritonclient's defaults, passed through unchanged:
    # MLServer refuses binary input (422); KServe refuses tritonclient's JSON without a
    # content-type (400); both answer the rest correctly.
    if server.kind == "mlserver":
        assert seen["binary"] == ("error", "422") and seen["json"] == ("ok", server.expected)
    else:
        assert seen["json"] == ("error", "400") and seen["binary"] == ("ok", server.expected)

    await app.predlog.flush()
    records = {r["request_id"]: r for r in iter_records(tmp_path / "logs")}
    for kind in ("json", "binary", "grpc"):
        record = records[f"{server.kind}-{kind}"]
        assert record["version"] == "v1" and record["violations"] == []
        (tensor,) = record["input"]["inputs"]
        assert np.allclose(tensor["data"], rows.flatten()), kind
        assert record["input"].get("binary", False) is (kind == "binary")
        if seen[kind][0] == "ok":
            assert record["status"] == 200
            (output,) = record["output"]["outputs"]
            assert [int(v) for v in np.array(output["data"]).flatten()] == server.expected
        else:
            assert record["status"] == int(seen[kind][1])
    assert records[f"{server.kind}-grpc"]["upstream"] == f"grpc://{server.grpc}"


async def test_validation_refuses_before_the_server_sees_it(tmp_path: Path, start_router,
                                                            server: ModelServer) -> None:
    app = await _router(tmp_path, start_router, server)
    wide = np.zeros((1, 5), dtype=np.float32)      # five columns for a four-field schema
    got = await _grpc(f"127.0.0.1:{app.grpc_port}", "clf", wide, "too-wide")
    assert got == ("error", "StatusCode.INVALID_ARGUMENT")
    got = await _http(f"127.0.0.1:{app.port}", "clf", wide, True, "too-wide-http")
    assert got == ("error", "422")
