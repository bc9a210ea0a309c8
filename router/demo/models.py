"""Tiny Open Inference Protocol (V2) model servers for the demo and the examples.

Each version is a real, if small, logistic model over the fraud demo schema with its own
weights, so versions disagree on some rows and shadow agreement is meaningful.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import orjson
from aiohttp import web

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


def make_app(model_name: str, model: FraudModel) -> web.Application:
    """A V2 server for one model version: infer, metadata, readiness, server health."""

    async def infer(request: web.Request) -> web.Response:
        try:
            doc = orjson.loads(await request.read())
            inputs = doc["inputs"]
            amounts = _column(inputs, "amount", 0, 0.0)
            rows = len(amounts)
            avg7 = _column(inputs, "avg_purchase_last_7_days", rows, 0.0)
            country = _column(inputs, "country", rows, "US")
            new_user = _column(inputs, "is_new_user", rows, False)
            scores = [model.score(float(a), float(b), str(c), bool(d))
                      for a, b, c, d in zip(amounts, avg7, country, new_user)]
        except (KeyError, TypeError, ValueError, orjson.JSONDecodeError) as exc:
            return web.json_response({"error": f"bad request: {exc}"}, status=400)
        body = {"model_name": model_name, "model_version": model.model_version,
                "id": doc.get("id", ""),
                "outputs": [{"name": "score", "datatype": "FP64", "shape": [rows, 1],
                             "data": scores}]}
        return web.Response(body=orjson.dumps(body), content_type="application/json")

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
