"""The command line in process: parsing, dispatch, and what each view prints (no sockets;
the commands that need a running router or a log are tested in test_rollout and test_audit)."""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
from helpers import base_route, write_config

from router.cli import build_parser, main
from router.control.client import describe_rollout
from router.errors import ConfigError


@pytest.mark.parametrize("argv", [
    ["serve"], ["check"], ["audit"], ["history"], ["report"], ["baseline"],
    ["rollout", "status"], ["demo"],
], ids=lambda argv: argv[0])
def test_every_command_dispatches_to_its_handler(argv: list[str]) -> None:
    args = build_parser().parse_args(argv)
    assert args.func.__name__ == f"_{argv[0]}"


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {"model-router": parser, **sub.choices}


@pytest.mark.parametrize("command", list(_subcommands()))
def test_every_option_says_what_it_takes_and_its_default(command: str) -> None:
    """Every option has help; one with a default value names it; a time option says both
    forms it accepts; ``-c`` names the file it reads."""
    missing = []
    for action in _subcommands()[command]._actions:
        if not action.option_strings or isinstance(action, argparse._HelpAction):
            continue
        text = action.help or ""
        name = "/".join(action.option_strings)
        if not text.strip():
            missing.append(f"{name}: no help")
        elif action.default not in (None, False) and "default" not in text:
            missing.append(f"{name}: default {action.default!r} not said")
        elif action.dest in ("since", "until", "at") and \
                "ISO 8601 (UTC when no offset) or relative: 30m, 2h, 7d" not in text:
            missing.append(f"{name}: time formats not said")
        elif action.dest == "config" and not (
                "router.yaml" in text and "(default: config/router.yaml)" in text):
            missing.append(f"{name}: {text!r}")
    assert not missing, missing


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["nope"])
    assert done.value.code == 2
    assert main(["rollout", "pause", "-c", "/nowhere/router.yaml"]) == 2
    assert "rollout pause needs a ROUTE" in capsys.readouterr().err


def test_check_prints_what_would_serve(tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(tmp_path, [base_route()])
    assert main(["check", "-c", str(path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"ok: {path} revision ")
    assert any(line.split()[:3] == ["fraud", "v1", "95%"] for line in out[1:]), out


def test_check_lists_every_error_and_their_count(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(tmp_path, [base_route(split={"v1": 90, "v2": 5}, timeout_s=-1)])
    assert main(["check", "-c", str(path)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[-1] == f"{len(err) - 1} error(s)"
    assert any("weights sum to 95, expected 100" in line for line in err)
    assert any("timeout_s: must be greater than 0" in line for line in err)


def _history(folder: Path) -> Path:
    path = write_config(folder, [base_route()])
    events = [
        {"ts": "2026-11-26T10:00:00.000Z", "event": "applied", "revision": "abc",
         "source": "file", "routes": {"fraud": {"weights": {"v1": 95, "v2": 5}}}, "errors": []},
        {"ts": "2026-11-26T11:00:00.000Z", "event": "rollout_step", "revision": "abc",
         "source": "rollout", "routes": {"fraud": {"weights": {"v1": 50, "v2": 50},
                                                   "step": 1, "steps": 3}}},
        {"ts": "2026-11-26T12:00:00.000Z", "event": "rejected", "revision": None,
         "source": "file", "routes": {}, "errors": ["router.yaml: x: bad"]},
    ]
    (folder / "state").mkdir()
    (folder / "state" / "history.jsonl").write_bytes(
        b"".join(orjson.dumps(e) + b"\n" for e in events))
    return path


def test_history_prints_aligned_columns_one_event_per_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["history", "-c", str(_history(tmp_path))]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["time", "event", "revision", "source", "replica", "what"]
    assert [line.split()[1] for line in lines[1:]] == ["applied", "rollout_step", "rejected"]
    what = lines[0].index("what")
    assert [line[what:] for line in lines[1:]] == [
        "fraud: v1 95, v2 5", "fraud: v1 50, v2 50 step 2/3", "router.yaml: x: bad"]
    assert lines[3].split()[2] == "-"  # a rejection has no revision


@pytest.mark.parametrize("before, after, said", [
    ({"fraud": {"weights": {"v1": 95, "v2": 5}, "versions": ["v1", "v2"],
                "validation": "enforce"}},
     {"fraud": {"weights": {"v1": 50, "v2": 50}, "versions": ["v1", "v2", "v3"],
                "validation": "log"}},
     ["fraud: v1 95, v2 5 -> v1 50, v2 50; versions + v3; validation enforce -> log"]),
    ({"fraud": {"active": "blue", "version": "v1", "versions": ["v1", "v2"]}},
     {"fraud": {"active": "green", "version": "v2", "versions": ["v1", "v2"]},
      "other": {"weights": {"a": 100}, "versions": ["a"]}},
     ["fraud: active blue (v1) -> active green (v2)", "other: added (a 100)"]),
    ({"fraud": {"weights": {"v1": 100}, "versions": ["v1", "v2"]}, "old": {"weights": {}}},
     {"fraud": {"weights": {"v1": 100}, "versions": ["v1"]}},
     ["fraud: versions - v2", "old: removed"]),
    ({"fraud": {"weights": {"v1": 100}}}, {"fraud": {"weights": {"v1": 100}}}, []),
    ({"fraud": {"weights": {"v1": 90, "v2": 10}, "rollout": "k1"}},
     {"fraud": {"weights": {"v1": 90, "v2": 10}, "rollout": "k2"}},
     ["fraud: rollout block changed (it starts again)"]),
    ({"fraud": {"weights": {"v1": 100}}},
     {"fraud": {"weights": {"v1": 90, "v2": 10}, "rollout": "k1"}},
     ["fraud: v1 100 -> v1 90, v2 10; rollout started"]),
], ids=["weights-versions-validation", "colour-and-added-route", "removed", "no-change",
        "rollout-block-changed", "rollout-started"])
def test_history_says_what_changed(before: dict, after: dict, said: list[str]) -> None:
    from router.control.history import changes
    assert changes(before, after) == said


async def test_putting_the_good_file_back_after_a_rejection_is_recorded(
        tmp_path: Path) -> None:
    from helpers import rewrite

    from router.process.app import RouterApp
    path = write_config(tmp_path, [base_route()])
    app = RouterApp(path, run_rollouts=False)
    await app.start()
    try:
        good = path.read_bytes()
        rewrite(path, lambda doc: doc["routes"][0].update(split={"v1": 90, "v2": 5}))
        with pytest.raises(ConfigError):
            await app.reloader.reload("api")
        path.write_bytes(good)
        await app.reloader.reload("api")
    finally:
        await app.stop()
    events = [orjson.loads(line) for line in
              (tmp_path / "state" / "history.jsonl").read_bytes().splitlines()]
    assert [e["event"] for e in events] == ["applied", "rejected", "applied"]
    assert events[2]["revision"] == events[0]["revision"] and events[2]["source"] == "api"


@pytest.mark.parametrize(("at", "code", "expect"), [
    ("2026-11-26T11:30:00", 0,
     "  fraud: v1 50, v2 50 (rollout step 2/3 at 2026-11-26T11:00:00.000Z)"),
    ("2026-11-26T10:30:00", 0,
     "  fraud: v1 95, v2 5 (applied rev abc at 2026-11-26T10:00:00.000Z)"),
    ("2026-11-26T09:00:00", 1, "no config was applied before 2026-11-26T09:00:00.000Z"),
    ("yesterday-ish", 1, "bad time 'yesterday-ish': use ISO 8601 (2026-11-28T10:00:00Z) "
                         "or 30m, 2h, 7d"),
], ids=["rollout", "applied", "before", "bad-time"])
def test_history_at(tmp_path: Path, capsys: pytest.CaptureFixture[str], at: str, code: int,
                    expect: str) -> None:
    assert main(["history", "-c", str(_history(tmp_path)), "--at", at]) == code
    captured = capsys.readouterr()
    assert any(line.startswith(expect)
               for line in (captured.out if code == 0 else captured.err).splitlines())


def test_a_rollout_reads_as_one_line() -> None:
    row = {"route": "fraud", "baseline": "v1", "canary": "v2", "status": "running",
           "weight": 5.0, "step": 1, "steps": [1, 5, 25],
           "evidence": {"canary": {"requests": 120, "errors": 1},
                        "baseline": {"requests": 2300, "errors": 4}}}
    assert describe_rollout(row) == (
        "fraud: v1 -> v2 running at 5% (step 2/3); canary 120 requests, 1 errors; "
        "baseline 2300 requests, 4 errors")


def test_output_piped_into_a_reader_that_leaves_is_not_an_error(tmp_path) -> None:
    """`model-router history | head -1`: the closed pipe ends the command quietly, exit 0."""
    import subprocess
    import sys

    state = tmp_path / "state"
    state.mkdir()
    lines = b"".join(b'{"ts": "2026-11-28T00:00:%02d.000Z", "event": "rejected", "revision": null, '
                     b'"source": "file", "errors": ["x"]}\n' % (i % 60) for i in range(20000))
    (state / "history.jsonl").write_bytes(lines)
    config = tmp_path / "router.yaml"
    config.write_text("state_dir: state\nroutes: []\n")
    proc = subprocess.Popen([sys.executable, "-m", "router.cli", "history", "-c", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    proc.stdout.readline()
    proc.stdout.close()  # what `head -1` does after its line
    _, err = proc.communicate(timeout=30)
    assert b"Traceback" not in err and proc.returncode == 0, err[-500:]


@pytest.mark.parametrize("argv", [
    ["audit", "--since", "1x"], ["audit", "--until", "1x"], ["audit", "abc", "--since", "1x"],
    ["history", "--at", "1x"], ["report", "--since", "1x"],
    ["baseline", "--from-log", "logs", "--since", "1x"],
], ids=lambda argv: "-".join(a for a in argv if a.startswith("-") or a.isalpha()))
def test_a_bad_time_says_both_forms_it_takes(tmp_path: Path, argv: list[str],
                                             capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(tmp_path, [base_route()])
    assert main([*argv, "-c", str(path)]) == 1
    captured = capsys.readouterr()
    assert captured.err == ("bad time '1x': use ISO 8601 (2026-11-28T10:00:00Z) "
                            "or 30m, 2h, 7d\n")
    assert captured.out == ""


def _log(folder: Path, records: list[dict]) -> Path:
    logs = folder / "logs"
    logs.mkdir(exist_ok=True)
    (logs / "predictions-20260101T000000-1.jsonl").write_bytes(
        b"".join(orjson.dumps(r) + b"\n" for r in records))
    return logs


def _records(statuses: list[int], now: float) -> list[dict]:
    from router.timefmt import iso
    # one an hour back from now, newest last: record i is (len - i) hours old
    return [{"ts": iso(now - 3600 * (len(statuses) - i)), "request_id": f"r{i}",
             "route": "fraud", "version": "v1", "role": "primary", "status": status}
            for i, status in enumerate(statuses)]


@pytest.mark.parametrize("given, kept", [
    ("5xx", [500, 502, 503, 599]), ("4XX", [400, 404, 422]), ("404", [404]),
    ("200", [200, 200]), ("3xx", []),
], ids=["5xx", "4xx-upper-case", "exact-404", "exact-200", "no-match"])
def test_audit_filters_by_status_class_or_code(tmp_path: Path, given: str, kept: list[int],
                                               capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(tmp_path, [base_route()])
    statuses = [200, 400, 404, 422, 500, 502, 503, 599, 200]
    _log(tmp_path, _records(statuses, time.time()))
    assert main(["audit", "-c", str(path), "--status", given, "--json"]) == 0
    rows = orjson.loads(capsys.readouterr().out)
    assert [r["status"] for r in rows] == kept


@pytest.mark.parametrize("given", ["5x", "xx5", "6xx", "42", "abc", "600"])
def test_audit_refuses_a_status_it_cannot_read(given: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["audit", "--status", given])
    assert done.value.code == 2
    assert "a code (404) or a class (4xx, 5xx)" in capsys.readouterr().err


@pytest.mark.parametrize("argv, kept", [
    (["--since", "2h"], ["r7", "r8"]),                  # 2h back: the last two
    (["--since", "150m", "--until", "90m"], ["r7"]),   # relative both ends
    (["--since", "30m"], []),
], ids=["since-2h", "between-150m-and-90m", "since-30m"])
def test_audit_takes_relative_times(tmp_path: Path, argv: list[str], kept: list[str],
                                    capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(tmp_path, [base_route()])
    # r0..r8, r8 one hour old, r7 two hours old (plus the seconds this test takes)
    _log(tmp_path, _records([200] * 9, time.time() + 60))
    assert main(["audit", "-c", str(path), *argv, "--json"]) == 0
    assert [r["request_id"] for r in orjson.loads(capsys.readouterr().out)] == kept


def test_audit_piped_into_a_reader_that_leaves_is_not_an_error(tmp_path: Path) -> None:
    """`model-router audit ... | head -1`: more than a pipe's buffer of rows, the reader
    closes after one line; no traceback, exit 0."""
    path = write_config(tmp_path, [base_route()])
    _log(tmp_path, _records([200] * 20000, time.time()))
    proc = subprocess.Popen([sys.executable, "-m", "router.cli", "audit", "-c", str(path),
                             "--limit", "20000"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    assert proc.stdout.readline().split()[:2] == [b"ts", b"request_id"]
    proc.stdout.close()  # what `head -1` does after its line
    _, err = proc.communicate(timeout=60)
    assert b"Traceback" not in err and proc.returncode == 0, err[-500:]


def test_a_401_names_the_token_variable(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The admin API refuses a POST without the token; the CLI says which variable to set."""
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    class Refuse(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            self.send_response(401)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"error": "admin token required", "code": "unauthorized"}')

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Refuse)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        path = write_config(tmp_path, [base_route()],
                            admin={"host": "127.0.0.1", "port": server.server_port,
                                   "token_env": "ROUTER_TOKEN_FOR_TEST"})
        monkeypatch.delenv("ROUTER_TOKEN_FOR_TEST", raising=False)
        assert main(["rollout", "pause", "fraud", "-c", str(path)]) == 1
    finally:
        server.shutdown()
        server.server_close()
    err = capsys.readouterr().err
    assert err.strip() == ("401: admin token required (set ROUTER_TOKEN_FOR_TEST to the admin "
                           "token; it is not set here)")


def test_history_tells_an_apply_against_the_weights_a_rollout_left(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from router.control.history import print_events
    route = {"versions": ["v1", "v2"], "validation": "enforce", "rollout": "k1"}
    print_events([
        {"ts": "2026-11-26T10:00:00.000Z", "event": "applied", "revision": "a",
         "source": "file", "routes": {"fraud": {**route, "weights": {"v1": 90, "v2": 10}}}},
        {"ts": "2026-11-26T11:00:00.000Z", "event": "promoted", "revision": "a",
         "source": "rollout", "routes": {"fraud": {"weights": {"v1": 0, "v2": 100},
                                                   "step": 1, "steps": 2, "rollout": "k1"}}},
        {"ts": "2026-11-26T12:00:00.000Z", "event": "applied", "revision": "b",
         "source": "file", "routes": {"fraud": {**route, "weights": {"v1": 0, "v2": 100},
                                                "validation": "log"}}},
    ])
    last = capsys.readouterr().out.splitlines()[-1]
    assert last.endswith("fraud: validation enforce -> log")  # not "v1 90, v2 10 -> ..."
