"""``model-router check``: load a config the way the router would and say what it would serve.

Errors (every one, then their count) and warnings go to stderr; on success one line names the
revision, then one line per route and version: weight, schema and training data.
"""

from __future__ import annotations

import sys

from ..errors import ConfigError
from .load import load_snapshot
from .snapshot import Snapshot


def check(config: str) -> int:
    """0 when ``config`` loads (warnings allowed), 1 with every error on stderr."""
    try:
        snapshot = load_snapshot(config, source="check")
    except ConfigError as exc:
        for line in exc.errors:
            print(line, file=sys.stderr)
        print(f"{len(exc.errors)} error(s)", file=sys.stderr)
        return 1
    for warning in snapshot.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"ok: {config} revision {snapshot.revision}")
    for line in summary(snapshot):
        print(line)
    return 0


def summary(snapshot: Snapshot) -> list[str]:
    """The gRPC port, then per route and version: weight in percent, registry schema and
    training data, and the gRPC address when it has one."""
    lines = []
    if snapshot.grpc is not None:
        lines.append(f"  gRPC V2 on {snapshot.grpc.host}:{snapshot.grpc.port}")
    for route in snapshot.routes:
        weights = route.weights()
        for name in route.versions:
            entry = snapshot.registry.version(route.model, name) if route.model else None
            lines.append(f"  {route.name:<16} {name:<8} {weights[name]:>6g}%  "
                         f"schema={entry.schema if entry else '-'}  "
                         f"training_data={entry.training_data if entry else '-'}"
                         + (f"  grpc={route.versions[name].grpc}"
                            if route.versions[name].grpc else ""))
    return lines
