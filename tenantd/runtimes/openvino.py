"""OpenVINO runtime: OpenVINO IR (as an ``.ovir`` bundle), ONNX and ``.tflite`` on Intel devices.

Devices: ``cpu`` (OpenVINO's ``CPU`` plugin), ``ncs2:N`` (the ``MYRIAD`` plugin, which exists only
in OpenVINO 2022.3 LTS and older; the Nth stick found), ``npu`` and ``gpu[:N]`` where present. A
model is read from the store's blob, whose format is told by its first bytes (the blob has no file
suffix): a ZIP is an IR bundle (:mod:`tenantwire.irbundle`), ``TFL3`` a TFLite flatbuffer,
anything else (which :mod:`tenantd.modelfile` has found to be ONNX) goes to the ONNX front end. A
compiled model serves requests through a pool of OpenVINO's asynchronous infer requests, one per
concurrent caller, so one compiled model may run on several slots at once; on the CPU it is
compiled with as many streams as the daemon has slots and full f32 precision (the CPU plugin would
otherwise pick bf16 on CPUs that have it, and outputs would drift from the other runtimes').

NCS2 (MYRIAD, OpenVINO 2022.3 LTS, the last with the plugin): the stick computes in FP16 and keeps
weights and activations in its own 512 MB, so a model's charge is its weights at FP16 plus its
intermediate tensors at FP16 (``myriad_bytes`` in its facts, an estimate that assumes no reuse of
activation memory), never the CPU plugin's host RSS. When the stick's memory is full the plugin
throws "Failed to allocate graph: NC_OUT_OF_MEMORY", or fails to boot a further graph with "Can
not init Myriad device: NC_ERROR" (openvinotoolkit/openvino#2418, at the 10th network; both
thrown by the plugin's myriad_executor.cpp): with networks already loaded that is
:class:`DeviceMemoryFull` (admission's refusal of this model, with the count), not a lost device.

Written at the Python 3.6 language level, for a device worker under the NCS2's OpenVINO 2022.3
(Python 3.7-3.10) or another older Python (README, "Device workers").
"""

import queue
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import numpy as np

from tenantwire.tensors import TensorSpec

try:
    from openvino import Core, Tensor, get_version
except ImportError:  # pragma: no cover - OpenVINO 2022.3 LTS (the last with MYRIAD) has them only here
    from openvino.runtime import Core, Tensor, get_version

from tenantd.errors import DeviceLost, DeviceMemoryFull, RuntimeFailure
from tenantd.runtimes.base import IdleQueue, LoadedModel, Runtime, batch_capacity, device_kind, package_version
from tenantwire import irbundle

# Phrases with which OpenVINO's plugins report that the device itself went away (MYRIAD's XLink
# transport when a stick is pulled; the NPU/GPU plugins' lost-device errors), as opposed to a
# model or input problem.
_LOST_MARKS = ("x_link_error", "xlink", "device was disconnected", "device lost", "device_lost", "nc_error")


# MYRIAD's words for "no room for this graph on the stick" (see the module's docstring).
_FULL_MARKS = ("nc_out_of_memory", "can not init myriad device")


def _is_full(exc: BaseException) -> bool:
    text = str(exc).lower()
    return any(mark in text for mark in _FULL_MARKS)


def myriad_bytes(model: Any) -> int:
    """What a model needs on an NCS2: every Constant's elements at FP16 (float weights are
    converted; integer ones keep their size) plus every other op's static outputs at FP16. An
    upper bound on activations (the plugin reuses their memory), from the model read on any
    device."""
    total = 0
    for op in model.get_ops():
        if op.get_type_name() == "Result":  # the tensor its producer already counted
            continue
        for i in range(op.get_output_size()):
            shape = op.get_output_partial_shape(i)
            if not shape.is_static:
                continue
            count = int(np.prod([d.get_length() for d in shape])) if len(shape) else 1
            dtype = np.dtype(op.get_output_element_type(i).to_dtype())
            total += count * (2 if dtype.kind == "f" else dtype.itemsize)
    return total


def _is_lost(exc: BaseException) -> bool:
    text = str(exc).lower()
    return any(mark in text for mark in _LOST_MARKS)


TFLITE_SINCE = 2023  # the first OpenVINO release year whose read_model reads .tflite (2023.0)


def _major(version: Optional[str]) -> int:
    """The year of an OpenVINO version ("2022.3.0-9052-..." -> 2022, as ``get_version()`` says it,
    also for the archive distribution, which has no package metadata); unreadable counts as current."""
    try:
        return int(str(version).split(".")[0])
    except ValueError:
        return 9999


def ov_device(device: str, available: List[str]) -> str:
    """The OpenVINO device name for a tenantd device name: ``cpu`` -> ``CPU``, ``ncs2:N`` -> the
    Nth ``MYRIAD`` device OpenVINO lists, ``npu`` -> ``NPU``, ``gpu:N`` -> ``GPU.N``."""
    kind, _, index = device.partition(":")
    kind = kind.lower()
    if kind == "cpu":
        return "CPU"
    if kind == "ncs2":
        sticks = sorted(d for d in available if d.startswith("MYRIAD"))
        n = int(index or 0)
        if n >= len(sticks):
            raise DeviceLost(
                f"no NCS2 stick {n} here (OpenVINO lists {available}); the MYRIAD plugin is in OpenVINO <= 2022.3 from "
                "Intel's archive distribution only, never in the PyPI wheels"
            )
        return sticks[n]
    if kind == "npu":
        return "NPU"
    if kind == "gpu":
        return f"GPU.{index}" if index else "GPU"
    raise RuntimeFailure(f"OpenVINO does not run on device {device!r}")


def _port_name(port: Any, fallback: str) -> str:
    try:
        return str(port.get_any_name())
    except RuntimeError:  # a port without tensor names
        return fallback


def _spec(port: Any, fallback: str) -> TensorSpec:
    shape = port.get_partial_shape()
    dims = tuple(int(d.get_length()) if d.is_static else -1 for d in shape) if shape.rank.is_static else ()
    return TensorSpec(name=_port_name(port, fallback), dtype=port.get_element_type().to_dtype().name, shape=dims)


class OpenVINOModel(LoadedModel):
    can_add_instances = True

    def __init__(self, compiled: Any, on_unload: Any = None) -> None:
        self._compiled = compiled
        self._on_unload = on_unload
        self.instances = 1
        self.inputs = tuple(_spec(p, f"input{i}") for i, p in enumerate(compiled.inputs))
        self.outputs = tuple(_spec(p, f"output{i}") for i, p in enumerate(compiled.outputs))
        self.max_batch = batch_capacity(self.inputs, self.outputs, resizable=False)  # dynamic first dims
        # Idle infer requests; a caller takes one (or makes one) so concurrent calls never share.
        self._idle = IdleQueue()  # type: queue.Queue[Any]

    def infer(self, inputs: List[np.ndarray]) -> List[np.ndarray]:
        compiled = self._compiled
        if compiled is None:
            raise RuntimeFailure("the model was unloaded")
        try:
            request = self._idle.get_nowait()
        except queue.Empty:
            request = compiled.create_infer_request()
        try:
            # Asynchronous start + wait: both release the GIL, and the request is this caller's alone.
            request.start_async(dict(enumerate(inputs)))
            request.wait()
            outputs = [np.array(request.get_output_tensor(i).data, copy=True) for i in range(len(self.outputs))]
        except (RuntimeError, TypeError, ValueError) as exc:
            if _is_lost(exc):
                raise DeviceLost(f"OpenVINO lost the device: {exc}") from exc
            raise RuntimeFailure(str(exc)) from exc
        self._idle.put(request)
        return outputs

    def add_instance(self) -> None:
        compiled = self._compiled
        if compiled is None:
            raise RuntimeFailure("the model was unloaded")
        try:
            request = compiled.create_infer_request()  # allocates its own input and output tensors
        except (RuntimeError, TypeError, ValueError) as exc:
            if _is_lost(exc):
                raise DeviceLost(f"OpenVINO lost the device: {exc}") from exc
            raise RuntimeFailure(f"OpenVINO cannot make another infer request: {exc}") from exc
        self._idle.put(request)
        self.instances += 1

    def unload(self) -> None:
        if self._compiled is not None and self._on_unload is not None:
            self._on_unload()
        self._compiled = None
        self._idle = IdleQueue()


class OpenVINORuntime(Runtime):
    name = "openvino"
    suffixes = (irbundle.SUFFIX, ".xml", ".onnx", ".tflite")
    device_kinds = ("cpu", "ncs2", "npu", "gpu")

    def __init__(self, device: str = "cpu", num_threads: int = 1, slots: int = 1) -> None:
        super().__init__(device, num_threads, slots)
        self._core: Any = Core()
        self.networks = 0  # networks compiled and not yet unloaded (an NCS2 holds only so many)

    def _config(self) -> Dict[str, Any]:
        if device_kind(self.device) == "cpu":
            return {
                "INFERENCE_PRECISION_HINT": "f32",
                "NUM_STREAMS": max(1, self.slots),
                "INFERENCE_NUM_THREADS": max(1, self.num_threads * self.slots),
            }
        return {}

    def _read(self, source: Union[bytes, Path]) -> Any:
        core = self._core
        data = source.read_bytes() if isinstance(source, Path) else bytes(source)
        if irbundle.is_bundle(data):
            xml, weights = irbundle.unpack(data)
            try:
                return core.read_model(model=xml, weights=Tensor(np.frombuffer(weights, np.uint8).copy()))
            except TypeError:  # pragma: no cover - OpenVINO 2022.x takes the weights as bytes
                return core.read_model(model=xml, weights=weights)
        if data[4:8] == b"TFL3":
            if _major(get_version()) < TFLITE_SINCE:
                # The TensorFlow Lite front end arrived in 2023.0; the NCS2's OpenVINO (<= 2022.3)
                # would only say it cannot find a front end for the file.
                raise RuntimeFailure(
                    "OpenVINO {} cannot read .tflite files (its TensorFlow Lite front end arrived in {}.0): "
                    "submit the model as OpenVINO IR or ONNX".format(get_version().split("-")[0], TFLITE_SINCE)
                )
            # OpenVINO's TFLite front end recognises a file by its suffix alone; store blobs have none.
            if isinstance(source, Path) and source.suffix.lower() == ".tflite":
                return core.read_model(str(source))
            with tempfile.TemporaryDirectory(prefix="tenantd-ov-") as tmp:
                path = Path(tmp) / "model.tflite"
                path.write_bytes(data)
                return core.read_model(str(path))
        if data.lstrip()[:5] in (b"<?xml", b"<net "):
            # Never a .bin found beside the path: that file is not part of what was submitted (the
            # check in Runtime.load refuses a lone .xml before it gets here).
            raise RuntimeFailure(f"an IR .xml alone has no weights: submit it as an {irbundle.SUFFIX} bundle")
        # ONNX, the only other format the check lets through (OpenVINO's other front ends, such as
        # PaddlePaddle's, could read files beside the model).
        return core.read_model(model=data)

    def _load(self, source: Union[bytes, Path]) -> OpenVINOModel:
        try:
            target = ov_device(self.device, list(self._core.available_devices))
            model = self._read(source)
            needs = myriad_bytes(model)
            compiled = self._core.compile_model(model, target, self._config())
        except irbundle.BundleError as exc:
            raise RuntimeFailure(f"OpenVINO cannot load this model: {exc}") from exc
        except (RuntimeError, TypeError, ValueError) as exc:
            held = self.networks
            # "Can not init Myriad device" with nothing loaded is a stick that does not answer.
            if (
                device_kind(self.device) == "ncs2"
                and _is_full(exc)
                and (held or "nc_out_of_memory" in str(exc).lower())
            ):
                raise DeviceMemoryFull(
                    f"the NCS2 holds {held} network(s) and has no room for this one ({exc})", held
                ) from exc
            if _is_lost(exc):
                raise DeviceLost(f"OpenVINO lost the device: {exc}") from exc
            raise RuntimeFailure(f"OpenVINO cannot load this model: {exc}") from exc
        self.networks += 1
        loaded = OpenVINOModel(compiled, self._unloaded)
        loaded.facts = {"myriad_bytes": needs, "myriad_bytes_basis": "estimate: FP16 weights + every activation"}
        if device_kind(self.device) == "ncs2":
            loaded.device_bytes = needs
        return loaded

    def _unloaded(self) -> None:
        self.networks = max(0, self.networks - 1)

    @classmethod
    def probe_device(cls, device: str) -> str:
        # One process per NCS2 stick: the daemon holds it, so the probe reads the model on the CPU
        # plugin, which gives the same input/output specs.
        return "cpu" if device_kind(device) == "ncs2" else device

    @classmethod
    def param_bytes(cls, path: Path) -> Optional[int]:
        try:
            data = path.read_bytes()
            return len(irbundle.unpack(data)[1]) if irbundle.is_bundle(data) else None
        except (OSError, irbundle.BundleError):
            return None

    @classmethod
    def version(cls) -> str:
        return f"openvino {package_version('openvino') or 'unknown'}"
