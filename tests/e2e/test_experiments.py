"""End to end: the experiments run as a user runs them (``python -m experiments.<name>``), each
starting its own daemon through the CLI. Only their outcome is checked, never their timings."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tenantd.devices.twin import get_twin
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
    assert {r["client"] for r in daemon} == {"TenantClient", "AsyncTenantClient", "KServe HTTP binary", "KServe gRPC"}
    assert sorted(int(r["concurrency"]) for r in daemon if r["client"] == "KServe gRPC") == [1, 8]
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


def test_worker_overhead_quick_compares_worker_inline_and_direct(tmp_path: Path) -> None:
    result = run_module("experiments.worker_overhead", "--quick", "--out", str(tmp_path))
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    report = json.loads((tmp_path / "worker_overhead.json").read_text())
    assert report["outputs_equal"] is True
    phases = [(r["phase"], r["concurrency"]) for r in report["rows"]]
    assert phases == [
        ("direct (baseline)", 1),
        ("worker hop (no daemon)", 1),
        ("worker hop (no daemon)", 2),
        ("daemon inline", 1),
        ("daemon inline", 2),
        ("daemon process", 1),
        ("daemon process", 2),
    ]
    assert all(r["n"] > 0 and r["throughput_per_s"] > 0 for r in report["rows"])
    assert "the worker's cost in the daemon" in result.stdout
    assert (tmp_path / "worker_overhead.md").read_text() == result.stdout


def test_demo_serves_two_tenants_with_equal_answers() -> None:
    result = run_module("experiments.demo", "--requests", "30")
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert "demo OK" in result.stdout
    assert result.stdout.count("30/30") == 2, result.stdout  # alice's and bob's rows


# ---------------------------------------------------------------------------------------- issue 6

CONCURRENCY_S = 280  # the quick runs below take ~20-40 s on a 2-core machine; this only stops a hung one
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run_experiment(*args: str, timeout: float = CONCURRENCY_S) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], capture_output=True, text=True, timeout=timeout, env=daemon_env(), cwd=REPO
    )


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as stream:
        return list(csv.DictReader(stream))


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, path
    assert data[12:16] == b"IHDR"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width > 100 and height > 100, (path, width, height)


def assert_tables_well_formed(markdown: str) -> None:
    """Every Markdown table's rows have as many cells as its header."""
    tables: list[list[str]] = []
    previous = False
    for line in markdown.splitlines():
        row = line.startswith("|")
        if row and not previous:
            tables.append([])
        if row:
            tables[-1].append(line)
        previous = row
    assert tables
    for table in tables:
        assert len(table) >= 3, table  # header, rule, at least one row
        assert len({line.count("|") for line in table}) == 1, table


# Step limit 12: past the NCS2 twin's bound (9 tenants of the MobileNetV2/Inception V4 mix).
CONCURRENCY_ARGS = ("--quick", "--profile", "ncs2", "--profile", "edgetpu", "--max-tenants", "12", "--seed", "5")


@pytest.fixture(scope="module")
def concurrency_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    out = tmp_path_factory.mktemp("concurrency")
    result = run_experiment("experiments.concurrency", *CONCURRENCY_ARGS, "--out", str(out))
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return out, result


@pytest.mark.timeout(CONCURRENCY_S + 20)
def test_concurrency_quick_ncs2_stops_at_the_memory_bound(
    concurrency_run: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    out, result = concurrency_run
    steps = read_csv(out / "ncs2-round-robin.csv")
    from experiments.concurrency import STEP_COLUMNS, TENANT_COLUMNS

    assert list(steps[0]) == STEP_COLUMNS
    assert list(read_csv(out / "ncs2-round-robin-tenants.csv")[0]) == TENANT_COLUMNS
    *loaded, stop = steps
    # The run ends at the first refusal, which is admission's, for memory, within the step limit.
    assert stop["refused"] == "True" and stop["refusal_code"] == "ADMISSION_DENIED", stop
    assert "short" in stop["refusal_reason"] and "dedicated budget" in stop["refusal_reason"]
    assert len(loaded) >= 2 and all(s["refused"] == "False" for s in loaded)
    assert [int(s["tenants"]) for s in loaded] == list(range(1, len(loaded) + 1))
    assert int(stop["tenants"]) == len(loaded) and int(stop["step"]) == len(loaded) + 1
    # The ledger never exceeds the budget, which is the NCS2 twin's (twin timing: --scale does not apply).
    twin = get_twin("ncs2")
    assert len(loaded) == twin.admitted_limit([twin.model("mobilenet_v2"), twin.model("inception_v4")])  # plan's
    for s in steps:
        assert 0 < int(s["memory_used_bytes"]) <= int(s["memory_budget_bytes"]) == (512 - 32) * 2**20, s
    for s in loaded:
        assert float(s["throughput_per_s"]) > 0 and int(s["requests"]) > 0
        assert float(s["p99_ms"]) >= float(s["p50_ms"]) > 0
        assert int(s["models_admitted"]) == int(s["tenants"])
    tenants = read_csv(out / "ncs2-round-robin-tenants.csv")
    last_step = [t for t in tenants if t["step"] == loaded[-1]["step"]]
    # Every admitted tenant is listed in the last step (one that finished nothing in the short quick
    # window, as on a loaded machine, with 0), and together they served the step's requests.
    assert len(last_step) == len(loaded)
    assert sum(int(t["requests"]) for t in last_step) == int(loaded[-1]["requests"])
    assert sum(int(t["requests"]) > 0 for t in last_step) >= len(loaded) // 2
    meta = json.loads((out / "ncs2-round-robin.json").read_text())
    assert meta["complete"] is True and meta["parameters"]["seed"] == 5 and meta["policy"]["profile"] == "ncs2"
    assert meta["generator_ping_per_s"] > 0
    assert "ncs2-round-robin" in result.stdout and "refused" in result.stdout


@pytest.mark.timeout(CONCURRENCY_S + 20)
def test_concurrency_quick_edgetpu_keeps_admitting_and_switches(
    concurrency_run: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    out, _ = concurrency_run
    for discipline in ("round-robin", "swap-aware"):  # the comparison runs on the same load
        steps = read_csv(out / f"edgetpu-{discipline}.csv")
        assert [int(s["tenants"]) for s in steps] == list(range(1, 9)), steps
        assert all(s["refused"] == "False" and s["overcommit"] == "swap" for s in steps)
        last = steps[-1]
        # Models stay loaded on an EdgeTPU (the device streams parameters in on a switch): switches
        # are counted, nothing is reloaded.
        assert int(last["switches"]) > 0 and int(last["reloads"]) == 0, last
        assert last["discipline"] == discipline
        assert int(last["models_admitted"]) == 8
    report = (out / "report.md").read_text()
    assert "concurrency limit **" in report and "edgetpu-swap-aware" in report
    assert "Is the load generator the bottleneck?" in report
    assert_tables_well_formed(report)
    for name in ("throughput_p99.png", "switch_overhead.png", "memory.png"):
        assert_png(out / name)


@pytest.mark.timeout(CONCURRENCY_S + 20)
def test_concurrency_resume_keeps_finished_runs_and_refuses_other_parameters(
    concurrency_run: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    out, _ = concurrency_run
    before = (out / "ncs2-round-robin.csv").read_bytes()
    again = run_experiment("experiments.concurrency", *CONCURRENCY_ARGS, "--out", str(out), "--resume")
    assert again.returncode == 0, again.stderr
    assert again.stderr.count("kept from the earlier run") == 3
    assert (out / "ncs2-round-robin.csv").read_bytes() == before
    other = run_experiment(
        "experiments.concurrency", *CONCURRENCY_ARGS[:-1], "6", "--out", str(out), "--resume", timeout=60
    )
    assert other.returncode == 1 and "other parameters" in other.stderr and "seed" in other.stderr


@pytest.mark.timeout(CONCURRENCY_S + 20)
def test_microbench_quick_measures_every_model_and_labels_the_estimate(tmp_path: Path) -> None:
    from experiments.power import detect_meters

    result = run_experiment("experiments.microbench", "--quick", "--seed", "2", "--out", str(tmp_path))
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    rows = read_csv(tmp_path / "microbench.csv")
    # The zoo's models when it is built here, else the stand-ins; LiteRT is offered only .tflite files.
    assert rows and all(r["status"] in ("ok", "unsupported") for r in rows), rows
    assert all(r["note"] for r in rows if r["status"] == "unsupported")
    litert = [r for r in rows if r["runtime"] == "litert"]
    assert litert and all(r["status"] == "ok" and r["format"].startswith("tflite") for r in litert), rows
    for r in litert:
        assert float(r["throughput_per_s"]) > 0 and float(r["p99_ms"]) >= float(r["p50_ms"]) > 0
        assert float(r["load_ms"]) > 0 and int(r["footprint_bytes"]) > 0
        assert float(r["energy_j"]) > 0 and float(r["inferences_per_j"]) > 0
        assert float(r["direct_p50_ms"]) > 0  # the in-process comparison ran
    report = (tmp_path / "report.md").read_text()
    assert "This machine beside the devices" in report and "aallan/benchmarking-ml-on-the-edge" in report
    assert "edgetpu: quoted" in report and "rpi3: quoted" in report
    assert_tables_well_formed(report)
    if not detect_meters():  # this host has no meter: every energy figure is an estimate, and says so
        assert all(r["energy_is_estimate"] == "True" and r["energy_source"].startswith("ESTIMATE") for r in litert)
        assert "(est.)" in report and "ESTIMATE" in report and "(est.)" in result.stdout
    meta = json.loads((tmp_path / "microbench.json").read_text())
    assert meta["parameters"]["seed"] == 2 and len(meta["results"]) == len(rows)


def test_worker_cpu_counts_each_process_cpu_per_request() -> None:
    result = run_module("experiments.worker_cpu", "--quick", "--rounds", "2", "--requests", "100")
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    rows = {
        line.split("|")[1].strip(): line.split("|")[2:-1]
        for line in result.stdout.splitlines()
        if line.startswith("| ")
    }
    assert set(rows) >= {"direct", "inline", "process"}
    daemon, worker = 3, 4  # columns after the phase: rounds, req/s, x direct, daemon CPU, worker CPU
    assert rows["inline"][worker].strip() == "" and float(rows["inline"][daemon]) > 0
    assert float(rows["process"][worker]) > 0 and float(rows["process"][daemon]) > 0
    assert "'worker':" in result.stdout  # the worker's threads were counted
