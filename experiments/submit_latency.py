"""Submit latency: how long ``submit_model`` takes with prepared probes and with fresh-process probes.

Two daemons run side by side, started through the CLI: one as shipped ("prepared": LiteRT probes
forked by the probe host, tenantd/probehost.py; ONNX Runtime and OpenVINO probes run by spare probe
processes, tenantd/probespare.py) and one with ``TENANTD_PROBE_HOST=0`` (every probe starts a fresh
Python, as before either existed). Rounds alternate between them, so both see the same
machine load. A round submits each model under a new name, times the call at the client, reads the
daemon's own load time of it from the event log (``model.loaded``), and removes it again. The
first ``--warmup`` rounds are not counted (the host starts in the background, and a probe started
before it is ready goes to a fresh process). Prints, per model and mode, the p50 and p90 of the
submit and the p50 of the daemon's load, and submit minus load: the admission cost the issue's
target is about (under 50 ms plus the model's load).

    python -m experiments.submit_latency [--rounds 20] [--model PATH ...]

Without ``--model`` it submits models/tiny.py's MLP and CNN (built here), pymicro-wakeword's
keyword model where installed, and, where ONNX Runtime and OpenVINO are installed, the same MLP and
CNN as ONNX (models/tiny_onnx.py) and the CNN as an OpenVINO IR bundle. The runtime follows the
file's suffix (.tflite: litert, .onnx: onnxruntime, .ovir/.xml: openvino). A figure taken on a
loaded machine says so in the lead's hands only: this script prints what it measured.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from experiments.harness import daemon_process, machine_info, plain_table
from models import tiny
from tenantclient import TenantClient
from tenantd.runtimes import runtime_installed
from tenantwire import irbundle

RUNTIME_BY_SUFFIX = {".tflite": "litert", ".onnx": "onnxruntime", ".ovir": "openvino", ".xml": "openvino"}


def _models(paths: list[Path], workdir: Path) -> dict[str, bytes]:
    if paths:
        return {p.name: p.read_bytes() for p in paths}
    found = {
        "mlp.tflite (tiny)": tiny.mlp(32, [64], 10, seed=1),
        "cnn.tflite (tiny)": tiny.cnn(image=32, channels=(8, 16, 32), classes=10, seed=7),
    }
    try:
        import pymicro_wakeword

        word = Path(pymicro_wakeword.__file__).parent / "models" / "okay_nabu.tflite"
        found["okay_nabu.tflite"] = word.read_bytes()
    except ImportError:
        pass
    if runtime_installed("onnxruntime") and runtime_installed("openvino"):
        from models import tiny_onnx  # builds with the onnx package, a test dependency

        onnx_cnn = tiny_onnx.cnn(image=32, channels=(8, 16, 32), classes=10, seed=7)
        found["mlp.onnx (tiny)"] = tiny_onnx.mlp(32, [64], 10, seed=1)
        found["cnn.onnx (tiny)"] = onnx_cnn
        found["cnn.ovir (tiny)"] = irbundle.pack_files(tiny_onnx.save_ir(onnx_cnn, workdir / "ir" / "cnn.xml"))
    return found


def _runtime(model: str) -> str:
    return RUNTIME_BY_SUFFIX.get(Path(model.split(" ")[0]).suffix, "litert")


def _submit(client: TenantClient, data: bytes, name: str, runtime: str) -> tuple[float, float, str]:
    """(submit ms at the client, the daemon's load ms, where the probe ran) for one submission."""
    t0 = time.perf_counter()
    client.submit_model(data, name, runtime=runtime)
    submit_ms = (time.perf_counter() - t0) * 1e3
    loaded = client.events(limit=5, event="model.loaded")
    probed = client.events(limit=5, event="model.probed")
    load_ms = next(float(e["load_ms"]) for e in reversed(loaded) if e["model"] == name)
    process = next(str(e.get("probe_process", "fresh")) for e in reversed(probed) if e["model"] == name)
    client.remove_model(name)
    return submit_ms, load_ms, process


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.submit_latency", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20, help="measured rounds per model and mode")
    parser.add_argument("--warmup", type=int, default=3, help="rounds not counted")
    parser.add_argument(
        "--model", type=Path, action="append", default=[], help="a .tflite, .onnx or .ovir file (repeatable)"
    )
    args = parser.parse_args(argv)
    info = machine_info()  # the load average before this run adds to it: was the machine quiet?
    with tempfile.TemporaryDirectory(prefix="submit-latency-") as tmp, ExitStack() as stack:
        workdir = Path(tmp)
        models = _models(args.model, workdir)
        endpoints = {"prepared": stack.enter_context(daemon_process(workdir / "prepared"))}
        os.environ["TENANTD_PROBE_HOST"] = "0"
        try:
            endpoints["fresh"] = stack.enter_context(daemon_process(workdir / "fresh"))
        finally:
            del os.environ["TENANTD_PROBE_HOST"]
        clients = {mode: stack.enter_context(TenantClient(ep, tenant="bench")) for mode, ep in endpoints.items()}
        samples: dict[tuple[str, str], list[tuple[float, float, str]]] = {}
        for round_ in range(args.warmup + args.rounds):
            for model, data in models.items():
                for mode, client in clients.items():
                    sample = _submit(client, data, f"m{round_}", _runtime(model))
                    if round_ >= args.warmup:
                        samples.setdefault((model, mode), []).append(sample)
        rows = []
        for (model, mode), got in samples.items():
            submit = sorted(s[0] for s in got)
            load = statistics.median(s[1] for s in got)
            processes = sorted({s[2] for s in got})
            rows.append(
                [
                    model,
                    mode,
                    "/".join(processes),
                    f"{statistics.median(submit):.1f}",
                    f"{submit[int(0.9 * (len(submit) - 1))]:.1f}",
                    f"{load:.1f}",
                    f"{statistics.median(submit) - load:.1f}",
                ]
            )
    loadavg = ", ".join(f"{x:.1f}" for x in info["loadavg_at_start"])
    print(f"submit latency, {args.rounds} rounds per row, {info['cpu_model']} x{info['cores']}, load average {loadavg}")
    headers = ["model", "daemon", "probe ran", "submit p50 ms", "p90 ms", "load p50 ms", "submit - load ms"]
    print(plain_table(headers, rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
