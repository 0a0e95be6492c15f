"""A test double runtime that misbehaves on demand, registered as ``faulty`` via TENANTD_RUNTIMES.

Its "model file" is ``FAULTY`` followed by JSON:
``{"load": "ok"|"crash"|"abort"|"hang"|"error", "infer": "ok"|"error"|"slow"|"lost"|"abort"|"crash"|"hang"|"hog",
"sleep_ms": N, "flag": PATH}`` ("error" fails on negative inputs only, "slow" is slow on non-zero inputs only;
"abort" (``os.abort()``, as libedgetpu's fatal USB errors do), "crash" (a segfault), "hang" (a call
that never returns) and "hog" (allocates ``hog_bytes``) do so on positive inputs only, so the probe's
run on zeros passes and the fault hits a device worker;
"lost" stands for a device that is unplugged while the file at ``flag`` exists: inference and loads
then raise DeviceLost, as a vendor runtime reports a vanished device). A loaded model
takes one float32 [1, 4] input "x" and returns "y" = 2x. It exists to prove that the daemon
survives runtimes that crash, hang or fail (real LiteRT cannot be made to segfault on purpose),
and to give scheduler tests a model whose inference takes a known time. It is never the only
proof that a serving path works.
"""

from __future__ import annotations

import ctypes
import json
import os
import threading
import time
from pathlib import Path

import numpy as np

from tenantd.errors import DeviceLost, DeviceMemoryFull, RuntimeFailure
from tenantd.runtimes.base import LoadedModel, Runtime
from tenantwire.tensors import TensorSpec

MAGIC = b"FAULTY"


def faulty_model(
    load: str = "ok",
    infer: str = "ok",
    sleep_ms: float = 0.0,
    flag: str = "",
    hog_bytes: int = 0,
    device_room: int | None = None,
) -> bytes:
    """``load="hog"`` allocates and touches ``hog_bytes`` while loading, as a runtime building a
    model whose declared tensors are small but whose working memory is not. ``device_room``: the
    simulated device holds that many models of this runtime at once; one more raises
    DeviceMemoryFull, as an NCS2 whose memory is full (the probe, a fresh process, always fits)."""
    spec: dict[str, object] = {"load": load, "infer": infer, "sleep_ms": sleep_ms, "hog_bytes": hog_bytes}
    if device_room is not None:
        spec["device_room"] = device_room
    if flag:
        spec["flag"] = flag
    return MAGIC + json.dumps(spec).encode()


def _unplugged(spec: dict[str, object]) -> bool:
    return spec.get("infer") == "lost" and bool(spec.get("flag")) and os.path.exists(str(spec["flag"]))


def _infer_fault(spec: dict[str, object]) -> None:
    """The faults only a device worker may meet: each ends or stalls the process it runs in."""
    fault = spec["infer"]
    if fault == "abort":
        os.abort()
    if fault == "crash":
        ctypes.string_at(0)
    if fault == "hang":
        while True:
            time.sleep(1)  # ok: a runtime call that never returns
    if fault == "hog":
        hog = np.ones(int(str(spec["hog_bytes"])), np.uint8)  # touched: the memory is really used
        del hog


class FaultyModel(LoadedModel):
    def __init__(self, spec: dict[str, object], held: list[object] | None = None) -> None:
        self.spec = spec
        self._held = held
        self.inputs = (TensorSpec("x", "float32", (1, 4)),)
        self.outputs = (TensorSpec("y", "float32", (1, 4)),)
        self.running = 0
        self.max_running = 0
        self._lock = threading.Lock()

    def infer(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        with self._lock:
            self.running += 1
            self.max_running = max(self.max_running, self.running)
        try:
            if _unplugged(self.spec):
                raise DeviceLost("USB transfer error: the (simulated) device is unplugged")
            # Fails only on negative input, so the probe's run on zeros passes.
            if self.spec["infer"] == "error" and float(inputs[0].min()) < 0:
                raise RuntimeFailure("the faulty runtime failed this inference on purpose")
            if float(inputs[0].max()) > 0:
                _infer_fault(self.spec)
            if self.spec["infer"] == "slow" and float(np.abs(inputs[0]).max()) > 0:
                # The slowness under test: a model whose inference takes sleep_ms (on non-zero
                # input, so the probe's runs on zeros stay quick).
                time.sleep(float(self.spec["sleep_ms"]) / 1e3)  # ok: simulated compute
            return [inputs[0] * 2]
        finally:
            with self._lock:
                self.running -= 1

    def unload(self) -> None:
        if self._held is not None and self in self._held:
            self._held.remove(self)


class FaultyRuntime(Runtime):
    name = "faulty"
    suffixes = (".faulty",)
    own_format = "the faulty test runtime's JSON file"

    def _load(self, source: bytes | Path) -> FaultyModel:
        data = source.read_bytes() if isinstance(source, Path) else bytes(source)
        if not data.startswith(MAGIC):
            raise RuntimeFailure("not a faulty-runtime model")
        spec = json.loads(data[len(MAGIC) :])
        # Only the probe process may crash or hang: the daemon must never load such a file.
        if spec["load"] == "crash":
            ctypes.string_at(0)  # segfault, like a native runtime reading a bad model
        if spec["load"] == "hang":
            while True:
                time.sleep(1)  # ok: a runtime that never returns
        if spec["load"] == "hog":
            self.hog = np.ones(int(spec["hog_bytes"]), np.uint8)  # kept: the memory stays in use
        if spec["load"] == "error":
            raise RuntimeFailure("the faulty runtime refused this model on purpose")
        if spec["load"] == "abort":
            os.abort()
        if _unplugged(spec):
            raise DeviceLost("cannot open the (simulated) device: it is unplugged")
        held: list[object] = self.__dict__.setdefault("held", [])
        room = spec.get("device_room")
        if isinstance(room, int) and len(held) >= room:
            raise DeviceMemoryFull(f"Failed to allocate graph: NC_OUT_OF_MEMORY ({len(held)} loaded)", len(held))
        model = FaultyModel(spec, held)
        held.append(model)
        return model
