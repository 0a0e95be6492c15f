"""The same network through LiteRT, OpenVINO and ONNX Runtime on this CPU: in-process versus
through a tenantd daemon.

What it measures
----------------
One network in three files: ``models.tiny.cnn`` as ``.tflite``, its ONNX twin from
``models.tiny_onnx`` (same weights), and OpenVINO IR converted from that ONNX (sent to the daemon
as an ``.ovir`` bundle). Or, with ``--model PATH.tflite``, a zoo model and whichever of
``PATH.onnx`` and ``PATH.xml`` (+ ``.bin``) lie beside it. Rows (runtime x file):

* LiteRT on the .tflite; ONNX Runtime on the .onnx; OpenVINO on the IR, on the .onnx and on the
  .tflite (OpenVINO reads all three).

For each row, two phases of a closed loop on one random input (seeded):

* **direct**: the model loaded in this process through tenantd's own runtime class (the thin layer
  the daemon uses over the vendor API) with the daemon's per-model thread count;
* **daemon**: ``TenantClient.infer_detailed`` against a daemon started here as a subprocess
  (``python -m tenantd serve`` on ipc://), one request at a time; the daemon's ``compute_ms``
  median is shown too.

Latency percentiles are over requests timed at the caller with ``time.perf_counter`` inside the
window; throughput is completed requests per second of window. Each row's output must agree with
LiteRT's direct output within 1e-4 (max abs diff is printed) before it is timed.

Caveats: this machine is small (2 cores) and shared; other work moves the figures by tens of
percent between runs. Read them as rough ratios, not absolute speeds. ``--quick`` uses a narrower
CNN and short windows. Output: a Markdown table on stdout and ``runtimes.md`` / ``runtimes.csv``
/ ``runtimes.json`` under ``--out`` (default ``experiments/out/runtimes``).

    python -m experiments.runtimes_bench --quick      # ~30 s
    python -m experiments.runtimes_bench              # ~2 min, the default CNN
"""

from __future__ import annotations

import argparse
import csv
import importlib.metadata
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from experiments.harness import machine_info
from experiments.overhead import daemon_process
from models import tiny
from tenantclient import TenantClient
from tenantd.runtimes import get_runtime_class
from tenantwire import irbundle

AGREEMENT = 1e-4
QUICK_CHANNELS = (32, 128, 256, 512)


@dataclass
class Row:
    runtime: str
    file: str
    phase: str
    p50_ms: float
    p99_ms: float
    throughput_rps: float
    daemon_compute_p50_ms: float | None
    max_abs_diff_vs_litert: float
    n: int


def closed_loop(call: Callable[[], Any], warmup_s: float, duration_s: float) -> list[float]:
    end_warm = time.perf_counter() + warmup_s
    while time.perf_counter() < end_warm:
        call()
    latencies = []
    end = time.perf_counter() + duration_s
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        call()
        latencies.append((time.perf_counter() - t0) * 1e3)
    return latencies


def summary(latencies: list[float], duration_s: float) -> tuple[float, float, float]:
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    return statistics.median(ordered), p99, len(ordered) / duration_s


def build_files(workdir: Path, model: Path | None, quick: bool) -> dict[str, Path]:
    """file kind -> path: "tflite", and where available "onnx", "ir" (the .xml)."""
    if model is not None:
        files = {"tflite": model}
        if model.with_suffix(".onnx").is_file():
            files["onnx"] = model.with_suffix(".onnx")
        if model.with_suffix(".xml").is_file() and model.with_suffix(".bin").is_file():
            files["ir"] = model.with_suffix(".xml")
        return files
    from models import tiny_onnx

    kwargs: dict[str, Any] = {"channels": QUICK_CHANNELS} if quick else {}
    files = {"tflite": workdir / "cnn.tflite", "onnx": workdir / "cnn.onnx"}
    files["tflite"].write_bytes(tiny.cnn(**kwargs))
    onnx_model = tiny_onnx.cnn(**kwargs)
    files["onnx"].write_bytes(onnx_model)
    files["ir"] = tiny_onnx.save_ir(onnx_model, workdir / "ir" / "cnn.xml")
    return files


def fit_layout(x: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """``x`` (NHWC, as the .tflite takes it) as a model whose input is ``shape`` takes it: the same
    array, or its NCHW transpose when that is what the model declares."""
    if x.ndim == 4 and list(shape) != list(x.shape) and list(shape)[1:] == [x.shape[3], x.shape[1], x.shape[2]]:
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    return x


PLAN = [("litert", "tflite"), ("onnxruntime", "onnx"), ("openvino", "ir"), ("openvino", "onnx"), ("openvino", "tflite")]


def run(args: argparse.Namespace) -> tuple[list[Row], int]:
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="tenantd-rtbench-") as tmp:
        workdir = Path(tmp)
        files = build_files(workdir, args.model, args.quick)
        plan = [(rt, kind) for rt, kind in PLAN if kind in files]
        with daemon_process(workdir, args.threads) as endpoint, TenantClient(endpoint, tenant="bench") as client:
            threads = int(client.status()["threads_per_model"])
            names = {}
            for runtime, kind in plan:
                name = f"{runtime}-{kind}"
                client.submit_model(files[kind], name, runtime=runtime)
                names[(runtime, kind)] = name
            reference_model = get_runtime_class("litert")(num_threads=threads).load(files["tflite"])
            spec = reference_model.inputs[0]
            rng = np.random.default_rng(args.seed)
            shape = [d if d > 0 else 1 for d in spec.shape]
            x = (
                rng.integers(0, 256, size=shape, dtype=np.uint8).astype(spec.dtype)
                if spec.dtype in ("uint8", "int8")
                else rng.standard_normal(shape).astype(spec.dtype)
            )
            reference = reference_model.infer([x])[0]
            reference_model.unload()
            for runtime, kind in plan:
                # An IR travels as one bundle (the client builds it for submit_model too).
                source = irbundle.pack_files(files[kind]) if kind == "ir" else files[kind]
                model = get_runtime_class(runtime)(num_threads=threads).load(source)
                xk = fit_layout(x, model.inputs[0].shape)  # zoo ONNX/IR take NCHW, .tflite NHWC
                diff = float(np.abs(model.infer([xk])[0] - reference).max())
                if diff > AGREEMENT:
                    raise SystemExit(f"{runtime} on {kind} disagrees with LiteRT: max abs diff {diff:.3g}")
                lat = closed_loop(partial(model.infer, [xk]), args.warmup, args.duration)
                rows.append(Row(runtime, kind, "direct", *summary(lat, args.duration), None, diff, len(lat)))
                model.unload()
                name = names[(runtime, kind)]
                out = client.infer_detailed(name, xk)
                served_diff = float(np.abs(next(iter(out.outputs.values())) - reference).max())
                computes: list[float] = []

                def call(name: str = name, computes: list[float] = computes, xk: np.ndarray = xk) -> None:
                    computes.append(client.infer_detailed(name, xk).timings["compute_ms"])

                lat = closed_loop(call, args.warmup, args.duration)
                compute = statistics.median(computes[-len(lat) :])
                rows.append(Row(runtime, kind, "daemon", *summary(lat, args.duration), compute, served_diff, len(lat)))
                client.remove_model(name)  # one resident model at a time: no memory contention between rows
    return rows, threads


def markdown(rows: list[Row], meta: dict[str, Any]) -> str:
    lines = [
        f"Model: {meta['model']}; threads per model: {meta['threads']}; {meta['machine']['cpu_model']}, "
        f"{meta['machine']['usable_cores']} usable cores (shared machine: figures are noisy).",
        "",
        "| runtime | file | phase | p50 ms | p99 ms | req/s | daemon compute p50 ms | max abs diff vs LiteRT |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        compute = f"{r.daemon_compute_p50_ms:.3f}" if r.daemon_compute_p50_ms is not None else "-"
        lines.append(
            f"| {r.runtime} | {r.file} | {r.phase} | {r.p50_ms:.3f} | {r.p99_ms:.3f} | {r.throughput_rps:.1f} | "
            f"{compute} | {r.max_abs_diff_vs_litert:.2g} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.runtimes_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="a .tflite (its .onnx and .xml/.bin twins beside it, if any)")
    parser.add_argument("--quick", action="store_true", help="narrower CNN, short windows (~30 s)")
    parser.add_argument("--threads", type=int, help="threads per model (default: the daemon's policy default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--warmup", type=float, help="seconds of warm-up per phase (default 2, quick 0.5)")
    parser.add_argument("--duration", type=float, help="seconds measured per phase (default 8, quick 2)")
    parser.add_argument("--out", type=Path, default=Path("experiments/out/runtimes"))
    args = parser.parse_args(argv)
    args.warmup = args.warmup if args.warmup is not None else (0.5 if args.quick else 2.0)
    args.duration = args.duration if args.duration is not None else (2.0 if args.quick else 8.0)
    rows, threads = run(args)
    meta = {
        "model": str(args.model)
        if args.model
        else f"models.tiny.cnn(channels={QUICK_CHANNELS if args.quick else 'default'})",
        "threads": threads,
        "machine": machine_info(),
        "versions": {p: importlib.metadata.version(p) for p in ("ai-edge-litert", "openvino", "onnxruntime", "numpy")},
        "seed": args.seed,
        "warmup_s": args.warmup,
        "duration_s": args.duration,
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    text = markdown(rows, meta)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "runtimes.md").write_text(text + "\n")
    with (args.out / "runtimes.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(asdict(rows[0])))
        writer.writeheader()
        writer.writerows(asdict(r) for r in rows)
    (args.out / "runtimes.json").write_text(json.dumps({"meta": meta, "rows": [asdict(r) for r in rows]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
