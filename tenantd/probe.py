"""The probe: a tenant's model file is loaded and run once in a throwaway process first.

A submitted file is untrusted: it may be garbage, may crash the runtime's native code, or may hang
it. The daemon therefore never loads a file it has not seen survive the probe. The probe process
imports the runtime, loads the model, reads its input/output specs, runs one inference on zeros,
and measures the resident-memory growth (psutil) of the load and of that first inference. The
runtime library's own cost (importing it) is measured separately, because it is paid once per
process, not once per model. The result travels back as one JSON line on stdout.

The probe may use at most ``--memory-limit`` bytes beyond the runtime library (the device budget's
free memory, from the daemon): a model whose largest declared tensor is bigger is refused before it
is loaded, and the process's address space is capped (RLIMIT_AS, at twice the limit plus 512 MiB
for what runtimes reserve without touching) once the runtime is imported, so a model that asks for
far more fails to allocate instead of exhausting the host.

Run by hand: ``python -m tenantd.probe litert model.tflite``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tenantd.modelfile import ModelFileRefused

if TYPE_CHECKING:
    from tenantd.runtimes import Runtime

RESULT_MARK = "TENANTD-PROBE-RESULT "
ADDRESS_SPACE_SLACK = 512 * 1024 * 1024
# TENANTD_PROBE_HOST=0 turns off what starts probes ahead of time (the probe host and spare probe
# processes): every probe starts a fresh process, as before they existed.
PREPARED_PROBES = os.environ.get("TENANTD_PROBE_HOST", "1") != "0"


@dataclass
class ProbeResult:
    ok: bool
    # The model needs more memory than the probe was allowed (the device budget's free memory).
    over_memory_limit: bool = False
    # The probe host died while this probe ran: nothing is known about the model (probehost.py).
    host_lost: bool = False
    reason: str = ""
    inputs: list[dict[str, Any]] = field(default_factory=list)
    outputs: list[dict[str, Any]] = field(default_factory=list)
    footprint_bytes: int = 0
    load_ms: float = 0.0
    first_infer_ms: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)


class OverMemoryLimit(Exception):
    """The model needs more memory than the probe may use."""


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def _cap_address_space(limit: int) -> None:
    """From now on the process may map at most ``limit`` more bytes than it has mapped now."""
    import resource

    import psutil

    mapped = int(psutil.Process().memory_info().vms)
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = mapped + limit
    resource.setrlimit(resource.RLIMIT_AS, (cap if hard == resource.RLIM_INFINITY else min(cap, hard), hard))


def _measure(
    runtime_name: str,
    path: Path,
    threads: int,
    device: str = "cpu",
    memory_limit: int | None = None,
    runtime_overhead: int | None = None,
) -> dict[str, Any]:
    import numpy as np

    from tenantd.memory import rss_bytes
    from tenantd.modelfile import check_self_contained, largest_declared_tensor

    rss_start = rss_bytes()
    from tenantd.runtimes import get_runtime_class

    cls = get_runtime_class(runtime_name)
    # Where only one process may hold the device, the runtime names a stand-in to probe on.
    probe_device = cls.probe_device(device)
    runtime = cls(device=probe_device, num_threads=threads)
    if runtime_overhead is None:
        # runtime.load checks the file again; checking it here first loads the check's parser (the
        # onnx package, where installed) before the model's own growth is measured: like the runtime
        # library, it is paid once per process, not once per model. (A child of the probe host
        # inherits the parser with the runtime, so it checks once, in load.)
        check_self_contained(path, accept_opaque=cls.own_format is not None)
        runtime_overhead = rss_bytes() - rss_start
    rss_runtime = rss_bytes()
    if memory_limit is not None:
        largest = largest_declared_tensor(path)
        if largest is not None and largest[1] > memory_limit:
            raise OverMemoryLimit(
                f"tensor {largest[0]!r} alone needs {_mib(largest[1])}, more than the {_mib(memory_limit)} "
                "the device's budget has free"
            )
        # Address space is not resident memory: runtimes reserve more than they touch (thread
        # stacks, allocator arenas), so the cap leaves room for that and still bounds the host's risk.
        _cap_address_space(2 * memory_limit + ADDRESS_SPACE_SLACK)

    t0 = time.perf_counter()
    model = runtime.load(path)
    load_ms = (time.perf_counter() - t0) * 1e3
    rss_loaded = rss_bytes()
    if memory_limit is not None:  # other formats: their inputs and outputs, before running anything
        for spec in [*model.inputs, *model.outputs]:
            size = int(np.dtype(spec.dtype).itemsize) * int(np.prod([max(d, 1) for d in spec.shape]))
            if size > memory_limit:
                raise OverMemoryLimit(
                    f"tensor {spec.name!r} alone needs {_mib(size)}, more than the {_mib(memory_limit)} "
                    "the device's budget has free"
                )

    zeros = [np.zeros([d if d > 0 else 1 for d in spec.shape], dtype=spec.dtype) for spec in model.inputs]
    first_infer_ms = warm_infer_ms = 0.0
    # A device-only format validated without its device (an EdgeTPU-compiled model: the device has
    # one owner) cannot run here; its trial load and first inference are the device owner's.
    if model.facts.get("trial_load") != "deferred":
        t0 = time.perf_counter()
        outputs = model.infer(zeros)
        first_infer_ms = (time.perf_counter() - t0) * 1e3
        rss_after = rss_bytes()
        t0 = time.perf_counter()
        model.infer(zeros)  # a second, warm run: the reference a switch's overhead is measured against
        warm_infer_ms = (time.perf_counter() - t0) * 1e3
        if len(outputs) != len(model.outputs):
            raise RuntimeError(f"model declares {len(model.outputs)} outputs but returned {len(outputs)}")
    else:
        rss_after = rss_bytes()

    footprint = max(0, rss_after - rss_runtime) + int(model.device_bytes)
    if device.split(":", 1)[0] == "ncs2" and "myriad_bytes" in model.facts:
        # Probed on the CPU plugin (one process per stick): the stick holds FP16 weights and
        # activations in its own memory, which the CPU plugin's host RSS does not measure.
        footprint = int(model.facts["myriad_bytes"])
    # What the process costs on the device beyond its resident set (a CUDA context in shared DRAM).
    declared_overhead = cls.process_overhead_bytes(device) or 0
    return {
        "ok": True,
        "inputs": [s.to_wire() for s in model.inputs],
        "outputs": [s.to_wire() for s in model.outputs],
        "footprint_bytes": footprint,
        "load_ms": load_ms,
        "first_infer_ms": first_infer_ms,
        "details": {
            "runtime_version": cls.version(),
            "runtime_overhead_bytes": max(0, runtime_overhead, declared_overhead),
            "load_bytes": max(0, rss_loaded - rss_runtime),
            "first_infer_bytes": max(0, rss_after - rss_loaded),
            "threads": threads,
            "param_bytes": cls.param_bytes(path),
            "warm_infer_ms": warm_infer_ms,
            "probe_device": probe_device,
            "device_bytes": int(model.device_bytes),
            **model.facts,
        },
    }


def outcome(
    runtime_name: str,
    path: Path,
    threads: int,
    device: str = "cpu",
    memory_limit: int | None = None,
    runtime_overhead: int | None = None,
) -> tuple[dict[str, Any], int]:
    """Probe ``path`` in this process: (the result as JSON data, the exit status it calls for).
    ``runtime_overhead`` is what importing the runtime cost, when it was imported before (by the
    probe host, before forking this process); otherwise it is measured here."""
    try:
        return _measure(runtime_name, path, threads, device, memory_limit, runtime_overhead), 0
    except OverMemoryLimit as exc:
        return {"ok": False, "over_memory_limit": True, "reason": str(exc)}, 1
    except MemoryError:  # an allocation past the address-space cap, in Python or a runtime's binding
        capped = memory_limit is not None
        limit = f" of {_mib(memory_limit)} (the device budget's free memory)" if memory_limit is not None else ""
        reason = f"the model ran out of the probe's memory{limit}"
        return {"ok": False, "over_memory_limit": capped, "reason": reason}, 1
    except ModelFileRefused as exc:  # said to the tenant as it is, with what was refused in details
        return {"ok": False, "reason": str(exc), "details": {"model_file": exc.to_wire()}}, 1
    except Exception as exc:  # noqa: BLE001 - the probe's job is to turn any failure into a reason
        return {"ok": False, "reason": f"{type(exc).__name__}: {exc}"}, 1


def write_result(result: dict[str, Any]) -> None:
    """The result as the one marked line on stdout that :func:`read_result` looks for."""
    sys.stdout.write(RESULT_MARK + json.dumps(result) + "\n")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tenantd.probe", description=__doc__.split("\n\n")[0])
    parser.add_argument("runtime", help="runtime name, e.g. litert")
    parser.add_argument("path", type=Path, help="model file")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="the daemon's device, e.g. cpu, edgetpu:usb:0")
    parser.add_argument("--memory-limit", type=int, help="bytes the model may use beyond the runtime library")
    args = parser.parse_args(argv)
    result, code = outcome(args.runtime, args.path, args.threads, args.device, args.memory_limit)
    write_result(result)
    return code


def _signal_name(returncode: int) -> str:
    try:
        return signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}"


def timed_out(timeout_s: float) -> ProbeResult:
    return ProbeResult(
        ok=False, reason=f"the probe did not finish within {timeout_s:g} s (the model hangs the runtime or is too slow)"
    )


def read_result(stdout: bytes, stderr: bytes, returncode: int) -> ProbeResult:
    """The result a finished probe process left: its marked line, else why it has none."""
    for line in reversed(stdout.decode(errors="replace").splitlines()):
        if line.startswith(RESULT_MARK):
            data = json.loads(line[len(RESULT_MARK) :])
            return ProbeResult(**data)
    if returncode < 0:
        reason = f"the runtime crashed loading or running the model ({_signal_name(returncode)})"
    else:
        tail = stderr.decode(errors="replace").strip().splitlines()[-3:]
        reason = f"the probe exited with status {returncode}: {' | '.join(tail) or 'no output'}"
    return ProbeResult(ok=False, reason=reason)


def warm_up(cls: type[Runtime]) -> None:
    """Import what ``cls`` imports on first use without creating an interpreter or session: a
    parameter count of an empty file (LiteRT's reads its flatbuffer schema, a 13 ms import)."""
    with contextlib.suppress(Exception):
        cls.param_bytes(Path(os.devnull))
    with contextlib.suppress(Exception):
        cls.version()


def with_process(result: ProbeResult, process: str) -> ProbeResult:
    """Say in a probe's details where it ran: "forked" (a child of the probe host), "spare" (a
    process started ahead of time, probespare.py) or "fresh" (started for this probe)."""
    if result.ok:
        result.details["probe_process"] = process
    return result


# A way to probe: (runtime, path, threads, timeout_s, device, memory_limit) -> result; never raises
# for a bad model.
Prober = Callable[[str, Path, int, float, str, "int | None"], Awaitable[ProbeResult]]


async def fresh_probe(
    runtime: str, path: Path, threads: int, timeout_s: float, device: str = "cpu", memory_limit: int | None = None
) -> ProbeResult:
    """:func:`probe_model`, its result marked as probed in a "fresh" process."""
    return with_process(await probe_model(runtime, path, threads, timeout_s, device, memory_limit), "fresh")


async def probe_model(
    runtime: str, path: Path, threads: int, timeout_s: float, device: str = "cpu", memory_limit: int | None = None
) -> ProbeResult:
    """Probe ``path`` with ``runtime`` in a child process; never raises for a bad model."""
    limit = [] if memory_limit is None else ["--memory-limit", str(memory_limit)]
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tenantd.probe",
        runtime,
        str(path),
        "--threads",
        str(threads),
        "--device",
        device,
        *limit,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(proc.communicate(), timeout_s)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return timed_out(timeout_s)
    assert proc.returncode is not None
    return read_result(stdout, stderr, proc.returncode)


if __name__ == "__main__":
    raise SystemExit(main())
