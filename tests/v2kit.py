"""Loopback V2 model servers that speak the binary tensor extension and gRPC.

Written against tritonclient's own protobuf messages and NumPy, not the router's readers, so
the tests compare two independent implementations of the wire formats. Each model scores a
row as the sum of its features (``score``, FP32, one per row) and remembers what it received.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import numpy as np
import orjson
from aiohttp import web
from tritonclient.grpc import service_pb2 as pb

SERVICE = "inference.GRPCInferenceService"
NP = {"FP32": np.float32, "FP64": np.float64, "INT64": np.int64, "INT32": np.int32,
      "BOOL": np.bool_, "UINT8": np.uint8, "FP16": np.float16}


def rows_score(x: np.ndarray) -> np.ndarray:
    return x.reshape(x.shape[0], -1).sum(axis=1).astype(np.float32)


class V2Http:
    """An aiohttp V2 model at ``/v2/models/<name>/infer``: JSON or binary in, and binary out
    when the request asks for it (``binary_data`` on the output, as tritonclient does)."""

    def __init__(self, version: str = "1.0.0", delay: float = 0.0,
                 chunked: bool = False) -> None:
        self.version = version
        self.delay = delay
        self.chunked = chunked     # answer without a Content-Length (as uvicorn may)
        self.seen: list[dict[str, Any]] = []

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 << 20)
        app.router.add_post("/v2/models/{name}/infer", self.infer)
        return app

    async def infer(self, request: web.Request) -> web.Response:
        body = await request.read()
        size = request.headers.get("Inference-Header-Content-Length")
        head = orjson.loads(body[:int(size)] if size else body)
        self.seen.append({"headers": {k.lower(): v for k, v in request.headers.items()},
                          "head": head, "bytes": len(body)})
        offset = int(size) if size else 0
        arrays = []
        for tensor in head["inputs"]:
            binary = (tensor.get("parameters") or {}).get("binary_data_size")
            raw = body[offset:offset + binary] if binary is not None else None
            offset += binary or 0
            if tensor["datatype"] not in NP:   # BYTES: not scored
                continue
            dtype = NP[tensor["datatype"]]
            arr = np.frombuffer(raw, dtype=dtype) if raw is not None else \
                np.array(tensor["data"], dtype=dtype)
            arrays.append(arr.reshape(tensor["shape"]))
        if self.delay:
            await asyncio.sleep(self.delay)
        score = rows_score(arrays[0])
        wants_binary = any((o.get("parameters") or {}).get("binary_data")
                           for o in head.get("outputs") or [])
        out: dict[str, Any] = {"name": "score", "datatype": "FP32", "shape": [len(score)]}
        answer: dict[str, Any] = {"model_name": request.match_info["name"],
                                  "model_version": self.version, "outputs": [out]}
        if "id" in head:
            answer["id"] = head["id"]
        if not wants_binary:
            out["data"] = score.tolist()
            return web.Response(body=orjson.dumps(answer), content_type="application/json")
        raw = score.tobytes()
        out["parameters"] = {"binary_data_size": len(raw)}
        header = orjson.dumps(answer)
        headers = {"Inference-Header-Content-Length": str(len(header))}
        if not self.chunked:
            return web.Response(body=header + raw, content_type="application/octet-stream",
                                headers=headers)
        stream = web.StreamResponse(headers=headers)
        stream.enable_chunked_encoding()
        await stream.prepare(request)
        await stream.write(header)
        await asyncio.sleep(0.05)   # the router starts passing it on before the rest comes
        await stream.write(raw)
        await stream.write_eof()
        return stream  # type: ignore[return-value]


class V2Grpc:
    """A grpc.aio V2 model server on 127.0.0.1: ModelInfer (raw or typed contents in; raw
    out, or typed out like KServe when ``typed``), ModelMetadata and ModelReady."""

    def __init__(self, version: str = "1.0.0", typed: bool = False, delay: float = 0.0,
                 fail: grpc.StatusCode | None = None, answer_id: str | None = None) -> None:
        self.version = version
        self.typed = typed
        self.delay = delay            # before answering ModelInfer and ModelMetadata
        self.fail = fail
        self.answer_id = answer_id    # answer with this id instead of the request's
        self.call_metadata: list[list[tuple[str, Any]]] = []   # repeated keys kept
        self.seen: list[tuple[pb.ModelInferRequest, dict[str, Any]]] = []
        self.deadlines: list[float | None] = []   # the time each call had left on arrival
        self.server: grpc.aio.Server | None = None
        self.port = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> V2Grpc:
        self.server = grpc.aio.server()
        handlers = {
            "ModelInfer": grpc.unary_unary_rpc_method_handler(
                self.infer, request_deserializer=pb.ModelInferRequest.FromString,
                response_serializer=pb.ModelInferResponse.SerializeToString),
            "ModelMetadata": grpc.unary_unary_rpc_method_handler(
                self.metadata, request_deserializer=pb.ModelMetadataRequest.FromString,
                response_serializer=pb.ModelMetadataResponse.SerializeToString),
            "ModelReady": grpc.unary_unary_rpc_method_handler(
                self.ready, request_deserializer=pb.ModelReadyRequest.FromString,
                response_serializer=pb.ModelReadyResponse.SerializeToString),
        }
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE, handlers),))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        await self.server.start()
        return self

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(0)

    async def infer(self, request: pb.ModelInferRequest, context: Any) -> pb.ModelInferResponse:
        self.seen.append((request, dict(context.invocation_metadata())))
        self.call_metadata.append(list(context.invocation_metadata()))
        self.deadlines.append(context.time_remaining())
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail is not None:
            await context.abort(self.fail, "the model refused")
        tensor = request.inputs[0]
        dtype = NP[tensor.datatype]
        if request.raw_input_contents:
            x = np.frombuffer(request.raw_input_contents[0], dtype=dtype)
        else:
            x = np.array(tensor.contents.fp32_contents or tensor.contents.fp64_contents
                         or tensor.contents.int64_contents, dtype=dtype)
        score = rows_score(x.reshape(list(tensor.shape)))
        answer = pb.ModelInferResponse(model_name=request.model_name,
                                       model_version=self.version,
                                       id=request.id if self.answer_id is None
                                       else self.answer_id)
        out = answer.outputs.add(name="score", datatype="FP32", shape=[len(score)])
        if self.typed:
            out.contents.fp32_contents.extend(score.tolist())
        else:
            answer.raw_output_contents.append(score.tobytes())
        return answer

    async def metadata(self, request: pb.ModelMetadataRequest,
                       context: Any) -> pb.ModelMetadataResponse:
        if self.delay:
            await asyncio.sleep(self.delay)
        answer = pb.ModelMetadataResponse(name=request.name, versions=[self.version],
                                          platform="test")
        answer.inputs.add(name="x", datatype="FP32", shape=[-1, 4])
        return answer

    async def ready(self, request: pb.ModelReadyRequest, context: Any) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=True)
