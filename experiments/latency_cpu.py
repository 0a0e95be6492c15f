"""CPU time and wake-ups per request in tenantd's client and daemon, by thread, for one or two trees.

Wall-clock latency on a loaded machine moves by 2x between runs; the CPU a request costs each
thread, and how often each thread sleeps and wakes, move far less. For each source tree
(``--tree``, once or twice: A and B), this starts a daemon and a client process importing that
tree (as ``experiments.latency_ab`` does), drives one request at a time through
``TenantClient.infer_detailed`` with a single-input .tflite (``--model``; default the float CNN with
palm_detection_lite's 442,368-byte input), and reads, before and after each round, every thread's
CPU time (``/proc/PID/task/TID/schedstat``, nanoseconds) and its voluntary context switches (each
one a sleep, so a wake-up) in both processes. Threads are grouped: the process's main thread (the
daemon's event loop; the client's caller), ZeroMQ's I/O threads (``ZMQbg/*``), and the rest (in
the daemon, the slot threads, which also run the model). Rounds alternate the trees (and direct
invocation, whose CPU per call says what the model itself costs); figures are per request, medians
over rounds, and B - A is paired by round. Not a test.

    python -m experiments.latency_cpu --tree /path/to/main [--tree /path/to/branch] [--model PATH]
        [--rounds 8] [--requests 300]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from experiments.latency_ab import LAUNCHER, start_client, tree_env

GROUPS = ("main", "zmq", "other")
WHAT = ("cpu_us", "wakeups")


def thread_counters(pid: int) -> dict[str, tuple[int, int]]:
    """Per thread group: (CPU ns, voluntary context switches), summed over the group's threads."""
    totals = dict.fromkeys(GROUPS, (0, 0))
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            cpu_ns = int((task / "schedstat").read_text().split()[0])
            name = (task / "comm").read_text().strip()
            status = (task / "status").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue  # the thread ended meanwhile
        switches = int(status.split("voluntary_ctxt_switches:")[1].split()[0])
        group = "main" if task.name == str(pid) else "zmq" if name.startswith("ZMQbg") else "other"
        ns, n = totals[group]
        totals[group] = (ns + cpu_ns, n + switches)
    return totals


class Arm:
    """One tree: its daemon and its client process, and per-round figures."""

    def __init__(self, name: str, root: Path, endpoint: str, daemon_pid: int, model: Path, x_path: Path) -> None:
        self.name = name
        self.root = root
        self.daemon_pid = daemon_pid
        self.proc = start_client(name, root, endpoint, model, x_path)
        # per round: figure name -> value per request
        self.rounds: list[dict[str, float]] = []

    def run(self, n: int) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        before = {"client": thread_counters(self.proc.pid), "daemon": thread_counters(self.daemon_pid)}
        self.proc.stdin.write(f"{n}\n")
        self.proc.stdin.flush()
        got: dict[str, Any] = json.loads(self.proc.stdout.readline())
        after = {"client": thread_counters(self.proc.pid), "daemon": thread_counters(self.daemon_pid)}
        figures: dict[str, float] = {
            "p50_ms": statistics.median(got["latency"]),
            "outside_ms": statistics.median(a - b for a, b in zip(got["latency"], got["total"], strict=True)),
        }
        for side in ("client", "daemon"):
            for group in GROUPS:
                (ns0, w0), (ns1, w1) = before[side][group], after[side][group]
                figures[f"{side}.{group}.cpu_us"] = (ns1 - ns0) / 1e3 / n
                figures[f"{side}.{group}.wakeups"] = (w1 - w0) / n
        self.rounds.append(figures)

    def median(self, key: str) -> float:
        return statistics.median(r[key] for r in self.rounds)

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def _daemon_pid(workdir: Path) -> int:
    """The ``tenantd serve`` child of this process that serves from ``workdir``."""
    for child in psutil.Process().children():
        with contextlib.suppress(psutil.Error):
            if any(str(workdir) in part for part in child.cmdline()):
                return int(child.pid)
    raise RuntimeError(f"no daemon process serving {workdir}")


def _direct_cpu_us(direct: Any, x: Any, n: int) -> float:
    start = time.process_time_ns()
    for _ in range(n):
        direct(x)
    return (time.process_time_ns() - start) / 1e3 / n


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--tree", type=Path, action="append", required=True, help="a source tree (once or twice)")
    parser.add_argument("--model", type=Path, help="a single-input .tflite (default: a float CNN, 442 KB input)")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--requests", type=int, default=300, help="per tree and round")
    args = parser.parse_args(argv)
    if len(args.tree) > 2:
        parser.error("--tree at most twice")

    import numpy as np

    from experiments import harness
    from experiments.throughput import Direct, default_model, model_input

    with tempfile.TemporaryDirectory(prefix="tenantd-latency-cpu-") as tmp, contextlib.ExitStack() as stack:
        workdir = Path(tmp)
        path = args.model or default_model(workdir / "cnn192.tflite")
        x = model_input(path)
        x_path = workdir / "x.npy"
        np.save(x_path, x)
        direct = Direct(path, 1)
        # A script, not ``-m tenantd``: under -m the daemon's working directory (this checkout)
        # comes first on its sys.path, so every tree's daemon would run this checkout's code.
        launcher = workdir / "serve.py"
        launcher.write_text(LAUNCHER)
        print(f"model {path.name}: input {x.nbytes} bytes; load {os.getloadavg()}", flush=True)
        arms: list[Arm] = []
        for name, root in zip("AB", args.tree, strict=False):
            root = root.resolve()
            endpoint = stack.enter_context(
                harness.daemon_process(workdir / name, "instances = 1\n", env=tree_env(root), launcher=launcher)
            )
            arm = Arm(name, root, endpoint, _daemon_pid(workdir / name), path, x_path)
            stack.callback(arm.close)
            arms.append(arm)
        direct_cpu: list[float] = []
        for round_ in range(args.rounds):
            order: list[Arm | None] = [*arms, None]
            shift = round_ % len(order)
            for turn in order[shift:] + order[:shift]:
                if turn is None:
                    direct_cpu.append(_direct_cpu_us(direct, x, args.requests))
                else:
                    turn.run(args.requests)
            print(
                f"round {round_ + 1}: direct {direct_cpu[-1]:.0f} us CPU/call | "
                + " | ".join(
                    f"{a.name} p50 {a.rounds[-1]['p50_ms']:.3f} ms, CPU us/request client "
                    f"{sum(a.rounds[-1][f'client.{g}.cpu_us'] for g in GROUPS):.0f} daemon loop+zmq "
                    f"{a.rounds[-1]['daemon.main.cpu_us'] + a.rounds[-1]['daemon.zmq.cpu_us']:.0f}"
                    for a in arms
                ),
                flush=True,
            )
        print(f"per request, medians over {args.rounds} rounds x {args.requests} (load after {os.getloadavg()}):")
        print(f"  direct invocation: {statistics.median(direct_cpu):.0f} us CPU per call")
        per_thread = [f"{side}.{group}.{what}" for side in ("client", "daemon") for group in GROUPS for what in WHAT]
        keys = ["p50_ms", "outside_ms", *per_thread]
        header = f"  {'figure':<24}" + "".join(f"{a.name:>10}" for a in arms)
        if len(arms) == 2:
            header += f"{'B-A paired':>12}"
        print(header)
        for key in keys:
            line = f"  {key:<24}" + "".join(f"{a.median(key):>10.3f}" for a in arms)
            if len(arms) == 2:
                a, b = arms
                paired = [rb[key] - ra[key] for ra, rb in zip(a.rounds, b.rounds, strict=True)]
                line += f"{statistics.median(paired):>+12.3f}"
            print(line)
        for arm in arms:
            print(f"  {arm.name} = {arm.root}")


if __name__ == "__main__":
    main()
