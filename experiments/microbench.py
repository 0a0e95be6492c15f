"""Micro-benchmarks: price, performance and energy (the paper's first question, asked of tenantd).

For each of the paper's models built in the zoo (``models.zoo.built()``: every format built) and
each runtime here that loads that format (``tenantd.runtimes.available_runtimes()`` and the
daemon's ``status``), the experiment starts ``tenantd serve`` through its CLI and, with the public client
library only: submits the model (the daemon's measured load time and memory footprint), runs a
closed loop of one request at a time for latency (p50/p99 at the client, and the daemon's compute
time), then a closed loop with one request in flight per execution slot for throughput, and
removes the model. LiteRT models are also run directly in-process (``--no-direct`` skips it) so
the daemon's share can be seen. When the zoo is not built, real but small stand-ins are used
(a MobileNet-style CNN and an MLP from :mod:`models.tiny`, and the trained keyword-spotting model
of the ``pymicro-wakeword`` wheel), with a note in the report.

Energy over the throughput window comes from a real meter when this host has one
(:mod:`experiments.power`: Intel RAPL, NVIDIA NVML, Jetson INA3221); otherwise it is an
**estimate**: the daemon's CPU utilisation over the window on the power range of
``--power-profile`` (default ``rpi3``, the CPU-only board of the paper, which runs the same kind
of CPU inference), labelled as an estimate wherever it appears. Derived: inferences per joule,
throughput per watt and per dollar (``--host-price-usd`` for this machine). A second table
quotes device figures from the paper and public sources, derived the same way from each
profile's power range and price (cloud instances priced per hour over ``--amortise-hours``),
and never mixes them with what was measured here.

Outputs (``--out``, default ``experiments/out/microbench``): ``microbench.csv`` (one row per
model x runtime), ``microbench.json`` (parameters, machine, versions, meter), ``report.md``.

    python -m experiments.microbench --quick   # ~30 s: short windows; MobileNetV2 + cnn-trad-fpool3
    python -m experiments.microbench           # the five paper models x formats x runtimes, ~5-8 min
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from tqdm import tqdm

from experiments.harness import (
    OUT_ROOT,
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
    versions,
    write_json,
)
from experiments.power import CpuTimeEstimate, EnergyReading, PowerMeter, detect_meters
from tenantclient import AsyncTenantClient, TenantClient, TenantError, errors
from tenantd.devices.profiles import PROFILES, SOURCES
from tenantd.devices.twin import TWIN_PROFILES, get_twin

TWIN_MODELS = ("mobilenet_v2", "inception_v4", "ssd_mobilenet_v1", "ssd_mobilenet_v2", "cnn-trad-fpool3")


def modelled_rows() -> list[list[str]]:
    """The device twins' modelled rows for the paper's five models: service time (published or
    fitted: the source column says which), energy per inference at the profile's active power,
    inferences per second per W and per USD of device. None of it is measured here."""
    rows = []
    for name in TWIN_PROFILES:
        twin = get_twin(name)
        watts = twin.profile.power_w[1]
        for model_name in TWIN_MODELS:
            model = twin.model(model_name)
            service = twin.service(model)
            rate = 1e3 / service.ms
            rows.append(
                [
                    f"{name}: MODELLED",
                    model_name,
                    f"{service.ms:.1f} ({service.source})",
                    f"{rate:.1f}",
                    f"{twin.energy_mj(model):.1f}",
                    f"{rate / watts:.2f}",
                    f"{twin.inferences_per_s_per_usd(model):.3f}",
                    ", ".join(twin.profile.sources),
                ]
            )
    return rows


EXPERIMENT = "microbench"
DEFAULT_OUT = OUT_ROOT / EXPERIMENT
TENANT = "bench"
HOURS_PER_YEAR = 24 * 365

# Device figures quoted from public sources (never measured here). SSD-MobileNetV2 latency per
# inference, ms: Alasdair Allan, "Benchmarking machine learning on the edge" (2019),
# https://github.com/aallan/benchmarking-ml-on-the-edge (Coral USB accelerator, NCS2, Jetson
# Nano, Raspberry Pi 3 B+).
QUOTED_SSD_MOBILENET_V2_MS: dict[str, tuple[float, str]] = {
    "edgetpu": (18.2, "aallan/benchmarking-ml-on-the-edge (Coral USB)"),
    "ncs2": (80.4, "aallan/benchmarking-ml-on-the-edge (NCS2)"),
    "jetson-nano": (72.3, "aallan/benchmarking-ml-on-the-edge (Jetson Nano)"),
    "rpi3": (379.6, "aallan/benchmarking-ml-on-the-edge (Raspberry Pi 3 B+)"),
}


# ---------------------------------------------------------------------------------------- models


@dataclass(frozen=True)
class BenchModel:
    name: str
    path: str
    origin: str  # "zoo" or "stand-in: ..."
    fmt: str = "tflite"  # the zoo's format name (models.zoo.FORMATS)


# Which zoo formats each runtime loads (the runtimes' documented inputs; an IR .xml travels with
# its .bin, which the client library bundles). A runtime not listed is tried on every format,
# and a refusal is recorded as "unsupported".
RUNTIME_FORMATS: dict[str, tuple[str, ...]] = {
    "litert": ("tflite", "tflite_int8"),
    "openvino": ("openvino", "onnx", "tflite"),
    "onnxruntime": ("onnx",),
    "edgetpu": ("tflite_int8",),
    "tensorrt": ("onnx",),
}
PAPER_MODELS = ("mobilenet_v2", "inception_v4", "ssd_mobilenet_v1", "ssd_mobilenet_v2", "cnn_trad_fpool3")
QUICK_ZOO_MODELS = ("mobilenet_v2", "cnn_trad_fpool3")


def zoo_models(quick: bool, names: Sequence[str] | None = None) -> list[BenchModel]:
    """The paper's models (or ``names``) as built in the zoo (issue 4), every built format; empty
    when the zoo is not built here (or not importable)."""
    try:
        from models import zoo
    except ImportError as exc:
        print(f"note: models.zoo is not importable ({exc})", file=sys.stderr)
        return []
    wanted = names or (QUICK_ZOO_MODELS if quick else PAPER_MODELS)
    return [
        BenchModel(f.name, str(f.path), f"zoo: {f.name} ({f.fmt}), untrained weights", f.fmt)
        for f in zoo.built()
        if f.name in wanted
    ]


def runs_on(runtime: str, model: BenchModel) -> bool:
    return model.fmt in RUNTIME_FORMATS.get(runtime, (model.fmt,))


def standin_models(workdir: Path, quick: bool, seed: int) -> list[BenchModel]:
    from models import tiny

    channels = (32, 128, 256, 512) if quick else (96, 352, 704, 1408)
    cnn = workdir / "cnn.tflite"
    cnn.write_bytes(tiny.cnn(224, channels, 10, seed=seed))
    mlp = workdir / "mlp.tflite"
    # The weight bytes of MobileNetV2 in float32 (3.4 M parameters): a memory-bound stand-in.
    mlp.write_bytes(tiny.sized_mlp(2_000_000 if quick else 13_600_000, seed=seed))
    out = [
        BenchModel("cnn", str(cnn), f"stand-in: tiny.cnn widths {channels}, uint8 224x224x3, untrained"),
        BenchModel("mlp", str(mlp), "stand-in: tiny.sized_mlp with MobileNetV2's float32 weight bytes, untrained"),
    ]
    try:
        import pymicro_wakeword

        kws = Path(pymicro_wakeword.__file__).parent / "models" / "okay_nabu.tflite"
        if kws.exists():
            out.append(BenchModel("okay_nabu", str(kws), "real: trained int8 keyword spotter (pymicro-wakeword)"))
    except ImportError:
        pass
    return out


def make_input(shape: Sequence[int], dtype: str, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    concrete = tuple(d if d > 0 else 1 for d in shape)
    kind = np.dtype(dtype)
    if kind.kind == "f":
        return rng.standard_normal(concrete).astype(kind)
    info = np.iinfo(kind)
    return rng.integers(info.min, info.max, concrete, dtype=kind, endpoint=True)


# ---------------------------------------------------------------------------------------- measuring


@dataclass(frozen=True)
class Settings:
    quick: bool
    warmup_s: float
    duration_s: float
    runtimes: tuple[str, ...] | None
    models: tuple[str, ...] | None
    power_profile: str
    host_price_usd: float | None
    amortise_hours: float
    direct: bool
    seed: int
    out: Path
    resume: bool

    def parameters(self) -> dict[str, Any]:
        values = asdict(self)
        values["out"] = str(self.out)
        values.pop("resume")
        return values


COLUMNS = [
    "model", "format", "runtime", "origin", "status", "note", "input", "size_bytes", "load_ms", "footprint_bytes",
    "p50_ms", "p99_ms", "compute_p50_ms", "direct_p50_ms", "throughput_per_s", "in_flight", "cpu_utilisation",
    "energy_j", "watts", "energy_source", "energy_is_estimate", "inferences_per_j", "throughput_per_w",
    "throughput_per_usd",
]  # fmt: skip


def _cpu_seconds(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def _closed_loop_sync(client: TenantClient, name: str, x: np.ndarray, warmup_s: float, duration_s: float) -> Any:
    end_warm = time.monotonic() + warmup_s
    while time.monotonic() < end_warm:
        client.infer_detailed(name, x)
    latencies, compute = [], []
    end = time.monotonic() + duration_s
    while time.monotonic() < end:
        t = time.perf_counter()
        result = client.infer_detailed(name, x)
        latencies.append((time.perf_counter() - t) * 1e3)
        compute.append(float(result.timings["compute_ms"]))
    return latencies, compute


async def _closed_loop_async(endpoint: str, name: str, x: np.ndarray, in_flight: int, seconds: float) -> int:
    done = 0
    end = time.monotonic() + seconds
    async with AsyncTenantClient(endpoint, tenant=TENANT) as client:

        async def loop() -> None:
            nonlocal done
            while time.monotonic() < end:
                await client.infer(name, x)
                done += 1

        await asyncio.gather(*(loop() for _ in range(in_flight)))
    return done


def _direct_p50(path: str, x: np.ndarray, threads: int, duration_s: float) -> float | None:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=path, num_threads=threads)
    interpreter.allocate_tensors()
    index = interpreter.get_input_details()[0]["index"]
    times = []
    end = time.monotonic() + duration_s
    while time.monotonic() < end:
        t = time.perf_counter()
        interpreter.set_tensor(index, x)
        interpreter.invoke()
        times.append((time.perf_counter() - t) * 1e3)
    return percentile(times[1:], 50)


def make_meter(settings: Settings, real: Sequence[PowerMeter], daemon_pid: int) -> PowerMeter:
    if real:
        return real[0]
    profile = PROFILES[settings.power_profile]
    return CpuTimeEstimate(
        profile.power_w, len(os.sched_getaffinity(0)), lambda: _cpu_seconds(daemon_pid), f"{profile.name}"
    )


def bench_one(
    endpoint: str, model: BenchModel, runtime: str, settings: Settings, status: dict[str, Any], meter: PowerMeter
) -> dict[str, Any]:
    row: dict[str, Any] = {
        "model": model.name, "format": model.fmt, "runtime": runtime, "origin": model.origin, "status": "ok",
        "note": "",
    }  # fmt: skip
    with TenantClient(endpoint, tenant=TENANT, timeout=120) as client:
        name = f"{model.name}-{model.fmt}-{runtime}"
        try:
            info = client.submit_model(model.path, name, runtime=runtime)
        except (errors.InvalidModel, errors.BadRequest) as exc:
            row.update(status="unsupported", note=f"{exc.code}: {exc.message}"[:200])
            return row
        spec = info.inputs[0]
        x = make_input(spec.shape, spec.dtype, settings.seed)
        row.update(
            input=f"{spec.dtype}{list(spec.shape)}",
            size_bytes=info.size_bytes,
            load_ms=info.load_ms,
            footprint_bytes=info.footprint_bytes,
        )
        try:
            latencies, compute = _closed_loop_sync(client, name, x, settings.warmup_s, settings.duration_s)
            row.update(
                p50_ms=percentile(latencies, 50),
                p99_ms=percentile(latencies, 99),
                compute_p50_ms=percentile(compute, 50),
            )
            in_flight = max(2, int(status.get("slots", 1)))
            asyncio.run(_closed_loop_async(endpoint, name, x, in_flight, settings.warmup_s))
            meter.start()
            t0 = time.monotonic()
            done = asyncio.run(_closed_loop_async(endpoint, name, x, in_flight, settings.duration_s))
            seconds = time.monotonic() - t0
            reading: EnergyReading = meter.stop()
        finally:
            client.remove_model(name)
    throughput = done / seconds
    row.update(
        throughput_per_s=throughput,
        in_flight=in_flight,
        cpu_utilisation=getattr(meter, "utilisation", None),
        energy_j=reading.joules,
        watts=reading.watts,
        energy_source=reading.source,
        energy_is_estimate=reading.estimate,
        inferences_per_j=done / reading.joules if reading.joules > 0 else None,
        throughput_per_w=throughput / reading.watts if reading.watts > 0 else None,
        throughput_per_usd=throughput / settings.host_price_usd if settings.host_price_usd else None,
    )
    if settings.direct and runtime == "litert":
        row["direct_p50_ms"] = _direct_p50(model.path, x, int(status.get("threads_per_model", 1)), settings.duration_s)
    return row


# ---------------------------------------------------------------------------------------- report


def price_usd(profile_name: str, amortise_hours: float) -> tuple[float, str]:
    """What one device costs: its list price, or an hourly price times the amortisation period."""
    profile = PROFILES[profile_name]
    if profile.price_unit == "hour":
        return profile.price_usd * amortise_hours, f"${profile.price_usd:g}/h x {amortise_hours:g} h"
    return profile.price_usd, f"${profile.price_usd:g}"


def quoted_rows(settings: Settings, measured: Sequence[dict[str, Any]] = ()) -> list[list[str]]:
    """The devices' quoted SSD-MobileNetV2 figures, each row saying it is quoted; first, this
    machine's own SSD-MobileNetV2 rows when the zoo's model ran here, each saying it is measured."""
    rows = []
    for r in measured:
        if r.get("model") != "ssd_mobilenet_v2" or r.get("status") != "ok" or not r.get("p50_ms"):
            continue
        est = " (est.)" if r.get("energy_is_estimate") else ""
        rate = 1e3 / float(r["p50_ms"])  # one request at a time, as the quoted figures
        watts = r.get("watts")
        rows.append(
            [
                f"this machine: MEASURED here ({r['runtime']}, {r['format']})",
                fmt(float(r["p50_ms"]), "{:.1f}"),
                fmt(rate, "{:.1f}"),
                fmt(watts, "{:.2f}") + est,
                fmt(rate / watts if watts else None) + est,
                f"${settings.host_price_usd:g}" if settings.host_price_usd else "unknown",
                fmt(rate / settings.host_price_usd if settings.host_price_usd else None, "{:.3f}"),
                "measured here through tenantd (p50 at the client)",
                f"power: {r.get('energy_source')}",
            ]
        )
    for name in ("edgetpu", "ncs2", "jetson-nano", "jetson-tx2", "rpi3", "cloud-cpu", "cloud-gpu"):
        profile = PROFILES[name]
        lo, hi = profile.power_w
        cost, cost_text = price_usd(name, settings.amortise_hours)
        quoted = QUOTED_SSD_MOBILENET_V2_MS.get(name)
        lat: float | None = None
        tput: float | None = None
        src = "not quoted"
        if quoted is not None:
            lat, src = quoted
            tput = 1e3 / lat
        per_w = f"{fmt(tput / hi)}-{fmt(tput / lo)}" if tput and lo > 0 else fmt(tput / hi if tput and hi else None)
        power_src = ", ".join(f"[{s}]" for s in profile.sources)
        rows.append(
            [
                f"{name}: quoted",
                fmt(lat, "{:.1f}"),
                fmt(tput, "{:.1f}"),
                f"{lo:g}-{hi:g}" if lo != hi else f"{hi:g} (measured by the paper)",
                per_w,
                cost_text,
                fmt(tput / cost if tput else None, "{:.3f}"),
                src,
                power_src,
            ]
        )
    return rows


def report(
    out: Path, rows: Sequence[dict[str, Any]], settings: Settings, context: dict[str, Any], argv: list[str]
) -> str:
    machine = context["machine"]
    ok = [r for r in rows if r["status"] == "ok"]
    estimate = any(r.get("energy_is_estimate") for r in ok)
    measured_rows = [
        [
            r["model"],
            r["format"],
            r["runtime"],
            fmt(r.get("throughput_per_s"), "{:.1f}"),
            fmt(r.get("p50_ms"), "{:.3f}"),
            fmt(r.get("p99_ms"), "{:.3f}"),
            fmt(r.get("compute_p50_ms"), "{:.3f}"),
            fmt(r.get("direct_p50_ms"), "{:.3f}"),
            fmt(r.get("load_ms"), "{:.1f}"),
            fmt((r.get("footprint_bytes") or 0) / 2**20, "{:.1f}"),
            fmt(r.get("watts"), "{:.2f}") + (" (est.)" if r.get("energy_is_estimate") else ""),
            fmt(r.get("inferences_per_j"), "{:.0f}") + (" (est.)" if r.get("energy_is_estimate") else ""),
            fmt(r.get("throughput_per_usd"), "{:.2f}"),
        ]
        for r in ok
    ]
    skipped = [f"- {r['model']} ({r['format']}) on {r['runtime']}: {r['note']}" for r in rows if r["status"] != "ok"]
    origins = sorted({f"- `{r['model']}`: {r['origin']}" for r in rows})
    meter = context["meter"]
    lines = [
        "# Micro-benchmarks on tenantd",
        "",
        f"Command: `python -m experiments.microbench {shlex.join(argv)}` - {context['finished']}, "
        f"{machine['cpu_model']}, {machine['usable_cores']} cores, load average at start "
        f"{', '.join(f'{v:.1f}' for v in machine['loadavg_at_start'])}. Seed {settings.seed}; "
        f"{settings.warmup_s:g} s warm-up + {settings.duration_s:g} s per window.",
        "",
        "Models:",
        *origins,
        "",
        "## Measured on this machine (through the daemon, client library only)",
        "",
        markdown_table(
            [
                "model",
                "format",
                "runtime",
                "inf/s",
                "p50 ms",
                "p99 ms",
                "daemon compute p50",
                "direct p50",
                "load ms",
                "footprint MiB",
                "W",
                "inf/J (= inf/s per W)",
                "inf/s per $",
            ],
            measured_rows,
        ),
        "",
        "p50/p99: one request at a time, at the client; inf/s: one request in flight per execution slot; "
        "load ms and footprint: the daemon's own measurement at submission; direct: the same file in this "
        "process with LiteRT.",
        "",
        f"Energy: **{meter}**."
        + (
            " Every W, inf/J and inf/s-per-W figure above marked (est.) is an ESTIMATE, not a measurement: this "
            "host has no power meter (no RAPL, NVML or INA3221), so the daemon's CPU utilisation over the window "
            f"was put on the power range of the `{settings.power_profile}` profile "
            f"({PROFILES[settings.power_profile].power_w[0]:g}-{PROFILES[settings.power_profile].power_w[1]:g} W, "
            f"{', '.join(PROFILES[settings.power_profile].sources)}), linearly between idle and full load."
            if estimate
            else ""
        ),
        "inf/s per $ needs `--host-price-usd` (this machine's price is not known here).",
        "",
        "## This machine beside the devices (quoted rows: public sources, not measured here)",
        "",
        markdown_table(
            [
                "device: measured or quoted",
                "SSD-MobileNetV2 ms",
                "inf/s",
                "power W",
                "inf/s per W",
                "price",
                "inf/s per $",
                "latency source",
                "power/price source",
            ],
            quoted_rows(settings, ok),
        ),
        "",
        "Derived from the quoted latency (inf/s = 1000 / ms; one request at a time) with each profile's power "
        "range (inf/s per W from full to idle power) and price. Cloud instances: the slides' measured power, "
        f"and AWS's on-demand price of a p3.2xlarge over {settings.amortise_hours:g} hours "
        f"({settings.amortise_hours / HOURS_PER_YEAR:.2g} years) of continuous use against the edge devices' "
        "one-off list price. The paper found edge accelerators 10-100x ahead of cloud CPU and GPU in throughput "
        "per dollar, and with lower normalised power than the cloud CPU (the slides; figures not given as "
        "numbers there).",
        "",
        "Sources: " + "; ".join(f"[{key}] {text}" for key, text in SOURCES.items()) + ".",
        "",
        "## The devices modelled by their twins (MODELLED: not measured here, not quoted)",
        "",
        markdown_table(
            [
                "device",
                "model",
                "service ms (source)",
                "inf/s",
                "mJ per inference",
                "inf/s per W",
                "inf/s per $",
                "power/price source",
            ],
            modelled_rows(),
        ),
        "",
        "From `tenantd/devices/twin.py`: service times published for that model on that device (umassos/ibis, "
        "aallan/benchmarking-ml-on-the-edge) or fitted from MACs on the published rows (`fitted`), the TX2 scaled "
        "from the Nano (`scaled`); energy = the profile's active (upper) power x service time; per $ = inf/s / "
        "list price. Validated against published concurrent runs: `python -m experiments.validate_twins`.",
        "",
        "## What these figures do and do not say",
        "",
        "- The first table is this x86 CPU running the models through tenantd; it says what the daemon costs and "
        "how the runtimes compare *here*, not how an EdgeTPU, NCS2 or Jetson performs.",
        "- The second table is other people's measurements of one model (SSD-MobileNetV2) on the devices; it is "
        "only comparable to the first where the same model ran here (the zoo's `ssd_mobilenet_v2`), and even "
        "then the hardware differs.",
    ]
    if estimate:
        lines.append(
            "- The energy estimate assumes power rises linearly with CPU utilisation between the profile's idle "
            "and full-load figures and charges only the daemon's CPU time; real boards have other loads and "
            "non-linear power curves. It shows the method; a meter (RAPL, NVML, INA3221) replaces it where present."
        )
    if any(r["origin"].startswith("stand-in") for r in rows):
        lines.append(
            "- The zoo (issue 4) was not built here, so untrained stand-ins ran instead; their timings are not "
            "the paper's models'."
        )
    if skipped:
        lines += ["", "Not run:", *skipped]
    text = "\n".join(lines) + "\n"
    (out / "report.md").write_text(text)
    return text


# ---------------------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.microbench",
        description="Throughput, latency, load time, memory and energy per model and runtime, through tenantd.",
        epilog="Full run: ~5-8 min here with the zoo built (~1 min with the stand-ins); --quick: ~30 s.",
    )
    parser.add_argument("--quick", action="store_true", help="short windows and smaller stand-ins")
    parser.add_argument("--runtime", action="append", help="only these runtimes (repeatable; default: all here)")
    parser.add_argument(
        "--model", action="append", help="zoo models to run (repeatable; default the paper's five, quick two)"
    )
    parser.add_argument("--duration-s", type=float, help="measured seconds per window (default 5; quick 0.5)")
    parser.add_argument("--warmup-s", type=float, help="warm-up seconds (default 1; quick 0.2)")
    parser.add_argument(
        "--power-profile", default="rpi3", choices=[p for p, v in PROFILES.items() if v.power_w[1] > 0],
        help="power range for the estimate when there is no meter (default rpi3)",
    )  # fmt: skip
    parser.add_argument("--host-price-usd", type=float, help="this machine's price, for inf/s per $")
    parser.add_argument(
        "--amortise-hours", type=float, default=HOURS_PER_YEAR, help="hours a cloud instance is paid for (default 1 y)"
    )
    parser.add_argument("--no-direct", action="store_true", help="skip the in-process LiteRT comparison")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--resume", action="store_true", help="keep rows of an earlier run of the same command line")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    settings = Settings(
        quick=args.quick,
        warmup_s=args.warmup_s if args.warmup_s is not None else (0.2 if args.quick else 1.0),
        duration_s=args.duration_s if args.duration_s is not None else (0.5 if args.quick else 5.0),
        runtimes=tuple(args.runtime) if args.runtime else None,
        models=tuple(args.model) if args.model else None,
        power_profile=args.power_profile,
        host_price_usd=args.host_price_usd,
        amortise_hours=args.amortise_hours,
        direct=not args.no_direct,
        seed=args.seed,
        out=args.out,
        resume=args.resume,
    )
    try:
        previous = check_out_dir(settings.out, EXPERIMENT, settings.parameters(), settings.resume)
        kept: dict[tuple[str, str, str], dict[str, Any]] = {}
        if previous and (settings.out / "microbench.csv").exists():
            with (settings.out / "microbench.csv").open(newline="") as stream:
                kept = {(r["model"], r["format"], r["runtime"]): dict(r) for r in csv.DictReader(stream)}
        real_meters = detect_meters()
        context: dict[str, Any] = {
            "command": ["python", "-m", "experiments.microbench", *argv],
            "machine": machine_info(),
            "versions": versions(["tqdm", "matplotlib"]),
            "git": git_commit(),
            "started": now_iso(),
        }
        write_json(
            settings.out / "run.json", {"experiment": EXPERIMENT, "parameters": settings.parameters(), **context}
        )
        rows: list[dict[str, Any]] = []
        with tempfile.TemporaryDirectory(prefix="tenantd-microbench-") as tmp:
            workdir = Path(tmp)
            models = zoo_models(settings.quick, settings.models)
            if not models:
                print(
                    "note: the model zoo (issue 4) is not built here (python -m models build); "
                    "benchmarking small stand-ins instead",
                    file=sys.stderr,
                )
                models = standin_models(workdir, settings.quick, settings.seed)
            if settings.models:
                models = [m for m in models if m.name in settings.models]
                if not models:
                    raise ExperimentError(f"no model named {', '.join(settings.models)} here")
            from tenantd.runtimes import available_runtimes

            with daemon_process(workdir / "daemon") as endpoint:
                with TenantClient(endpoint) as operator:
                    status = operator.status()
                # Runtimes both importable here and offered by the daemon (test doubles excluded).
                runtimes = [r for r in available_runtimes() if r in status["runtimes"] and r != "faulty"]
                if settings.runtimes:
                    missing = sorted(set(settings.runtimes) - set(runtimes))
                    if missing:
                        raise ExperimentError(f"runtime(s) {', '.join(missing)} not available here: {runtimes}")
                    runtimes = [r for r in runtimes if r in settings.runtimes]
                meter = make_meter(settings, real_meters, int(status["pid"]))
                context["meter"] = (
                    f"measured by {meter.name}"
                    if not meter.estimate
                    else f"ESTIMATE from CPU time x the "
                    f"{settings.power_profile} power range (no power meter on this host)"
                )
                pairs = [(m, r) for m in models for r in runtimes if runs_on(r, m)]
                for model, runtime in tqdm(pairs, desc="microbench", unit="run", file=sys.stderr):
                    key = (model.name, model.fmt, runtime)
                    if key in kept and kept[key]["status"] == "ok":
                        rows.append(kept[key])
                        continue
                    rows.append(bench_one(endpoint, model, runtime, settings, status, meter))
                    with (settings.out / "microbench.csv").open("w", newline="") as stream:
                        writer = csv.DictWriter(stream, COLUMNS, extrasaction="ignore")
                        writer.writeheader()
                        writer.writerows(rows)
        context["finished"] = now_iso()
        context["meters_found"] = [m.name for m in real_meters]
        write_json(
            settings.out / "microbench.json",
            {"experiment": EXPERIMENT, "parameters": settings.parameters(), **context, "results": rows},
        )
        write_json(
            settings.out / "run.json", {"experiment": EXPERIMENT, "parameters": settings.parameters(), **context}
        )
        report(settings.out, [_typed(r) for r in rows], settings, context, argv)
    except ExperimentError as exc:
        print(f"microbench: error: {exc}", file=sys.stderr)
        return 1
    except TenantError as exc:
        print(f"microbench: the daemon refused a request the experiment needs: {exc}", file=sys.stderr)
        return 1
    table = []
    for r in rows:
        est = " (est.)" if str(r.get("energy_is_estimate")) == "True" else ""
        table.append(
            [r["model"], r["format"], r["runtime"], r["status"], fmt(_f(r.get("throughput_per_s")), "{:.1f}"),
             fmt(_f(r.get("p50_ms")), "{:.3f}"), fmt(_f(r.get("p99_ms")), "{:.3f}"),
             fmt(_f(r.get("inferences_per_j")), "{:.0f}") + est]
        )  # fmt: skip
    print(plain_table(["model", "format", "runtime", "status", "inf/s", "p50 ms", "p99 ms", "inf/J"], table))
    print(f"\nwrote microbench.csv, microbench.json and report.md to {settings.out}")
    return 0


def _f(value: Any) -> float | None:
    if value in (None, ""):
        return None
    return float(value)


def _typed(row: dict[str, Any]) -> dict[str, Any]:
    """Rows kept from an earlier run come back from CSV as text."""
    out = dict(row)
    for key in COLUMNS:
        value = out.get(key)
        if isinstance(value, str) and key not in ("model", "format", "runtime", "origin", "status", "note", "input",
                                                  "energy_source", "energy_is_estimate"):  # fmt: skip
            out[key] = _f(value)
    if isinstance(out.get("energy_is_estimate"), str):
        out["energy_is_estimate"] = out["energy_is_estimate"] == "True"
    return out


if __name__ == "__main__":
    raise SystemExit(main())
