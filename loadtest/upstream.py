"""A fast V2-style model server for benchmarks: fixed ~200-byte JSON reply, optional latency.

    python -m loadtest.upstream PORT [--delay-ms D] [--big]

``--big`` adds two GET routes for the backpressure scenario (`loadtest/backpressure.py`):
``/big/bytes/N`` answers N bytes with a Content-Length, ``/big/stream/N`` a chunked answer of
N bytes generated on the fly in 64 KiB writes (each awaited, so the stream goes only as fast
as its reader). N is at most 1 GiB. Without the flag the app has only the catch-all route.
"""

from __future__ import annotations

import argparse
import asyncio
import functools

import uvloop
from aiohttp import web

# The id is the one of the harness's request body (loadtest/__main__.py BODY): the router
# answers 502 when a V2 answer's id is not its request's.
REPLY = (b'{"model_name":"fraud","model_version":"1.0.0","id":"abc","outputs":[{"name":'
         b'"score","datatype":"FP64","shape":[1,1],"data":[0.12345]}],"parameters":{"pad":"'
         + b"x" * 58 + b'"}}')

CHUNK = b"x" * 65536
BIG_MAX = 1 << 30


@functools.lru_cache(maxsize=4)
def _blob(size: int) -> bytes:
    return b"x" * size


async def _big_bytes(request: web.Request) -> web.Response:
    size = int(request.match_info["n"])
    if size > BIG_MAX:
        raise web.HTTPBadRequest(text=f"at most {BIG_MAX} bytes")
    return web.Response(body=_blob(size), content_type="application/octet-stream")


async def _big_stream(request: web.Request) -> web.StreamResponse:
    left = int(request.match_info["n"])
    if left > BIG_MAX:
        raise web.HTTPBadRequest(text=f"at most {BIG_MAX} bytes")
    response = web.StreamResponse(headers={"content-type": "application/octet-stream"})
    response.enable_chunked_encoding()
    await response.prepare(request)
    while left > 0:  # bounded: at most BIG_MAX / 64 KiB writes
        chunk = CHUNK if left >= len(CHUNK) else CHUNK[:left]
        await response.write(chunk)
        left -= len(chunk)
    await response.write_eof()
    return response


def make_app(delay_s: float, big: bool = False) -> web.Application:
    async def infer(request: web.Request) -> web.Response:
        await request.read()
        if delay_s:
            await asyncio.sleep(delay_s)
        return web.Response(body=REPLY, content_type="application/json")

    app = web.Application()
    if big:
        app.router.add_get(r"/big/bytes/{n:\d+}", _big_bytes)
        app.router.add_get(r"/big/stream/{n:\d+}", _big_stream)
    app.router.add_route("*", "/{tail:.*}", infer)
    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("--delay-ms", type=float, default=0.0)
    parser.add_argument("--big", action="store_true",
                        help="also /big/bytes/N and /big/stream/N (GET)")
    args = parser.parse_args()
    web.run_app(make_app(args.delay_ms / 1000, args.big), host="127.0.0.1", port=args.port,
                access_log=None, print=None, loop=uvloop.new_event_loop())


if __name__ == "__main__":
    main()
