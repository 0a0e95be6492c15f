"""Concurrency scaling: how many tenants one tenantd device serves, and at what cost (the paper's
third question, asked of tenantd itself).

For each device profile (emulated on this CPU, or the profile of a daemon given by
``--endpoint``) and each scheduling discipline, the experiment starts ``tenantd serve`` through
its CLI and adds tenants one at a time. Each new tenant submits its model(s) with the public
client library; then every admitted tenant drives a closed-loop load (``--in-flight`` requests
outstanding per tenant) from ``--clients`` load-generator processes, each holding one
``AsyncTenantClient`` per tenant it drives, for ``--step-s`` seconds after ``--warmup-s``. Per
step it records who was admitted, resident and refused (and why), aggregate throughput,
per-tenant p50/p99 latency, switches and their total overhead (the daemon's own ``switch``
events), the memory ledger against the budget (``status``), and the CPU used by the load
generator and by the daemon. A ``reject`` run stops at the first refusal (the memory bound); a
``swap`` run (the EdgeTPU's cache) goes on until ``--swap-tenants``.

Models: by default each tenant gets a stand-in for one of the paper's models: a float32 MLP from
:func:`models.tiny.sized_mlp` with the parameter bytes of that model on that device (parameter
count x bytes per parameter: 4 for float32 on the CPU, Jetsons and the Raspberry Pi, 2 for the
NCS2's FP16, 1 for the EdgeTPU's int8), times ``--scale``. Under ``--scale s`` the emulated
device's capacity and reserve are scaled by ``s`` too, so the number of tenants at the bound
barely changes, while the quick mode's runs take seconds (the runtime library's fixed charge and
each interpreter's fixed cost do not scale: that is why the count is not exactly invariant).
``--model PATH`` (repeatable) or ``--zoo NAME`` (repeatable; issue 4's zoo) replace the stand-ins.

Shared-memory profiles (Jetsons, Raspberry Pi) budget what the DRAM has left after the host's
live use. On an emulating workstation that would subtract this machine's use from a 1-8 GB
device; instead the experiment reads the daemon's ``memory.host_other_bytes`` once it runs and
sets ``capacity_bytes`` (``policy set``, as an operator would) to that plus the device's
capacity, so the models get the device's DRAM minus its reserve, which stands for the device's
own OS. Other work on the emulating machine comes and goes by hundreds of MB, which would move
a 1 GB device's bound at random, so the capacity is re-anchored the same way before each new
tenant; ``--live-host`` sets it once and lets the budget follow this host's use live, as the
daemon does on a real Jetson. Every step records the host's use and the budget. Under twin timing
(the default) none of this applies: the daemon admits against each twin's modelled memory, not this
host's, so nothing is anchored and the limits are ``experiments.plan``'s (``--scale`` only sizes
the stand-in files).

Outputs (``--out``, default ``experiments/out/concurrency``): per run ``<run>.csv`` (one row per
step), ``<run>-tenants.csv`` (one row per tenant per step) and ``<run>.json`` (parameters,
machine, versions, outcome); ``run.json`` for the whole invocation; ``throughput_p99.png``,
``switch_overhead.png``, ``memory.png``; ``report.md``. ``--resume`` keeps finished runs of the
same command line; a different one is refused with a message.

    python -m experiments.concurrency --quick   # ncs2, jetson-nano, edgetpu x 2 disciplines, a few min
    python -m experiments.concurrency           # all five profiles at full size, ~10 min
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import gc
import json
import multiprocessing
import multiprocessing.connection
import shlex
import sys
import tempfile
import time
import tomllib
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from tqdm import tqdm

from experiments.harness import (
    OUT_ROOT,
    REPO,
    ExperimentError,
    check_out_dir,
    daemon_process,
    fmt,
    git_commit,
    machine_info,
    markdown_table,
    now_iso,
    percentile,
    plain_table,
    toml_text,
    versions,
    write_json,
)
from tenantclient import AsyncTenantClient, TenantClient, TenantError, errors
from tenantd.devices.profiles import PROFILES, MemoryModel
from tenantd.devices.twin import get_twin

MiB = 2**20
EXPERIMENT = "concurrency"
DEFAULT_OUT = OUT_ROOT / EXPERIMENT
REJECT_PROFILES = ("ncs2", "rpi3", "jetson-nano", "jetson-tx2")
SWAP_PROFILES = ("edgetpu",)
ALL_PROFILES = REJECT_PROFILES + SWAP_PROFILES
# Quick: the devices whose shape the paper describes (NCS2 and a Jetson stop at their memory bound,
# the EdgeTPU admits many and pays in switches). The Pi is left to the full run: its twin's Inception
# V4 takes 5.4 s a request, which alone would make the quick run minutes longer.
QUICK_PROFILES = ("ncs2", "jetson-nano", "edgetpu")
DISCIPLINES = ("round-robin", "weighted-fair", "swap-aware")

# Parameter counts of the paper's image classifiers (Sandler et al. 2018, Table; Szegedy et al.
# 2017 / timm's inception_v4): the stand-ins carry as many weight bytes as these would.
PAPER_MODELS: dict[str, int] = {"mobilenet_v2": 3_400_000, "inception_v4": 42_700_000}
BYTES_PER_PARAM = {"edgetpu": 1, "ncs2": 2}  # int8 (EdgeTPU compiler), FP16 (MYRIAD); else float32
DEFAULT_BYTES_PER_PARAM = 4

EVENTS_LIMIT = 10_000  # the daemon's cap per reply (server.MAX_EVENTS_PER_REPLY)
REQUEST_TIMEOUT_S = 60.0


# ---------------------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class MixEntry:
    """One model of the mix: a stand-in (name + parameter count) or a file (path)."""

    name: str
    params: int | None = None
    path: str | None = None

    def describe(self, profile: str, scale: float) -> str:
        if self.path is not None:
            return f"{self.name} ({self.path})"
        return f"{self.name} stand-in, {standin_bytes(self, profile, scale) / 1e6:.1f} MB of weights"


def standin_bytes(entry: MixEntry, profile: str, scale: float) -> int:
    assert entry.params is not None
    return int(entry.params * BYTES_PER_PARAM.get(profile, DEFAULT_BYTES_PER_PARAM) * scale)


@dataclass(frozen=True)
class RunSpec:
    profile: str
    discipline: str

    @property
    def name(self) -> str:
        return f"{self.profile}-{self.discipline}"


@dataclass(frozen=True)
class Settings:
    profiles: tuple[str, ...]
    disciplines: tuple[str, ...] | None  # None: round-robin, plus swap-aware where the profile swaps
    scale: float
    warmup_s: float
    step_s: float
    max_tenants: int
    swap_tenants: int  # step limit of runs on a swapping profile, which no memory bound stops
    clients: int
    in_flight: int
    models_per_tenant: int
    mix: tuple[MixEntry, ...]
    seed: int
    quick: bool
    endpoint: str | None
    live_host: bool
    out: Path
    resume: bool
    timing: str = "twin"  # the daemon's --timing: device time from the profile's twin, or this CPU's

    def step_limit(self, spec: RunSpec) -> int:
        swaps = PROFILES[spec.profile].memory_model is MemoryModel.CACHE
        return min(self.max_tenants, self.swap_tenants) if swaps else self.max_tenants

    def runs(self) -> list[RunSpec]:
        specs = []
        for profile in self.profiles:
            swaps = PROFILES[profile].memory_model is MemoryModel.CACHE
            chosen = self.disciplines or (("round-robin", "swap-aware") if swaps else ("round-robin",))
            specs += [RunSpec(profile, d) for d in chosen]
        return specs

    def parameters(self) -> dict[str, Any]:
        values = asdict(self)
        values["out"] = str(self.out)
        values["mix"] = [asdict(m) for m in self.mix]
        return values


# ---------------------------------------------------------------------------------------- load generator


@dataclass(frozen=True)
class Assignment:
    """One tenant's share of a step's load: its models, with their input specs."""

    tenant: str
    models: tuple[tuple[str, tuple[int, ...], str], ...]  # (name, shape, dtype)


def _inputs(models: Sequence[tuple[str, tuple[int, ...], str]], seed: int) -> list[tuple[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    for name, shape, dtype in models:
        concrete = tuple(d if d > 0 else 1 for d in shape)  # free dimensions: 1
        kind = np.dtype(dtype)
        if kind.kind == "f":
            x = rng.standard_normal(concrete).astype(kind)
        else:
            info = np.iinfo(kind)
            x = rng.integers(info.min, info.max, concrete, dtype=kind, endpoint=True)
        out.append((name, x))
    return out


async def _drive(command: dict[str, Any]) -> dict[str, Any]:
    """Run one step's closed loops for this process's tenants; return what happened in the window."""
    endpoint: str = command["endpoint"]
    start_at, warm_end, end = command["start_at"], command["warm_end"], command["end"]
    ping: bool = command["kind"] == "ping"
    records: list[tuple[str, str, float, bool, bool, float, float]] = []
    completed = 0
    failures: Counter[str] = Counter()
    cpu: dict[str, float] = {}

    async def cpu_meter() -> None:
        # The window's CPU time of this process: the load generator's own cost, for the report.
        await asyncio.sleep(max(0.0, warm_end - time.monotonic()))
        cpu["start"] = time.process_time()
        await asyncio.sleep(max(0.0, end - time.monotonic()))
        cpu["end"] = time.process_time()

    async def loop(client: AsyncTenantClient, tenant: str, inputs: list[tuple[str, np.ndarray]], k: int) -> None:
        nonlocal completed
        i = k
        while time.monotonic() < end:
            name, x = inputs[i % len(inputs)]
            i += 1
            started = time.monotonic()
            try:
                if ping:
                    await client.ping()
                    timings: dict[str, Any] = {}
                else:
                    timings = (await client.infer_detailed(name, x, timeout=REQUEST_TIMEOUT_S)).timings
            except TenantError as exc:
                failures[exc.code] += 1
                continue
            done = time.monotonic()
            if warm_end <= done <= end:
                completed += 1
                if started >= warm_end:
                    records.append(
                        (
                            tenant,
                            name,
                            (done - started) * 1e3,
                            bool(timings.get("switch", False)),
                            "load_ms" in timings,
                            float(timings.get("queue_ms", 0.0)),
                            float(timings.get("compute_ms", 0.0)),
                        )
                    )

    clients = [AsyncTenantClient(endpoint, tenant=a.tenant) for a in command["assignments"]]
    try:
        await asyncio.sleep(max(0.0, start_at - time.monotonic()))
        tasks = [cpu_meter()]
        for client, a in zip(clients, command["assignments"], strict=True):
            inputs = _inputs(a.models, command["seed"]) if not ping else [("", np.zeros(1))]
            tasks += [loop(client, a.tenant, inputs, k) for k in range(command["in_flight"])]
        await asyncio.gather(*tasks)
    finally:
        for client in clients:
            await client.close()
    return {
        "records": records,
        "completed": completed,
        "errors": dict(failures),
        "cpu_s": cpu.get("end", 0.0) - cpu.get("start", 0.0),
    }


def _worker_main(conn: multiprocessing.connection.Connection) -> None:
    """A load-generator process: runs the steps it is sent until told to stop."""
    while True:
        command = conn.recv()
        if command is None:
            return
        try:
            conn.send(asyncio.run(_drive(command)))
        except Exception as exc:  # noqa: BLE001 - reported to the parent, which stops the run with it
            conn.send({"failure": f"{type(exc).__name__}: {exc}"})


@dataclass
class StepLoad:
    records: list[tuple[str, str, float, bool, bool, float, float]]
    completed: int
    errors: dict[str, int]
    client_cpu_s: float
    window: tuple[float, float]  # wall-clock (time.time) bounds, to pick the daemon's events
    tenants: tuple[str, ...] = ()  # every tenant that sent requests, served or not


class LoadGenerator:
    """``--clients`` processes (spawned, so no ZeroMQ state crosses a fork), each driving its share
    of the tenants; the parent only hands out steps and gathers what came back."""

    def __init__(self, processes: int) -> None:
        context = multiprocessing.get_context("spawn")
        self._conns: list[multiprocessing.connection.Connection] = []
        self._procs: list[multiprocessing.process.BaseProcess] = []
        for i in range(processes):
            parent, child = context.Pipe()
            proc = context.Process(target=_worker_main, args=(child,), name=f"loadgen-{i}", daemon=True)
            proc.start()
            self._conns.append(parent)
            self._procs.append(proc)

    def drive(
        self,
        endpoint: str,
        assignments: Sequence[Assignment],
        *,
        warmup_s: float,
        step_s: float,
        in_flight: int,
        seed: int,
        kind: str = "infer",
    ) -> StepLoad:
        # Every process gets the same absolute window (CLOCK_MONOTONIC is system-wide), starting
        # once all have had time to connect, so the window holds the full load.
        start_at = time.monotonic() + 0.3
        warm_end = start_at + warmup_s
        end = warm_end + step_s
        wall_offset = time.time() - time.monotonic()
        shares = [list(assignments[i :: len(self._conns)]) for i in range(len(self._conns))]
        busy = []
        for conn, share in zip(self._conns, shares, strict=True):
            if not share:
                continue
            conn.send(
                {
                    "endpoint": endpoint, "kind": kind, "assignments": share, "in_flight": in_flight,
                    "seed": seed, "start_at": start_at, "warm_end": warm_end, "end": end,
                }
            )  # fmt: skip
            busy.append(conn)
        results = []
        for conn in busy:
            if not conn.poll(step_s + warmup_s + REQUEST_TIMEOUT_S + 30):
                raise ExperimentError("a load-generator process did not report back in time")
            result = conn.recv()
            if "failure" in result:
                raise ExperimentError(f"a load-generator process failed: {result['failure']}")
            results.append(result)
        merged: Counter[str] = Counter()
        for r in results:
            merged.update(r["errors"])
        return StepLoad(
            records=[rec for r in results for rec in r["records"]],
            completed=sum(r["completed"] for r in results),
            errors=dict(merged),
            client_cpu_s=sum(r["cpu_s"] for r in results),
            window=(warm_end + wall_offset, end + wall_offset),
            tenants=tuple(a.tenant for a in assignments),
        )

    def close(self) -> None:
        for conn in self._conns:
            try:
                conn.send(None)
            except (BrokenPipeError, OSError):
                pass
        for proc in self._procs:
            proc.join(10)
            if proc.is_alive():
                proc.terminate()


# ---------------------------------------------------------------------------------------- models


def model_bytes(entry: MixEntry, profile: str, settings: Settings, tenant_index: int, j: int) -> bytes:
    if entry.path is not None:
        return Path(entry.path).read_bytes()
    from models import tiny

    # Distinct weights per tenant: two tenants never share a model file (nor its store blob).
    seed = settings.seed * 100_000 + tenant_index * 10 + j
    return tiny.sized_mlp(max(standin_bytes(entry, profile, settings.scale), 4096), seed=seed)


def zoo_path(spec: str) -> Path:
    """A built zoo model's file (issue 4's ``models.zoo``), ``NAME`` or ``NAME:FORMAT`` (default
    ``tflite``, which the daemon serves with LiteRT); a clear error when it is not built."""
    name, _, fmt_name = spec.partition(":")
    try:
        from models import zoo
    except ImportError as exc:
        raise ExperimentError(f"--zoo {spec}: models.zoo is not importable here ({exc}); use --model PATH") from None
    try:
        return Path(zoo.path(name, fmt_name or "tflite"))
    except zoo.ZooError as exc:  # not built, unknown model or format: the zoo's message says what to run
        raise ExperimentError(f"--zoo {spec}: {exc}") from None


# ---------------------------------------------------------------------------------------- one run


STEP_COLUMNS = [
    "run", "profile", "discipline", "overcommit", "step", "tenants", "models_admitted", "models_resident",
    "refused", "refusal_code", "refusal_reason", "throughput_per_s", "requests", "p50_ms", "p99_ms",
    "tenant_p50_median_ms", "tenant_p99_max_ms", "switches", "switches_per_s", "reloads", "switch_overhead_ms",
    "reload_overhead_ms", "reload_overhead_share", "memory_used_bytes", "memory_budget_bytes", "memory_free_bytes",
    "capacity_bytes", "host_other_bytes", "loaded_bytes", "errors", "client_cpu_cores", "daemon_cpu_cores",
    "step_wall_s", "switch_overhead_share", "twin_cpu_slower", "step_s", "warmup_s",
]  # fmt: skip
TENANT_COLUMNS = ["run", "step", "tenant", "models", "requests", "throughput_per_s", "p50_ms", "p99_ms", "switches"]


@dataclass
class RunOutcome:
    spec: RunSpec
    steps: list[dict[str, Any]] = field(default_factory=list)
    tenant_rows: list[dict[str, Any]] = field(default_factory=list)
    stop_reason: str = ""
    ping_per_s: float | None = None
    ping_client_cpu_cores: float | None = None
    policy: dict[str, Any] = field(default_factory=dict)
    models: list[dict[str, Any]] = field(default_factory=list)


def base_policy(spec: RunSpec, settings: Settings) -> dict[str, Any]:
    """The profile's shipped policy file, with the discipline and the scaled capacity."""
    path = REPO / "policies" / f"{spec.profile}.toml"
    policy: dict[str, Any] = tomllib.loads(path.read_text()) if path.exists() else {"profile": spec.profile}
    profile = PROFILES[spec.profile]
    policy["discipline"] = spec.discipline
    reserve = int(policy.get("reserve_bytes", profile.default_reserve_bytes))
    policy["reserve_bytes"] = int(reserve * settings.scale)
    if profile.memory_model is MemoryModel.DEDICATED and profile.capacity_bytes:
        policy["capacity_bytes"] = int(profile.capacity_bytes * settings.scale)
    # Room for every tenant's closed loop, so the only refusals are the ones measured.
    policy["queue_depth_per_tenant"] = max(int(policy.get("queue_depth_per_tenant", 64)), 4 * settings.in_flight)
    # The switch overheads are summed from the switch events of each step: all of them, not a sample.
    policy["switch_events"] = "all"
    return policy


def _status_memory(status: dict[str, Any]) -> dict[str, Any]:
    memory, residency = status["memory"], status.get("residency") or {}
    return {
        "models_admitted": memory.get("models_admitted"),
        "models_resident": len(status.get("resident", [])),
        "memory_used_bytes": memory.get("used_bytes"),
        "memory_budget_bytes": memory.get("budget_bytes"),
        "memory_free_bytes": memory.get("free_bytes"),
        "capacity_bytes": memory.get("capacity_bytes"),
        "host_other_bytes": memory.get("host_other_bytes"),
        "loaded_bytes": residency.get("loaded_bytes"),
    }


def _daemon_cpu_s(pid: int | None) -> float | None:
    if pid is None:
        return None
    try:
        times = psutil.Process(pid).cpu_times()
    except (psutil.Error, OSError):
        return None  # another host's daemon (--endpoint), or it is gone
    return float(times.user + times.system)


def _summarise_step(load: StepLoad, settings: Settings) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    latencies = np.array([r[2] for r in load.records], dtype=np.float64)
    by_tenant: dict[str, list[tuple[str, str, float, bool, bool, float, float]]] = {}
    for r in load.records:
        by_tenant.setdefault(r[0], []).append(r)
    tenant_rows: list[dict[str, Any]] = []
    p50s: list[float] = []
    p99s: list[float] = []
    # A tenant with no request finished in the window is listed too, with 0: a starved tenant is a
    # finding (fairness), not a row to drop.
    for tenant in sorted(set(by_tenant) | set(load.tenants)):
        recs = by_tenant.get(tenant, [])
        lat = [r[2] for r in recs]
        tenant_rows.append(
            {
                "tenant": tenant,
                "models": len({r[1] for r in recs}),
                "requests": len(recs),
                "throughput_per_s": len(recs) / settings.step_s,
                "p50_ms": percentile(lat, 50),
                "p99_ms": percentile(lat, 99),
                "switches": sum(r[3] for r in recs),
            }
        )
        p50s += [v for v in (tenant_rows[-1]["p50_ms"],) if v is not None]
        p99s += [v for v in (tenant_rows[-1]["p99_ms"],) if v is not None]
    switches = sum(r[3] for r in load.records)
    row: dict[str, Any] = {
        "throughput_per_s": load.completed / settings.step_s,
        "requests": int(latencies.size),
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "tenant_p50_median_ms": float(np.median(p50s)) if p50s else None,
        "tenant_p99_max_ms": max(p99s) if p99s else None,
        "switches": switches,
        "switches_per_s": switches / settings.step_s,
        "reloads": sum(r[4] for r in load.records),
        "errors": json.dumps(load.errors, sort_keys=True) if load.errors else "",
        "client_cpu_cores": load.client_cpu_s / settings.step_s,
    }
    return row, tenant_rows


def _switch_overhead(operator: TenantClient, window: tuple[float, float]) -> tuple[float, float, bool]:
    """Overhead (ms) of the switches the daemon logged inside ``window``: of all of them, and of
    those that reloaded a model (the swap cost); and whether the event reply was full (then older
    switches of the window may be missing, and the sums are lower bounds).

    A switch between resident models has no load to pay; its logged overhead is its compute time
    minus the model's warm median, which on a contended CPU is noise of either sign, so the plots
    and the summary use the reload overhead; the CSV keeps both."""
    events = operator.events(limit=EVENTS_LIMIT, event="switch")
    inside = [e for e in events if window[0] <= e["ts"] <= window[1] and e.get("overhead_ms") is not None]
    total = sum(float(e["overhead_ms"]) for e in inside)
    reloads = sum(float(e["overhead_ms"]) for e in inside if e.get("reload"))
    full = len(events) >= EVENTS_LIMIT and bool(events) and events[0]["ts"] > window[0]
    return total, reloads, full


STEP_ROUNDS = 3  # under twin timing a step's window holds at least this many rounds of every tenant's turn
QUICK_STEP_ROUNDS = 2  # --quick: two rounds measured (after one of warm-up): a slow device's steps stay short, yet
# every tenant completes requests inside the window (one round left the NCS2 steps without a latency)


def twin_turn_s(spec: RunSpec, settings: Settings, entry: MixEntry) -> float:
    """One turn of ``entry``'s model on the profile's twin: its service plus a switch-in (an upper
    bound: under round-robin with several models nearly every turn switches)."""
    twin = get_twin(spec.profile)
    size = standin_bytes(entry, spec.profile, settings.scale) if entry.path is None else Path(entry.path).stat().st_size
    model = twin.model(entry.name, size)
    return (twin.service(model).ms + twin.switch_ms(model, None)) / 1e3


def step_settings(settings: Settings, round_s: float) -> Settings:
    """A step's timing: ``--step-s`` and ``--warmup-s``, or under twin timing at least STEP_ROUNDS
    rounds of all admitted tenants' turns (``round_s``) measured, after one round of warm-up, so
    every tenant is served in every step however slow the modelled device is."""
    if settings.timing != "twin":
        return settings
    rounds = QUICK_STEP_ROUNDS if settings.quick else STEP_ROUNDS
    return replace(settings, step_s=max(settings.step_s, rounds * round_s), warmup_s=max(settings.warmup_s, round_s))


def switch_share(step: dict[str, Any], timing: str) -> float | None:
    """The share of a step's window spent switching: every switch's modelled cost under twin
    timing; under CPU timing only reloading switches (between resident models the logged overhead
    is this CPU's noise of either sign). A share cannot be negative: a negative figure means the
    host disturbed the measurement, so it is None (shown as "disturbed"), never a result."""
    share = step.get("switch_overhead_share") if timing == "twin" else step.get("reload_overhead_share")
    value = float(share or 0.0)
    return None if value < 0 else value


def _pct_share(step: dict[str, Any], timing: str) -> str:
    share = switch_share(step, timing)
    return "disturbed" if share is None else f"{100 * share:.1f}%"


def run_one(
    spec: RunSpec, settings: Settings, endpoint: str, generator: LoadGenerator, bar: tqdm[Any], prefix: str
) -> RunOutcome:
    """Add tenants one at a time against the daemon at ``endpoint``; one row per step."""
    outcome = RunOutcome(spec)
    round_s = 0.0  # twin timing: one round of every admitted tenant's turn
    run_settings = settings
    with TenantClient(endpoint, timeout=REQUEST_TIMEOUT_S) as operator:
        status = operator.status()
        memory = status["memory"]
        profile_name = memory["profile"]
        # The cache memory model swaps by design, whatever the policy's overcommit says.
        overcommit = "swap" if memory["memory_model"] == MemoryModel.CACHE.value else memory["overcommit"]
        pid = status.get("pid")
        policy = dict(outcome.policy)
        profile = PROFILES[spec.profile]
        # Under twin timing the daemon budgets the twin's modelled memory, not this host's: no anchoring.
        twin_memory = settings.timing == "twin"
        anchored = (
            not twin_memory
            and settings.endpoint is None
            and profile.memory_model is MemoryModel.SHARED
            and profile.capacity_bytes is not None
            and not settings.live_host
        )
        device_bytes = int((profile.capacity_bytes or 0) * settings.scale)

        def anchor() -> None:
            # The device's DRAM on top of what this host uses now besides the models (module doc).
            host_other = int(operator.status()["memory"]["host_other_bytes"])
            policy["capacity_bytes"] = host_other + device_bytes
            operator.policy_set(toml_text(policy))

        if settings.endpoint is None:
            policy = base_policy(spec, settings)
            if profile.memory_model is MemoryModel.SHARED and profile.capacity_bytes and not twin_memory:
                anchor()
        outcome.policy = dict(policy)

        # The generator's ceiling: the same processes doing round trips that cost the daemon
        # almost nothing. If inference steps run far below it, the generator is not the limit.
        ping_tenants = [Assignment(f"{prefix}ping{i}", ()) for i in range(settings.clients)]
        ping = generator.drive(
            endpoint, ping_tenants, warmup_s=0.2, step_s=min(1.0, settings.step_s), in_flight=settings.in_flight,
            seed=settings.seed, kind="ping",
        )  # fmt: skip
        ping_window = min(1.0, settings.step_s)
        outcome.ping_per_s = ping.completed / ping_window
        outcome.ping_client_cpu_cores = ping.client_cpu_s / ping_window

        assignments: list[Assignment] = []
        mix_index = 0
        limit = settings.step_limit(spec)
        for step in range(1, limit + 1):
            t_step = time.monotonic()
            tenant = f"{prefix}t{step:02d}"
            refusal: TenantError | None = None
            admitted: list[tuple[str, tuple[int, ...], str]] = []
            entries = [settings.mix[(mix_index + j) % len(settings.mix)] for j in range(settings.models_per_tenant)]
            mix_index += len(entries)
            bar.set_postfix_str(f"{spec.name}: building tenant {step}'s models")
            files = [model_bytes(entry, spec.profile, settings, step, j) for j, entry in enumerate(entries)]
            if anchored and step > 1:
                gc.collect()  # building a stand-in leaves garbage that would count as host use
                anchor()
            with TenantClient(endpoint, tenant=tenant, timeout=REQUEST_TIMEOUT_S) as client:
                for entry, data in zip(entries, files, strict=True):
                    name = f"{tenant}-{entry.name}"
                    bar.set_postfix_str(f"{spec.name}: tenant {step} submits {entry.name}")
                    try:
                        info = client.submit_model(data, name)
                    except errors.AdmissionDenied as exc:
                        refusal = exc
                        break
                    spec0 = info.inputs[0]
                    admitted.append((info.name, tuple(spec0.shape), spec0.dtype))
                    outcome.models.append(
                        {
                            "tenant": tenant,
                            "model": info.name,
                            "mix": entry.name,
                            "footprint_bytes": info.footprint_bytes,
                            "size_bytes": info.size_bytes,
                            "load_ms": info.load_ms,
                        }
                    )
            if admitted:
                assignments.append(Assignment(tenant, tuple(admitted)))
                if settings.timing == "twin":
                    round_s += sum(twin_turn_s(spec, run_settings, e) for e in entries[: len(admitted)])
            settings = step_settings(run_settings, round_s)
            row_timing = {"step_s": settings.step_s, "warmup_s": settings.warmup_s}
            row: dict[str, Any] = {
                "run": spec.name, "profile": profile_name, "discipline": spec.discipline, "overcommit": overcommit,
                "step": step, "tenants": len(assignments), "refused": refusal is not None,
                "refusal_code": refusal.code if refusal else "", "refusal_reason": refusal.message if refusal else "",
            }  # fmt: skip
            if refusal is not None:
                row.update(_status_memory(operator.status()))
                # The ledger as admission saw it when it refused (a shared budget moves after).
                seen = {"memory_budget_bytes": "budget_bytes", "memory_used_bytes": "used_bytes",
                        "memory_free_bytes": "free_bytes", "host_other_bytes": "host_other_bytes",
                        "capacity_bytes": "capacity_bytes"}  # fmt: skip
                row.update({k: refusal.details[v] for k, v in seen.items() if v in refusal.details})
                row["step_wall_s"] = time.monotonic() - t_step
                outcome.steps.append(row)
                outcome.stop_reason = f"admission refused tenant {step}'s model: {refusal.code}"
                bar.update(1)
                break
            # The ledger and budget right after admission (a shared budget moves with the host later).
            row.update(_status_memory(operator.status()))
            bar.set_postfix_str(f"{spec.name}: {len(assignments)} tenants under load")
            cpu0 = _daemon_cpu_s(pid)
            slower0 = operator.status()["residency"].get("twin_cpu_slower", 0)
            load = generator.drive(
                endpoint, assignments, warmup_s=settings.warmup_s, step_s=settings.step_s,
                in_flight=settings.in_flight, seed=settings.seed + step,
            )  # fmt: skip
            cpu1 = _daemon_cpu_s(pid)
            summary, tenant_rows = _summarise_step(load, settings)
            row.update(summary)
            overhead_ms, reload_ms, truncated = _switch_overhead(operator, load.window)
            row["switch_overhead_ms"] = overhead_ms
            row["reload_overhead_ms"] = reload_ms
            row["reload_overhead_share"] = reload_ms / 1e3 / settings.step_s
            # Under twin timing every switch costs the device its modelled time, reload or not.
            row["switch_overhead_share"] = overhead_ms / 1e3 / settings.step_s
            slower = operator.status()["residency"].get("twin_cpu_slower", 0) - slower0
            row["twin_cpu_slower"] = slower
            if slower:  # the host, not the twin, set some runs' time: flagged, not passed off as the device's
                row["errors"] = (row["errors"] + " " if row["errors"] else "") + f"host-slower-than-twin:{slower}"
            if truncated:
                row["errors"] = (row["errors"] + " " if row["errors"] else "") + "switch-events-truncated"
            # The daemon's CPU over the drive (warm-up included), per second: its load, beside the generator's.
            drive_s = settings.warmup_s + settings.step_s + 0.3
            row["daemon_cpu_cores"] = None if cpu0 is None or cpu1 is None else (cpu1 - cpu0) / drive_s
            after = _status_memory(operator.status())  # what the load left loaded (swapping)
            row.update(models_resident=after["models_resident"], loaded_bytes=after["loaded_bytes"])
            row["step_wall_s"] = time.monotonic() - t_step
            row.update(row_timing)
            outcome.steps.append(row)
            outcome.tenant_rows += [{"run": spec.name, "step": step, **t} for t in tenant_rows]
            bar.update(1)
        else:
            outcome.stop_reason = f"step limit: {limit} tenants admitted"

        if settings.endpoint is not None:
            # Someone else's daemon: leave it as it was found.
            for a in assignments:
                with TenantClient(endpoint, tenant=a.tenant) as client:
                    for name, _, _ in a.models:
                        client.remove_model(name)
    return outcome


# ---------------------------------------------------------------------------------------- outputs


def write_run(out: Path, outcome: RunOutcome, settings: Settings, context: dict[str, Any]) -> None:
    name = outcome.spec.name
    with (out / f"{name}.csv").open("w", newline="") as stream:
        writer = csv.DictWriter(stream, STEP_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(outcome.steps)
    with (out / f"{name}-tenants.csv").open("w", newline="") as stream:
        writer = csv.DictWriter(stream, TENANT_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(outcome.tenant_rows)
    write_json(
        out / f"{name}.json",
        {
            "experiment": EXPERIMENT,
            "run": name,
            "complete": True,
            "parameters": settings.parameters(),
            "policy": outcome.policy,
            "stop_reason": outcome.stop_reason,
            "generator_ping_per_s": outcome.ping_per_s,
            "generator_ping_client_cpu_cores": outcome.ping_client_cpu_cores,
            "models": outcome.models,
            **context,
        },
    )


def _num(value: str) -> Any:
    if value == "":
        return None
    if value in ("True", "False"):
        return value == "True"
    try:
        return int(value)
    except ValueError:
        try:
            return float(value)
        except ValueError:
            return value


def read_run(out: Path, spec: RunSpec) -> RunOutcome | None:
    """A finished run from an earlier invocation (``--resume``), or None."""
    sidecar = out / f"{spec.name}.json"
    if not sidecar.exists():
        return None
    meta = json.loads(sidecar.read_text())
    if not meta.get("complete"):
        return None
    outcome = RunOutcome(spec, stop_reason=meta["stop_reason"], ping_per_s=meta.get("generator_ping_per_s"))
    outcome.ping_client_cpu_cores = meta.get("generator_ping_client_cpu_cores")
    outcome.policy, outcome.models = meta.get("policy", {}), meta.get("models", [])
    with (out / f"{spec.name}.csv").open(newline="") as stream:
        outcome.steps = [{k: _num(v) for k, v in row.items()} for row in csv.DictReader(stream)]
    with (out / f"{spec.name}-tenants.csv").open(newline="") as stream:
        outcome.tenant_rows = [{k: _num(v) for k, v in row.items()} for row in csv.DictReader(stream)]
    return outcome


def loaded_steps(outcome: RunOutcome) -> list[dict[str, Any]]:
    return [s for s in outcome.steps if not s["refused"]]


def plot(out: Path, outcomes: Sequence[RunOutcome], timing: str = "cpu") -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for o in outcomes:
        steps = loaded_steps(o)
        x = [s["tenants"] for s in steps]
        ax1.plot(x, [s["throughput_per_s"] for s in steps], marker="o", label=o.spec.name)
        ax2.plot(x, [s["p99_ms"] for s in steps], marker="o", label=o.spec.name)
        refused = [s for s in o.steps if s["refused"]]
        if refused and steps:
            ax1.plot([steps[-1]["tenants"]], [steps[-1]["throughput_per_s"]], "kx", markersize=10)
    ax1.set(xlabel="tenants admitted", ylabel="aggregate inferences/s", title="Throughput (x: next tenant refused)")
    ax2.set(xlabel="tenants admitted", ylabel="p99 latency, ms (log)", title="p99 latency, all requests")
    ax2.set_yscale("log")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    written.append(out / "throughput_p99.png")
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for o in outcomes:
        steps = loaded_steps(o)
        x = [s["tenants"] for s in steps]
        shares = [switch_share(s, timing) for s in steps]  # a disturbed step is a gap, not a point
        ax1.plot(x, [float("nan") if v is None else 100 * v for v in shares], marker="o", label=o.spec.name)
        ax2.plot(x, [s["switches_per_s"] for s in steps], marker="o", label=o.spec.name)
    if timing == "twin":
        ax1.set(
            xlabel="tenants admitted", ylabel="switch time, % of device time (modelled)",
            title="Switch overhead: the twin's modelled switch costs",
        )  # fmt: skip
    else:
        ax1.set(
            xlabel="tenants admitted", ylabel="overhead of reloading switches, % of the window",
            title="Total switch overhead (load + first run - warm median)",
        )  # fmt: skip
    ax2.set(xlabel="tenants admitted", ylabel="switches/s", title="Switches")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    written.append(out / "switch_overhead.png")
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)

    n = len(outcomes)
    cols = min(3, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.6 * rows), squeeze=False)
    for ax, o in zip(axes.flat, outcomes, strict=False):
        x = [s["tenants"] for s in o.steps]
        used = [(s["memory_used_bytes"] or 0) / MiB for s in o.steps]
        budget = [(s["memory_budget_bytes"] or 0) / MiB for s in o.steps]
        ax.plot(x, used, marker="o", label="ledger: used")
        ax.step(x, budget, where="mid", color="r", linestyle="--", label="budget")
        loaded = [s["loaded_bytes"] for s in o.steps]
        if any(v is not None for v in loaded):
            ax.plot(x, [(v or 0) / MiB for v in loaded], marker=".", label="loaded now (params)")
        for s in o.steps:
            if s["refused"]:
                ax.annotate("refused", (s["tenants"], (s["memory_used_bytes"] or 0) / MiB), color="r", fontsize=8)
        ax.set(title=o.spec.name, xlabel="tenants admitted", ylabel="MiB")
        ax.set_yscale("log" if o.steps and max(budget, default=0) > 20 * max(used, default=1) else "linear")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.tight_layout()
    written.append(out / "memory.png")
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)
    return written


SUMMARY_HEADERS = [
    "run", "stop", "tenants", "models", "inf/s @1", "inf/s @max", "p99 ms @1", "p99 ms @max",
    "switches/s @max", "switch ovh @max", "used/budget MiB @stop", "client/daemon CPU",
]  # fmt: skip


def summary_rows(outcomes: Sequence[RunOutcome], timing: str = "cpu") -> list[list[str]]:
    rows = []
    for o in outcomes:
        loaded = loaded_steps(o)
        first = loaded[0] if loaded else {}
        last = loaded[-1] if loaded else {}
        stop = o.steps[-1] if o.steps else {}
        refused = bool(stop.get("refused"))
        rows.append(
            [
                o.spec.name,
                "refused" if refused else "step limit",
                str(last.get("tenants", 0)),
                str(stop.get("models_admitted", "-")),
                fmt(first.get("throughput_per_s"), "{:.0f}"),
                fmt(last.get("throughput_per_s"), "{:.0f}"),
                fmt(first.get("p99_ms")),
                fmt(last.get("p99_ms")),
                fmt(last.get("switches_per_s"), "{:.0f}"),
                _pct_share(last, timing) if last else "-",
                f"{fmt((stop.get('memory_used_bytes') or 0) / MiB, '{:.0f}')}/"
                f"{fmt((stop.get('memory_budget_bytes') or 0) / MiB, '{:.0f}')}",
                f"{fmt(last.get('client_cpu_cores'))}/{fmt(last.get('daemon_cpu_cores'))}",
            ]
        )
    return rows


PAPER_SAYS = {
    "ncs2": 'bounded by device memory ("For VPU, Nano and TX2, the degree of concurrency is bounded by device memory")',
    "jetson-nano": 'bounded by device memory, which the host shares ("More RAM used by host process, less memory '
    'can be allocated by GPU")',
    "jetson-tx2": "bounded by device memory, which the host shares",
    "rpi3": "not covered by the paper's multi-tenancy slide (a CPU-only board with 1 GB shared DRAM)",
    "edgetpu": 'unbounded, as the EdgeTPU swaps models on demand, "however, this also result[s] in switch '
    'overhead at run time if multiple models are loaded"',
}


def _mean_footprint(o: RunOutcome) -> float | None:
    sizes = [m["footprint_bytes"] for m in o.models if m.get("footprint_bytes")]
    return float(np.mean(sizes)) if sizes else None


def profile_paragraph(o: RunOutcome, settings: Settings) -> str:
    loaded = loaded_steps(o)
    if not loaded:
        return f"- **{o.spec.name}**: no tenant was admitted ({o.stop_reason})."
    first, last, stop = loaded[0], loaded[-1], o.steps[-1]
    ratio = last["throughput_per_s"] / first["throughput_per_s"] if first["throughput_per_s"] else float("nan")
    p99_ratio = (last["p99_ms"] or 0) / first["p99_ms"] if first.get("p99_ms") else float("nan")
    parts = [f"- **{o.spec.name}** ({stop['overcommit']}):"]
    if stop["refused"]:
        parts.append(
            f"concurrency limit **{last['tenants']} tenants** ({stop['models_admitted']} models); tenant "
            f"{stop['step']} was refused `{stop['refusal_code']}`: {stop['refusal_reason']}."
        )
    else:
        parts.append(f"no limit met: {last['tenants']} tenants admitted ({o.stop_reason}).")
    foot = _mean_footprint(o)
    if foot:  # the probe's, on this CPU; under twin timing admission charged the twin's figure instead
        parts.append(f"Mean footprint measured here {foot / MiB:.1f} MiB per model.")
    parts.append(
        f"Aggregate throughput went from {first['throughput_per_s']:.0f} inf/s with 1 tenant to "
        f"{last['throughput_per_s']:.0f} with {last['tenants']} (x{ratio:.2f}); p99 from {fmt(first['p99_ms'])} "
        f"to {fmt(last['p99_ms'])} ms (x{p99_ratio:.1f})."
    )
    if last.get("switches"):
        parts.append(
            f"At {last['tenants']} tenants: {last['switches_per_s']:.0f} switches/s, {last['reloads']} reloads in "
            f"the window; switching took {_pct_share(last, settings.timing)} of the window."
        )
    parts.append(f"The paper: {PAPER_SAYS.get(o.spec.profile, 'no statement')}.")
    shares = [_pct_share(s, settings.timing) for s in loaded]
    if stop["refused"] and stop["refusal_code"] == "ADMISSION_DENIED":
        parts.append("Here too the curve ends at the memory bound, with the shortfall stated.")
    elif stop["overcommit"] == "swap" and len(shares) > 1:
        parts.append(
            f"Here too admission never refused, and the share of the window spent on "
            f"{'switches' if settings.timing == 'twin' else 'reloading switches'} went from "
            f"{shares[1]} at 2 tenants to {shares[-1]} at {last['tenants']}."
        )
    return " ".join(parts)


def report(
    out: Path, outcomes: Sequence[RunOutcome], settings: Settings, context: dict[str, Any], argv: list[str]
) -> str:
    machine = context["machine"]
    gen = []
    for o in outcomes:
        steps = loaded_steps(o)
        top = max((s["throughput_per_s"] for s in steps), default=0.0)
        cpu = max((s.get("client_cpu_cores") or 0.0 for s in steps), default=0.0)
        gen.append((o.spec.name, o.ping_per_s, o.ping_client_cpu_cores, top, cpu))
    gen_rows = [
        [n, fmt(p, "{:.0f}"), fmt(c), fmt(t, "{:.0f}"), fmt(100 * t / p if p else None, "{:.0f}%"), fmt(cc)]
        for n, p, c, t, cc in gen
    ]
    lines = [
        "# Concurrency scaling on tenantd",
        "",
        f"Command: `python -m experiments.concurrency {shlex.join(argv)}` — {context['finished']}, "
        f"{machine['cpu_model']}, {machine['usable_cores']} cores, {machine['memory_bytes'] / 2**30:.1f} GiB, "
        f"load average at start {', '.join(f'{v:.1f}' for v in machine['loadavg_at_start'])}. Seed {settings.seed}; "
        f"scale {settings.scale:g}; {settings.clients} load-generator processes, {settings.in_flight} request(s) in "
        f"flight per tenant, {settings.warmup_s:g} s warm-up + {settings.step_s:g} s per step"
        + (
            f" (under twin timing longer where the modelled device is slow: one round of every admitted tenant's "
            f"turn as warm-up and {QUICK_STEP_ROUNDS if settings.quick else STEP_ROUNDS} round(s) measured; each "
            "step's `step_s` is in the CSV)"
            if settings.timing == "twin"
            else ""
        )
        + ". Every profile is **emulated on this CPU** (LiteRT); nothing here ran on the device it names. "
        + (
            "Timing: **twin** (`tenantd serve --timing twin`): outputs are computed here, and each request holds "
            "the device for the profile's calibrated twin's modelled time (service + switch; `tenantd/devices/"
            "twin.py`, validated in `python -m experiments.validate_twins`), so throughput, latency and switch "
            "overhead are **modelled device time**; a step in which this host was slower than the modelled device "
            "says so in `errors` (`host-slower-than-twin:N`)."
            if settings.timing == "twin"
            else "Timing: **cpu**: every time is this CPU's."
        ),
        "",
        "Model mix (tenant i gets the next model in this cycle): "
        + "; ".join(m.describe(settings.profiles[0], settings.scale) for m in settings.mix)
        + " (sizes for the first profile; bytes per parameter: EdgeTPU 1, NCS2 2, others 4).",
        "",
        "## Summary",
        "",
        markdown_table(SUMMARY_HEADERS, summary_rows(outcomes, settings.timing)),
        "",
        (
            "`@1`: one tenant; `@max`: the last step under load; `switch ovh`: the twin's modelled cost of every "
            "switch in the window (EdgeTPU: the parameter streaming ibis measured; zero on devices that keep every "
            "model loaded), as a share of the window; CPU in cores."
            if settings.timing == "twin"
            else "`@1`: one tenant; `@max`: the last step under load; `switch ovh`: the daemon's logged overhead of "
            "the switches that reloaded a model (load + first inference - warm median), summed over the window, as "
            "a share of it (switches between resident models reload nothing; the CSV keeps their logged overhead, "
            "which is noise of either sign here, in `switch_overhead_ms`); CPU in cores."
        ),
        "",
        "## Per profile, beside the paper",
        "",
        *[profile_paragraph(o, settings) for o in outcomes],
        "",
        "![throughput and p99](throughput_p99.png)",
        "![switch overhead](switch_overhead.png)",
        "![memory](memory.png)",
        "",
        "## Is the load generator the bottleneck?",
        "",
        "Before each run the same generator processes drive `ping` round trips (no tensors, no scheduler, "
        "no runtime) with the same in-flight bound; the inference steps must run well below that ceiling, "
        "and the generator's CPU use is recorded beside the daemon's at every step.",
        "",
        markdown_table(
            [
                "run",
                "ping/s (ceiling)",
                "generator CPU at ping",
                "max inf/s in a step",
                "share of ceiling",
                "max generator CPU in a step",
            ],
            gen_rows,
        ),
        "",
        "## What these figures do and do not say",
        "",
        *(
            [
                "- The concurrency limits are **modelled**: under twin timing the daemon admits against each twin's "
                "memory model (`tenantd/devices/twin.py`; `status.memory.budget_source` is `twin`): the twin's "
                "footprint per model (Jetson: ~0.8 GB of CUDA/TensorRT per tenant process, NVIDIA forum, "
                "TensorRT#2217) against the device's memory beside a modelled OS, the same limit as "
                "`python -m experiments.plan`; `--scale` does not change them. The footprints in the CSVs are the "
                "probe's on this CPU, for reference."
            ]
            if settings.timing == "twin"
            else [
                "- The concurrency limits come from the daemon's admission against the profile's memory model with "
                "footprints *measured here* for LiteRT on x86 (weights plus XNNPACK's packed copy, about twice the "
                "weight bytes), not from the device's runtime: OpenVINO on a MYRIAD stick or TensorRT on a Jetson "
                "lays memory out differently, so the count on the real device differs; the mechanism (admit until "
                "the budget is spent, then refuse with the shortfall) is what is shown.",
                "- Shared profiles: the models get the device's DRAM minus the reserve (standing for its OS); a real "
                "Jetson also loses ~0.8 GB per process to CUDA/cuDNN/TensorRT (NVIDIA forum; TensorRT#2217), not "
                "modelled.",
            ]
        ),
        *(
            [
                "- Throughput and latency are the twins' modelled device time (published service times, or fitted "
                "from MACs where none was published: see each model's `twin_source` in the daemon's replies); the "
                "modelled device runs one inference at a time, so a Jetson's processor sharing shows its "
                "throughput, not its latency spread (`python -m experiments.plan` models that).",
                "- EdgeTPU: a switch costs the twin's modelled parameter streaming (ibis: 10.4 ms for MobileNetV2, "
                "19.4 ms for Inception V4 over USB 3); the CPU's own reload is inside that time.",
            ]
            if settings.timing == "twin"
            else [
                "- Throughput and latency are this CPU's (a few cores, shared by the daemon and the load generator), "
                "not an accelerator's; only their *shape* against the number of tenants carries over: one device "
                "serves requests serially per slot, so the aggregate stays roughly flat while per-tenant latency "
                "grows with the number of tenants.",
                "- EdgeTPU: every model stays loaded (the real device streams a model's parameters into its cache on "
                "its first invoke after another model: 10-15 ms per switch reported, umassos/ibis); on this CPU that "
                "streaming does not exist, so under CPU timing a switch costs nothing measurable and only the count "
                "of switches, its growth with tenants and the discipline's effect on it carry over (twin timing "
                "charges each switch the device's modelled cost).",
            ]
        ),
        "- The aggregate throughput mixes the models: with one tenant it is the small model's alone; from two "
        "tenants on, every tenant waits its turn behind the large ones, so the aggregate falls to the large "
        "model's rate and stays about flat while p99 grows with the number of tenants in the queue.",
        "- Step windows are short and this machine may be shared: p99 over a few hundred requests is noisy.",
    ]
    if settings.scale != 1:
        lines.append(
            f"- Scaled run (scale {settings.scale:g}): capacities, reserves and model weights are {settings.scale:g}x "
            "the real ones; the runtime library's charge and each interpreter's fixed cost are not, so the limits "
            "are close to, not equal to, a full-size run's."
        )
    text = "\n".join(lines) + "\n"
    (out / "report.md").write_text(text)
    return text


# ---------------------------------------------------------------------------------------- main


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or not np.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.concurrency",
        description="Concurrency scaling: add tenants one at a time to a tenantd device and measure each step.",
        epilog="Full run on twins: ~15 min here (all five profiles); --quick: a few min (ncs2, jetson-nano, edgetpu).",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="short steps (under twin timing two rounds of every tenant's turn measured), scale 1/4, step limit 12 "
        "(edgetpu 8), profiles ncs2, jetson-nano, edgetpu",
    )
    parser.add_argument(
        "--profile", action="append", choices=ALL_PROFILES, help=f"repeatable; default {', '.join(ALL_PROFILES)}"
    )
    parser.add_argument(
        "--discipline", action="append", choices=DISCIPLINES,
        help="repeatable; default round-robin, plus swap-aware on a swapping profile (the comparison)",
    )  # fmt: skip
    parser.add_argument("--scale", type=_positive_float, help="device capacity and model weights x this (default 1)")
    parser.add_argument("--step-s", type=_positive_float, help="measured seconds per step (default 2; quick 0.6)")
    parser.add_argument("--warmup-s", type=float, help="warm-up seconds per step (default 0.5; quick 0.2)")
    parser.add_argument("--max-tenants", type=_positive_int, help="step limit (default 48; quick 12)")
    parser.add_argument(
        "--swap-tenants", type=_positive_int, help="step limit on a swapping profile (edgetpu; default 24; quick 8)"
    )
    parser.add_argument("--clients", type=_positive_int, help="load-generator processes (default 3; quick 2)")
    parser.add_argument(
        "--in-flight", type=_positive_int, default=1, help="requests outstanding per tenant (default 1)"
    )
    parser.add_argument("--models-per-tenant", type=_positive_int, default=1, help="models each tenant submits")
    parser.add_argument("--model", action="append", type=Path, help="a model file for the mix (repeatable)")
    parser.add_argument(
        "--zoo", action="append", metavar="NAME[:FORMAT]",
        help="a built zoo model (repeatable; format default tflite; python -m models build NAME builds it)",
    )  # fmt: skip
    parser.add_argument("--endpoint", help="use this running daemon (its profile) instead of starting one per run")
    parser.add_argument(
        "--live-host", action="store_true",
        help="shared profiles: set the capacity from this host's use once, then let the budget follow it live "
        "(default: re-anchor before each tenant, so other processes on this machine do not move the bound)",
    )  # fmt: skip
    parser.add_argument(
        "--timing", choices=["twin", "cpu"], default="twin",
        help="twin (default): the daemon holds the device for each profile's calibrated twin's modelled time "
        "(tenantd serve --timing twin), so throughput, latency and switch overhead are device-shaped; cpu: this "
        "host's own compute times, as before",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="seed of the stand-ins' weights and inputs (default 0)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    parser.add_argument("--resume", action="store_true", help="keep finished runs of the same command line in --out")
    return parser


def settings_from(args: argparse.Namespace) -> Settings:
    def pick(value: Any, quick: Any, default: Any) -> Any:
        return value if value is not None else (quick if args.quick else default)

    mix: list[MixEntry] = []
    for path in args.model or []:
        if not path.is_file():
            raise ExperimentError(f"--model {path}: no such file")
        mix.append(MixEntry(path.stem, path=str(path.resolve())))
    for name in args.zoo or []:
        mix.append(MixEntry(name.partition(":")[0], path=str(zoo_path(name))))
    if not mix:
        mix = [MixEntry(name, params=params) for name, params in PAPER_MODELS.items()]
    profiles = tuple(args.profile) if args.profile else (QUICK_PROFILES if args.quick else ALL_PROFILES)
    if args.endpoint:
        profiles = profiles[:1]  # the daemon's own profile is what runs; the name only labels the run
    return Settings(
        profiles=profiles,
        disciplines=tuple(args.discipline) if args.discipline else None,
        scale=pick(args.scale, 1 / 4, 1.0),
        warmup_s=pick(args.warmup_s, 0.2, 0.5),
        step_s=pick(args.step_s, 0.6, 2.0),
        max_tenants=pick(args.max_tenants, 12, 48),  # quick: past the NCS2 twin's bound (9 tenants of the mix)
        swap_tenants=pick(args.swap_tenants, 8, 24),
        clients=pick(args.clients, 2, 3),
        in_flight=args.in_flight,
        models_per_tenant=args.models_per_tenant,
        mix=tuple(mix),
        seed=args.seed,
        quick=args.quick,
        endpoint=args.endpoint,
        live_host=args.live_host,
        out=args.out,
        resume=args.resume,
        timing=args.timing,
    )


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        settings = settings_from(args)
        parameters = settings.parameters()
        parameters.pop("resume")
        previous = check_out_dir(settings.out, EXPERIMENT, parameters, settings.resume)
        if not previous:
            # A fresh run: earlier runs' files (other profiles, other parameters) must not sit
            # beside this run's as if they belonged to it. Only this experiment's own names.
            for stale in (RunSpec(p, d).name for p in ALL_PROFILES for d in DISCIPLINES):
                for suffix in (".csv", "-tenants.csv", ".json"):
                    (settings.out / f"{stale}{suffix}").unlink(missing_ok=True)
        context = {
            "command": ["python", "-m", "experiments.concurrency", *argv],
            "machine": machine_info(),
            "versions": versions(["tqdm", "matplotlib"]),
            "git": git_commit(),
            "started": now_iso(),
        }
        write_json(settings.out / "run.json", {"experiment": EXPERIMENT, "parameters": parameters, **context})
        runs = settings.runs()
        outcomes: list[RunOutcome] = []
        generator = LoadGenerator(settings.clients)
        try:
            total = sum(settings.step_limit(spec) for spec in runs)
            with tqdm(total=total, desc="concurrency", unit="step", file=sys.stderr, dynamic_ncols=True) as bar:
                for spec in runs:
                    kept = read_run(settings.out, spec) if previous else None
                    if kept is not None:
                        outcomes.append(kept)
                        bar.update(settings.step_limit(spec))
                        bar.write(f"{spec.name}: kept from the earlier run (--resume)", file=sys.stderr)
                        continue
                    # Half-written files of an interrupted run must not be mistaken for finished ones.
                    (settings.out / f"{spec.name}.json").unlink(missing_ok=True)
                    if settings.endpoint is not None:
                        outcome = run_one(spec, settings, settings.endpoint, generator, bar, f"cx{settings.seed}-")
                    else:
                        with tempfile.TemporaryDirectory(prefix=f"tenantd-cx-{spec.name}-") as tmp:
                            policy_text = toml_text(base_policy(spec, settings))
                            timing = ["--timing", settings.timing]
                            with daemon_process(Path(tmp), policy_text, timing) as endpoint:
                                outcome = run_one(spec, settings, endpoint, generator, bar, "")
                    bar.update(settings.step_limit(spec) - len(outcome.steps))  # runs that stopped early
                    outcome_context = {**context, "finished": now_iso()}
                    write_run(settings.out, outcome, settings, outcome_context)
                    outcomes.append(outcome)
                    bar.write(f"{spec.name}: {outcome.stop_reason}", file=sys.stderr)
        finally:
            generator.close()
        context["finished"] = now_iso()
        write_json(settings.out / "run.json", {"experiment": EXPERIMENT, "parameters": parameters, **context})
        plot(settings.out, outcomes, settings.timing)
        report(settings.out, outcomes, settings, context, argv)
    except ExperimentError as exc:
        print(f"concurrency: error: {exc}", file=sys.stderr)
        return 1
    except TenantError as exc:
        print(f"concurrency: the daemon refused a request the experiment needs: {exc}", file=sys.stderr)
        return 1
    print(plain_table(SUMMARY_HEADERS, summary_rows(outcomes, settings.timing)))
    print(f"\nwrote CSV, JSON, plots and report.md to {settings.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
