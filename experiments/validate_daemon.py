"""One of ibis's published concurrent EdgeTPU experiments, replayed against a real daemon with
``--timing twin``: the same Poisson arrivals are sent to ``tenantd serve --profile edgetpu
--timing twin`` (one tenant, so its queue is first come first served, as ibis's device was) and fed
to the twin simulator; per model it prints the published mean response time, the simulator's and
the daemon's, with the errors. The daemon computes real outputs on this CPU (small stand-in models
served under the published models' names, so the twin takes them for those models) and holds the
device for the modelled time; its response times include this host's client, socket and scheduler
costs, which a loaded machine inflates.

    python -m experiments.validate_daemon                          # inception_v4 x mobilenet_v2, rho 0.3, 60 s
    python -m experiments.validate_daemon --case inception_v3Xssd_mobilenet_v2 --rho 0.5 --seconds 120
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from experiments.harness import daemon_process
from experiments.twinsim import Request, poisson_arrivals, simulate
from models import tiny
from tenantclient import AsyncTenantClient
from tenantd.devices.twin import get_twin

DATA = Path(__file__).resolve().parent / "data" / "twins" / "ibis_queueing_validation.csv"
POLICY = 'profile = "edgetpu"\nqueue_depth_per_tenant = 4096\nqueue_depth_total = 4096\n'


def published_case(case: str, rho: str) -> dict[str, tuple[float, float]]:
    """model -> (arrival rate per s, published mean response ms) for one experiment and load."""
    rows = [r for r in csv.DictReader(DATA.open()) if r["experiment"] == case and r["vary_rho"] == rho]
    if not rows:
        known = sorted({(r["experiment"], r["vary_rho"]) for r in csv.DictReader(DATA.open())})
        raise SystemExit(f"no published case {case} rho={rho}; known: {known}")
    return {r["model"]: (float(r["input_rate_per_s"]), float(r["mean_response_ms"])) for r in rows}


async def replay(endpoint: str, requests: list[Request], models: dict[str, Path]) -> list[tuple[Request, float, float]]:
    """Send each request at its arrival time; (request, response ms, ms the device was held beyond
    the modelled time: this host's oversleep or slower compute)."""
    x = np.random.default_rng(0).standard_normal((1, 256)).astype(np.float32)
    out: list[tuple[Request, float, float]] = []
    async with AsyncTenantClient(endpoint, tenant="ibis", timeout=120.0) as client:
        for name, path in models.items():
            await client.submit_model(path, name)
        await client.infer(next(iter(models)), x)  # connect and warm the path before the clock starts
        t0 = time.monotonic() + 0.5

        async def one(r: Request) -> None:
            await asyncio.sleep(max(0.0, t0 + r.arrival_s - time.monotonic()))
            sent = t0 + r.arrival_s
            result = await client.infer_detailed(r.model, x)
            over = float(result.timings["device_ms"]) - float(result.timings["twin_ms"])
            out.append((r, (time.monotonic() - sent) * 1e3, over))

        await asyncio.gather(*(one(r) for r in requests))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.validate_daemon", description=__doc__.split("\n")[0])
    parser.add_argument("--case", default="inception_v4Xmobilenet_v2", help="an ibis queueing experiment")
    parser.add_argument("--rho", default="0.3", help="its vary_rho value (0.1 ... 0.5)")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the replay (default 60)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    published = published_case(args.case, args.rho)
    requests = poisson_arrivals({m: rate for m, (rate, _) in published.items()}, args.seconds, args.seed)
    warmup = args.seconds * 0.1
    predicted: dict[str, list[float]] = {m: [] for m in published}
    for s in simulate(get_twin("edgetpu"), requests):
        if s.arrival_s >= warmup:
            predicted[s.model].append(s.response_ms)
    with tempfile.TemporaryDirectory(prefix="tenantd-validate-") as tmp:
        models = {}
        for i, name in enumerate(published):
            models[name] = Path(tmp) / f"{name}.tflite"
            models[name].write_bytes(tiny.sized_mlp(64 * 1024, seed=i))
        with daemon_process(Path(tmp) / "d", POLICY, ["--timing", "twin"]) as endpoint:
            results = asyncio.run(replay(endpoint, requests, models))
    kept = [(r, ms, over) for r, ms, over in results if r.arrival_s >= warmup]
    measured: dict[str, list[float]] = {m: [] for m in published}
    for r, ms, _ in kept:
        measured[r.model].append(ms)
    overs = sorted(over for _, _, over in kept)
    print(
        f"ibis {args.case} rho={args.rho}: {len(requests)} Poisson requests over {args.seconds:g} s (seed {args.seed}),"
    )
    print(f"first {warmup:g} s left out; daemon: tenantd serve --profile edgetpu --timing twin on this host")
    for m, (_, pub) in sorted(published.items()):
        sim, dae = statistics.fmean(predicted[m]), statistics.fmean(measured[m])
        print(
            f"  {m:<17} n {len(measured[m]):5d}  published {pub:7.1f}  "
            f"simulator {sim:7.1f} ({(sim - pub) / pub:+.1%})  "
            f"daemon {dae:7.1f} ({(dae - pub) / pub:+.1%}; vs simulator {(dae - sim) / sim:+.1%})"
        )
    print(
        f"  device held beyond the modelled time (this host's oversleep or slower compute): mean "
        f"{statistics.fmean(overs):.2f} ms, p50 {overs[len(overs) // 2]:.2f}, p99 {overs[int(len(overs) * 0.99)]:.2f}; "
        "it lengthens every service, so the daemon's queues grow past the simulator's"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
