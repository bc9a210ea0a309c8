"""A fast V2-style model server for benchmarks: fixed ~200-byte JSON reply, optional latency.

    python -m loadtest.upstream PORT [--delay-ms D]
"""

from __future__ import annotations

import argparse
import asyncio

import uvloop
from aiohttp import web

REPLY = (b'{"model_name":"fraud","model_version":"1.0.0","id":"bench","outputs":[{"name":'
         b'"score","datatype":"FP64","shape":[1,1],"data":[0.12345]}],"parameters":{"pad":"'
         + b"x" * 56 + b'"}}')


def make_app(delay_s: float) -> web.Application:
    async def infer(request: web.Request) -> web.Response:
        await request.read()
        if delay_s:
            await asyncio.sleep(delay_s)
        return web.Response(body=REPLY, content_type="application/json")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", infer)
    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("--delay-ms", type=float, default=0.0)
    args = parser.parse_args()
    web.run_app(make_app(args.delay_ms / 1000), host="127.0.0.1", port=args.port,
                access_log=None, print=None, loop=uvloop.new_event_loop())


if __name__ == "__main__":
    main()
