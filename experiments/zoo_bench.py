"""Each zoo model in each runtime on this machine: load time, resident memory, latency, throughput.

What it measures
----------------
For every built (model, format) of the zoo's paper workloads and every runtime that format
targets (LiteRT for ``.tflite`` float32 and int8; ONNX Runtime and OpenVINO for ONNX; OpenVINO
for IR), in a fresh subprocess per cell so that one cell's allocations do not count in the next:

* **load ms**: the runtime's load and compile of the file (``Interpreter`` + ``allocate_tensors``,
  ``InferenceSession``, ``compile_model``), the runtime library already imported;
* **RSS MB**: the process's resident memory after the load and one inference (psutil, through
  ``tenantd.memory.rss_bytes``), and **+load MB**, its growth over the same process with the
  runtime imported but nothing loaded: what one more model costs a process that already hosts
  the runtime;
* **p50 / p99 ms**: single-stream latency of ``run`` (batch 1, a closed loop, after a warm-up),
  timed with ``time.perf_counter``; **inf/s**: inferences completed in the window / its length.

Inputs are seeded uniform noise in the model's input range (int8 files get them quantized). Every runtime
gets ``--threads`` intra-op threads (default: all cores). Figures go to stdout as a Markdown table
and to ``experiments/out/zoo/zoo_bench.csv``. Build the zoo first (``make models``).

Caveats: the windows are short and the machine may be shared, so the figures are noisy; p99 over a
window of a slow model (Inception V4: ~10 inferences a second) rests on few samples (at least
``--min-runs``).

    python -m experiments.zoo_bench            # the paper's five models, ~3 minutes
    python -m experiments.zoo_bench --quick    # cnn-trad-fpool3 and MobileNetV2, short windows
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from models import zoo
from models.zoo.runners import RUNTIMES, load

PAPER_MODELS = ("mobilenet_v2", "inception_v4", "ssd_mobilenet_v1", "ssd_mobilenet_v2", "cnn_trad_fpool3")
QUICK_MODELS = ("cnn_trad_fpool3", "mobilenet_v2")
OUT = Path(__file__).resolve().parent / "out" / "zoo"
COLUMNS = (
    "model",
    "format",
    "runtime",
    "file_mb",
    "load_ms",
    "rss_mb",
    "load_rss_mb",
    "p50_ms",
    "p99_ms",
    "inf_per_s",
    "runs",
)


def _import_runtime(runtime: str) -> None:
    if runtime == "litert":
        import ai_edge_litert.interpreter  # noqa: F401
    elif runtime == "onnxruntime":
        import onnxruntime  # noqa: F401
    else:
        import openvino  # noqa: F401


def _feed(runner: Any, fmt: str, name: str) -> list[np.ndarray]:
    """A seeded uniform input in the model's input range, in the file's own layout and dtype
    (numpy only: importing torch here would add its hundreds of MB to the resident memory)."""
    spec = zoo.resolve(name)
    x = np.random.default_rng(99).uniform(*spec.input_range, size=spec.input_shape).astype(np.float32)
    if not fmt.startswith("tflite"):
        return [x]
    detail = runner.input_details[0]
    x = np.ascontiguousarray(x.transpose(0, 2, 3, 1)) if x.ndim == 4 else x
    if detail["dtype"] != np.float32:
        scale, zero = detail["quantization"]
        x = np.clip(np.round(x / scale) + zero, -128, 127).astype(detail["dtype"])
    return [x]


def measure_cell(
    name: str, fmt: str, runtime: str, threads: int, warmup_s: float, duration_s: float, min_runs: int
) -> dict[str, Any]:
    """One cell, in this process (meant to be a fresh one: see :func:`main`)."""
    from tenantd.memory import rss_bytes

    _import_runtime(runtime)
    rss_before = rss_bytes()
    start = time.perf_counter()
    runner = load(zoo.path(name, fmt), runtime, threads=threads)
    load_ms = (time.perf_counter() - start) * 1e3
    inputs = _feed(runner, fmt, name)
    runner.run(inputs)
    rss_after = rss_bytes()
    end = time.perf_counter() + warmup_s
    while time.perf_counter() < end:
        runner.run(inputs)
    times: list[float] = []
    window_start = time.perf_counter()
    while time.perf_counter() - window_start < duration_s or len(times) < min_runs:
        t0 = time.perf_counter()
        runner.run(inputs)
        times.append(time.perf_counter() - t0)
    window = time.perf_counter() - window_start
    meta = zoo.metadata(name, fmt)
    return {
        "model": name,
        "format": fmt,
        "runtime": runtime,
        "file_mb": round(meta["file_bytes"] / 1e6, 2),
        "load_ms": round(load_ms, 1),
        "rss_mb": round(rss_after / 1e6, 1),
        "load_rss_mb": round((rss_after - rss_before) / 1e6, 1),
        "p50_ms": round(float(np.percentile(times, 50)) * 1e3, 3),
        "p99_ms": round(float(np.percentile(times, 99)) * 1e3, 3),
        "inf_per_s": round(len(times) / window, 1),
        "runs": len(times),
    }


def _table(rows: list[dict[str, Any]]) -> str:
    head = "| " + " | ".join(COLUMNS) + " |"
    rule = "| " + " | ".join("---" for _ in COLUMNS) + " |"
    return "\n".join([head, rule, *("| " + " | ".join(str(r[c]) for c in COLUMNS) + " |" for r in rows)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", help=f"models (default: {', '.join(PAPER_MODELS)})")
    parser.add_argument("--quick", action="store_true", help=f"{', '.join(QUICK_MODELS)} with short windows")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of warm-up per cell")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds measured per cell")
    parser.add_argument("--min-runs", type=int, default=20, help="at least this many timed runs per cell")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--cell", nargs=3, metavar=("MODEL", "FORMAT", "RUNTIME"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.warmup, args.duration, args.min_runs = 0.3, 1.0, 10
    if args.cell:
        name, fmt, runtime = args.cell
        print(json.dumps(measure_cell(name, fmt, runtime, args.threads, args.warmup, args.duration, args.min_runs)))
        return 0
    names = args.models or (QUICK_MODELS if args.quick else PAPER_MODELS)
    cells = []
    for name in names:
        spec = zoo.resolve(name)
        for fmt in spec.formats:
            zoo.path(spec.name, fmt)  # fail early, with the build command, if a file is missing
            cells += [(spec.name, fmt, runtime) for runtime in RUNTIMES[fmt]]
    rows = []
    for i, (name, fmt, runtime) in enumerate(cells, start=1):
        print(f"[{i}/{len(cells)}] {name} {fmt} {runtime}", file=sys.stderr, flush=True)
        cmd = [sys.executable, "-m", "experiments.zoo_bench", "--cell", name, fmt, runtime]
        cmd += ["--threads", str(args.threads), "--warmup", str(args.warmup), "--duration", str(args.duration)]
        cmd += ["--min-runs", str(args.min_runs)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parents[1])
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    args.out.mkdir(parents=True, exist_ok=True)
    with (args.out / "zoo_bench.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    print(
        f"\n{len(os.sched_getaffinity(0))} cores, {args.threads} threads per model; CSV: {args.out / 'zoo_bench.csv'}\n"
    )
    print(_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
