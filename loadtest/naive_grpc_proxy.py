"""The gRPC baseline: the obvious grpc.aio proxy (a generic handler, one channel, bytes through).

    python -m loadtest.naive_grpc_proxy PORT UPSTREAM_HOST:PORT

Every unary call of any service is forwarded to one upstream channel as it came: no
(de)serializers, so bytes in and bytes out; the call's metadata and deadline go along, the
upstream's error status comes back. No routing, validation, metrics or logging.
"""

from __future__ import annotations

import argparse

import grpc
import uvloop

# Metadata gRPC itself sets on the outgoing call.
OWN = {"user-agent", "content-type", "te", "grpc-accept-encoding", "grpc-encoding",
       "grpc-timeout", "accept-encoding"}


class Forward(grpc.GenericRpcHandler):
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.channel = channel
        self.handlers: dict[str, grpc.RpcMethodHandler] = {}   # one per method name

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        handler = self.handlers.get(details.method)
        if handler is None:
            upstream = self.channel.unary_unary(details.method)

            async def forward(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
                metadata = [(k, v) for k, v in context.invocation_metadata() or ()
                            if k not in OWN and not k.startswith(":")]
                try:
                    answer: bytes = await upstream(request, metadata=metadata,
                                                   timeout=context.time_remaining())
                    return answer
                except grpc.aio.AioRpcError as err:
                    await context.abort(err.code(), err.details() or "")
                    raise

            handler = self.handlers[details.method] = grpc.unary_unary_rpc_method_handler(forward)
        return handler


async def serve(port: int, upstream: str) -> None:
    channel = grpc.aio.insecure_channel(upstream)
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((Forward(channel),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()   # SIGTERM (its PID) ends the process


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m loadtest.naive_grpc_proxy")
    parser.add_argument("port", type=int)
    parser.add_argument("upstream", help="host:port of a gRPC server")
    args = parser.parse_args()
    uvloop.run(serve(args.port, args.upstream))


if __name__ == "__main__":
    main()
