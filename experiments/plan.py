"""Capacity planning on a device twin, offline: how a mix of tenants' models would run on a device
you may not have. Tenants arrive in turn, the n-th bringing the n-th of ``--models`` (cycling);
the twin's memory model says how many are admitted; each admitted tenant sends Poisson requests at
``--rate`` per second; the simulation (``experiments.twinsim``) runs the twin's discipline and
prints predicted throughput, latency percentiles, the share of device time spent switching, and
the modelled energy per inference and inferences per second per dollar. All figures are modelled
from published measurements (see ``tenantd/devices/twin.py``); none is measured on this host.

    python -m experiments.plan --profile edgetpu --models mobilenet_v2,inception_v4 --rate 5
    python -m experiments.plan --profile jetson-nano --models mobilenet_v2 --tenants 6 --rate 20
    python -m experiments.plan --profile ncs2 --models inception_v4,path/to/my_model.tflite --rate 2

A ``--models`` entry that is a file is a model the twin's tables may not know: the twin takes it by
its name (the file's stem) and, if unknown, estimates it from the file's size, as the daemon under
``--timing twin`` does for a submitted file (so both admit the same number of tenants).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from experiments.twinsim import poisson_arrivals, simulate, summarise
from tenantd.devices.twin import TWIN_PROFILES, DeviceTwin, TwinModel, TwinUnavailable, get_twin


def _positive(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.plan",
        description="Predict how tenants' models would run on a device, from its calibrated twin (modelled, not "
        "measured). Prints throughput, latency percentiles, switch share and the admitted-tenant limit.",
    )
    parser.add_argument("--profile", choices=TWIN_PROFILES, help="the device to plan for")
    parser.add_argument(
        "--models",
        help="comma-separated model names or model files (the n-th tenant brings the n-th, cycling); a file the "
        "twin does not know by its name is estimated from its size",
    )
    parser.add_argument("--rate", type=_positive, help="requests per second per tenant (Poisson)")
    parser.add_argument(
        "--table", action="store_true", help="instead: every twin's figures for the paper's five models (Markdown)"
    )
    parser.add_argument(
        "--tenants", type=int, help="tenants that ask to be admitted (default: one per model in --models)"
    )
    parser.add_argument("--link", help="edgetpu: usb3 (default), usb2 or pcie; ncs2: usb3 (default) or usb2")
    parser.add_argument("--horizon-s", type=_positive, default=600.0, help="simulated seconds (default 600)")
    parser.add_argument("--seed", type=int, default=1)
    return parser


def mix_models(twin: DeviceTwin, names: list[str]) -> list[TwinModel]:
    """The twin's models for ``names``: a name, or a file (its stem; its size if the twin must estimate)."""
    models = []
    for name in names:
        path = Path(name)
        models.append(twin.model(path.stem, path.stat().st_size) if path.is_file() else twin.model(name))
    return models


def plan(twin: DeviceTwin, names: list[str], tenants: int, rate: float, horizon_s: float, seed: int) -> str:
    models = mix_models(twin, names)
    limit = twin.admitted_limit(models)
    admitted = min(tenants, limit)
    link = f" {twin.link}" if twin.link else ""
    lines = [f"profile {twin.profile.name}{link} ({twin.discipline}): {twin.profile.description}"]
    fp = twin.footprint(models[0])
    lines.append(
        f"admitted-tenant limit for this mix: {limit} (budget {fp.budget_bytes / 2**20:.0f} MiB; {fp.note}); "
        f"{admitted} of {tenants} admitted"
    )
    for m in models:
        s = twin.service(m)
        lines.append(
            f"  {m.name:<18} service {s.ms:8.2f} ms ({s.source}), switch-in {twin.switch_ms(m, '<other>'):6.2f} ms, "
            f"footprint {twin.footprint(m).device_bytes / 2**20:7.1f} MiB, "
            f"energy {twin.energy_mj(m):8.1f} mJ/inference, "
            f"{twin.inferences_per_s_per_usd(m):.3f} inf/s per USD (modelled)"
        )
    if admitted == 0:
        lines.append("no tenant fits: nothing to simulate")
        return "\n".join(lines)
    # Tenant i sends model i % len(models); streams of one model merge (same Poisson rate each).
    rates: dict[str, float] = {}
    for i in range(admitted):
        rates[models[i % len(models)].name] = rates.get(models[i % len(models)].name, 0.0) + rate
    by_name = {m.name: m for m in models}
    load = sum(r * twin.service(by_name[m]).ms / 1e3 for m, r in rates.items())
    served = simulate(twin, poisson_arrivals(rates, horizon_s, seed), by_name)
    summary = summarise(served, horizon_s, warmup_s=horizon_s * 0.1)
    overloaded = summary.utilisation >= 1
    warning = (
        "  -> OVERLOADED: queues grow without bound; the figures below depend on the horizon" if overloaded else ""
    )
    lines.append(
        f"offered load (service only, no switches) {load:.2f}; "
        f"device time asked for incl. switches {summary.utilisation:.2f}{warning}"
    )
    lines.append(
        f"throughput {summary.throughput_per_s:.2f} inf/s, switches {summary.switches} "
        f"({100 * summary.switch_share:.1f}% of device time)"
    )
    for name, st in [*summary.per_model.items(), ("all", summary.overall)]:
        lines.append(
            f"  {name:<18} n {int(st['n']):6d}  mean {st['mean_ms']:9.1f}  p50 {st['p50_ms']:9.1f}  "
            f"p95 {st['p95_ms']:9.1f}  p99 {st['p99_ms']:9.1f} ms"
        )
    return "\n".join(lines)


PAPER_MODELS = ("mobilenet_v2", "inception_v4", "ssd_mobilenet_v1", "ssd_mobilenet_v2", "cnn-trad-fpool3")


def device_table() -> str:
    """Each twin's modelled figures for the paper's five models, as a Markdown table."""
    rows = [
        "| device | model | service ms (source) | inf/s | energy mJ/inf | inf/s per USD | tenants that fit |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for profile in TWIN_PROFILES:
        twin = get_twin(profile)
        for name in PAPER_MODELS:
            m = twin.model(name)
            s = twin.service(m)
            rows.append(
                f"| {profile} | {name} | {s.ms:.1f} ({s.source}) | {1000 / s.ms:.1f} | {twin.energy_mj(m):.1f} | "
                f"{twin.inferences_per_s_per_usd(m):.3f} | {twin.admitted_limit([m])} |"
            )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.table:
        print(device_table())
        return 0
    if not (args.profile and args.models and args.rate):
        parser.error("--profile, --models and --rate are required (or --table)")
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    try:
        twin = get_twin(args.profile, args.link)
        print(plan(twin, names, args.tenants or len(names), args.rate, args.horizon_s, args.seed))
    except TwinUnavailable as exc:
        print(f"plan: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
