"""A/B of tenantd's added latency: two source trees (daemon and client each), one client in flight.

Compares the added p50 latency of one request of a single-input .tflite (``--model``; default a
float CNN with palm_detection_lite's 442,368-byte input) between two checkouts of tenantd, e.g.
``main`` and a branch, in one run. Each tree serves from its own daemon process and is called by
its own client process (``TenantClient.infer_detailed``, one request at a time), both importing
that tree's sources; this process measures direct invocation (one interpreter, one thread) in the
same rounds. Rounds alternate A, B, direct (the order rotates each round), so that the machine's
load hits every arm alike; the figures are medians over requests and rounds. Not a test.

    python -m experiments.latency_ab --a /path/to/main --b /path/to/branch [--model PATH]
        [--rounds 8] [--requests 300]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

WORKER = """
import json, sys, time
import numpy as np
from tenantclient import TenantClient
endpoint, model_path, input_path = sys.argv[1:4]
x = np.load(input_path)
with TenantClient(endpoint, tenant="bench") as client:
    client.submit_model(model_path, "bench")
    for _ in range(50):
        client.infer("bench", x)
    print("ready", flush=True)
    for line in sys.stdin:
        latency, total = [], []
        for _ in range(int(line)):
            t0 = time.perf_counter()
            result = client.infer_detailed("bench", x)
            latency.append((time.perf_counter() - t0) * 1e3)
            total.append(result.timings["total_ms"])
        print(json.dumps({"latency": latency, "total": total}), flush=True)
"""

LAUNCHER = """
import sys
from tenantd.cli import main
sys.exit(main())
"""


def tree_env(root: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{root}:{root / 'clients'}"}


def start_client(name: str, root: Path, endpoint: str, model: Path, x_path: Path) -> subprocess.Popen[str]:
    """Tree ``root``'s client process (WORKER), once it has submitted the model and warmed up."""
    proc = subprocess.Popen(
        [sys.executable, "-c", WORKER, endpoint, str(model), str(x_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=tree_env(root),
        cwd=root,
    )
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        raise RuntimeError(f"client of {name} did not start")
    return proc


class Arm:
    def __init__(self, name: str, root: Path, endpoint: str, model: Path, x_path: Path) -> None:
        self.name = name
        self.proc = start_client(name, root, endpoint, model, x_path)
        self.latency: list[float] = []
        self.outside: list[float] = []
        self.round_p50: list[float] = []
        self.round_outside: list[float] = []

    def run(self, n: int) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{n}\n")
        self.proc.stdin.flush()
        got: dict[str, Any] = json.loads(self.proc.stdout.readline())
        skip = n // 10
        latency, total = got["latency"][skip:], got["total"][skip:]
        self.latency += latency
        self.outside += [a - b for a, b in zip(latency, total, strict=True)]
        self.round_p50.append(statistics.median(latency))
        self.round_outside.append(statistics.median(self.outside[-len(latency) :]))

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--a", type=Path, required=True, help="source tree A (holds tenantd/ and clients/)")
    parser.add_argument("--b", type=Path, required=True, help="source tree B")
    parser.add_argument("--model", type=Path, help="a single-input .tflite (default: a float CNN, 442 KB input)")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--requests", type=int, default=300, help="per arm and round")
    args = parser.parse_args(argv)

    import numpy as np

    from experiments import harness
    from experiments.throughput import Direct, default_model, model_input

    with tempfile.TemporaryDirectory(prefix="tenantd-latency-ab-") as tmp, contextlib.ExitStack() as stack:
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
        print(f"model {path.name}: input {x.nbytes} bytes; load {os.getloadavg()}")
        arms = []
        for name, root in (("A", args.a.resolve()), ("B", args.b.resolve())):
            endpoint = stack.enter_context(
                harness.daemon_process(workdir / name, "instances = 1\n", env=tree_env(root), launcher=launcher)
            )
            arm = Arm(name, root, endpoint, path, x_path)
            stack.callback(arm.close)
            arms.append(arm)
        direct_all: list[float] = []
        direct_round: list[float] = []
        n, skip = args.requests, args.requests // 10
        for round_ in range(args.rounds):
            order = [*arms, None][round_ % 3 :] + [*arms, None][: round_ % 3]
            for arm in order:
                if arm is not None:
                    arm.run(n)
                    continue
                times = []
                for _ in range(n):
                    t0 = time.perf_counter()
                    direct(x)
                    times.append((time.perf_counter() - t0) * 1e3)
                direct_all += times[skip:]
                direct_round.append(statistics.median(times[skip:]))
            print(
                f"round {round_ + 1}: p50 direct {direct_round[-1]:.3f} | "
                + " | ".join(f"{a.name} {a.round_p50[-1]:.3f} (outside {a.round_outside[-1]:.3f})" for a in arms),
                flush=True,
            )
        d50 = statistics.median(direct_all)
        print(f"medians over {args.rounds} rounds x {n - skip} requests (load after {os.getloadavg()}):")
        print(f"  direct p50 {d50:.3f} ms")
        for arm in arms:
            p50 = statistics.median(arm.latency)
            print(
                f"  {arm.name} ({args.a if arm.name == 'A' else args.b}): p50 {p50:.3f} ms, added {p50 - d50:+.3f} ms, "
                f"p90 {statistics.quantiles(arm.latency, n=10)[-1]:.3f} ms, "
                f"outside the daemon's total_ms {statistics.median(arm.outside):.3f} ms; "
                f"median of round p50s {statistics.median(arm.round_p50):.3f}"
            )
        a, b = arms
        paired = [y - x for x, y in zip(a.round_p50, b.round_p50, strict=True)]
        paired_outside = [y - x for x, y in zip(a.round_outside, b.round_outside, strict=True)]
        print(
            f"  B - A, paired by round (median over rounds): p50 {statistics.median(paired):+.3f} ms, "
            f"outside total_ms {statistics.median(paired_outside):+.3f} ms; "
            f"rounds where B's p50 was lower: {sum(d < 0 for d in paired)} of {len(paired)}"
        )


if __name__ == "__main__":
    main()
