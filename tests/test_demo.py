"""`model-router demo`: the story end to end, and Ctrl-C stops everything cleanly."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # a 12 s story in a subprocess

ROOT = Path(__file__).resolve().parents[1]


def test_demo_story(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "router.cli", "--log-level", "ERROR", "demo",
                           "--dir", str(tmp_path / "demo"), "--duration", "12"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    out = done.stdout
    assert done.returncode == 0, done.stderr[-2000:]
    assert "weight  95.0%" in out and "weight  50.0%" in out and "weight 100.0%" in out
    assert "v4 requires avg_purchase_last_10_days; traffic carries avg_purchase_last_7_days" \
        in out
    assert "refused, traffic keeps flowing" in out
    assert "errors 0" in out and not re.search(r"errors [1-9]", out)
    assert "== audit of one request" in out and "trained on s3://demo-data/fraud/" in out
    assert "== report ==" in out and "converted: n=" in out
    assert "Try next:" in out
    for name in ("router.yaml", "registry.yaml", "baselines/fraud-v1.json"):
        assert (tmp_path / "demo" / name).exists()
    # The users speak all three protocols, and every one of them is logged.
    counts = re.findall(r"by protocol: json (\d+), binary (\d+), grpc (\d+)", out)
    assert counts and all(int(n) > 0 for n in counts[-1])
    logged = (tmp_path / "demo" / "logs").glob("*.jsonl")
    text = "".join(path.read_text() for path in logged)
    assert '"binary":true' in text and '"upstream":"grpc://127.0.0.1:' in text


def test_demo_ctrl_c_stops_cleanly(tmp_path: Path) -> None:
    errors = open(tmp_path / "stderr.txt", "w")  # a file: an unread pipe could fill and block
    proc = subprocess.Popen([sys.executable, "-m", "router.cli", "--log-level", "ERROR", "demo",
                             "--dir", str(tmp_path / "demo"), "--no-story", "--duration", "60"],
                            stdout=subprocess.PIPE, stderr=errors, text=True, cwd=ROOT)
    first = proc.stdout.readline()
    ports = [int(p) for p in re.findall(r"ports (\d+)/(\d+)/(\d+)", first)[0]]
    for _ in range(2):  # two one-second status lines: traffic flowed, records were written
        assert proc.stdout.readline().startswith("t=")
    proc.send_signal(signal.SIGINT)
    assert proc.wait(30) == 0, (tmp_path / "stderr.txt").read_text()[-2000:]
    errors.close()
    for port in ports:  # the model servers are gone
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0
    logs = list((tmp_path / "demo" / "logs").glob("predictions-*.jsonl"))
    assert logs and logs[0].read_bytes().endswith(b"\n")  # flushed, no torn line
