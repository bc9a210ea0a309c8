"""gRPC V2 load client for the protocol benchmarks (`loadtest/protocols.py`): one process.

    python -m loadtest.grpc_load HOST:PORT --mode max|rate [--duration S] [--warmup S]
                                 [--concurrency 64] [--rate R] [--rows 1] [--cpu-pid PID]

Sends ``inference.GRPCInferenceService/ModelInfer`` for model ``fraud``: one FP32 input
``features`` of shape [rows, 30] in ``raw_input_contents``, id ``abc``, serialized once with
tritonclient's protobuf messages; every call sends those bytes and gets bytes back (no
(de)serializers), with an ``x-user-id`` metadata entry out of 1,000 (the sticky key).

The first answer is parsed and checked (one score per row, the row's mean, the request's
id); every later answer must be byte-for-byte the same (the upstream is deterministic and the
proxies forward its bytes), otherwise it counts as an error, as does any non-OK status.

``max``: ``--concurrency`` calls in flight for ``--duration`` s (closed loop). ``rate``:
``--rate`` calls/s on a fixed schedule for ``--duration`` s; latency runs from the moment a
call is sent (as ``loadtest/__main__.py``'s fixed-rate generator). Both run ``--warmup`` s of
the same load first. With ``--cpu-pid``, the CPU time of that process (and its children)
during the measured phase only. Prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import Counter
from typing import Any

import grpc
import numpy as np
import uvloop
from tritonclient.grpc import service_pb2 as pb

from .__main__ import cpu_seconds, pct

METHOD = "/inference.GRPCInferenceService/ModelInfer"
FEATURES = 30
CALL_TIMEOUT_S = 10.0


def request(rows: int) -> tuple[bytes, np.ndarray]:
    """The serialized ModelInferRequest and the features it carries."""
    x = np.random.default_rng(7).uniform(0, 100, (rows, FEATURES)).astype("<f4")
    msg = pb.ModelInferRequest(model_name="fraud", id="abc")
    msg.inputs.add(name="features", datatype="FP32", shape=[rows, FEATURES])
    msg.raw_input_contents.append(x.tobytes())
    return msg.SerializeToString(), x


def check_first(answer: bytes, x: np.ndarray) -> None:
    """The first answer: one score per row, the row's mean, and the request's id."""
    msg = pb.ModelInferResponse.FromString(answer)
    scores = np.frombuffer(msg.raw_output_contents[0], dtype="<f4")
    if msg.id != "abc" or list(msg.outputs[0].shape) != [len(x), 1] \
            or not np.allclose(scores, x.mean(axis=1), rtol=1e-5):
        raise SystemExit(f"wrong first answer: {msg}")


class Load:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.body, self.x = request(args.rows)
        self.expected = b""
        self.metadata = [(("x-user-id", f"user-{i}"),) for i in range(1000)]
        self.calls = self.errors = 0
        self.codes: Counter[str] = Counter()
        self.latencies: list[float] = []

    async def one(self, n: int) -> None:
        started = time.perf_counter()
        try:
            answer = await self.call(self.body, timeout=CALL_TIMEOUT_S,
                                     metadata=self.metadata[n % 1000])
        except grpc.aio.AioRpcError as err:
            self.errors += 1
            self.codes[err.code().name] += 1
        else:
            if answer != self.expected:
                self.errors += 1
                self.codes["WRONG_ANSWER"] += 1
            self.latencies.append((time.perf_counter() - started) * 1000)
        self.calls += 1

    async def closed(self, duration: float) -> None:
        """``concurrency`` workers, each sending its next call when the last one ended."""
        deadline = time.monotonic() + duration

        async def worker(w: int) -> None:
            n = w
            while time.monotonic() < deadline:
                await self.one(n)
                n += self.args.concurrency
        await asyncio.gather(*[worker(w) for w in range(self.args.concurrency)])

    async def fixed(self, duration: float) -> None:
        """``rate`` calls/s on a fixed schedule, however long each takes."""
        count = max(1, int(self.args.rate * duration))

        async def scheduled(n: int, at: float) -> None:
            await asyncio.sleep(max(0.0, at - time.perf_counter()))
            await self.one(n)
        begin = time.perf_counter() + 0.05
        await asyncio.gather(*[scheduled(n, begin + n / self.args.rate)
                               for n in range(count)])

    def reset(self) -> None:
        self.calls = self.errors = 0
        self.codes.clear()
        self.latencies.clear()

    async def run(self) -> dict[str, Any]:
        args = self.args
        async with grpc.aio.insecure_channel(args.target) as channel:
            self.call = channel.unary_unary(METHOD)   # no serializers: bytes in, bytes out
            self.expected = await self.call(self.body, timeout=CALL_TIMEOUT_S,
                                            metadata=self.metadata[0])
            check_first(self.expected, self.x)
            phase = self.closed if args.mode == "max" else self.fixed
            if args.warmup > 0:
                await phase(args.warmup)
            self.reset()
            cpu_before = cpu_seconds(args.cpu_pid) if args.cpu_pid else 0.0
            started = time.perf_counter()
            await phase(args.duration)
            seconds = time.perf_counter() - started
            cpu = cpu_seconds(args.cpu_pid) - cpu_before if args.cpu_pid else None
        lat = self.latencies or [float("nan")]
        return {"target": args.target, "mode": args.mode, "calls": self.calls,
                "errors": self.errors, "codes": dict(self.codes), "seconds": seconds,
                "rps": self.calls / seconds, "p50_ms": pct(lat, 0.5), "p99_ms": pct(lat, 0.99),
                "p999_ms": pct(lat, 0.999), "cpu_s": cpu,
                "request_bytes": len(self.body), "answer_bytes": len(self.expected)}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m loadtest.grpc_load")
    parser.add_argument("target", help="host:port")
    parser.add_argument("--mode", choices=("max", "rate"), default="max")
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--rows", type=int, default=1)
    parser.add_argument("--cpu-pid", type=int, help="report this process's CPU seconds")
    args = parser.parse_args()
    if not 0 < args.duration <= 600 or not 0 <= args.warmup <= 60 \
            or not 0 < args.concurrency <= 4096 or not 0 < args.rate <= 100_000:
        parser.error("duration, warmup, concurrency or rate out of bounds")
    print(json.dumps(uvloop.run(Load(args).run())), flush=True)


if __name__ == "__main__":
    main()
