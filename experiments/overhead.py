"""Overhead of serving one model through tenantd versus invoking it in-process with LiteRT.

What it measures
----------------
For one model, on this machine and in one run. By default the model is :func:`models.tiny.cnn`:
a compute-bound MobileNet-style image classifier (3x3 conv, three depthwise-separable blocks
with widths 96, 352, 704, 1408, global mean, FC to 10 classes, softmax; ~5.2 MB of float32
weights) whose single input is a uint8 ``[1, 224, 224, 3]`` image = 150,528 bytes (the issue's
"150 KiB input"); one inference takes ~4.5 ms at 1 thread on a 2-core AMD EPYC. ``--model mlp``
selects the earlier float32 MLP from :func:`models.tiny.mlp` instead (input ``[1, 38400]``
float32 = 150 KiB; ``--model-in`` and ``--hidden`` shape it). The input is drawn from the
seeded RNG (random uint8 pixels for the CNN, standard normal float32 for the MLP). Phases:

* **direct**: the model in this process through ``ai_edge_litert.interpreter.Interpreter`` with
  the same ``num_threads`` as the daemon gives its models; a closed loop of
  ``set_tensor``/``invoke``/``get_tensor``. It runs before *and* after the daemon phases; the two
  windows are pooled into the baseline, and their difference shows how noisy the machine was.
* **daemon sync, c=1**: a closed loop of ``TenantClient.infer_detailed`` (what ``infer`` calls;
  it also returns the daemon's timings). Its p50 minus the direct p50 is the *added latency*.
* **daemon ping, c=1**: a closed loop of ``TenantClient.ping`` (no tensors, no scheduler, no
  runtime): the fixed cost of one request/reply round trip, for scale.
* **daemon async, c in --concurrency**: ``c`` closed loops on one ``AsyncTenantClient`` run with
  ``asyncio.gather``. The daemon runs the model with one instance (``instances = 1``: one request
  at a time; experiments/throughput.py measures several), so its ceiling is the
  direct single-stream throughput; concurrency only lets transport overlap compute.
* **KServe HTTP binary / KServe gRPC, c in --kserve-concurrency** (default 1 and 8): the same
  model and input through the daemon's KServe v2 front doors (``--http``/``--grpc``, on loopback),
  ``c`` closed loops on one ``tritonclient.http.aio`` client (Triton's binary tensor data both
  ways) or one ``tritonclient.grpc.aio`` client (raw contents), beside the ZeroMQ async client at
  the same ``c`` (:mod:`experiments.kserve_paths`). Their replies carry no daemon timings. The
  summary compares each one's added p50 at c=1 with the ZeroMQ async client's (issue 13's
  targets: gRPC within 1.5x, HTTP within 2x). ``--no-kserve`` skips them; so does ``--endpoint``.

How
---
Every phase warms up for ``--warmup`` seconds, then measures for ``--duration`` seconds.
Throughput is the number of requests that completed inside the window divided by its length;
latency percentiles are over requests that started and finished inside it, timed at the client
with ``time.perf_counter``. Every reply carries the daemon's own ``compute_ms`` (the runtime call
on the slot's thread), ``queue_ms`` (scheduler wait) and ``total_ms`` (enqueue to reply); the
table shows their medians and the median of ``latency - total_ms`` ("transport": the client's
encoding and event loop, ZeroMQ both ways, and the daemon's receiving and decoding before the
request is queued).

The daemon is started here as a subprocess through its CLI (``python -m tenantd serve`` on an
``ipc://`` socket in a temporary directory; ready once it prints its ``tenantd ready`` line;
stopped with SIGTERM), or ``--endpoint`` targets a daemon that is already running. Before
measuring, the daemon's output for the benchmark input must equal the direct output exactly
(``np.array_equal``); otherwise the run fails.

The issue's targets: daemon throughput >= 0.95 x direct, and added p50 latency < 0.5 ms for a
150 KiB input over ipc. Figures go to stdout as a Markdown table and to ``--out`` as
``overhead.md``, ``overhead.csv`` and ``overhead.json`` (parameters, seed, machine, versions).

Caveats: ``--quick`` uses a narrower CNN (widths 32, 128, 256, 512: ~0.7 ms per inference) and
short windows, so its ratios are not comparable with a default run's: the fixed per-request
cost weighs more against a shorter inference. The earlier default, the MLP, was memory-bound
(a batch-1 dense layer reads every weight once per inference), and bandwidth contention from
its 118 MB of weights inflated every other cost in the daemon phases (decoding, copies, the
event loop), which is why the default is now a compute-bound CNN. Other load on the machine
still moves the figures, and on a small machine the client, the daemon's event loop and its
runtime thread share cores.

    python -m experiments.overhead                # ~1.5 min, the CNN
    python -m experiments.overhead --quick        # < 15 s, a narrower CNN, short windows
    python -m experiments.overhead --model mlp    # the float32 MLP (--model-in, --hidden)
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import hashlib
import importlib.metadata
import json
import math
import os
import platform
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import zmq
from ai_edge_litert.interpreter import Interpreter

import tenantd
from experiments import harness, kserve_paths
from models.tiny import cnn, mlp, param_bytes
from tenantclient import AsyncTenantClient, TenantClient, TenantError

MODELS = ("cnn", "mlp")
DEFAULT_MODEL = "cnn"
# The CNN: uint8 [1, 224, 224, 3] = 150,528 bytes in, 10 classes out. On a 2-core AMD EPYC with
# 1 thread the default widths (~5.2 MB of weights) take ~4.5 ms, the quick ones (~0.7 MB) ~0.7 ms.
CNN_IMAGE = 224
CNN_CLASSES = 10
DEFAULT_CHANNELS = (96, 352, 704, 1408)
QUICK_CHANNELS = (32, 128, 256, 512)
# The MLP (--model mlp): float32 input; batch-1 dense layers are memory-bound, so its latency
# scales with the weight bytes: hidden=768 (118 MB) ~2.9 ms, hidden=256 (39 MB) ~0.7 ms.
DEFAULT_IN_FEATURES = 38400  # x 4 bytes = 153,600 bytes = 150 KiB
DEFAULT_HIDDEN = 768
QUICK_HIDDEN = 256
OUT_FEATURES = 16
DEFAULT_WARMUP_S, DEFAULT_DURATION_S = 2.0, 10.0
QUICK_WARMUP_S, QUICK_DURATION_S = 0.25, 1.0
DEFAULT_CONCURRENCY = (1, 2, 4)
DEFAULT_OUT = Path(__file__).resolve().parent / "out" / "overhead"

TENANT = "overhead"
MODEL_NAME = "overhead-model"

TARGET_THROUGHPUT_RATIO = 0.95
TARGET_ADDED_P50_MS = 0.5
DEFAULT_KSERVE_CONCURRENCY = (1, 8)
# Issue 13's targets: each KServe path's added p50 latency against the ZeroMQ path's, at c=1.
TARGET_KSERVE_ADDED = {"KServe gRPC": 1.5, "KServe HTTP binary": 2.0}

Tensor = npt.NDArray[Any]  # the model's input or output: uint8 image or float32 features


class BenchmarkError(harness.ExperimentError):
    """The benchmark cannot produce trustworthy figures; the message says why."""


@dataclass(frozen=True)
class Settings:
    """The command line with the --quick/default choices resolved."""

    model: str  # one of MODELS
    channels: tuple[int, ...]  # the CNN's widths
    in_features: int  # the MLP's input features
    hidden: int  # the MLP's hidden width
    warmup_s: float
    duration_s: float
    concurrency: tuple[int, ...]
    kserve_concurrency: tuple[int, ...]  # () : no KServe phases
    threads: int | None  # requested; None: the daemon's default
    endpoint: str | None  # a running daemon; None: start one
    out: Path
    quick: bool
    seed: int
    argv: list[str]

    @classmethod
    def from_args(cls, args: argparse.Namespace, argv: list[str]) -> Settings:
        def pick(value: Any, quick: Any, default: Any) -> Any:
            return value if value is not None else (quick if args.quick else default)

        return cls(
            model=args.model,
            channels=QUICK_CHANNELS if args.quick else DEFAULT_CHANNELS,
            in_features=args.model_in if args.model_in is not None else DEFAULT_IN_FEATURES,
            hidden=pick(args.hidden, QUICK_HIDDEN, DEFAULT_HIDDEN),
            warmup_s=pick(args.warmup, QUICK_WARMUP_S, DEFAULT_WARMUP_S),
            duration_s=pick(args.duration, QUICK_DURATION_S, DEFAULT_DURATION_S),
            concurrency=args.concurrency,
            kserve_concurrency=() if args.no_kserve or args.endpoint else args.kserve_concurrency,
            threads=args.threads,
            endpoint=args.endpoint,
            out=args.out,
            quick=args.quick,
            seed=args.seed,
            argv=argv,
        )

    @property
    def layers(self) -> str:
        """The layer widths, e.g. ``224px:96x352x704x1408->10`` or ``38400x768x16``."""
        if self.model == "cnn":
            widths = "x".join(str(c) for c in self.channels)
            return f"{CNN_IMAGE}px:{widths}->{CNN_CLASSES}"
        return f"{self.in_features}x{self.hidden}x{OUT_FEATURES}"

    @property
    def description(self) -> str:
        if self.model == "cnn":
            return f"uint8-input MobileNet-style CNN {self.layers}"
        return f"float32 MLP {self.layers}"

    def build_model(self) -> bytes:
        if self.model == "cnn":
            return cnn(CNN_IMAGE, self.channels, CNN_CLASSES, seed=self.seed)
        return mlp(self.in_features, [self.hidden], OUT_FEATURES, seed=self.seed)

    def make_input(self) -> Tensor:
        """The benchmark input, drawn from the seeded RNG."""
        rng = np.random.default_rng((self.seed, 1))
        if self.model == "cnn":
            return rng.integers(0, 256, (1, CNN_IMAGE, CNN_IMAGE, 3), dtype=np.uint8)
        return rng.standard_normal((1, self.in_features)).astype(np.float32)


# ---------------------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Record:
    """One request: client-side start/end (perf_counter seconds) and the daemon's timings."""

    start: float
    end: float
    compute_ms: float = math.nan
    queue_ms: float = math.nan
    total_ms: float = math.nan


@dataclass
class Window:
    """The records of one phase and the measured window ``[begin, end]``."""

    records: list[Record]
    begin: float
    end: float

    def completed(self) -> list[Record]:
        return [r for r in self.records if self.begin <= r.end <= self.end]

    def inside(self) -> list[Record]:
        return [r for r in self.records if r.start >= self.begin and r.end <= self.end]


@dataclass
class PhaseResult:
    """One row of the table."""

    phase: str
    client: str
    concurrency: int
    n: int
    window_s: float
    throughput_per_s: float
    p50_ms: float
    p99_ms: float
    mean_ms: float
    compute_p50_ms: float | None = None
    queue_p50_ms: float | None = None
    daemon_total_p50_ms: float | None = None
    transport_p50_ms: float | None = None
    throughput_ratio: float | None = None
    added_p50_ms: float | None = None


def summarise(phase: str, client: str, concurrency: int, windows: Sequence[Window]) -> PhaseResult:
    """Throughput over the windows (pooled) and latency statistics over the requests inside them."""
    completed = sum(len(w.completed()) for w in windows)
    window_s = sum(w.end - w.begin for w in windows)
    inside = [r for w in windows for r in w.inside()]
    if not inside:
        raise BenchmarkError(f"phase {phase!r}: no request completed inside the measured window")
    latency = np.array([(r.end - r.start) * 1e3 for r in inside])
    total = np.array([r.total_ms for r in inside])
    daemon = not np.isnan(total).all()

    def median(values: npt.NDArray[np.float64]) -> float | None:
        return float(np.median(values)) if daemon else None

    return PhaseResult(
        phase=phase,
        client=client,
        concurrency=concurrency,
        n=len(inside),
        window_s=window_s,
        throughput_per_s=completed / window_s,
        p50_ms=float(np.percentile(latency, 50)),
        p99_ms=float(np.percentile(latency, 99)),
        mean_ms=float(latency.mean()),
        compute_p50_ms=median(np.array([r.compute_ms for r in inside])),
        queue_p50_ms=median(np.array([r.queue_ms for r in inside])),
        daemon_total_p50_ms=median(total),
        transport_p50_ms=median(latency - total),
    )


# ---------------------------------------------------------------------------------------- phases


class Direct:
    """The model in this process, invoked exactly as the daemon's LiteRT runtime invokes it."""

    def __init__(self, model_path: Path, threads: int) -> None:
        self.interpreter = Interpreter(model_path=str(model_path), num_threads=threads)
        self.interpreter.allocate_tensors()
        self.input_index = self.interpreter.get_input_details()[0]["index"]
        self.output_index = self.interpreter.get_output_details()[0]["index"]

    def infer(self, x: Tensor) -> Tensor:
        self.interpreter.set_tensor(self.input_index, x)
        self.interpreter.invoke()
        output: Tensor = self.interpreter.get_tensor(self.output_index)
        return output

    def measure(self, x: Tensor, warmup_s: float, duration_s: float) -> Window:
        records: list[Record] = []
        begin = time.perf_counter() + warmup_s
        end = begin + duration_s
        while (start := time.perf_counter()) < end:
            self.infer(x)
            records.append(Record(start, time.perf_counter()))
        return Window(records, begin, end)


def _daemon_record(start: float, timings: dict[str, Any]) -> Record:
    return Record(
        start,
        time.perf_counter(),
        float(timings["compute_ms"]),
        float(timings["queue_ms"]),
        float(timings["total_ms"]),
    )


def measure_sync(endpoint: str, x: Tensor, warmup_s: float, duration_s: float) -> Window:
    """Closed loop of the synchronous client, one request in flight."""
    records: list[Record] = []
    with TenantClient(endpoint, tenant=TENANT) as client:
        client.ping()  # connect before the clock starts
        begin = time.perf_counter() + warmup_s
        end = begin + duration_s
        while (start := time.perf_counter()) < end:
            result = client.infer_detailed(MODEL_NAME, x)
            records.append(_daemon_record(start, result.timings))
    return Window(records, begin, end)


def measure_ping(endpoint: str, warmup_s: float, duration_s: float) -> Window:
    """Closed loop of pings: one round trip with no tensors, scheduler or runtime involved."""
    records: list[Record] = []
    with TenantClient(endpoint, tenant=TENANT) as client:
        client.ping()
        begin = time.perf_counter() + warmup_s
        end = begin + duration_s
        while (start := time.perf_counter()) < end:
            client.ping()
            records.append(Record(start, time.perf_counter()))
    return Window(records, begin, end)


def measure_async(endpoint: str, x: Tensor, concurrency: int, warmup_s: float, duration_s: float) -> Window:
    """``concurrency`` closed loops sharing one asyncio client."""

    async def run() -> Window:
        records: list[Record] = []
        async with AsyncTenantClient(endpoint, tenant=TENANT) as client:
            await client.ping()
            begin = time.perf_counter() + warmup_s
            end = begin + duration_s

            async def loop() -> None:
                while (start := time.perf_counter()) < end:
                    result = await client.infer_detailed(MODEL_NAME, x)
                    records.append(_daemon_record(start, result.timings))

            await asyncio.gather(*(loop() for _ in range(concurrency)))
        return Window(records, begin, end)

    return asyncio.run(run())


# ---------------------------------------------------------------------------------------- daemon


@contextmanager
def daemon_process(workdir: Path, threads: int | None, doors: tuple[str, str] | None = None) -> Iterator[str]:
    """``tenantd serve`` on an ipc socket under ``workdir`` (see :func:`experiments.harness.daemon_process`),
    with ``threads_per_model`` set when ``threads`` is given, and the KServe HTTP and gRPC front
    doors on the ``doors`` addresses when given."""
    policy = "instances = 1\n" + ("" if threads is None else f"threads_per_model = {threads}\n")
    if doors is not None:
        policy += f'http_listen = "{doors[0]}"\ngrpc_listen = "{doors[1]}"\n'
    with harness.daemon_process(workdir, policy) as endpoint:
        yield endpoint


# ---------------------------------------------------------------------------------------- context


def versions() -> dict[str, str]:
    def dist(name: str) -> str:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    return {
        "python": platform.python_version(),
        "tenantd": tenantd.__version__,
        "ai-edge-litert": dist("ai-edge-litert"),
        "numpy": np.__version__,
        "pyzmq": zmq.__version__,
        "libzmq": zmq.zmq_version(),
    }


# ---------------------------------------------------------------------------------------- report

COLUMNS: list[tuple[str, str, str]] = [
    # (field, Markdown header, format)
    ("phase", "phase", "{}"),
    ("client", "client", "{}"),
    ("concurrency", "c", "{}"),
    ("n", "n", "{}"),
    ("throughput_per_s", "inf/s", "{:.1f}"),
    ("p50_ms", "p50 ms", "{:.3f}"),
    ("p99_ms", "p99 ms", "{:.3f}"),
    ("compute_p50_ms", "daemon compute p50", "{:.3f}"),
    ("queue_p50_ms", "daemon queue p50", "{:.3f}"),
    ("daemon_total_p50_ms", "daemon total p50", "{:.3f}"),
    ("transport_p50_ms", "transport p50", "{:.3f}"),
    ("throughput_ratio", "inf/s ÷ direct", "{:.3f}"),
    ("added_p50_ms", "p50 − direct p50 (ms)", "{:+.3f}"),  # noqa: RUF001 (a minus sign)
]


def markdown(report: dict[str, Any], rows: Sequence[PhaseResult]) -> str:
    m, v, model, p, d = (report[k] for k in ("machine", "versions", "model", "parameters", "daemon"))
    load = report["loadavg"]
    lines = [
        "## tenantd overhead: daemon vs direct LiteRT",
        "",
        (
            f"- machine: {m['cpu_model']}, {m['cores']} cores ({m['usable_cores']} usable); "
            f"load average (1 min) {load['before'][0]:.2f} before, {load['after'][0]:.2f} after"
        ),
        (
            f"- model: {model['description']} (seed {p['seed']}); "
            f"input {model['input_bytes']:,} B ({model['input_shape']} {model['input_dtype']}), "
            f"params {model['param_bytes']:,} B, file {model['file_bytes']:,} B"
        ),
        (
            f"- runtime: LiteRT num_threads={d['threads_per_model']} for direct and daemon; "
            f"daemon slots={d['slots']}; endpoint {d['endpoint']} "
            f"({'started here' if d['started_here'] else 'already running'})"
        ),
        (
            f"- versions: python {v['python']}, tenantd {v['tenantd']} (daemon {d['version']}), "
            f"ai-edge-litert {v['ai-edge-litert']}, numpy {v['numpy']}, pyzmq {v['pyzmq']} "
            f"(libzmq {v['libzmq']})"
        ),
        (
            f"- phases: {p['warmup_s']:g} s warm-up + {p['duration_s']:g} s measured each"
            f"{' (--quick)' if p['quick'] else ''}; daemon output == direct output: verified"
        ),
        "",
        "| " + " | ".join(header for _, header, _ in COLUMNS) + " |",
        "|" + "|".join("---" if i < 2 else "---:" for i in range(len(COLUMNS))) + "|",
    ]
    for row in rows:
        values = asdict(row)
        cells = ["–" if values[f] is None else fmt.format(values[f]) for f, _, fmt in COLUMNS]  # noqa: RUF001
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", *(f"- {line}" for line in report["summary"])]
    return "\n".join(lines) + "\n"


def write_outputs(out: Path, report: dict[str, Any], rows: Sequence[PhaseResult], text: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "overhead.md").write_text(text)
    with (out / "overhead.csv").open("w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=[f.name for f in fields(PhaseResult)])
        writer.writeheader()
        for row in rows:
            writer.writerow(asdict(row))
    document = {**report, "results": [asdict(r) for r in rows]}
    (out / "overhead.json").write_text(json.dumps(document, indent=2) + "\n")


def kserve_lines(zmq: Sequence[PhaseResult], kserve: Sequence[PhaseResult]) -> list[str]:
    """Each KServe path's added p50 at c=1 against the ZeroMQ path's at its best at c=1 (the sync or
    the asyncio client, whichever added less), per issue 13's targets."""
    zmq_c1 = [r for r in zmq if r.concurrency == 1 and r.added_p50_ms is not None]
    if not zmq_c1:
        return []
    best = min(zmq_c1, key=lambda r: r.added_p50_ms or 0.0)
    assert best.added_p50_ms is not None
    lines = []
    for row in kserve:
        target = TARGET_KSERVE_ADDED.get(row.client)
        if row.concurrency != 1 or target is None or row.added_p50_ms is None:
            continue
        ratio = row.added_p50_ms / best.added_p50_ms if best.added_p50_ms > 0 else math.inf
        lines.append(
            f"{row.client} added p50 at c=1: {row.added_p50_ms:+.3f} ms = {ratio:.2f} x ZeroMQ's "
            f"{best.added_p50_ms:+.3f} ms ({best.client}; target <= {target:g} x) -> "
            f"{'MET' if ratio <= target else 'MISSED'}"
        )
    return lines


def summary_lines(baseline_runs: Sequence[PhaseResult], sync: PhaseResult, batch: Sequence[PhaseResult]) -> list[str]:
    before, after = baseline_runs
    drift = (after.throughput_per_s - before.throughput_per_s) / before.throughput_per_s
    best = max(batch, key=lambda r: r.throughput_per_s)
    assert best.throughput_ratio is not None and sync.added_p50_ms is not None

    def verdict(ok: bool) -> str:
        return "MET" if ok else "MISSED"

    return [
        (
            f"throughput target (>= {TARGET_THROUGHPUT_RATIO:.2f} x direct): best async "
            f"c={best.concurrency} {best.throughput_ratio:.3f} x -> "
            f"{verdict(best.throughput_ratio >= TARGET_THROUGHPUT_RATIO)}; "
            + ", ".join(f"c={r.concurrency}: {r.throughput_ratio:.3f}" for r in batch)
        ),
        (
            f"added p50 latency target (< {TARGET_ADDED_P50_MS} ms, sync c=1): "
            f"{sync.added_p50_ms:+.3f} ms -> {verdict(sync.added_p50_ms < TARGET_ADDED_P50_MS)}"
        ),
        (
            f"noise: direct throughput changed {drift:+.1%} between the runs before and after "
            "the daemon phases (the baseline pools both)"
        ),
    ]


# ---------------------------------------------------------------------------------------- main


def _concurrency(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"concurrency levels must be >= 1, got {text!r}")
    return values


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.overhead",
        description="Closed-loop throughput and p50/p99 latency of one model served by tenantd "
        "versus invoked directly in-process with LiteRT at the same thread count, on this machine "
        "in one run. Prints a Markdown table; writes overhead.{md,csv,json} to --out.",
    )
    parser.add_argument(
        "--model", choices=MODELS, default=DEFAULT_MODEL,
        help=f"cnn: a compute-bound MobileNet-style CNN, uint8 [1,{CNN_IMAGE},{CNN_IMAGE},3] input "
        f"(150,528 B), widths {','.join(map(str, DEFAULT_CHANNELS))} "
        f"({','.join(map(str, QUICK_CHANNELS))} with --quick); mlp: a float32 MLP "
        f"(memory-bound; see --model-in, --hidden); default {DEFAULT_MODEL}",
    )  # fmt: skip
    parser.add_argument(
        "--model-in", type=_positive_int, default=None, metavar="N",
        help=f"--model mlp only: input features of the MLP (float32, batch 1; input bytes = 4*N); "
        f"default {DEFAULT_IN_FEATURES} = 150 KiB",
    )  # fmt: skip
    parser.add_argument(
        "--hidden", type=_positive_int, default=None, metavar="H",
        help=f"--model mlp only: hidden width of the MLP (sets the compute time); default "
        f"{DEFAULT_HIDDEN}, {QUICK_HIDDEN} with --quick",
    )  # fmt: skip
    parser.add_argument(
        "--duration", type=_positive_float, default=None, metavar="S",
        help=f"measured seconds per phase; default {DEFAULT_DURATION_S:g}, {QUICK_DURATION_S:g} with --quick",
    )  # fmt: skip
    parser.add_argument(
        "--warmup", type=_positive_float, default=None, metavar="S",
        help=f"warm-up seconds per phase; default {DEFAULT_WARMUP_S:g}, {QUICK_WARMUP_S:g} with --quick",
    )  # fmt: skip
    parser.add_argument(
        "--concurrency", type=_concurrency, default=DEFAULT_CONCURRENCY, metavar="C[,C...]",
        help="in-flight requests for the async-client phases; default 1,2,4",
    )  # fmt: skip
    parser.add_argument(
        "--threads", type=_positive_int, default=None, metavar="T",
        help="LiteRT threads per model for both sides; default: the daemon's own default "
        "(cores // slots). With --endpoint it must match the running daemon's threads_per_model",
    )  # fmt: skip
    parser.add_argument(
        "--endpoint", default=None, metavar="E",
        help="benchmark a tenantd already serving at E (e.g. ipc:///run/tenantd.sock) instead of "
        "starting one; its model is submitted as tenant 'overhead' and removed afterwards",
    )  # fmt: skip
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, metavar="DIR",
        help="directory for overhead.md/.csv/.json; default experiments/out/overhead/",
    )  # fmt: skip
    parser.add_argument(
        "--quick", action="store_true",
        help=f"short run (< 15 s): {QUICK_WARMUP_S:g} s warm-up, {QUICK_DURATION_S:g} s per phase, "
        f"CNN widths {','.join(map(str, QUICK_CHANNELS))} (MLP: hidden {QUICK_HIDDEN})",
    )  # fmt: skip
    parser.add_argument(
        "--kserve-concurrency", type=_concurrency, default=DEFAULT_KSERVE_CONCURRENCY, metavar="C[,C...]",
        help="in-flight requests for the KServe v2 phases (HTTP with binary tensors via tritonclient.http.aio, "
        "gRPC via tritonclient.grpc.aio), each beside the ZeroMQ async client at the same level; default 1,8",
    )  # fmt: skip
    parser.add_argument(
        "--no-kserve", action="store_true",
        help="skip the KServe v2 phases (also skipped with --endpoint: the doors of a running daemon are not known)",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="seed of the model's weights and input; default 0")
    return parser


def _progress(message: str) -> None:
    print(f"[overhead] {message}", file=sys.stderr, flush=True)


def check_outputs(direct: Direct, client: TenantClient, output_name: str, x: Tensor) -> None:
    """Fail unless the daemon returns exactly what the direct interpreter computes for ``x``."""
    expected = direct.infer(x).copy()
    got = client.infer(MODEL_NAME, x)[output_name]
    if not np.array_equal(got, expected):
        same_shape = got.shape == expected.shape
        diff = float(np.max(np.abs(got.astype(np.float64) - expected))) if same_shape else math.inf
        raise BenchmarkError(
            f"daemon output {output_name!r} differs from the direct output (shapes {got.shape} "
            f"and {expected.shape}, max |diff| {diff:g}); the figures would compare different work"
        )


def measure_kserve(
    settings: Settings, endpoint: str, doors: tuple[str, str], target: kserve_paths.Target, done_zmq: Sequence[int]
) -> list[tuple[str, int, Window]]:
    """For each KServe concurrency: ZeroMQ (unless measured already), HTTP binary, gRPC."""
    warmup, duration = settings.warmup_s, settings.duration_s
    windows: list[tuple[str, int, Window]] = []
    for c in settings.kserve_concurrency:
        if c not in done_zmq:
            _progress(f"daemon async c={c}, {warmup:g} s warm-up + {duration:g} s")
            windows.append(("AsyncTenantClient", c, measure_async(endpoint, target.x, c, warmup, duration)))
        for client, measure, address in (
            ("KServe HTTP binary", kserve_paths.measure_http, doors[0]),
            ("KServe gRPC", kserve_paths.measure_grpc, doors[1]),
        ):
            _progress(f"{client} c={c}, {warmup:g} s warm-up + {duration:g} s")
            try:
                spans, begin, end = measure(address, target, c, warmup, duration)
            except ValueError as exc:
                raise BenchmarkError(str(exc)) from None
            windows.append((client, c, Window([Record(a, b) for a, b in spans], begin, end)))
    return windows


def run_benchmark(
    settings: Settings, endpoint: str, model_path: Path, started_here: bool, doors: tuple[str, str] | None = None
) -> str:
    """Submit the model, check its outputs, run every phase; return the Markdown report (also
    written to ``settings.out`` with the CSV and JSON)."""
    warmup, duration = settings.warmup_s, settings.duration_s
    model_bytes = model_path.read_bytes()
    x = settings.make_input()
    load_before = os.getloadavg()

    with TenantClient(endpoint, tenant=TENANT) as client:
        status = client.status()
        threads = int(status["threads_per_model"])
        if settings.threads is not None and settings.threads != threads:
            raise BenchmarkError(
                f"the daemon at {endpoint} runs models with {threads} thread(s), not --threads "
                f"{settings.threads}; direct and daemon must use the same thread count"
            )
        _progress(f"submitting the model ({len(model_bytes):,} bytes) to {endpoint}")
        info = client.submit_model(model_path, MODEL_NAME, replace=not started_here)
        try:
            direct = Direct(model_path, threads)
            check_outputs(direct, client, info.outputs[0].name, x)
            phases = f"{warmup:g} s warm-up + {duration:g} s"
            _progress(f"direct (before), {phases}")
            before = direct.measure(x, warmup, duration)
            _progress(f"daemon sync c=1, {phases}")
            sync_window = measure_sync(endpoint, x, warmup, duration)
            _progress(f"daemon ping c=1, {phases}")
            ping_window = measure_ping(endpoint, warmup, duration)
            batch_windows: list[tuple[int, Window]] = []
            for c in settings.concurrency:
                _progress(f"daemon async c={c}, {phases}")
                batch_windows.append((c, measure_async(endpoint, x, c, warmup, duration)))
            kserve_windows: list[tuple[str, int, Window]] = []
            if doors is not None and settings.kserve_concurrency:
                output = info.outputs[0].name
                expected = direct.infer(x).copy()
                target = kserve_paths.Target(TENANT, MODEL_NAME, info.inputs[0].name, x, output, expected)
                kserve_windows = measure_kserve(settings, endpoint, doors, target, settings.concurrency)
            _progress(f"direct (after), {phases}")
            after = direct.measure(x, warmup, duration)
        finally:
            if not started_here:  # leave a running daemon as it was
                try:
                    client.remove_model(MODEL_NAME)
                except TenantError as exc:  # must not hide the original error
                    print(f"warning: could not remove model {MODEL_NAME!r}: {exc}", file=sys.stderr)

    baseline_runs = [summarise("direct (before)", "Interpreter", 1, [before]),
                     summarise("direct (after)", "Interpreter", 1, [after])]  # fmt: skip
    baseline = summarise("direct (baseline)", "Interpreter", 1, [before, after])
    sync = summarise("daemon", "TenantClient", 1, [sync_window])
    batch = [summarise("daemon", "AsyncTenantClient", c, [w]) for c, w in batch_windows]
    kserve = [summarise("daemon", client, c, [w]) for client, c, w in kserve_windows]
    batch += [r for r in kserve if r.client == "AsyncTenantClient"]
    kserve = [r for r in kserve if r.client != "AsyncTenantClient"]
    for row in [sync, *batch, *kserve]:
        row.throughput_ratio = row.throughput_per_s / baseline.throughput_per_s
        row.added_p50_ms = row.p50_ms - baseline.p50_ms
    ping = summarise("daemon ping (no tensors)", "TenantClient", 1, [ping_window])
    rows = [*baseline_runs, baseline, ping, sync, *batch, *kserve]

    report: dict[str, Any] = {
        "benchmark": "experiments.overhead",
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "parameters": {
            "seed": settings.seed,
            "model": settings.model,
            **(
                {"image": CNN_IMAGE, "channels": list(settings.channels), "classes": CNN_CLASSES}
                if settings.model == "cnn"
                else {
                    "model_in": settings.in_features,
                    "hidden": settings.hidden,
                    "out_features": OUT_FEATURES,
                }
            ),
            "warmup_s": warmup,
            "duration_s": duration,
            "concurrency": list(settings.concurrency),
            "kserve_concurrency": list(settings.kserve_concurrency),
            "threads": threads,
            "quick": settings.quick,
            "argv": settings.argv,
        },
        "machine": harness.machine_info(),
        "loadavg": {"before": list(load_before), "after": list(os.getloadavg())},
        "versions": versions(),
        "model": {
            "kind": settings.model,
            "description": settings.description,
            "layers": settings.layers,
            "input_shape": list(x.shape),
            "input_dtype": str(x.dtype),
            "input_bytes": x.nbytes,
            "param_bytes": param_bytes(model_bytes),
            "file_bytes": len(model_bytes),
            "sha256": hashlib.sha256(model_bytes).hexdigest(),
            "load_ms": info.load_ms,
            "first_infer_ms": info.first_infer_ms,
        },
        "daemon": {
            "endpoint": endpoint,
            "started_here": started_here,
            "version": status["version"],
            "slots": status["slots"],
            "threads_per_model": threads,
            "runtimes": status.get("runtimes"),
        },
        "targets": {
            "throughput_ratio_min": TARGET_THROUGHPUT_RATIO,
            "added_p50_ms_max": TARGET_ADDED_P50_MS,
        },
        "outputs_equal": True,
        "summary": summary_lines(baseline_runs, sync, batch) + kserve_lines([sync, *batch], kserve),
    }
    text = markdown(report, rows)
    write_outputs(settings.out, report, rows, text)
    return text


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.model != "mlp" and (args.model_in is not None or args.hidden is not None):
        parser.error("--model-in and --hidden apply only to --model mlp")
    settings = Settings.from_args(args, argv)
    try:
        with tempfile.TemporaryDirectory(prefix="tenantd-overhead-") as tmp:
            workdir = Path(tmp)
            _progress(f"building {settings.description} (seed {settings.seed})")
            model_path = workdir / f"overhead_{settings.model}.tflite"
            model_path.write_bytes(settings.build_model())
            if settings.endpoint:
                text = run_benchmark(settings, settings.endpoint, model_path, started_here=False)
            else:
                doors = None
                if settings.kserve_concurrency:
                    doors = (f"127.0.0.1:{kserve_paths.free_port()}", f"127.0.0.1:{kserve_paths.free_port()}")
                with daemon_process(workdir, settings.threads, doors) as endpoint:
                    _progress(
                        f"tenantd ready at {endpoint}" + (f", KServe HTTP {doors[0]}, gRPC {doors[1]}" if doors else "")
                    )
                    text = run_benchmark(settings, endpoint, model_path, started_here=True, doors=doors)
    except harness.ExperimentError as exc:  # BenchmarkError, or the daemon would not start
        print(f"overhead: error: {exc}", file=sys.stderr)
        return 1
    print(text, end="")
    _progress(f"wrote overhead.md, overhead.csv and overhead.json to {settings.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
