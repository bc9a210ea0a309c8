"""The admin server (its own port, 127.0.0.1 by default): health, config, reload, metrics.

With ``admin.token_env`` naming a set variable, every POST needs ``Authorization: Bearer``
with that token, compared in constant time.
"""

from __future__ import annotations

import hmac
import os
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from .errors import ConfigError

if TYPE_CHECKING:
    from .app import RouterApp


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(data), content_type="application/json")


def _authorized(app: RouterApp, request: web.Request) -> bool:
    env_name = app.live.snapshot.admin.token_env
    token = os.environ.get(env_name) if env_name else None
    if not token:
        return True
    given = request.headers.get("Authorization", "")
    expected = f"Bearer {token}"
    return hmac.compare_digest(given.encode(), expected.encode())


def build_admin(app: RouterApp) -> web.Application:
    admin = web.Application()

    @web.middleware
    async def auth(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.method == "POST" and not _authorized(app, request):
            return _json({"error": "admin token required", "code": "unauthorized"}, 401)
        return await handler(request)

    admin.middlewares.append(auth)

    async def metrics(_: web.Request) -> web.Response:
        body = app.render_metrics()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthy(_: web.Request) -> web.Response:
        return _json({"status": "ok"})

    async def ready(_: web.Request) -> web.Response:
        problems = app.readiness_problems()
        return _json({"ready": not problems, "problems": problems}, 503 if problems else 200)

    async def config(_: web.Request) -> web.Response:
        snapshot = app.live.snapshot
        return _json({**snapshot.describe(), "last_error": app.reloader.last_error})

    async def reload(_: web.Request) -> web.Response:
        try:
            snapshot = await app.reloader.reload("api")
        except ConfigError as exc:
            return _json({"errors": exc.errors, "revision": app.live.snapshot.revision}, 422)
        return _json({"revision": snapshot.revision})

    async def history(request: web.Request) -> web.Response:
        events = app.history.read()
        try:
            limit = int(request.query.get("limit", "100"))
        except ValueError:
            return _json({"error": "limit must be a number", "code": "bad_request"}, 400)
        return _json(events[-limit:] if limit > 0 else [])

    async def rollouts(_: web.Request) -> web.Response:
        controller = getattr(app, "rollouts", None)
        return _json(controller.status() if controller is not None else [])

    async def rollout_action(request: web.Request) -> web.Response:
        controller = getattr(app, "rollouts", None)
        name, action = request.match_info["route"], request.match_info["action"]
        if controller is None:
            return _json({"error": "no rollout controller here", "code": "no_rollout"}, 404)
        try:
            state = controller.act(name, action)
        except KeyError:
            return _json({"error": f"route {name} has no rollout", "code": "no_rollout"}, 404)
        except ValueError as exc:
            return _json({"error": str(exc), "code": "bad_request"}, 409)
        return _json(state.public())

    admin.router.add_get("/-/rollouts", rollouts)
    admin.router.add_post("/-/rollouts/{route}/{action:pause|resume|promote|abort}",
                          rollout_action)
    admin.router.add_get("/metrics", metrics)
    admin.router.add_get("/-/healthy", healthy)
    admin.router.add_get("/-/ready", ready)
    admin.router.add_get("/-/config", config)
    admin.router.add_post("/-/reload", reload)
    admin.router.add_get("/-/history", history)
    return admin
