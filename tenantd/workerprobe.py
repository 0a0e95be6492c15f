"""The probe of a model whose runtime only the device's worker has: its trial load is the load there.

The throwaway-process probe (:mod:`tenantd.probe`) runs in the daemon's Python, which on a device
with a ``worker_python`` of its own may lack the vendor package (OpenVINO 2022.3 for an NCS2,
TensorRT on JetPack 4.6). Such a submission is checked statically where the format allows
(:mod:`tenantd.modelfile`: references outside the file, the largest tensor a TFLite file declares
against the budget's free memory) and then loaded in the worker, measured as the executor measures
every load there (the worker's resident-memory growth, under ``measure_lock``), and run once on
zeros (unless the runtime defers its trial, as the EdgeTPU's does). The worker is the sandbox: a
load that crashes it ends in the supervisor's hands (:mod:`tenantd.worker`), which restarts it and
strikes the file; two strikes quarantine it. A load or first run that fails (or crashes the worker)
is a failed probe with the runtime's reason, and nothing of it stays loaded; one that passes stays
loaded, so the submission serves the very model that was measured (or unloads it when refused).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np

from tenantd.deviceruntimes import DeviceRuntimes
from tenantd.errors import DeviceLost, DeviceMemoryFull, ModelQuarantined, RuntimeFailure, WorkerCrashed
from tenantd.executor import Executor, Resident
from tenantd.modelfile import ModelFileRefused, check_self_contained, largest_declared_tensor
from tenantd.probe import ProbeResult
from tenantd.runtimes import device_kind


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def _static_check(path: Path, memory_limit: int) -> ProbeResult | None:
    """What the file alone tells, without the runtime: a refusal, or None."""
    try:
        check_self_contained(path, accept_opaque=True)  # the worker's runtime checks its own format again
        largest = largest_declared_tensor(path)
    except ModelFileRefused as exc:
        return ProbeResult(ok=False, reason=str(exc), details={"model_file": exc.to_wire()})
    if largest is not None and largest[1] > memory_limit:
        reason = (
            f"tensor {largest[0]!r} alone needs {_mib(largest[1])}, more than the {_mib(memory_limit)} "
            "the device's budget has free"
        )
        return ProbeResult(ok=False, over_memory_limit=True, reason=reason)
    return None


def _run_zeros(resident: Resident) -> tuple[float, float]:
    """Two runs on zeros (a first, then a warm one, as the probe does); their times in ms."""
    model = resident.model
    assert model is not None
    zeros = [np.zeros([d if d > 0 else 1 for d in spec.shape], dtype=spec.dtype) for spec in model.inputs]
    times = []
    for _ in range(2):
        t0 = time.perf_counter()
        outputs = model.infer(zeros)
        times.append((time.perf_counter() - t0) * 1e3)
        if len(outputs) != len(model.outputs):
            raise RuntimeFailure(f"model declares {len(model.outputs)} outputs but returned {len(outputs)}")
    return times[0], times[1]


async def probe_in_worker(
    executor: Executor,
    runtimes: DeviceRuntimes,
    name: str,
    runtime: str,
    path: Path,
    memory_limit: int,
    threads: int,
) -> tuple[ProbeResult, Resident | None]:
    """Probe ``path`` by loading it in the device's worker: the result, and the model loaded there
    when it passed (the caller installs or unloads it). Never raises for a bad model; raises
    DeviceLost for a device gone, RuntimeFailure when the worker cannot say what it has."""
    loop = asyncio.get_running_loop()
    refused = await loop.run_in_executor(None, _static_check, path, memory_limit)
    if refused is not None:
        return refused, None
    answer = await runtimes.inspect(runtime)  # imports the adapter there first, measured apart
    resident: Resident | None = None
    try:
        async with executor.measure_lock:
            base = await executor.rss()
            rss_before = await executor.rss(runtime)  # the runtime made in the worker: its cost is not the model's
            resident, load_ms = await executor.load(name, runtime, path)
            rss_loaded = await executor.rss()
            first_ms = warm_ms = 0.0
            if resident.model is not None and resident.model.facts.get("trial_load") != "deferred":
                first_ms, warm_ms = await loop.run_in_executor(None, _run_zeros, resident)
            rss_after = await executor.rss()
    except DeviceLost:
        _unload(resident)
        raise
    except DeviceMemoryFull as exc:
        _unload(resident)
        reason = f"the device has no room for this model: {exc}"
        return ProbeResult(ok=False, over_memory_limit=True, reason=reason), None
    except ModelQuarantined as exc:
        return ProbeResult(ok=False, reason=str(exc)), None
    except WorkerCrashed as exc:
        _unload(resident)
        return ProbeResult(ok=False, reason=f"the runtime crashed the device worker: {exc}"), None
    except RuntimeFailure as exc:
        _unload(resident)
        return ProbeResult(ok=False, reason=f"{type(exc).__name__}: {exc}"), None
    except BaseException:  # cancelled (the daemon stopping): nothing of it stays loaded
        _unload(resident)
        raise
    model = resident.model
    assert model is not None
    footprint = max(0, rss_after - rss_before) + int(model.device_bytes)
    if device_kind(executor.device) == "ncs2" and "myriad_bytes" in model.facts:
        # As the probe charges it: what the stick holds (FP16 weights and activations), not host memory.
        footprint = int(model.facts["myriad_bytes"])
    details = {
        "probe": "worker",
        "worker_python": runtimes.python,
        "runtime_version": answer.get("version", "unknown"),
        "runtime_overhead_bytes": int(answer.get("import_bytes", 0)) + max(0, rss_before - base),
        "load_bytes": max(0, rss_loaded - rss_before),
        "first_infer_bytes": max(0, rss_after - rss_loaded),
        "threads": threads,
        "param_bytes": None,
        "warm_infer_ms": warm_ms,
        "probe_device": executor.device,
        "device_bytes": int(model.device_bytes),
        **model.facts,
    }
    result = ProbeResult(
        ok=True,
        inputs=[s.to_wire() for s in model.inputs],
        outputs=[s.to_wire() for s in model.outputs],
        footprint_bytes=footprint,
        load_ms=load_ms,
        first_infer_ms=first_ms,
        details=details,
    )
    return result, resident


def _unload(resident: Resident | None) -> None:
    if resident is not None:
        Executor.unload(resident)
