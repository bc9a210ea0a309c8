"""The baseline: the obvious aiohttp + uvloop proxy (one ClientSession, random choice, await).

    python -m loadtest.naive_proxy PORT UPSTREAM_A UPSTREAM_B [--mirror URL]

With --mirror, every request is also sent to URL with a fire-and-forget create_task.
"""

from __future__ import annotations

import argparse
import asyncio
import random

import aiohttp
import uvloop
from aiohttp import web

HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}


def make_app(upstreams: list[str], weights: list[int], mirror: str | None) -> web.Application:
    app = web.Application()
    tasks: set[asyncio.Task] = set()

    async def start(app: web.Application) -> None:
        app["session"] = aiohttp.ClientSession()

    async def stop(app: web.Application) -> None:
        await app["session"].close()

    async def shadow(session: aiohttp.ClientSession, url: str, body: bytes,
                     headers: dict) -> None:
        try:
            async with session.post(url, data=body, headers=headers) as resp:
                await resp.read()
        except aiohttp.ClientError:
            pass

    async def proxy(request: web.Request) -> web.Response:
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP}
        base = random.choices(upstreams, weights)[0]
        session = app["session"]
        async with session.request(request.method, base + request.path_qs, data=body,
                                   headers=headers) as resp:
            data = await resp.read()
            out = {k: v for k, v in resp.headers.items() if k.lower() not in HOP}
        if mirror:
            task = asyncio.create_task(shadow(session, mirror + request.path_qs, body, headers))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        return web.Response(status=resp.status, body=data, headers=out)

    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    app.router.add_route("*", "/{tail:.*}", proxy)
    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("upstream_a")
    parser.add_argument("upstream_b")
    parser.add_argument("--mirror")
    args = parser.parse_args()
    app = make_app([args.upstream_a, args.upstream_b], [95, 5], args.mirror)
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None,
                loop=uvloop.new_event_loop())


if __name__ == "__main__":
    main()
