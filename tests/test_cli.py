"""The command line in process: parsing, dispatch, and what each view prints (no sockets;
the commands that need a running router or a log are tested in test_rollout and test_audit)."""

from __future__ import annotations

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
], ids=["weights-versions-validation", "colour-and-added-route", "removed", "no-change"])
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
    ("yesterday-ish", 1, "bad time: "),
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
