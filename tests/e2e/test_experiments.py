"""End to end: the experiments run as a user runs them (``python -m experiments.<name>``), each
starting its own daemon through the CLI. Only their outcome is checked, never their timings."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.daemon import REPO, daemon_env

pytestmark = pytest.mark.e2e

TIMEOUT_S = 120  # each run takes ~10 s on a 2-core machine; this only stops a hung one


def run_module(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        env=daemon_env(),
        cwd=REPO,
    )


def test_overhead_quick_writes_verified_results(tmp_path: Path) -> None:
    seed = 3
    result = run_module("experiments.overhead", "--quick", "--seed", str(seed), "--out", str(tmp_path))
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert "| direct (baseline) |" in result.stdout

    with (tmp_path / "overhead.csv").open(newline="") as stream:
        rows = list(csv.DictReader(stream))
    direct = [r for r in rows if r["phase"].startswith("direct")]
    daemon = [r for r in rows if r["phase"] == "daemon"]
    assert direct and daemon, rows
    assert {r["client"] for r in daemon} == {"TenantClient", "AsyncTenantClient"}
    for row in direct + daemon:
        assert float(row["throughput_per_s"]) > 0, row
        assert int(row["n"]) > 0, row
    for row in daemon:
        assert float(row["throughput_ratio"]) > 0, row

    report = json.loads((tmp_path / "overhead.json").read_text())
    assert report["parameters"]["seed"] == seed
    assert report["parameters"]["quick"] is True
    assert report["parameters"]["model"] == "cnn"
    assert report["outputs_equal"] is True
    assert report["model"]["input_shape"] == [1, 224, 224, 3]
    assert report["model"]["input_dtype"] == "uint8"
    assert report["model"]["input_bytes"] == 150_528
    assert len(report["results"]) == len(rows)
    assert (tmp_path / "overhead.md").read_text() == result.stdout


def test_demo_serves_two_tenants_with_equal_answers() -> None:
    result = run_module("experiments.demo", "--requests", "30")
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert "demo OK" in result.stdout
    assert result.stdout.count("30/30") == 2, result.stdout  # alice's and bob's rows
