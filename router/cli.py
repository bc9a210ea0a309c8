"""``model-router`` command line: a thin layer over the package.

Exit codes: 0 ok, 1 invalid input or check failed (message on stderr), 2 usage.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

DEFAULT_CONFIG = "config/router.yaml"
CONFIG_HELP = f"router.yaml to read (default: {DEFAULT_CONFIG})"
TIME_HELP = "ISO 8601 (UTC when no offset) or relative: 30m, 2h, 7d"
# Checked before any command runs: a bad time is invalid input (exit 1), said the same way
# by every command that takes one.
TIME_OPTIONS = ("since", "until", "at")


def _check(args: argparse.Namespace) -> int:
    from .config.check import check
    return check(args.config)


def _workers(text: str) -> int:
    if text == "auto":
        return os.cpu_count() or 1
    try:
        count = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("a number or 'auto'") from None
    if count < 1:
        raise argparse.ArgumentTypeError("at least 1")
    return count


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("a port number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError("0-65535")
    return port


def _status(text: str) -> int | str:
    """``--status``: an exact code (404) or a class (``4xx``, ``5xx``)."""
    lowered = text.strip().lower()
    if len(lowered) == 3 and lowered[0] in "12345" and lowered[1:] == "xx":
        return lowered
    if lowered.isdigit() and 100 <= int(lowered) <= 599:
        return int(lowered)
    raise argparse.ArgumentTypeError(f"{text!r}: a code (404) or a class (4xx, 5xx)")


def _bad_time(args: argparse.Namespace) -> str | None:
    """The error for the first time option that is neither ISO 8601 nor 30m/2h/7d."""
    given = [text for name in TIME_OPTIONS if (text := getattr(args, name, None))]
    if not given:
        return None
    from .analysis.audit import parse_time
    for text in given:
        try:
            parse_time(text)
        except ValueError as exc:
            return str(exc)
    return None


def _serve(args: argparse.Namespace) -> int:
    from .process.main import serve
    return serve(args.config, args.workers, port=args.port, admin_port=args.admin_port,
                 grpc_port=args.grpc_port)


def _audit(args: argparse.Namespace) -> int:
    from .analysis.views import audit
    return audit(args.config, args.log_dir, args.request_id, route=args.route,
                 version=args.version, role=args.role, status=args.status, since=args.since,
                 until=args.until, limit=args.limit, as_json=args.json,
                 log_store=args.log_store)


def _history(args: argparse.Namespace) -> int:
    from .config.raw import config_paths, fleet_of
    from .control.history import History, print_events, print_fleet_in_force, print_in_force

    fleet = fleet_of(args.config)
    if fleet is not None:  # the fleet's history stream: every replica's
        from redis.exceptions import RedisError

        from .control.store import read_history
        try:
            events = read_history(*fleet)
        except (RedisError, OSError) as exc:
            print(f"cannot read the fleet history from {fleet[0]}: {exc}", file=sys.stderr)
            return 1
    else:
        from .analysis.views import history_events, log_store
        state_dir, _ = config_paths(args.config)
        store = log_store(args.config, args.log_store)
        if store is None:
            events = History(state_dir).read()
        else:  # every replica's shipped history too, a replica that is gone included
            from .analysis.shipped import StoreError
            try:
                events = history_events(state_dir, *store)
            except StoreError as exc:
                print(exc, file=sys.stderr)
                return 1
    if not args.at:
        print_events(events, as_json=args.json)
        return 0
    from .analysis.audit import parse_time
    from .timefmt import iso
    at = parse_time(args.at)  # main checked it
    if fleet is not None:
        return print_fleet_in_force(events, iso(at.timestamp()), as_json=args.json)
    return print_in_force(events, iso(at.timestamp()), as_json=args.json)


def _report(args: argparse.Namespace) -> int:
    from .analysis.views import report
    return report(args.config, args.log_dir, route=args.route, since=args.since,
                  until=args.until, html=args.html, as_json=args.json,
                  log_store=args.log_store)


def _baseline(args: argparse.Namespace) -> int:
    from .analysis.views import baseline, output_baseline
    if args.from_log:
        return output_baseline(args.from_log, args.route, args.version, since=args.since,
                               limit=args.limit, out=args.out)
    return baseline(args.config, args.from_file, args.schema, infer=args.infer,
                    ranges=not args.no_ranges, out=args.out)


def _rollout(args: argparse.Namespace) -> int:
    from .control.client import rollout_command
    return rollout_command(args.config, args.action, args.route, admin=args.admin,
                           as_json=args.json)


def _fleet(args: argparse.Namespace) -> int:
    from .control.client import fleet_command
    return fleet_command(args.config, admin=args.admin, as_json=args.json)


def _demo(args: argparse.Namespace) -> int:
    if args.fleet:
        from .demo.fleet import fleet_demo
        return fleet_demo(args.dir or "demo/fleet",
                          90.0 if args.duration is None else args.duration)
    from .demo.run import demo
    return demo(args.dir or "demo", 40.0 if args.duration is None else args.duration,
                story=not args.no_story, protocol=args.protocol)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="model-router",
                                     description="Traffic router for ML model servers.")
    parser.add_argument("--log-level", default="INFO",
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="least severe log message shown on stderr (default: INFO)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the router")
    p.add_argument("-c", "--config", default=DEFAULT_CONFIG, help=CONFIG_HELP)
    p.add_argument("--workers", type=_workers, default=1,
                   help="worker processes sharing the port: a number or 'auto', one per CPU "
                        "(default: 1)")
    p.add_argument("--port", type=_port,
                   help="listen port, 0-65535 (default: listen.port of the config)")
    p.add_argument("--admin-port", type=_port,
                   help="admin port, 0-65535 (default: admin.port of the config)")
    p.add_argument("--grpc-port", type=_port,
                   help="gRPC V2 port, 0-65535 (default: grpc.port of the config; without "
                        "a grpc block, this opens one on the listen host)")
    p.set_defaults(func=_serve)

    p = sub.add_parser("check", help="validate config, registry and schema compatibility")
    p.add_argument("-c", "--config", default=DEFAULT_CONFIG, help=CONFIG_HELP)
    p.set_defaults(func=_check)

    p = sub.add_parser("audit", help="records of a request, or filtered records")
    p.add_argument("-c", "--config", default=DEFAULT_CONFIG, help=CONFIG_HELP)
    p.add_argument("--log-dir", metavar="DIR",
                   help="prediction log directory (default: prediction_log.dir of the config)")
    p.add_argument("--log-store", metavar="URL",
                   help="the shipped log (default: prediction_log.ship.to of the config)")
    p.add_argument("request_id", nargs="?",
                   help="a request id: every record of that request and the config that "
                        "served it (without one: the records the filters below select)")
    p.add_argument("--route", help="only this route (default: every route)")
    p.add_argument("--version", help="only this version (default: every version)")
    p.add_argument("--role", choices=["primary", "shadow", "feedback"],
                   help="only records of this role (default: every role)")
    p.add_argument("--status", type=_status, metavar="CODE|4xx|5xx",
                   help="only answers with this status: a code (404) or a class (4xx, 5xx) "
                        "(default: any)")
    p.add_argument("--since", metavar="T",
                   help=f"records at or after T: {TIME_HELP} (default: the whole log)")
    p.add_argument("--until", metavar="T",
                   help=f"records before T: {TIME_HELP} (default: no end)")
    p.add_argument("--limit", type=int, default=100,
                   help="most records to print, oldest first (default: 100)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_audit)

    p = sub.add_parser("history", help="deployment history; --at T: what was live at T")
    p.add_argument("-c", "--config", default=DEFAULT_CONFIG, help=CONFIG_HELP)
    p.add_argument("--at", metavar="T",
                   help=f"what was live at T: {TIME_HELP} (default: every event instead)")
    p.add_argument("--json", action="store_true", help="print JSON instead of columns")
    p.add_argument("--log-store", metavar="URL",
                   help="the shipped histories too (default: prediction_log.ship.to)")
    p.set_defaults(func=_history)

    p = sub.add_parser("report", help="per version: traffic, 5xx and 4xx, latency, outcomes")
    p.add_argument("-c", "--config", default=DEFAULT_CONFIG,
                   help=f"router.yaml to read (default: {DEFAULT_CONFIG})")
    p.add_argument("--log-dir", metavar="DIR",
                   help="prediction log directory (default: prediction_log.dir of the config)")
    p.add_argument("--log-store", metavar="URL",
                   help="the shipped log (default: prediction_log.ship.to of the config)")
    p.add_argument("--route", help="only this route (default: every route)")
    p.add_argument("--since", metavar="T",
                   help="records at or after T: ISO 8601 (UTC when no offset) or relative: "
                        "30m, 2h, 7d (default: the whole log)")
    p.add_argument("--until", metavar="T",
                   help="records before T: ISO 8601 (UTC when no offset) or relative: "
                        "30m, 2h, 7d (default: up to now)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--html", metavar="FILE",
                   help="also write the report as one self-contained HTML page with charts "
                        "(default: none)")
    p.set_defaults(func=_report)

    p = sub.add_parser("baseline", help="write a drift baseline from training data")
    p.add_argument("-c", "--config", default=DEFAULT_CONFIG,
                   help=f"router.yaml whose registry holds --schema (default: {DEFAULT_CONFIG})")
    p.add_argument("--from", dest="from_file", metavar="FILE",
                   help="training rows: CSV with a header line, or JSONL")
    p.add_argument("--schema", metavar="ID",
                   help="registry schema id, e.g. fraud-features@1 (with --infer: the id to "
                        "give the inferred schema)")
    p.add_argument("--from-log", metavar="DIR",
                   help="prediction log dir: baseline the outputs a version logged instead")
    p.add_argument("--route", help="with --from-log: the route (required there)")
    p.add_argument("--version", help="with --from-log: the version (required there)")
    p.add_argument("--since", metavar="T",
                   help="with --from-log: answers at or after T: ISO 8601 (UTC when no "
                        "offset) or relative: 30m, 2h, 7d (default: the whole log)")
    p.add_argument("--limit", type=int, default=100_000,
                   help="with --from-log: most answers read (default: 100000)")
    p.add_argument("--infer", action="store_true",
                   help="infer the schema from the rows and print it on stdout: types, "
                        "enums and each number's min/max, which are the training data's "
                        "extremes (see --no-ranges)")
    p.add_argument("--no-ranges", action="store_true",
                   help="with --infer: leave min/max out, so held-out values beyond the "
                        "training extremes are not refused under validation: enforce")
    p.add_argument("--out", metavar="FILE",
                   help="baseline file (default: stdout; with --infer, whose stdout is the "
                        "schema, <schema>.baseline.json in the current directory, '@' "
                        "written '-')")
    p.set_defaults(func=_baseline)

    p = sub.add_parser("rollout", help="status, pause, resume, promote or abort a rollout")
    p.add_argument("action", choices=["status", "pause", "resume", "promote", "abort"],
                   help="status: where each rollout stands; the others change ROUTE's")
    p.add_argument("route", nargs="?",
                   help="the route (needed by every action but status, which shows every "
                        "rollout without one)")
    p.add_argument("-c", "--config", default=DEFAULT_CONFIG, help=CONFIG_HELP)
    p.add_argument("--admin", metavar="URL",
                   help="admin base URL, e.g. http://127.0.0.1:9090 (default: admin.host "
                        "and admin.port of the config)")
    p.add_argument("--json", action="store_true",
                   help="print the admin API's JSON instead of a line per rollout")
    p.set_defaults(func=_rollout)

    p = sub.add_parser("fleet", help="the fleet: leader, replicas, revisions, steps, health")
    p.add_argument("action", choices=["status"], help="status: the fleet as a replica sees it")
    p.add_argument("-c", "--config", default=DEFAULT_CONFIG, help=CONFIG_HELP)
    p.add_argument("--admin", metavar="URL",
                   help="admin base URL of any replica, e.g. http://127.0.0.1:9090 (default: "
                        "admin.host and admin.port of the config)")
    p.add_argument("--json", action="store_true",
                   help="print the admin API's JSON instead of a line per replica")
    p.set_defaults(func=_fleet)

    p = sub.add_parser("demo", help="demo model servers, the router and simulated users")
    p.add_argument("--dir", help="its files (default: demo/; demo/fleet/ with --fleet)")
    p.add_argument("--duration", type=float,
                   help="seconds at most (default: 40; 90 with --fleet)")
    p.add_argument("--no-story", action="store_true", help="just run traffic")
    p.add_argument("--protocol", choices=("mixed", "json", "binary", "grpc"), default="mixed",
                   help="what the simulated users speak: V2 JSON, V2 binary tensors over HTTP, "
                        "gRPC, or all three in turn (default: mixed)")
    p.add_argument("--fleet", action="store_true",
                   help="three replicas, Redis and Prometheus walk one rollout through a "
                        "leader kill (needs redis-server and prometheus; --dir gets its files)")
    p.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    problem = _bad_time(args)
    if problem is not None:
        print(problem, file=sys.stderr)
        return 1
    try:
        return int(args.func(args))
    except BrokenPipeError:  # `model-router audit ... | head`: the reader left, not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no flush error at exit
        return 0


if __name__ == "__main__":
    sys.exit(main())
