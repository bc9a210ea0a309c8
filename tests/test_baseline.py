"""`model-router baseline --infer`: the inferred ranges are the training extremes, said so in
the output; `--no-ranges` leaves them out; where the baseline goes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest
import yaml

from router.analysis.baseline import RANGES_NOTE, infer_schema

ROOT = Path(__file__).resolve().parents[1]
ROWS = [{"amount": 12.5, "items": 3, "country": "DE"},
        {"amount": 0.375, "items": 1, "country": "US"},
        {"amount": 40.0, "items": 7, "country": "US"}]


@pytest.mark.parametrize("ranges,expected", [
    (True, {"amount": {"type": "float", "min": 0.375, "max": 40.0},
            "items": {"type": "int", "min": 1, "max": 7}}),
    (False, {"amount": {"type": "float"}, "items": {"type": "int"}}),
], ids=["training-extremes", "no-ranges"])
def test_infer_schema_ranges(ranges: bool, expected: dict[str, object]) -> None:
    fields = infer_schema(ROWS, ranges=ranges)["fields"]
    assert {k: fields[k] for k in expected} == expected
    assert fields["country"] == {"type": "string", "enum": ["DE", "US"]}


def run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    data = tmp_path / "train.jsonl"
    data.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in ROWS))
    return subprocess.run([sys.executable, "-m", "router.cli", "baseline", "--from", str(data),
                           "--schema", "new@1", *args], capture_output=True, text=True,
                          cwd=tmp_path, env={"PYTHONPATH": str(ROOT), "PATH": ""})


@pytest.mark.slow
def test_infer_explains_the_ranges_and_writes_beside(tmp_path: Path) -> None:
    done = run(tmp_path, "--infer")
    assert done.returncode == 0, done.stderr
    comments = [line for line in done.stdout.splitlines() if line.startswith("#")]
    assert f"# {RANGES_NOTE}" in comments
    assert "extremes of these training rows" in RANGES_NOTE and "--no-ranges" in RANGES_NOTE
    assert "validation: enforce" in RANGES_NOTE and "422" in RANGES_NOTE
    amount = yaml.safe_load(done.stdout)["schemas"]["new@1"]["fields"]["amount"]
    assert (amount["min"], amount["max"]) == (0.375, 40.0)
    # stdout carries the schema, so the baseline goes where --out's help says
    written = tmp_path / "new-1.baseline.json"
    assert orjson.loads(written.read_bytes())["rows"] == 3
    assert "written to new-1.baseline.json" in done.stderr


@pytest.mark.slow
def test_no_ranges_leaves_min_max_out(tmp_path: Path) -> None:
    done = run(tmp_path, "--infer", "--no-ranges", "--out", "b.json")
    assert done.returncode == 0, done.stderr
    fields = yaml.safe_load(done.stdout)["schemas"]["new@1"]["fields"]
    assert fields["amount"] == {"type": "float"} and fields["items"] == {"type": "int"}
    assert "--no-ranges" in done.stdout and RANGES_NOTE not in done.stdout
    assert orjson.loads((tmp_path / "b.json").read_bytes())["features"]["amount"]
    usage = run(tmp_path, "--no-ranges")
    assert usage.returncode == 2 and "--no-ranges goes with --infer" in usage.stderr


def test_help_says_where_infer_writes() -> None:
    from router.cli import build_parser
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    baseline = sub.choices["baseline"]  # type: ignore[attr-defined]
    helps = {a.dest: a.help or "" for a in baseline._actions}
    assert "<schema>.baseline.json" in helps["out"] and "--infer" in helps["out"]
    assert "extremes" in helps["infer"] and "min/max" in helps["no_ranges"]
