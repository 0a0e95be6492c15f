"""LiteRT with the EdgeTPU delegate: EdgeTPU-compiled ``.tflite`` models on a Coral device.

As pycoral's ``make_interpreter`` does, each model's interpreter gets the ``libedgetpu`` delegate
(``load_delegate('libedgetpu.so.1', {'device': 'usb:0'})``) for the device the daemon owns
(``edgetpu:usb:0`` -> ``usb:0``, ``edgetpu:pci:0`` -> ``pci:0``, bare ``edgetpu`` -> the first
found). Ops the compiler mapped to the EdgeTPU run there as one ``edgetpu-custom-op``; the rest
run on the host CPU through LiteRT, as they would under pycoral.

Parameters: the EdgeTPU caches up to ~8 MB of parameters on chip and streams the rest from host
memory on every inference. The compiler reports that split in its log (``edgetpu_compiler`` writes
``MODEL_edgetpu.log``: "On-chip memory used for caching model parameters" and "Off-chip memory
used for streaming uncached model parameters"); the model file itself does not in any documented
form. Loaded from a path with that log beside it, a model records both figures in its facts;
otherwise it records what the file does tell: whether it is EdgeTPU-compiled and the bytes inside
its EdgeTPU ops (parameters plus instructions: an upper bound on its parameters). Models compiled
together (``edgetpu_compiler a.tflite b.tflite``) share the cache by design; the compiler's log
for such a group names every model, and each model's facts then carry the group.

Device loss: libedgetpu reports a pulled USB stick as USB transfer errors during ``invoke``, and a
missing device as a failure to load the delegate; both raise :class:`DeviceLost`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from tenantd.errors import DeviceLost, RuntimeFailure
from tenantd.runtimes.litert import LiteRTModel, LiteRTRuntime, tflite_param_bytes

try:
    from ai_edge_litert.interpreter import Interpreter, load_delegate
except ImportError:  # pragma: no cover - only where tflite-runtime alone is installed
    from tflite_runtime.interpreter import Interpreter, load_delegate

EDGETPU_LIBRARY = "libedgetpu.so.1"
EDGETPU_OP = "edgetpu-custom-op"
_LOST_MARKS = ("usb transfer error", "libusb", "failed to load delegate", "no edge tpu", "device not found")
_SIZE = r"([\d.]+)\s*(B|KiB|MiB|GiB)"
_UNITS = {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30}


def delegate_device(device: str) -> str | None:
    """The delegate's ``device`` option for a tenantd device name; None: the first EdgeTPU found."""
    kind, _, rest = device.partition(":")
    if kind != "edgetpu":
        raise RuntimeFailure(f"the EdgeTPU runtime does not run on device {device!r}")
    if not rest:
        return None
    if not re.fullmatch(r"(usb|pci)(:\d+)?", rest):
        raise RuntimeFailure(f"EdgeTPU device {device!r} is not edgetpu:usb:N or edgetpu:pci:N")
    return rest


def _size(text: str, label: str) -> int | None:
    match = re.search(re.escape(label) + r":\s*" + _SIZE, text)
    return round(float(match.group(1)) * _UNITS[match.group(2)]) if match else None


def parse_compiler_log(text: str) -> dict[str, Any]:
    """The parameter split ``edgetpu_compiler`` reports for one model, and the co-compiled group
    when its log lists several input models."""
    facts: dict[str, Any] = {}
    on_chip = _size(text, "On-chip memory used for caching model parameters")
    streamed = _size(text, "Off-chip memory used for streaming uncached model parameters")
    if on_chip is not None:
        facts["edgetpu_on_chip_param_bytes"] = on_chip
    if streamed is not None:
        facts["edgetpu_streamed_param_bytes"] = streamed
    group = re.findall(r"^Input model:\s*(\S+)", text, re.MULTILINE)
    if len(group) > 1:
        facts["edgetpu_cocompiled_group"] = [Path(m).name for m in group]
    return facts


def edgetpu_op_bytes(data: bytes) -> int | None:
    """Bytes in the custom options of a model's EdgeTPU ops, or None for a model not compiled for
    the EdgeTPU (it would run entirely on the host CPU)."""
    from ai_edge_litert import schema_py_generated as schema

    if not schema.Model.ModelBufferHasIdentifier(data, 0):
        raise ValueError("not a TFLite model: missing 'TFL3' file identifier")
    root = schema.Model.GetRootAs(data, 0)
    codes = {
        i
        for i in range(root.OperatorCodesLength())
        if (root.OperatorCodes(i).CustomCode() or b"") == EDGETPU_OP.encode()
    }
    if not codes:
        return None
    total = 0
    for s in range(root.SubgraphsLength()):
        graph = root.Subgraphs(s)
        for o in range(graph.OperatorsLength()):
            op = graph.Operators(o)
            if op.OpcodeIndex() in codes:
                total += op.CustomOptionsLength()
    return total


def model_facts(data: bytes, log_text: str | None) -> dict[str, Any]:
    op_bytes = edgetpu_op_bytes(data)
    facts: dict[str, Any] = {"edgetpu_compiled": op_bytes is not None}
    if op_bytes is not None:
        facts["edgetpu_op_bytes"] = op_bytes
    if log_text:
        facts.update(parse_compiler_log(log_text))
    return facts


def _is_lost(exc: BaseException) -> bool:
    return any(mark in str(exc).lower() for mark in _LOST_MARKS)


class EdgeTPUModel(LiteRTModel):
    can_add_instances = False  # one device that runs one model at a time: more interpreters gain nothing

    def __init__(self, interpreter: Any, delegate: Any, facts: dict[str, Any]) -> None:
        super().__init__(interpreter)
        # An EdgeTPU model is compiled for its shapes: a resized input would fall back to the CPU.
        self.max_batch = 1
        self._delegate = delegate  # the interpreter uses it; it must outlive the interpreter
        self.facts = facts

    def infer(self, inputs: list[Any]) -> list[Any]:
        try:
            return super().infer(inputs)
        except RuntimeFailure as exc:
            if _is_lost(exc):
                raise DeviceLost(f"the EdgeTPU is gone: {exc}") from exc
            raise

    def unload(self) -> None:
        super().unload()
        self._delegate = None


class EdgeTPURuntime(LiteRTRuntime):
    name = "edgetpu"
    suffixes = (".tflite",)
    device_kinds = ("edgetpu",)

    def _load(self, source: bytes | Path) -> EdgeTPUModel:
        data = source.read_bytes() if isinstance(source, Path) else bytes(source)
        log_path = source.with_name(source.stem + ".log") if isinstance(source, Path) else None
        log_text = log_path.read_text(errors="replace") if log_path is not None and log_path.is_file() else None
        try:
            facts = model_facts(data, log_text)
        except ValueError as exc:
            raise RuntimeFailure(f"not a TFLite model: {exc}") from exc
        device = delegate_device(self.device)
        try:
            delegate = load_delegate(EDGETPU_LIBRARY, {"device": device} if device else {})
        except (ValueError, OSError) as exc:
            # No device answering to that name (unplugged, or held by another process).
            raise DeviceLost(f"cannot open EdgeTPU {device or '(any)'}: {exc}") from exc
        try:
            if isinstance(source, Path):
                interpreter = Interpreter(
                    model_path=str(source), experimental_delegates=[delegate], num_threads=self.num_threads
                )
            else:
                interpreter = Interpreter(
                    model_content=data, experimental_delegates=[delegate], num_threads=self.num_threads
                )
            interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            if _is_lost(exc):
                raise DeviceLost(f"the EdgeTPU is gone: {exc}") from exc
            raise RuntimeFailure(f"LiteRT with the EdgeTPU delegate cannot load this model: {exc}") from exc
        return EdgeTPUModel(interpreter, delegate, facts)

    @classmethod
    def param_bytes(cls, path: Path) -> int | None:
        """What the model needs in the parameter cache: the compiler's on-chip figure where its log
        is beside the file, else the bytes inside its EdgeTPU ops, else (not compiled) its tensors'."""
        try:
            data = path.read_bytes()
            log_path = path.with_name(path.stem + ".log")
            if log_path.is_file():
                on_chip = parse_compiler_log(log_path.read_text(errors="replace")).get("edgetpu_on_chip_param_bytes")
                if on_chip is not None:
                    return int(on_chip)
            op_bytes = edgetpu_op_bytes(data)
            return op_bytes if op_bytes is not None else tflite_param_bytes(data)
        except (OSError, ValueError):
            return None
