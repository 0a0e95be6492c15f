"""Where the device worker's CPU goes: CPU time per request of the daemon, its worker and the client,
inline against process isolation, in interleaved rounds of one run.

Wall-clock throughput on a shared machine moves by 2x between runs; CPU seconds per request move
much less, and they say what the hop costs whichever core it ran on. Two daemons are started
(``isolation = "inline"`` and ``"process"``, ``instances = 1``, ``threads_per_model = 1``, the
model and input of experiments/overhead.py) and kept running; each round sends ``--requests``
requests with ``--in-flight`` calls outstanding (the asyncio client) to one, then the other, then
runs LiteRT directly in this process for the same count; rounds alternate the order. For each
phase it reads ``psutil`` CPU times (user + system) context switches and minor page faults of the daemon, its worker
(process isolation) and this client process before and after, and divides by the requests served.

    python -m experiments.worker_cpu                 # default CNN (~4.5 ms), 6 rounds x 300 requests
    python -m experiments.worker_cpu --quick         # narrower CNN (~0.7 ms), 4 rounds x 1000

CPU times come from /proc in clock ticks (10 ms), so a phase needs a few hundred requests for a
figure to the tens of microseconds; page faults per request show whether arenas are mapped once.
Use py-spy/perf on the worker (``status.residency.worker_pid``) for the breakdown within a process.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil

from experiments import harness
from experiments.overhead import CNN_CLASSES, CNN_IMAGE, DEFAULT_CHANNELS, MODEL_NAME, QUICK_CHANNELS, TENANT, Direct
from models.tiny import cnn
from tenantclient import AsyncTenantClient, TenantClient

Tensor = np.ndarray


@dataclass
class Sample:
    """One phase of one round: requests, seconds, CPU seconds and context switches by process."""

    phase: str
    requests: int
    wall_s: float
    cpu_s: dict[str, float]
    switches: dict[str, int]
    faults: dict[str, int]


def _cpu(proc: psutil.Process) -> tuple[float, int, int]:
    """CPU seconds of the whole process, context switches summed over its live threads (the
    process's own counters are its main thread's), and its minor page faults (all threads)."""
    times = proc.cpu_times()
    switches = 0
    for task in Path(f"/proc/{proc.pid}/task").iterdir():
        try:
            text = (task / "status").read_text()
        except OSError:
            continue
        switches += sum(int(line.split()[1]) for line in text.splitlines() if "ctxt_switches:" in line)
    stat = Path(f"/proc/{proc.pid}/stat").read_text()
    minor_faults = int(stat.rsplit(")", 1)[1].split()[7])
    return times.user + times.system, switches, minor_faults


@contextmanager
def _measured(phase: str, procs: dict[str, psutil.Process], requests: int, out: list[Sample]) -> Iterator[None]:
    before = {name: _cpu(p) for name, p in procs.items()}
    t0 = time.perf_counter()
    yield
    wall = time.perf_counter() - t0
    after = {name: _cpu(p) for name, p in procs.items()}
    out.append(
        Sample(
            phase,
            requests,
            wall,
            {n: after[n][0] - before[n][0] for n in procs},
            {n: after[n][1] - before[n][1] for n in procs},
            {n: after[n][2] - before[n][2] for n in procs},
        )
    )


def _daemon_pid(endpoint: str) -> tuple[int, int | None]:
    with TenantClient(endpoint, tenant=TENANT) as client:
        residency = client.status()["residency"]
    worker = residency.get("worker_pid")
    sock = endpoint.removeprefix("ipc://")
    for child in psutil.Process().children():
        try:
            if any(sock in arg for arg in child.cmdline()):
                return child.pid, worker
        except psutil.Error:
            continue
    raise harness.ExperimentError(f"no daemon process serving {endpoint}")


async def _send(endpoint: str, x: Tensor, requests: int, in_flight: int) -> None:
    async with AsyncTenantClient(endpoint, tenant=TENANT) as client:
        await client.ping()
        left = requests

        async def loop() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                await client.infer(MODEL_NAME, x)

        await asyncio.gather(*(loop() for _ in range(in_flight)))


def run(args: argparse.Namespace) -> str:
    channels = QUICK_CHANNELS if args.quick else DEFAULT_CHANNELS
    rounds = args.rounds or (4 if args.quick else 6)
    requests = args.requests or (1000 if args.quick else 300)
    x = np.random.default_rng((0, 1)).integers(0, 256, (1, CNN_IMAGE, CNN_IMAGE, 3), dtype=np.uint8)
    samples: list[Sample] = []
    me = psutil.Process()
    with tempfile.TemporaryDirectory(prefix="tenantd-worker-cpu-") as tmp, ExitStack() as stack:
        workdir = Path(tmp)
        model_path = workdir / "model.tflite"
        model_path.write_bytes(cnn(CNN_IMAGE, channels, CNN_CLASSES, seed=0))
        direct = Direct(model_path, 1)
        expected = direct.infer(x).copy()
        procs: dict[str, dict[str, psutil.Process]] = {}
        endpoints: dict[str, str] = {}
        threads: dict[str, dict[str, int]] = {}
        for isolation in ("inline", "process"):
            policy = f'instances = 1\nthreads_per_model = 1\nisolation = "{isolation}"\n'
            endpoint = stack.enter_context(harness.daemon_process(workdir / isolation, policy))
            with TenantClient(endpoint, tenant=TENANT) as client:
                info = client.submit_model(model_path, MODEL_NAME)
                got = client.infer(MODEL_NAME, x)[info.outputs[0].name]
                if not np.array_equal(got, expected):
                    raise harness.ExperimentError(f"daemon {isolation}: output differs from direct")
            daemon, worker = _daemon_pid(endpoint)
            procs[isolation] = {"daemon": psutil.Process(daemon), "client": me}
            if worker is not None:
                procs[isolation]["worker"] = psutil.Process(worker)
            endpoints[isolation] = endpoint
            asyncio.run(_send(endpoint, x, requests // 2, args.in_flight))  # warm-up
            threads[isolation] = {name: p.num_threads() for name, p in procs[isolation].items() if name != "client"}
        for r in range(rounds):
            order = ("inline", "process", "direct") if r % 2 == 0 else ("process", "inline", "direct")
            print(f"[worker_cpu] round {r + 1}/{rounds}", file=sys.stderr, flush=True)
            for phase in order:
                if phase == "direct":
                    with _measured("direct", {"client": me}, requests, samples):
                        for _ in range(requests):
                            direct.infer(x)
                    continue
                with _measured(phase, procs[phase], requests, samples):
                    asyncio.run(_send(endpoints[phase], x, requests, args.in_flight))
    return report(samples, args, channels) + f"- threads after warm-up: {threads}\n"


def report(samples: Sequence[Sample], args: argparse.Namespace, channels: Sequence[int]) -> str:
    lines = [
        f"# worker CPU, model CNN {'x'.join(map(str, channels))}, {args.in_flight} in flight, "
        f"load average {os.getloadavg()[0]:.2f}",
        "",
        "| phase | rounds | req/s median | x direct | daemon CPU us/req | worker CPU us/req | client CPU us/req "
        "| daemon ctx sw/req | worker ctx sw/req | daemon faults/req | worker faults/req |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    direct_rates = [s.requests / s.wall_s for s in samples if s.phase == "direct"]
    direct = statistics.median(direct_rates)
    for phase in ("direct", "inline", "process"):
        mine = [s for s in samples if s.phase == phase]

        def per_req(name: str, field: str, rows: list[Sample] = mine) -> str:
            values = [getattr(s, field).get(name) for s in rows]
            if any(v is None for v in values):
                return ""
            scale = 1e6 if field == "cpu_s" else 1.0
            return f"{statistics.median(v * scale / s.requests for v, s in zip(values, rows, strict=True)):.2f}"

        rate = statistics.median(s.requests / s.wall_s for s in mine)
        lines.append(
            f"| {phase} | {len(mine)} | {rate:.1f} | {rate / direct:.3f} | {per_req('daemon', 'cpu_s')} "
            f"| {per_req('worker', 'cpu_s')} | {per_req('client', 'cpu_s')} | {per_req('daemon', 'switches')} "
            f"| {per_req('worker', 'switches')} | {per_req('daemon', 'faults')} | {per_req('worker', 'faults')} |"
        )
    # Paired: each round's process rate over the same round's inline and direct rates.
    rounds = len(direct_rates)
    by = {p: [s.requests / s.wall_s for s in samples if s.phase == p] for p in ("inline", "process")}
    ratios = [by["process"][i] / direct_rates[i] for i in range(rounds)]
    vs_inline = [by["process"][i] / by["inline"][i] for i in range(rounds)]
    lines += [
        "",
        f"- process / direct per round: median {statistics.median(ratios):.3f} "
        f"({', '.join(f'{v:.3f}' for v in ratios)})",
        f"- process / inline per round: median {statistics.median(vs_inline):.3f} "
        f"({', '.join(f'{v:.3f}' for v in vs_inline)})",
    ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.worker_cpu", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="narrower CNN (~0.7 ms), 4 rounds x 1000 requests")
    parser.add_argument("--rounds", type=int, default=None, help="alternating rounds; default 6 (4 with --quick)")
    parser.add_argument("--requests", type=int, default=None, help="requests per phase per round; default 300")
    parser.add_argument("--in-flight", type=int, default=2, help="requests outstanding at once; default 2")
    args = parser.parse_args(argv)
    try:
        print(run(args), end="")
    except harness.ExperimentError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
