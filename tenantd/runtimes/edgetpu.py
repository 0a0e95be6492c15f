"""The EdgeTPU runtime: EdgeTPU-compiled ``.tflite`` models on a Coral device, as Coral documents it.

Loading: with Coral's own ``pycoral`` where it is installed (``pycoral.utils.edgetpu``:
``list_edge_tpus()`` to find devices, ``make_interpreter(model, device='usb:0')`` to load), else
LiteRT (``ai_edge_litert``) or ``tflite_runtime`` with ``load_delegate('libedgetpu.so.1',
{'device': 'usb:0'})``. Ops the compiler mapped to the EdgeTPU run there as one
``edgetpu-custom-op``; the rest run on the host CPU, as under pycoral.

The parameter cache (Coral's compiler docs, "Parameter data caching"): about 8 MB on the chip
holds ONE model's parameters, or one co-compiled group's; running another model flushes it and
libedgetpu streams the new model's parameters in itself. So interpreters stay loaded (dropping
one drops the delegate and closes the device, google-coral/edgetpu#492), and a switch is the first
invoke after a different model ran on the device: this module counts those and times them
(``edgetpu_cache_switches``, ``edgetpu_last_switch_ms`` in the model's facts). Models of one
co-compiled group do not flush each other.

Probing: Coral allows one process per device (a second open aborts the first on USB,
google-coral/edgetpu#237, #645). The probe therefore never opens it: on the stand-in device
``cpu`` this runtime validates the file statically (:mod:`tenantd.runtimes.tflitefile`: a TFLite
flatbuffer whose custom op ``edgetpu-custom-op`` is present, with its input/output specs) and
defers the trial load to the device's owner (``facts['trial_load'] == 'deferred'``). A
model with no EdgeTPU op is loaded on the CPU for real (it would run there entirely).

Parameter figures: from the compiler's stdout (:mod:`tenantd.runtimes.edgetpu_compiler`), supplied
with the submission; otherwise the bytes inside the model's EdgeTPU ops, labelled an estimate.

Device loss: libedgetpu's USB transfer errors are fatal aborts in C++ ("F usb_driver.cc ...
Abort", google-coral/edgetpu#494, #476), not exceptions: no code in this process can catch them,
only a supervisor of the process can (the device worker). A delegate that cannot be created (no
device, or one held by another process) raises :class:`DeviceLost`.

Written at the Python 3.6 language level, for a device worker under a Coral image's older Python
(README, "Device workers").
"""

import re
import threading
import time
from pathlib import Path
from typing import Any, Dict, FrozenSet, List, Optional, Tuple, Union

import numpy as np

from tenantd.errors import DeviceLost, RuntimeFailure
from tenantd.runtimes.base import LoadedModel, Runtime, device_kind
from tenantd.runtimes.litert import LiteRTModel, LiteRTRuntime
from tenantd.runtimes.tflitefile import EDGETPU_OP, ModelInfo, NotTFLite
from tenantwire.tensors import TensorSpec

EDGETPU_LIBRARY = "libedgetpu.so.1"
__all__ = ["EDGETPU_OP", "EdgeTPURuntime", "check_listed", "delegate_device", "list_devices", "loader", "model_facts"]
_LOST_MARKS = ("usb transfer error", "libusb", "failed to load delegate", "no edge tpu", "device not found")
# Which model ran last on each device (by model key), so a switch is seen on its first invoke.
_LAST_RAN: Dict[str, Tuple[int, FrozenSet[str]]] = {}
_LAST_LOCK = threading.Lock()


def delegate_device(device: str) -> Optional[str]:
    """The delegate's ``device`` option for a tenantd device name; None: the first EdgeTPU found."""
    kind, _, rest = device.partition(":")
    if kind != "edgetpu":
        raise RuntimeFailure(f"the EdgeTPU runtime does not run on device {device!r}")
    if not rest:
        return None
    if not re.fullmatch(r"(usb|pci)(:\d+)?", rest):
        raise RuntimeFailure(f"EdgeTPU device {device!r} is not edgetpu:usb:N or edgetpu:pci:N")
    return rest


def loader() -> str:
    """Which package opens the device here: ``pycoral`` (Coral's, with ``pycoral.utils.edgetpu``;
    the unrelated PyPI project of that name has none), else ``ai_edge_litert``, else
    ``tflite_runtime``."""
    try:
        from pycoral.utils import edgetpu  # noqa: F401 - presence check

        return "pycoral"
    except ImportError:
        pass
    try:
        from ai_edge_litert.interpreter import load_delegate  # noqa: F401 - presence check

        return "ai_edge_litert"
    except ImportError:
        return "tflite_runtime"


def list_devices() -> Optional[List[Dict[str, str]]]:
    """pycoral's ``list_edge_tpus()`` (``[{'type': 'usb', 'path': ...}]``), or None without pycoral."""
    try:
        from pycoral.utils.edgetpu import list_edge_tpus
    except ImportError:
        return None
    return [dict(d) for d in list_edge_tpus()]


def check_listed(device: Optional[str], found: List[Dict[str, str]]) -> None:
    """Raise DeviceLost unless pycoral lists the device (``usb:N``/``pci:N``: the Nth of that type;
    ``usb``/``pci``: any of that type; None: any)."""
    kind, _, index = (device or "").partition(":")
    of_kind = [d for d in found if not kind or d.get("type") == kind]
    if len(of_kind) <= int(index or 0):
        listed = ", ".join(f"{d.get('type')} {d.get('path')}" for d in found) or "none"
        raise DeviceLost(f"pycoral lists no EdgeTPU {device or '(any)'} (list_edge_tpus: {listed})")


def model_facts(info: ModelInfo) -> Dict[str, Any]:
    """What the file itself says; the on-chip figure from the file alone is an estimate."""
    facts: Dict[str, Any] = {"edgetpu_compiled": info.edgetpu_compiled}
    if info.edgetpu_compiled:
        facts["edgetpu_op_bytes"] = info.edgetpu_op_bytes
        facts["edgetpu_on_chip_param_bytes"] = min(info.edgetpu_op_bytes, 8 * 2**20)
        facts["edgetpu_param_source"] = "estimate from the EdgeTPU ops' bytes (no compiler output given)"
    return facts


def _is_lost(exc: BaseException) -> bool:
    return any(mark in str(exc).lower() for mark in _LOST_MARKS)


class EdgeTPUModel(LiteRTModel):
    can_add_instances = False  # one device that runs one model at a time: more interpreters gain nothing

    def __init__(self, interpreter: Any, delegate: Any, facts: Dict[str, Any], device: str) -> None:
        super().__init__(interpreter)
        # An EdgeTPU model is compiled for its shapes: a resized input would fall back to the CPU.
        self.max_batch = 1
        self._delegate = delegate  # the interpreter uses it; it must outlive the interpreter
        self._device = device
        self.facts = dict(facts, edgetpu_cache_switches=0)
        group = facts.get("edgetpu_cocompiled_group") or ()
        self._group = frozenset(str(m) for m in group)

    def infer(self, inputs: List[Any]) -> List[Any]:
        with _LAST_LOCK:
            last = _LAST_RAN.get(self._device)
            # Another model (not of this one's co-compiled group) ran last: its parameters are in
            # the cache, and libedgetpu streams this model's in on this invoke.
            switch = last is not None and last[0] != id(self) and not (self._group and last[1] == self._group)
            _LAST_RAN[self._device] = (id(self), self._group)
        t0 = time.perf_counter()
        try:
            outputs = super().infer(inputs)
        except RuntimeFailure as exc:
            if _is_lost(exc):
                raise DeviceLost(f"the EdgeTPU is gone: {exc}") from exc
            raise
        if switch:
            self.facts["edgetpu_cache_switches"] += 1
            self.facts["edgetpu_last_switch_ms"] = round((time.perf_counter() - t0) * 1e3, 4)
        return outputs

    def unload(self) -> None:
        super().unload()
        self._delegate = None
        with _LAST_LOCK:
            if _LAST_RAN.get(self._device, (None,))[0] == id(self):
                del _LAST_RAN[self._device]


class StaticEdgeTPUModel(LoadedModel):
    """An EdgeTPU-compiled model validated without the device: specs from the file; running it
    needs the device, whose owner does the trial load."""

    def __init__(self, info: ModelInfo, facts: Dict[str, Any]) -> None:
        self.inputs = tuple(TensorSpec(t.name, t.dtype, t.shape) for t in info.inputs)
        self.outputs = tuple(TensorSpec(t.name, t.dtype, t.shape) for t in info.outputs)
        self.facts = dict(facts, trial_load="deferred")

    def infer(self, inputs: List[np.ndarray]) -> List[np.ndarray]:
        raise RuntimeFailure("an EdgeTPU-compiled model runs only on the EdgeTPU; its trial load is the device owner's")

    def unload(self) -> None:
        pass


class EdgeTPURuntime(Runtime):
    name = "edgetpu"
    suffixes = (".tflite",)
    device_kinds = ("edgetpu",)

    def _load(self, source: Union[bytes, Path]) -> LoadedModel:
        data = source.read_bytes() if isinstance(source, Path) else bytes(source)
        try:
            info = ModelInfo(data)
        except NotTFLite as exc:
            raise RuntimeFailure(f"not an EdgeTPU model: {exc}") from exc
        facts = model_facts(info)
        if device_kind(self.device) == "cpu":  # the probe's stand-in: never the device
            if info.edgetpu_compiled:
                return StaticEdgeTPUModel(info, facts)
            model = LiteRTRuntime(device="cpu", num_threads=self.num_threads)._load(data)
            model.facts = dict(facts, edgetpu_note="not compiled for the EdgeTPU: it runs on the host CPU")
            return model
        device = delegate_device(self.device)
        interpreter, delegate = self._open(data, device)
        return EdgeTPUModel(interpreter, delegate, facts, self.device)

    def _open(self, data: bytes, device: Optional[str]) -> Tuple[Any, Any]:
        how = loader()
        try:
            if how == "pycoral":
                from pycoral.utils.edgetpu import make_interpreter

                check_listed(device, list_devices() or [])
                interpreter = make_interpreter(data, device=device)
                delegate = None  # pycoral's interpreter holds its own
            else:
                if how == "ai_edge_litert":
                    from ai_edge_litert.interpreter import Interpreter, load_delegate
                else:
                    from tflite_runtime.interpreter import Interpreter, load_delegate
                delegate = load_delegate(EDGETPU_LIBRARY, {"device": device} if device else {})
                interpreter = Interpreter(
                    model_content=data, experimental_delegates=[delegate], num_threads=self.num_threads
                )
        except (ValueError, OSError) as exc:
            # No device answering to that name: unplugged, or held by another process.
            raise DeviceLost(f"cannot open EdgeTPU {device or '(any)'} with {how}: {exc}") from exc
        try:
            interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            if _is_lost(exc):
                raise DeviceLost(f"the EdgeTPU is gone: {exc}") from exc
            raise RuntimeFailure(f"{how} with the EdgeTPU delegate cannot load this model: {exc}") from exc
        return interpreter, delegate

    @classmethod
    def probe_device(cls, device: str) -> str:
        # One process per EdgeTPU: the probe validates on the CPU and defers the trial load.
        return "cpu"

    @classmethod
    def param_bytes(cls, path: Path) -> Optional[int]:
        """What the model needs in the parameter cache, from the file alone (an estimate: the bytes
        inside its EdgeTPU ops, else, not compiled, its tensors'); the compiler's figure, where
        given, travels in the probe's facts instead."""
        try:
            info = ModelInfo(path.read_bytes())
        except (OSError, NotTFLite):
            return None
        return info.edgetpu_op_bytes if info.edgetpu_compiled else info.param_bytes

    @classmethod
    def version(cls) -> str:
        return f"{LiteRTRuntime.version()} via {loader()}"
