"""Foreign-runtime probe: submit time when the runtime is the device worker's alone (issue 11).

Two daemons, both ``isolation = "process"``, run side by side through the CLI: "daemon" has
onnxruntime in its own Python (the probe is a throwaway process, as always), "worker" has it hidden
(a folder first on its PYTHONPATH whose ``onnxruntime`` raises ImportError) while its
``worker_python`` is a wrapper that runs the same interpreter without that folder, so the probe is
the measured trial load in the worker (tenantd/workerprobe.py). Rounds alternate between them (the
order flips each round), so both see the same machine load. A round submits an ONNX MLP under a new
name and removes it. Prints, per daemon, the submit p50 at the client and the CPU seconds per
submit-and-remove of the daemon, its reaped children (fresh probes) and its worker; and the median
of the per-round differences (worker - daemon).

    python -m experiments.foreign_probe [--rounds 20] [--warmup 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import psutil

from experiments.harness import REPO, daemon_process, machine_info, plain_table
from models import tiny_onnx
from tenantclient import TenantClient


def _cpu_s(endpoint_dir: Path) -> float:
    """CPU seconds so far of the daemon whose state is under ``endpoint_dir``, its reaped
    children and its live worker."""
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if "serve" in cmdline and f"ipc://{endpoint_dir}/tenantd.sock" in cmdline:
            times = proc.cpu_times()
            total = times.user + times.system + times.children_user + times.children_system
            for child in proc.children():
                try:
                    if "tenantd.workermain" in child.cmdline():
                        total += sum(child.cpu_times()[:2])
                except psutil.Error:
                    continue
            return float(total)
    raise RuntimeError(f"no daemon serving under {endpoint_dir}")


def _hidden_setup(workdir: Path) -> tuple[dict[str, str], str]:
    """The worker daemon's environment (onnxruntime hidden) and its policy (the wrapper as worker_python)."""
    hide = workdir / "hide" / "onnxruntime"
    hide.mkdir(parents=True)
    (hide / "__init__.py").write_text("raise ImportError('onnxruntime is hidden from the daemon')\n")
    sources = os.pathsep.join([str(REPO), str(REPO / "clients")])
    wrapper = workdir / "python3-worker"
    wrapper.write_text(f'#!/bin/sh\nPYTHONPATH="{sources}" exec "{sys.executable}" "$@"\n')
    wrapper.chmod(0o755)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(hide.parent), sources])}
    return env, f'isolation = "process"\nworker_python = "{wrapper}"\n'


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.foreign_probe", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20, help="measured rounds")
    parser.add_argument("--warmup", type=int, default=2, help="rounds not counted")
    args = parser.parse_args(argv)
    info = machine_info()
    onnx = tiny_onnx.mlp(32, [64], 10, seed=1)
    with tempfile.TemporaryDirectory(prefix="foreign-probe-") as tmp, ExitStack() as stack:
        workdir = Path(tmp)
        env, policy = _hidden_setup(workdir / "worker")
        dirs = {"daemon": workdir / "daemon", "worker": workdir / "worker"}
        endpoints = {
            "daemon": stack.enter_context(daemon_process(dirs["daemon"], 'isolation = "process"\n')),
            "worker": stack.enter_context(daemon_process(dirs["worker"], policy, env=env)),
        }
        clients = {mode: stack.enter_context(TenantClient(ep, tenant="bench")) for mode, ep in endpoints.items()}
        wall: dict[str, list[float]] = {mode: [] for mode in clients}
        cpu: dict[str, list[float]] = {mode: [] for mode in clients}
        for round_ in range(args.warmup + args.rounds):
            order = list(clients) if round_ % 2 == 0 else list(reversed(clients))
            for mode in order:
                before = _cpu_s(dirs[mode])
                t0 = time.perf_counter()
                clients[mode].submit_model(onnx, f"m{round_}", runtime="onnxruntime")
                elapsed = (time.perf_counter() - t0) * 1e3
                clients[mode].remove_model(f"m{round_}")
                if round_ >= args.warmup:
                    wall[mode].append(elapsed)
                    cpu[mode].append(_cpu_s(dirs[mode]) - before)
        probed = clients["worker"].events(limit=5, event="model.probed")
        assert probed and all(e.get("probe") == "worker" for e in probed), (
            "the worker daemon did not probe in its worker"
        )
    rows = [
        [mode, f"{statistics.median(wall[mode]):.1f}", f"{statistics.median(cpu[mode]):.3f}"]
        for mode in ("daemon", "worker")
    ]
    diff = statistics.median(w - d for d, w in zip(wall["daemon"], wall["worker"], strict=True))
    loadavg = ", ".join(f"{x:.1f}" for x in info["loadavg_at_start"])
    print(f"foreign probe, {args.rounds} rounds, {info['cpu_model']} x{info['cores']}, load average {loadavg}")
    print(plain_table(["runtime in", "submit p50 ms", "CPU s per submit+remove (p50)"], rows))
    print(f"per-round worker - daemon, median: {diff:+.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
