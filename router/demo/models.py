"""Tiny Open Inference Protocol (V2) model servers for the demo and the examples.

Each version is a real, if small, logistic model over the fraud demo schema with its own
weights, so versions disagree on some rows and shadow agreement is meaningful.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Any

import grpc
import orjson
from aiohttp import web

from ..dataplane.grpc_wire import SERVICE, request_json
from ..dataplane.oip import inference_pb2 as pb
from ..tensors import HEADER, binary_json, header_length

COUNTRY_RISK = {"US": 0.0, "DE": 0.4, "FR": 0.8}


@dataclass(frozen=True, slots=True)
class FraudModel:
    model_version: str
    bias: float
    w_amount: float
    w_ratio: float
    w_country: float
    w_new_user: float

    def score(self, amount: float, avg7: float, country: str, is_new_user: bool) -> float:
        ratio = amount / (avg7 + 1.0)
        z = (self.bias + self.w_amount * math.log1p(max(amount, 0.0)) + self.w_ratio * ratio
             + self.w_country * COUNTRY_RISK.get(country, 1.0)
             + self.w_new_user * (1.0 if is_new_user else 0.0))
        return 1.0 / (1.0 + math.exp(-z))


MODELS = {
    "v1": FraudModel("1.0.0", bias=-5.0, w_amount=0.45, w_ratio=0.30, w_country=0.9,
                     w_new_user=0.8),
    "v2": FraudModel("2.0.0", bias=-5.2, w_amount=0.42, w_ratio=0.38, w_country=1.1,
                     w_new_user=1.0),
    "v3": FraudModel("3.0.0", bias=-4.6, w_amount=0.50, w_ratio=0.20, w_country=0.6,
                     w_new_user=0.5),
}


def _column(inputs: list[dict], name: str, rows: int, default: object) -> list:
    for item in inputs:
        if item.get("name") == name:
            return list(item.get("data", []))
    return [default] * rows


def scores(model: FraudModel, doc: dict[str, Any]) -> list[float]:
    """The model's scores for the rows of a V2 request (its JSON form)."""
    inputs = doc["inputs"]
    amounts = _column(inputs, "amount", 0, 0.0)
    rows = len(amounts)
    avg7 = _column(inputs, "avg_purchase_last_7_days", rows, 0.0)
    country = _column(inputs, "country", rows, "US")
    new_user = _column(inputs, "is_new_user", rows, False)
    return [model.score(float(a), float(b), str(c), bool(d))
            for a, b, c, d in zip(amounts, avg7, country, new_user)]


def make_app(model_name: str, model: FraudModel) -> web.Application:
    """A V2 server for one model version: infer (JSON or binary tensors in, JSON out),
    metadata, readiness, server health."""

    async def infer(request: web.Request) -> web.Response:
        body = await request.read()
        try:
            size = header_length(request.headers.get(HEADER), len(body))
            doc = orjson.loads(body) if size is None else binary_json(body, size, "inputs")
            result = scores(model, doc)
        except (KeyError, TypeError, ValueError, orjson.JSONDecodeError) as exc:
            return web.json_response({"error": f"bad request: {exc}"}, status=400)
        answer = {"model_name": model_name, "model_version": model.model_version,
                  "id": doc.get("id", ""),
                  "outputs": [{"name": "score", "datatype": "FP64", "shape": [len(result), 1],
                               "data": result}]}
        return web.Response(body=orjson.dumps(answer), content_type="application/json")

    async def metadata(_: web.Request) -> web.Response:
        return web.json_response({"name": model_name, "versions": [model.model_version],
                                  "platform": "model-router-demo"})

    async def ready(_: web.Request) -> web.Response:
        return web.json_response({"ready": True})

    app = web.Application()
    base = f"/v2/models/{model_name}"
    app.router.add_post(f"{base}/infer", infer)
    app.router.add_get(base, metadata)
    app.router.add_get(f"{base}/ready", ready)
    app.router.add_get("/v2/health/ready", ready)
    return app


async def start_grpc(model_name: str, model: FraudModel) -> tuple[grpc.aio.Server, int]:
    """The same model over gRPC V2 (ModelInfer; raw FP64 scores out, as Triton and MLServer
    answer) on a free 127.0.0.1 port: the server (the caller stops it) and its port."""

    async def infer(data: bytes, context: grpc.aio.ServicerContext) -> bytes:
        try:
            request = pb.ModelInferRequest.FromString(data)
            result = scores(model, request_json(request))
        except (KeyError, TypeError, ValueError) as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"bad request: {exc}")
            raise
        answer = pb.ModelInferResponse(model_name=model_name, id=request.id,
                                       model_version=model.model_version)
        answer.outputs.add(name="score", datatype="FP64", shape=[len(result), 1])
        answer.raw_output_contents.append(struct.pack(f"<{len(result)}d", *result))
        return answer.SerializeToString()

    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        SERVICE.strip("/"), {"ModelInfer": grpc.unary_unary_rpc_method_handler(infer)}),))
    port: int = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port

