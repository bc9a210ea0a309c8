"""A V2 model server for the protocol benchmarks (`loadtest/protocols.py`): gRPC and HTTP.

    python -m loadtest.v2_upstream [--grpc PORT] [--http PORT]

``--grpc``: a grpc.aio server with a generic handler for ``inference.GRPCInferenceService``
(bytes in, bytes out: the handler parses with tritonclient's own protobuf messages, not the
router's). ``ModelInfer`` reads the first input from ``raw_input_contents`` (FP32, or its
typed ``fp32_contents``) and answers one FP32 ``score`` per row, the row's mean, in
``raw_output_contents``, echoing the request's ``id`` and ``model_name``. ``ServerLive``,
``ServerReady`` and ``ModelReady`` answer true; any other method is UNIMPLEMENTED.

``--http``: an aiohttp ``POST /v2/models/<name>/infer`` computing the same score from a JSON
body or one in the binary tensor extension (``Inference-Header-Content-Length``). The answer
is JSON unless the request asks for binary outputs (``parameters.binary_data_output`` on the
request, or ``binary_data`` on a requested output, as tritonclient does); then it is the
extension's form: a JSON header, then the raw scores.

Both on one uvloop event loop in one process; stopped by SIGTERM (its PID).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from typing import Any

import grpc
import numpy as np
import orjson
import uvloop
from aiohttp import web
from tritonclient.grpc import service_pb2 as pb

SERVICE = "inference.GRPCInferenceService"
VERSION = "1"
HEADER = "Inference-Header-Content-Length"


def score(x: np.ndarray) -> np.ndarray:
    """The tiny compute: one FP32 score per row, the row's mean."""
    rows = x.shape[0] if x.ndim > 1 else 1
    return x.reshape(rows, -1).mean(axis=1, dtype=np.float32)


# -- gRPC -----------------------------------------------------------------------------------------

async def model_infer(data: bytes, context: grpc.aio.ServicerContext) -> bytes:
    request = pb.ModelInferRequest.FromString(data)
    if not request.inputs or request.inputs[0].datatype != "FP32":
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "one FP32 input expected")
    tensor = request.inputs[0]
    if request.raw_input_contents:
        x = np.frombuffer(request.raw_input_contents[0], dtype="<f4")
    else:
        x = np.asarray(tensor.contents.fp32_contents, dtype=np.float32)
    try:
        scores = score(x.reshape(list(tensor.shape)))
    except ValueError as exc:  # the bytes do not fill the shape
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
    answer = pb.ModelInferResponse(model_name=request.model_name, model_version=VERSION,
                                   id=request.id)
    answer.outputs.add(name="score", datatype="FP32", shape=[len(scores), 1])
    answer.raw_output_contents.append(scores.astype("<f4").tobytes())
    return answer.SerializeToString()


async def server_live(data: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return pb.ServerLiveResponse(live=True).SerializeToString()


async def server_ready(data: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return pb.ServerReadyResponse(ready=True).SerializeToString()


async def model_ready(data: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return pb.ModelReadyResponse(ready=True).SerializeToString()


async def start_grpc(port: int) -> grpc.aio.Server:
    server = grpc.aio.server()
    # No request_deserializer / response_serializer: the handlers get and return bytes.
    methods = {"ModelInfer": model_infer, "ServerLive": server_live,
               "ServerReady": server_ready, "ModelReady": model_ready}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {
        name: grpc.unary_unary_rpc_method_handler(fn) for name, fn in methods.items()}),))
    if server.add_insecure_port(f"127.0.0.1:{port}") == 0:
        raise OSError(f"cannot bind 127.0.0.1:{port}")
    await server.start()
    return server


# -- HTTP -----------------------------------------------------------------------------------------

def wants_binary(head: dict[str, Any]) -> bool:
    if (head.get("parameters") or {}).get("binary_data_output"):
        return True
    return any((o.get("parameters") or {}).get("binary_data") for o in head.get("outputs") or ())


async def http_infer(request: web.Request) -> web.Response:
    body = await request.read()
    size = request.headers.get(HEADER)
    head = orjson.loads(memoryview(body)[:int(size)] if size else body)
    tensor = head["inputs"][0]
    if size:   # binary extension: the first input's bytes follow the header
        n = tensor["parameters"]["binary_data_size"]
        x = np.frombuffer(body, dtype="<f4", count=n // 4, offset=int(size))
    else:
        x = np.asarray(tensor["data"], dtype=np.float32)
    scores = score(x.reshape(tensor["shape"]))
    answer: dict[str, Any] = {"model_name": request.match_info["name"],
                              "model_version": VERSION}
    if "id" in head:
        answer["id"] = head["id"]
    out: dict[str, Any] = {"name": "score", "datatype": "FP32", "shape": [len(scores), 1]}
    answer["outputs"] = [out]
    if wants_binary(head):
        raw = scores.astype("<f4").tobytes()
        out["parameters"] = {"binary_data_size": len(raw)}
        json_head = orjson.dumps(answer)
        return web.Response(body=json_head + raw, content_type="application/octet-stream",
                            headers={HEADER: str(len(json_head))})
    out["data"] = scores.tolist()
    return web.Response(body=orjson.dumps(answer), content_type="application/json")


async def start_http(port: int) -> web.AppRunner:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v2/models/{name}/infer", http_infer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


async def serve(grpc_port: int | None, http_port: int | None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    server = await start_grpc(grpc_port) if grpc_port else None
    runner = await start_http(http_port) if http_port else None
    await stop.wait()
    if server is not None:
        await server.stop(0.5)
    if runner is not None:
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m loadtest.v2_upstream")
    parser.add_argument("--grpc", type=int, help="gRPC V2 port on 127.0.0.1")
    parser.add_argument("--http", type=int, help="HTTP V2 port on 127.0.0.1")
    args = parser.parse_args()
    if not args.grpc and not args.http:
        parser.error("give --grpc PORT, --http PORT or both")
    uvloop.run(serve(args.grpc, args.http))


if __name__ == "__main__":
    main()
