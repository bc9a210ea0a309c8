"""The admin server (its own port, 127.0.0.1 by default): health, config, reload, metrics.

POSTs change what serves traffic, so each one must show it is not a web page's doing:
- an ``Origin`` header, when present, must be the admin port's own (``http://127.0.0.1:P``,
  ``http://localhost:P``, ``http://[::1]:P``; with a token also the ``Host`` it was reached
  at), else 403: a page an operator opens elsewhere cannot drive the API;
- ``Content-Type: application/json``, else 415: a cross-origin "simple" request (text/plain,
  forms) is never one, so a browser must ask first (CORS preflight), which this server denies;
- with ``admin.token_env``, ``Authorization: Bearer <token>`` compared in constant time, else
  401. The config refuses a ``token_env`` naming an unset or empty variable; should the
  variable vanish anyway, POSTs are refused, never let through.

Times in answers are ISO 8601 UTC (``2026-11-28T10:00:00.000Z``, ``timefmt.iso``), converted
here at the boundary: inside, snapshots, rollout states and the fleet store keep Unix floats.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from ..errors import ConfigError
from ..timefmt import iso
from .rollout import Conflict

if TYPE_CHECKING:
    from ..config import Live
    from .history import History
    from .reload import Reloader


class Administered(Protocol):
    """What the admin API serves: a started router process or supervisor (``rollouts``,
    when present, is its rollout controller)."""

    live: Live
    reloader: Reloader
    history: History

    def render_metrics(self) -> bytes: ...

    def readiness_problems(self) -> list[str]: ...


class AdminServer:
    """The admin API on its own port. ``start`` binds and returns the bound port (the one
    the OS picked for port 0); ``close`` stops it, whether or not it started."""

    def __init__(self, app: Administered) -> None:
        self._runner = web.AppRunner(build_admin(app), access_log=None)
        self._set_up = False
        self.port = 0

    def __repr__(self) -> str:
        return f"<AdminServer port={self.port}>"

    async def start(self, host: str, port: int) -> int:
        await self._runner.setup()
        self._set_up = True
        await web.TCPSite(self._runner, host, port).start()
        self.port = self._runner.addresses[0][1]
        return self.port

    async def close(self) -> None:
        if self._set_up:
            self._set_up = False
            await self._runner.cleanup()


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(data), content_type="application/json")


# The Unix times of a rollout's state (``RolloutState``), shown as ISO 8601.
ROLLOUT_TIMES = ("step_started", "updated", "window_start")


def human_times(row: Mapping[str, Any], keys: Iterable[str]) -> dict[str, Any]:
    """``row`` with the Unix times at ``keys`` as ISO 8601 UTC; None (not yet) stays None."""
    return {**row, **{k: iso(row[k]) for k in keys if row.get(k) is not None}}


def _authorized(app: Administered, request: web.Request) -> bool:
    env_name = app.live.snapshot.admin.token_env
    if not env_name:
        return True  # no token configured: the config allows that on loopback only
    token = os.environ.get(env_name)
    if not token:
        return False
    given = request.headers.get("Authorization", "")
    expected = f"Bearer {token}"
    return hmac.compare_digest(given.encode(), expected.encode())


def _own_origin(app: Administered, request: web.Request) -> bool:
    """No Origin (curl, the CLI), or the admin port's own origin."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    origin = origin.strip().lower()
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    port = sockname[1] if sockname else None
    own = {f"http://{host}:{port}" for host in ("127.0.0.1", "localhost", "[::1]")}
    # The Host it was reached at (a Service name, a proxy) counts only with a token: without
    # one the port is loopback-only, and a Host that is not loopback means DNS rebinding.
    if app.live.snapshot.admin.token_env and request.host:
        own.add(f"http://{request.host.lower()}")
        own.add(f"https://{request.host.lower()}")
    return origin in own


def build_admin(app: Administered) -> web.Application:
    admin = web.Application()

    @web.middleware
    async def auth(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.method != "POST":
            return await handler(request)
        if not _own_origin(app, request):
            return _json({"error": f"admin POSTs from origin {request.headers['Origin']!r} "
                          "are refused", "code": "forbidden_origin"}, 403)
        if request.content_type != "application/json":
            return _json({"error": "admin POSTs need Content-Type: application/json",
                          "code": "unsupported_media_type"}, 415)
        if not _authorized(app, request):
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
        controller = getattr(app, "rollouts", None)
        applied = {} if controller is None else {
            name: {"generation": s.generation, "step": s.step, "weight": s.weight,
                   "status": s.status} for name, s in controller.states.items()}
        error = app.reloader.last_error
        return _json({**human_times(snapshot.describe(), ("loaded_at",)),
                      "last_error": None if error is None else human_times(error, ("ts",)),
                      "pending_restart": app.reloader.pending_restart(),
                      "rollouts": applied})

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
        rows = controller.status() if controller is not None else []
        return _json([human_times(r, ROLLOUT_TIMES) for r in rows])

    async def rollout_action(request: web.Request) -> web.Response:
        controller = getattr(app, "rollouts", None)
        name, action = request.match_info["route"], request.match_info["action"]
        if controller is None:
            return _json({"error": "no rollout controller here", "code": "no_rollout"}, 404)
        try:
            state = await controller.act(name, action)
        except KeyError:
            return _json({"error": f"no rollout on route {name}", "code": "no_rollout"}, 404)
        except Conflict as exc:
            code = "conflict" if exc.status == 409 else "store_unavailable"
            return _json({"error": str(exc), "code": code}, exc.status)
        # Answered as GET /-/rollouts shows it (versions, steps, evidence); the bare state
        # only should the route's block have gone meanwhile.
        row = next((r for r in controller.status() if r["route"] == name), state.public())
        return _json(human_times(row, ROLLOUT_TIMES))

    async def fleet(_: web.Request) -> web.Response:
        member = getattr(app, "fleet", None)
        if member is None:
            return _json({"error": "this router has no fleet: block", "code": "no_fleet"}, 404)
        return _json(await member.status())

    admin.router.add_get("/-/rollouts", rollouts)
    admin.router.add_post("/-/rollouts/{route}/{action:pause|resume|promote|abort}",
                          rollout_action)
    admin.router.add_get("/metrics", metrics)
    admin.router.add_get("/-/healthy", healthy)
    admin.router.add_get("/-/ready", ready)
    admin.router.add_get("/-/config", config)
    admin.router.add_post("/-/reload", reload)
    admin.router.add_get("/-/history", history)
    admin.router.add_get("/-/fleet", fleet)
    return admin
