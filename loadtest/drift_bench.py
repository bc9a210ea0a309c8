"""Cost of drift monitoring on the request path, and of one PSI computation off it.

    python loadtest/drift_bench.py

Times DriftMonitor.sampled (every request) and observe (sampled requests) for a V2 request
of 4 features and a 1-score answer, then compute() over full 10,000-row windows.
"""

from __future__ import annotations

import random
import tempfile
import timeit
from pathlib import Path

import orjson
import yaml

from router.config import load_snapshot
from router.metrics import Metrics
from router.observers.drift import DriftMonitor

REQUEST = {"inputs": [
    {"name": "amount", "datatype": "FP64", "shape": [1], "data": [12.5]},
    {"name": "avg_purchase_last_7_days", "datatype": "FP64", "shape": [1], "data": [30.1]},
    {"name": "country", "datatype": "BYTES", "shape": [1], "data": ["US"]},
    {"name": "is_new_user", "datatype": "BOOL", "shape": [1], "data": [False]}]}
ANSWER = orjson.dumps({"model_name": "fraud", "model_version": "1.0.0", "outputs": [
    {"name": "score", "datatype": "FP64", "shape": [1, 1], "data": [0.12]}]})


def main() -> None:
    folder = Path(tempfile.mkdtemp())
    numeric = {"kind": "numeric", "edges": [0, 10, 20, 40, 80, 1000],
               "fractions": [0.2, 0.2, 0.2, 0.2, 0.2]}
    (folder / "in.json").write_bytes(orjson.dumps({"schema": "s", "rows": 1, "features": {
        "amount": numeric, "avg_purchase_last_7_days": numeric,
        "country": {"kind": "categorical", "fractions": {"US": 0.6, "DE": 0.3, "FR": 0.1}},
        "is_new_user": {"kind": "categorical", "fractions": {"true": 0.2, "false": 0.8}}}}))
    (folder / "out.json").write_bytes(orjson.dumps({"schema": "o", "rows": 1, "features": {
        "score": {"kind": "numeric", "edges": [0, 0.25, 0.5, 0.75, 1],
                  "fractions": [0.25] * 4}}}))
    (folder / "registry.yaml").write_text(yaml.safe_dump({
        "schemas": {"s@1": {"fields": {"amount": {"type": "float"}}}},
        "models": {"m": {"versions": {"v1": {"schema": "s@1", "baseline": "in.json",
                                             "output_baseline": "out.json"}}}}}))
    (folder / "router.yaml").write_text(yaml.safe_dump({
        "registry": "registry.yaml", "routes": [{
            "name": "r", "match": {"path_prefix": "/r"}, "protocol": "v2", "model": "m",
            "versions": {"v1": {"url": "http://127.0.0.1:1"}}, "split": {"v1": 100}}]}))
    snapshot = load_snapshot(folder / "router.yaml")
    route = snapshot.routes[0]
    monitor = DriftMonitor(Metrics())
    monitor.configure(snapshot)
    n = 100_000
    t_sampled = min(timeit.repeat(lambda: monitor.sampled(route), number=n, repeat=5)) / n
    t_observe = min(timeit.repeat(lambda: monitor.observe(route, "v1", REQUEST, ANSWER),
                                  number=n // 10, repeat=5)) / (n // 10)
    rng = random.Random(1)
    for _ in range(10_000):
        REQUEST["inputs"][0]["data"] = [rng.uniform(0, 100)]
        monitor.observe(route, "v1", REQUEST, ANSWER)
    t_compute = min(timeit.repeat(lambda: monitor.compute(snapshot), number=5, repeat=3)) / 5
    print(f"sampled() every request:      {t_sampled * 1e6:6.2f} us")
    print(f"observe() a sampled request:  {t_observe * 1e6:6.2f} us "
          f"(input features + parsing the answer)")
    for sample in (1.0, 0.1, 0.01):
        print(f"per request at sample={sample:<5}   {(t_sampled + sample * t_observe) * 1e6:6.2f} us")
    print(f"compute() over 10,000-row windows, 4 features + 1 output: "
          f"{t_compute * 1e3:.1f} ms (in a thread, every 5 s)")


if __name__ == "__main__":
    main()
