"""``model-router`` command line: a thin layer over the package.

Exit codes: 0 ok, 1 invalid input or check failed (message on stderr), 2 usage.
"""

from __future__ import annotations

import argparse
import logging
import sys

from .config import load_snapshot
from .errors import ConfigError

DEFAULT_CONFIG = "config/router.yaml"


def _check(args: argparse.Namespace) -> int:
    try:
        snapshot = load_snapshot(args.config, source="check")
    except ConfigError as exc:
        for line in exc.errors:
            print(line, file=sys.stderr)
        print(f"{len(exc.errors)} error(s)", file=sys.stderr)
        return 1
    for warning in snapshot.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"ok: {args.config} revision {snapshot.revision}")
    for route in snapshot.routes:
        for name in route.versions:
            entry = snapshot.registry.version(route.model, name) if route.model else None
            weight = route.weights()[name]
            print(f"  {route.name:<16} {name:<8} {weight:>6g}%  "
                  f"schema={entry.schema if entry else '-'}  "
                  f"training_data={entry.training_data if entry else '-'}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from .app import serve
    return serve(args.config)


def _demo(args: argparse.Namespace) -> int:
    from .demo import demo
    return demo(args.dir, args.duration)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="model-router",
                                     description="Traffic router for ML model servers.")
    parser.add_argument("--log-level", default="INFO",
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the router")
    p.add_argument("-c", "--config", default=DEFAULT_CONFIG)
    p.set_defaults(func=_serve)

    p = sub.add_parser("check", help="validate config, registry and schema compatibility")
    p.add_argument("-c", "--config", default=DEFAULT_CONFIG)
    p.set_defaults(func=_check)

    p = sub.add_parser("demo", help="demo model servers, the router and simulated users")
    p.add_argument("--dir", default="demo")
    p.add_argument("--duration", type=float, default=20.0)
    p.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
